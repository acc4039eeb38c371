"""The files a ledger has seen: sightings, claims, and where each file is in its life."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping
from typing import Any

from eventpipe.core.models import Landed
from eventpipe.ledger.db import Database
from eventpipe.ledger.rows import (
    FileRow,
    FileState,
    Outcome,
)


class Files(Database):
    """Sightings, claims and states of files."""

    # -- files ---------------------------------------------------------------------------------

    def record_landed(
        self, pipeline: str, landed: Landed, event_for: Any
    ) -> tuple[Outcome, FileRow]:
        """Record a sighting of ``landed`` and queue its event in the same transaction.

        ``event_for(outcome, row) -> (event_id, body) | None`` builds the event to queue.
        Outcomes: ``new`` (first time this uri is seen), ``changed`` (new bytes for a known uri),
        ``retry`` (same bytes as a failed attempt), ``unchanged`` (same bytes as the current
        version: nothing to do) and ``duplicate`` (a new name for bytes already taken under
        another name: skipped, so no row is counted twice).
        """
        now = time.time()
        with self._tx() as db:
            latest = db.execute(
                "SELECT * FROM files WHERE pipeline=? AND uri=? ORDER BY landed_seq DESC LIMIT 1",
                (pipeline, landed.uri),
            ).fetchone()
            outcome: Outcome
            if latest is not None and latest["sha256"] == landed.fingerprint:
                if latest["state"] == "failed":
                    outcome = "retry"
                    db.execute(
                        "UPDATE files SET state='landed', generation=generation+1, updated_at=?,"
                        " reason=NULL WHERE id=?",
                        (now, latest["id"]),
                    )
                else:
                    outcome = "unchanged"
                self._remember_object(db, pipeline, landed, latest["id"])
                row = _file_row(
                    db.execute("SELECT * FROM files WHERE id=?", (latest["id"],)).fetchone()
                )
            else:
                twin = None
                if latest is None:
                    twin = db.execute(
                        "SELECT uri FROM files WHERE pipeline=? AND sha256=? AND uri<>?"
                        " AND state IN"
                        " ('landed','sent','processing','done') LIMIT 1",
                        (pipeline, landed.fingerprint, landed.uri),
                    ).fetchone()
                state: FileState = "skipped" if twin else "landed"
                reason = f"duplicate of {twin['uri']}" if twin else None
                outcome = "duplicate" if twin else ("new" if latest is None else "changed")
                row = self._upsert(db, pipeline, landed, state, reason, now)
            event = event_for(outcome, row)
            if event is not None:
                self._queue(db, event[0], event[1], row.id)
        return outcome, row

    def record_rejected(
        self, pipeline: str, landed: Landed, reason: str, event_for: Any
    ) -> FileRow:
        """Record a file refused before processing (and queue its event, atomically)."""
        with self._tx() as db:
            row = self._upsert(db, pipeline, landed, "rejected", reason, time.time())
            event_id, body = event_for(row)
            self._queue(db, event_id, body, row.id)
        return row

    @staticmethod
    def _upsert(
        db: sqlite3.Connection,
        pipeline: str,
        landed: Landed,
        state: FileState,
        reason: str | None,
        now: float,
    ) -> FileRow:
        """Insert a sighting as the newest row of its uri, or bring its (uri, sha256) row back."""
        seq = db.execute("SELECT COALESCE(MAX(landed_seq), 0) + 1 FROM files").fetchone()[0]
        row = db.execute(
            "INSERT INTO files (pipeline, uri, relative, sha256, size, source, local_path,"
            " state, landed_seq, seen_at, updated_at, reason)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT (pipeline, uri, sha256) DO UPDATE SET state=excluded.state,"
            " generation=generation+1, landed_seq=excluded.landed_seq,"
            " updated_at=excluded.updated_at, reason=excluded.reason,"
            " local_path=excluded.local_path RETURNING *",
            (
                pipeline,
                landed.uri,
                landed.relative,
                landed.fingerprint,
                landed.size,
                landed.source,
                landed.local_path,
                state,
                seq,
                now,
                now,
                reason,
            ),
        ).fetchone()
        Files._remember_object(db, pipeline, landed, row["id"])
        return _file_row(row)

    @staticmethod
    def _remember_object(
        db: sqlite3.Connection, pipeline: str, landed: Landed, file_id: int
    ) -> None:
        """Remember which upload (uri, eTag, stamp) a row came from, for the bucket source."""
        if landed.tag is None:
            return
        db.execute(
            "INSERT INTO objects (pipeline, uri, tag, stamp, sha256, file_id)"
            " VALUES (?,?,?,?,?,?) ON CONFLICT (pipeline, uri, tag) DO UPDATE SET"
            " stamp=excluded.stamp, sha256=excluded.sha256, file_id=excluded.file_id",
            (pipeline, landed.uri, landed.tag, landed.stamp or "", landed.fingerprint, file_id),
        )

    def seen_object(self, pipeline: str, uri: str, tag: str) -> tuple[str, str] | None:
        """(sha256, stamp) of the upload of ``uri`` with version tag ``tag`` (an S3 eTag), if
        it was recorded."""
        found = (
            self._conn()
            .execute(
                "SELECT sha256, stamp FROM objects WHERE pipeline=? AND uri=? AND tag=?",
                (pipeline, uri, tag),
            )
            .fetchone()
        )
        return (found["sha256"], found["stamp"]) if found else None

    def claim_pending(self, pipeline: str, run_id: str, limit: int = 100_000) -> list[FileRow]:
        """Atomically move every pending file of ``pipeline`` to ``processing`` for ``run_id``."""
        now = time.time()
        with self._tx() as db:
            rows = db.execute(
                "UPDATE files SET state='processing', run_id=?, updated_at=?, attempts=attempts+1"
                " WHERE id IN (SELECT id FROM files WHERE pipeline=? AND state IN ('landed','sent')"
                " ORDER BY landed_seq LIMIT ?) RETURNING *",
                (run_id, now, pipeline, limit),
            ).fetchall()
        return sorted((_file_row(r) for r in rows), key=lambda r: r.id)

    def reclaim_stale(self, pipeline: str, live_run_ids: set[str] | None = None) -> int:
        """Put files left in ``processing`` by a run that is gone back to pending."""
        with self._tx() as db:
            rows = db.execute(
                "SELECT id, run_id FROM files WHERE pipeline=? AND state='processing'", (pipeline,)
            ).fetchall()
            stale = [
                r["id"] for r in rows if live_run_ids is None or r["run_id"] not in live_run_ids
            ]
            db.executemany(
                "UPDATE files SET state='landed', updated_at=? WHERE id=?",
                [(time.time(), i) for i in stale],
            )
        return len(stale)

    def finish(
        self,
        file_id: int,
        state: FileState,
        reason: str | None = None,
        event: tuple[str, Mapping[str, Any]] | None = None,
    ) -> None:
        """Close a claimed file as done, failed or rejected (and queue its event atomically)."""
        with self._tx() as db:
            db.execute(
                "UPDATE files SET state=?, reason=?, updated_at=? WHERE id=?",
                (state, reason, time.time(), file_id),
            )
            if event is not None:
                self._queue(db, event[0], event[1], file_id)

    def finish_many(self, file_ids: list[int], state: FileState) -> None:
        with self._tx() as db:
            db.executemany(
                "UPDATE files SET state=?, reason=NULL, updated_at=? WHERE id=?",
                [(state, time.time(), i) for i in file_ids],
            )

    def requeue(
        self, pipeline: str, event_for: Any, states: tuple[FileState, ...] = ("failed",)
    ) -> list[FileRow]:
        """Make files in ``states`` pending again and queue their events (``eventpipe retry``).

        ``event_for(row) -> (event_id, body)`` builds each file's new landed event.
        """
        marks = ",".join("?" * len(states))
        with self._tx() as db:
            rows = [
                _file_row(r)
                for r in db.execute(
                    f"UPDATE files SET state='landed', generation=generation+1, reason=NULL,"
                    f" updated_at=? WHERE pipeline=? AND state IN ({marks}) RETURNING *",
                    (time.time(), pipeline, *states),
                ).fetchall()
            ]
            for row in rows:
                event_id, body = event_for(row)
                self._queue(db, event_id, body, row.id)
        return rows

    def files(self, pipeline: str | None = None, uri: str | None = None) -> list[FileRow]:
        sql, args = "SELECT * FROM files WHERE 1=1", list[str]()
        if pipeline is not None:
            sql, args = sql + " AND pipeline=?", [*args, pipeline]
        if uri is not None:
            sql, args = sql + " AND uri=?", [*args, uri]
        return [_file_row(r) for r in self._conn().execute(sql + " ORDER BY id", args)]

    def current_files(self, pipeline: str) -> list[FileRow]:
        """The latest processed version of each uri: the rows behind the current partitions."""
        rows = self._conn().execute(
            "SELECT * FROM files f WHERE pipeline=? AND state='done' AND landed_seq = ("
            " SELECT MAX(landed_seq) FROM files g WHERE g.pipeline=f.pipeline AND g.uri=f.uri"
            " AND g.state='done')",
            (pipeline,),
        )
        return [_file_row(r) for r in rows]

    def latest_files(self, pipeline: str) -> list[FileRow]:
        """The newest row of each uri, whatever its state: where each landed file stands now."""
        rows = self._conn().execute(
            "SELECT * FROM files f WHERE pipeline=? AND landed_seq = ("
            " SELECT MAX(landed_seq) FROM files g WHERE g.pipeline=f.pipeline AND g.uri=f.uri)"
            " ORDER BY relative, uri",
            (pipeline,),
        )
        return [_file_row(r) for r in rows]

    def counts(self, pipeline: str) -> dict[str, int]:
        rows = self._conn().execute(
            "SELECT state, COUNT(*) FROM files WHERE pipeline=? GROUP BY state", (pipeline,)
        )
        return {r[0]: r[1] for r in rows}

    def behind(self, pipeline: str, seen_before: float) -> tuple[int, float | None]:
        """Files of ``pipeline`` seen before ``seen_before`` that the outputs don't reflect yet
        (pending, processing or failed): how many, and when the oldest was seen."""
        found = (
            self._conn()
            .execute(
                "SELECT COUNT(*), MIN(seen_at) FROM files WHERE pipeline=? AND seen_at<?"
                " AND state IN ('landed','sent','processing','failed')",
                (pipeline, seen_before),
            )
            .fetchone()
        )
        return int(found[0]), (float(found[1]) if found[1] is not None else None)

    def oldest_pending(self, pipeline: str) -> float | None:
        """When the longest-waiting pending file of ``pipeline`` last changed state, if any."""
        found = (
            self._conn()
            .execute(
                "SELECT MIN(updated_at) FROM files WHERE pipeline=? AND state IN ('landed','sent')",
                (pipeline,),
            )
            .fetchone()
        )
        return float(found[0]) if found and found[0] is not None else None


def _file_row(row: sqlite3.Row) -> FileRow:
    data = dict(row)
    data.pop("landed_seq", None)
    return FileRow(**data)
