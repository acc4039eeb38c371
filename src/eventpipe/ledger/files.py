"""The files a ledger has seen: sightings, claims, and where each file is in its life."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, RowMapping, bindparam, text

from eventpipe.core.models import Landed
from eventpipe.ledger.db import Database
from eventpipe.ledger.rows import (
    DELETED,
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
        ``retry`` (same bytes as a failed attempt), ``restored`` (the same bytes dropped again
        after the file was deleted and retracted), ``unchanged`` (same bytes as the current
        version: nothing to do) and ``duplicate`` (a new name for bytes already taken under
        another name: skipped, so no row is counted twice).
        """
        now = time.time()
        with self._tx(lock=pipeline) as db:
            latest = (
                db.execute(
                    text(
                        "SELECT * FROM files WHERE pipeline=:pipeline AND uri=:uri"
                        " ORDER BY landed_seq DESC LIMIT 1"
                    ),
                    {"pipeline": pipeline, "uri": landed.uri},
                )
                .mappings()
                .first()
            )
            outcome: Outcome
            if latest is not None and latest["sha256"] == landed.fingerprint:
                restored = latest["state"] == "retracting" or (
                    latest["state"] == "retracted"
                    and str(latest["reason"] or "").startswith(DELETED)
                )
                if latest["state"] == "failed" or restored:
                    outcome = "restored" if restored else "retry"
                    db.execute(
                        text(
                            "UPDATE files SET state='landed', generation=generation+1,"
                            " updated_at=:now, reason=NULL WHERE id=:id"
                        ),
                        {"now": now, "id": latest["id"]},
                    )
                else:
                    outcome = "unchanged"
                self._remember_object(db, pipeline, landed, latest["id"])
                row = _file_row(
                    db.execute(text("SELECT * FROM files WHERE id=:id"), {"id": latest["id"]})
                    .mappings()
                    .one()
                )
            else:
                twin = None
                if latest is None:
                    twin = db.execute(
                        text(
                            "SELECT uri FROM files WHERE pipeline=:pipeline AND sha256=:sha256"
                            " AND uri<>:uri AND state IN ('landed','sent','processing','done')"
                            " LIMIT 1"
                        ),
                        {"pipeline": pipeline, "sha256": landed.fingerprint, "uri": landed.uri},
                    ).first()
                state: FileState = "skipped" if twin else "landed"
                reason = f"duplicate of {twin[0]}" if twin else None
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
        with self._tx(lock=pipeline) as db:
            row = self._upsert(db, pipeline, landed, "rejected", reason, time.time())
            event_id, body = event_for(row)
            self._queue(db, event_id, body, row.id)
        return row

    @staticmethod
    def _upsert(
        db: Connection,
        pipeline: str,
        landed: Landed,
        state: FileState,
        reason: str | None,
        now: float,
    ) -> FileRow:
        """Insert a sighting as the newest row of its uri, or bring its (uri, sha256) row back."""
        # The caller holds the pipeline's writer lock, so no other sighting of this pipeline
        # takes the same number (numbers of different pipelines are never compared).
        seq = db.execute(text("SELECT COALESCE(MAX(landed_seq), 0) + 1 FROM files")).scalar_one()
        row = (
            db.execute(
                text(
                    "INSERT INTO files (pipeline, uri, relative, sha256, size, source, local_path,"
                    " state, generation, landed_seq, seen_at, updated_at, reason, attempts)"
                    " VALUES (:pipeline, :uri, :relative, :sha256, :size, :source, :local_path,"
                    " :state, 0, :seq, :now, :now, :reason, 0)"
                    " ON CONFLICT (pipeline, uri, sha256) DO UPDATE SET state=excluded.state,"
                    " generation=files.generation+1, landed_seq=excluded.landed_seq,"
                    " updated_at=excluded.updated_at, reason=excluded.reason,"
                    " local_path=excluded.local_path RETURNING *"
                ),
                {
                    "pipeline": pipeline,
                    "uri": landed.uri,
                    "relative": landed.relative,
                    "sha256": landed.fingerprint,
                    "size": landed.size,
                    "source": landed.source,
                    "local_path": landed.local_path,
                    "state": state,
                    "seq": seq,
                    "now": now,
                    "reason": reason,
                },
            )
            .mappings()
            .one()
        )
        Files._remember_object(db, pipeline, landed, row["id"])
        return _file_row(row)

    @staticmethod
    def _remember_object(db: Connection, pipeline: str, landed: Landed, file_id: int) -> None:
        """Remember which upload (uri, eTag, stamp) a row came from, for the bucket source."""
        if landed.tag is None:
            return
        db.execute(
            text(
                "INSERT INTO objects (pipeline, uri, tag, stamp, sha256, file_id)"
                " VALUES (:pipeline, :uri, :tag, :stamp, :sha256, :file_id)"
                " ON CONFLICT (pipeline, uri, tag) DO UPDATE SET"
                " stamp=excluded.stamp, sha256=excluded.sha256, file_id=excluded.file_id"
            ),
            {
                "pipeline": pipeline,
                "uri": landed.uri,
                "tag": landed.tag,
                "stamp": landed.stamp or "",
                "sha256": landed.fingerprint,
                "file_id": file_id,
            },
        )

    def seen_object(self, pipeline: str, uri: str, tag: str) -> tuple[str, str] | None:
        """(sha256, stamp) of the upload of ``uri`` with version tag ``tag`` (an S3 eTag), if
        it was recorded."""
        with self._read() as db:
            found = db.execute(
                text(
                    "SELECT sha256, stamp FROM objects"
                    " WHERE pipeline=:pipeline AND uri=:uri AND tag=:tag"
                ),
                {"pipeline": pipeline, "uri": uri, "tag": tag},
            ).first()
        return (found[0], found[1]) if found else None

    def claim_pending(self, pipeline: str, run_id: str, limit: int = 100_000) -> list[FileRow]:
        """Atomically move every pending file of ``pipeline`` to ``processing`` for ``run_id``."""
        now = time.time()
        with self._tx() as db:
            rows = (
                db.execute(
                    text(
                        "UPDATE files SET state='processing', run_id=:run_id, updated_at=:now,"
                        " attempts=attempts+1 WHERE id IN (SELECT id FROM files"
                        " WHERE pipeline=:pipeline AND state IN ('landed','sent')"
                        f" ORDER BY landed_seq LIMIT :limit{self.skip_locked}) RETURNING *"
                    ),
                    {"run_id": run_id, "now": now, "pipeline": pipeline, "limit": limit},
                )
                .mappings()
                .all()
            )
        return sorted((_file_row(r) for r in rows), key=lambda r: r.id)

    def reclaim_stale(self, pipeline: str, runs: set[str] | None = None) -> int:
        """Put files left in ``processing`` back to pending: those claimed by ``runs`` (runs
        known to be over), or every claimed file when ``runs`` is None (no run can be live).

        Naming the dead runs, not the live ones: a run that claims files while the caller
        decides is neither, and its claim is left alone."""
        with self._tx(lock=pipeline) as db:
            rows = db.execute(
                text(
                    "SELECT id, run_id FROM files WHERE pipeline=:pipeline AND state='processing'"
                ),
                {"pipeline": pipeline},
            ).all()
            stale = [r for r in rows if runs is None or r[1] in runs]
            if not stale:
                return 0
            # Only if still claimed by that run: it may have finished since the rows were read.
            back = 0
            for file_id, run_id in stale:
                back += db.execute(
                    text(
                        "UPDATE files SET state='landed', updated_at=:now WHERE id=:id"
                        " AND state='processing' AND COALESCE(run_id, '')=:run_id"
                    ),
                    {"now": time.time(), "id": file_id, "run_id": run_id or ""},
                ).rowcount
        return back

    def finish(
        self,
        file_id: int,
        state: FileState,
        reason: str | None = None,
        event: tuple[str, Mapping[str, Any]] | None = None,
    ) -> None:
        """Close a claimed file as done, failed or rejected (and queue its event atomically);
        a file retracted meanwhile stays retracted (a later run removes what this one wrote)."""
        with self._tx() as db:
            closed = db.execute(
                text(
                    "UPDATE files SET state=:state, reason=:reason, updated_at=:now WHERE id=:id"
                    " AND state NOT IN ('retracting', 'retracted')"
                ),
                {"state": state, "reason": reason, "now": time.time(), "id": file_id},
            )
            if event is not None and closed.rowcount:
                self._queue(db, event[0], event[1], file_id)

    def finish_many(self, file_ids: list[int], state: FileState) -> None:
        if not file_ids:
            return
        with self._tx() as db:
            db.execute(
                text(
                    "UPDATE files SET state=:state, reason=NULL, updated_at=:now WHERE id=:id"
                    " AND state NOT IN ('retracting', 'retracted')"
                ),
                [{"state": state, "now": time.time(), "id": i} for i in file_ids],
            )

    def requeue(
        self, pipeline: str, event_for: Any, states: tuple[FileState, ...] = ("failed",)
    ) -> list[FileRow]:
        """Make files in ``states`` pending again and queue their events (``eventpipe retry``).

        ``event_for(row) -> (event_id, body)`` builds each file's new landed event.
        """
        with self._tx(lock=pipeline) as db:
            found = db.execute(
                text(
                    "UPDATE files SET state='landed', generation=generation+1, reason=NULL,"
                    " updated_at=:now WHERE pipeline=:pipeline AND state IN :states RETURNING *"
                ).bindparams(bindparam("states", expanding=True)),
                {"now": time.time(), "pipeline": pipeline, "states": list(states)},
            )
            rows = [_file_row(r) for r in found.mappings()]
            for row in rows:
                event_id, body = event_for(row)
                self._queue(db, event_id, body, row.id)
        return rows

    def files(self, pipeline: str | None = None, uri: str | None = None) -> list[FileRow]:
        sql, args = "SELECT * FROM files WHERE 1=1", dict[str, str]()
        if pipeline is not None:
            sql, args = sql + " AND pipeline=:pipeline", {**args, "pipeline": pipeline}
        if uri is not None:
            sql, args = sql + " AND uri=:uri", {**args, "uri": uri}
        with self._read() as db:
            return [_file_row(r) for r in db.execute(text(sql + " ORDER BY id"), args).mappings()]

    def current_files(self, pipeline: str) -> list[FileRow]:
        """The latest processed version of each uri: the rows behind the current partitions
        (none for a uri whose newest row is retracted or being retracted)."""
        with self._read() as db:
            rows = db.execute(
                text(
                    "SELECT * FROM files f WHERE pipeline=:pipeline AND state='done'"
                    " AND landed_seq = (SELECT MAX(landed_seq) FROM files g"
                    " WHERE g.pipeline=f.pipeline AND g.uri=f.uri AND g.state='done')"
                    " AND NOT EXISTS (SELECT 1 FROM files h WHERE h.pipeline=f.pipeline"
                    " AND h.uri=f.uri AND h.landed_seq>f.landed_seq"
                    " AND h.state IN ('retracting', 'retracted'))"
                ),
                {"pipeline": pipeline},
            )
            return [_file_row(r) for r in rows.mappings()]

    def latest_files(self, pipeline: str) -> list[FileRow]:
        """The newest row of each uri, whatever its state: where each landed file stands now."""
        with self._read() as db:
            rows = db.execute(
                text(
                    "SELECT * FROM files f WHERE pipeline=:pipeline AND landed_seq = ("
                    " SELECT MAX(landed_seq) FROM files g"
                    " WHERE g.pipeline=f.pipeline AND g.uri=f.uri) ORDER BY relative, uri"
                ),
                {"pipeline": pipeline},
            )
            return [_file_row(r) for r in rows.mappings()]

    def counts(self, pipeline: str) -> dict[str, int]:
        with self._read() as db:
            rows = db.execute(
                text("SELECT state, COUNT(*) FROM files WHERE pipeline=:pipeline GROUP BY state"),
                {"pipeline": pipeline},
            )
            return {r[0]: int(r[1]) for r in rows}

    def behind(self, pipeline: str, seen_before: float) -> tuple[int, float | None]:
        """Files of ``pipeline`` seen before ``seen_before`` that the outputs don't reflect yet
        (pending, processing or failed): how many, and when the oldest was seen."""
        with self._read() as db:
            found = db.execute(
                text(
                    "SELECT COUNT(*), MIN(seen_at) FROM files WHERE pipeline=:pipeline"
                    " AND seen_at<:before AND state IN ('landed','sent','processing','failed')"
                ),
                {"pipeline": pipeline, "before": seen_before},
            ).one()
        return int(found[0]), (float(found[1]) if found[1] is not None else None)

    def run_on_its_way(self, pipeline: str, within: float = 30.0) -> bool:
        """Whether a file of ``pipeline`` was announced in the last ``within`` seconds and no
        run has claimed it yet: the run its event woke is on its way, and it will claim every
        file pending when it starts (``claim_pending`` takes them all at once)."""
        with self._read() as db:
            found = db.execute(
                text(
                    "SELECT 1 FROM files WHERE pipeline=:pipeline AND state='sent'"
                    " AND updated_at>:since LIMIT 1"
                ),
                {"pipeline": pipeline, "since": time.time() - within},
            ).first()
        return found is not None

    def oldest_pending(self, pipeline: str) -> float | None:
        """When the longest-waiting pending file of ``pipeline`` last changed state, if any."""
        with self._read() as db:
            found = db.execute(
                text(
                    "SELECT MIN(updated_at) FROM files WHERE pipeline=:pipeline"
                    " AND state IN ('landed','sent')"
                ),
                {"pipeline": pipeline},
            ).scalar()
        return float(found) if found is not None else None


def _file_row(row: RowMapping) -> FileRow:
    data = dict(row)
    data.pop("landed_seq", None)
    return FileRow(**data)
