"""The ledger: one SQLite file (WAL) that records every file, every event still to send and
every asset version. Exactly-once is defined here: a file is claimed by one run at a time, and
events leave only from the outbox, marked sent after the server acknowledged them.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from eventpipe.models import Landed

FileState = Literal["landed", "sent", "processing", "done", "failed", "rejected", "skipped"]
Outcome = Literal["new", "changed", "unchanged", "duplicate", "retry"]
PENDING_STATES = ("landed", "sent")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY,
    pipeline TEXT NOT NULL,
    uri TEXT NOT NULL,
    relative TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    source TEXT NOT NULL,
    local_path TEXT,
    state TEXT NOT NULL,
    generation INTEGER NOT NULL DEFAULT 0,
    landed_seq INTEGER NOT NULL,
    seen_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    run_id TEXT,
    reason TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    UNIQUE (pipeline, uri, sha256)
);
CREATE INDEX IF NOT EXISTS files_state ON files (pipeline, state);
CREATE INDEX IF NOT EXISTS files_sha ON files (pipeline, sha256);
CREATE INDEX IF NOT EXISTS files_uri ON files (pipeline, uri, landed_seq);
CREATE INDEX IF NOT EXISTS files_seq ON files (landed_seq);
CREATE TABLE IF NOT EXISTS objects (
    pipeline TEXT NOT NULL,
    uri TEXT NOT NULL,
    tag TEXT NOT NULL,
    stamp TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    file_id INTEGER NOT NULL,
    PRIMARY KEY (pipeline, uri, tag)
);
CREATE TABLE IF NOT EXISTS fetch_state (
    pipeline TEXT NOT NULL,
    fetch TEXT NOT NULL,
    state TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (pipeline, fetch)
);
CREATE TABLE IF NOT EXISTS outbox (
    id TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    file_id INTEGER,
    created_at REAL NOT NULL,
    sent_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox (sent_at) WHERE sent_at IS NULL;
CREATE TABLE IF NOT EXISTS assets (
    pipeline TEXT NOT NULL,
    name TEXT NOT NULL,
    partition TEXT NOT NULL,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    version TEXT NOT NULL,
    path TEXT NOT NULL,
    rows INTEGER NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    code_version TEXT NOT NULL,
    input_fingerprint TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (pipeline, name, partition)
);
CREATE TABLE IF NOT EXISTS versions (
    key TEXT NOT NULL,
    version TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    name TEXT NOT NULL,
    partition TEXT NOT NULL,
    path TEXT NOT NULL,
    rows INTEGER NOT NULL,
    sources TEXT NOT NULL,
    run_id TEXT,
    created_at REAL NOT NULL,
    current_at REAL NOT NULL,
    PRIMARY KEY (key, version)
);
"""


@dataclass(frozen=True)
class FileRow:
    """One (uri, sha256) the ledger has seen, and where it is in its life."""

    id: int
    pipeline: str
    uri: str
    relative: str
    sha256: str
    size: int
    source: str
    local_path: str | None
    state: FileState
    generation: int
    seen_at: float
    updated_at: float
    run_id: str | None
    reason: str | None
    attempts: int


@dataclass(frozen=True)
class AssetRow:
    """The current version of one asset (a partition of a process step, or an analytics asset)."""

    pipeline: str
    name: str
    partition: str
    kind: str
    key: str
    version: str
    path: str
    rows: int
    size: int
    mtime_ns: int
    code_version: str
    input_fingerprint: str
    updated_at: float


@dataclass(frozen=True)
class VersionRow:
    key: str
    version: str
    name: str
    partition: str
    path: str
    rows: int
    sources: list[str]
    run_id: str | None
    created_at: float
    current_at: float


_ASSET_COLUMNS = ", ".join(f.name for f in fields(AssetRow))


