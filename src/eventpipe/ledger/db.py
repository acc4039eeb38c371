"""The ledger's connection to its SQLite file: one connection per thread, WAL, and
``BEGIN IMMEDIATE`` transactions."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from eventpipe.ledger.schema import _SCHEMA


class Database:
    """The SQLite file of a ledger; safe to share between threads and processes."""

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

    @staticmethod
    def _queue(
        db: sqlite3.Connection, event_id: str, body: Mapping[str, Any], file_id: int | None
    ) -> None:
        """Put one event into the outbox inside the caller's transaction ``db``."""
        db.execute(
            "INSERT INTO outbox (id, body, file_id, created_at) VALUES (?,?,?,?)"
            " ON CONFLICT (id) DO UPDATE SET sent_at=NULL, body=excluded.body",
            (event_id, json.dumps(body), file_id, time.time()),
        )