class Ledger:
    """Access to ``ledger.sqlite``; safe to share between threads and processes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._conn().executescript(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

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
        Ledger._remember_object(db, pipeline, landed, row["id"])
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
        event: tuple[str, dict[str, Any]] | None = None,
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

    # -- fetch state ---------------------------------------------------------------------------

    def fetch_state(self, pipeline: str, fetch: str) -> dict[str, Any]:
        """What a scheduled fetch kept from its last success (ETags, cursors), by helper key."""
        found = (
            self._conn()
            .execute(
                "SELECT state FROM fetch_state WHERE pipeline=? AND fetch=?", (pipeline, fetch)
            )
            .fetchone()
        )
        return dict(json.loads(found[0])) if found else {}

    def save_fetch_state(self, pipeline: str, fetch: str, state: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO fetch_state (pipeline, fetch, state, updated_at) VALUES (?,?,?,?)"
                " ON CONFLICT (pipeline, fetch) DO UPDATE SET state=excluded.state,"
                " updated_at=excluded.updated_at",
                (pipeline, fetch, json.dumps(state, sort_keys=True), time.time()),
            )

    # -- outbox --------------------------------------------------------------------------------

    def queue_event(self, event_id: str, body: dict[str, Any], file_id: int | None = None) -> None:
        with self._tx() as db:
            self._queue(db, event_id, body, file_id)

    def queue_events(self, events: list[tuple[str, dict[str, Any]]]) -> None:
        """Queue many events in one transaction."""
        with self._tx() as db:
            for event_id, body in events:
                self._queue(db, event_id, body, None)

    @staticmethod
    def _queue(
        db: sqlite3.Connection, event_id: str, body: dict[str, Any], file_id: int | None
    ) -> None:
        db.execute(
            "INSERT INTO outbox (id, body, file_id, created_at) VALUES (?,?,?,?)"
            " ON CONFLICT (id) DO UPDATE SET sent_at=NULL, body=excluded.body",
            (event_id, json.dumps(body), file_id, time.time()),
        )

    def unsent(self, limit: int = 200) -> list[tuple[str, dict[str, Any], int | None]]:
        rows = (
            self._conn()
            .execute(
                "SELECT id, body, file_id FROM outbox WHERE sent_at IS NULL"
                " ORDER BY created_at LIMIT ?",
                (limit,),
            )
            .fetchall()
        )
        return [(r["id"], json.loads(r["body"]), r["file_id"]) for r in rows]

    def mark_sent(self, event_ids: list[str]) -> None:
        """Called only after the server acknowledged ``event_ids``; landed files become ``sent``."""
        now = time.time()
        with self._tx() as db:
            for event_id in event_ids:
                row = db.execute(
                    "UPDATE outbox SET sent_at=?, attempts=attempts+1 WHERE id=? RETURNING file_id,"
                    " json_extract(body, '$.event')",
                    (now, event_id),
                ).fetchone()
                if row is not None and row[0] is not None and row[1] == "eventpipe.file.landed":
                    db.execute(
                        "UPDATE files SET state='sent', updated_at=? WHERE id=? AND state='landed'",
                        (now, row[0]),
                    )

    def mark_attempt(self, event_ids: list[str]) -> None:
        with self._tx() as db:
            db.executemany(
                "UPDATE outbox SET attempts=attempts+1 WHERE id=?", [(i,) for i in event_ids]
            )

    def events_for(self, file_id: int) -> list[dict[str, Any]]:
        rows = self._conn().execute(
            "SELECT body, sent_at FROM outbox WHERE file_id=? ORDER BY created_at", (file_id,)
        )
        return [{**json.loads(r["body"]), "sent_at": r["sent_at"]} for r in rows]

    # -- asset catalog -------------------------------------------------------------------------

    def asset(self, pipeline: str, name: str, partition: str = "") -> AssetRow | None:
        return next(iter(self.assets(pipeline, name, partition)), None)

    def assets(
        self, pipeline: str, name: str | None = None, partition: str | None = None
    ) -> list[AssetRow]:
        sql, args = f"SELECT {_ASSET_COLUMNS} FROM assets WHERE pipeline=?", [pipeline]
        if name is not None:
            sql, args = sql + " AND name=?", [*args, name]
        if partition is not None:
            sql, args = sql + " AND partition=?", [*args, partition]
        # Plain tuples in field order: a run reads every partition's row several times, and
        # sqlite3.Row + dict + keywords cost twice the query itself at 1000 partitions.
        cursor = self._conn().cursor()
        cursor.row_factory = None
        return [AssetRow(*r) for r in cursor.execute(sql + " ORDER BY name, partition", args)]

    def publish(
        self, row: AssetRow, version_path: str, sources: list[str], run_id: str | None
    ) -> None:
        """Make ``row`` the current version of its asset and remember the version."""
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO assets VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    row.pipeline,
                    row.name,
                    row.partition,
                    row.kind,
                    row.key,
                    row.version,
                    row.path,
                    row.rows,
                    row.size,
                    row.mtime_ns,
                    row.code_version,
                    row.input_fingerprint,
                    row.updated_at,
                ),
            )
            db.execute(
                "INSERT INTO versions VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (key, version)"
                " DO UPDATE SET current_at=excluded.current_at, run_id=excluded.run_id",
                (
                    row.key,
                    row.version,
                    row.pipeline,
                    row.name,
                    row.partition,
                    version_path,
                    row.rows,
                    json.dumps(sources),
                    run_id,
                    row.updated_at,
                    row.updated_at,
                ),
            )

    def touch_asset(self, row: AssetRow) -> None:
        """Record the size/mtime of a current output after it was restored."""
        with self._tx() as db:
            db.execute(
                "UPDATE assets SET size=?, mtime_ns=? WHERE pipeline=? AND name=? AND partition=?",
                (row.size, row.mtime_ns, row.pipeline, row.name, row.partition),
            )

    def versions(self, pipeline: str, name: str, partition: str | None = None) -> list[VersionRow]:
        sql, args = "SELECT * FROM versions WHERE pipeline=? AND name=?", [pipeline, name]
        if partition is not None:
            sql, args = sql + " AND partition=?", [*args, partition]
        rows = self._conn().execute(sql + " ORDER BY created_at, partition", args)
        return [
            VersionRow(
                key=r["key"],
                version=r["version"],
                name=r["name"],
                partition=r["partition"],
                path=r["path"],
                rows=r["rows"],
                sources=json.loads(r["sources"]),
                run_id=r["run_id"],
                created_at=r["created_at"],
                current_at=r["current_at"],
            )
            for r in rows
        ]

    def pipelines(self) -> list[str]:
        rows = self._conn().execute(
            "SELECT pipeline FROM files UNION SELECT pipeline FROM assets ORDER BY 1"
        )
        return [r[0] for r in rows]


def _file_row(row: sqlite3.Row) -> FileRow:
    data = dict(row)
    data.pop("landed_seq", None)
    return FileRow(**data)
