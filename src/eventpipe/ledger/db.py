"""The ledger's database through SQLAlchemy Core: a SQLite file (WAL, ``BEGIN IMMEDIATE``
writers) by default, or PostgreSQL (psycopg 3) shared by processes on many hosts.

Writers that must see one another's rows (recording a sighting, requeueing) run one at a time:
SQLite's ``BEGIN IMMEDIATE`` takes the database's write lock; on PostgreSQL a transaction-level
advisory lock per pipeline does the same, and claims skip rows another claim holds
(``FOR UPDATE SKIP LOCKED``), so two runs never claim one file.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from eventpipe.exceptions import ConfigError
from eventpipe.ledger.schema import SCHEMA_VERSION, migrate, schema_version

BACKENDS = ("sqlite", "postgresql")


def parse_url(where: Path | str) -> URL:
    """The SQLAlchemy URL of a ledger given as a SQLite file path or a URL; a plain
    ``postgresql://`` URL gets the psycopg 3 driver."""
    if isinstance(where, Path) or "://" not in where:
        return URL.create("sqlite", database=str(Path(where).absolute()))
    try:
        url = make_url(where)
    except (ArgumentError, ValueError):
        raise ConfigError(
            "ledger: not a database URL (expected postgresql+psycopg://user:password@host/db"
            " or sqlite:///path)"
        ) from None
    if url.get_backend_name() not in BACKENDS:
        raise ConfigError(
            f"ledger: backend {url.get_backend_name()!r} is not supported; use PostgreSQL"
            " (postgresql+psycopg://...) or SQLite (sqlite:///path)"
        )
    if url.drivername == "postgresql":  # no driver named: psycopg 3, not psycopg2
        url = url.set(drivername="postgresql+psycopg")
    return url


def redacted(url: URL | str) -> str:
    """``url`` with its password masked: the only form of a ledger URL that may be shown."""
    parsed = make_url(url) if isinstance(url, str) else url
    return parsed.render_as_string(hide_password=True)


def _pipeline_lock_key(pipeline: str) -> int:
    """A stable signed 64-bit advisory-lock key for ``pipeline``'s writers."""
    digest = hashlib.sha256(f"eventpipe.ledger:{pipeline}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


_MIGRATION_LOCK = _pipeline_lock_key("\0schema")


def _sqlite_connection(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # transactions are ours: BEGIN IMMEDIATE
    dbapi_connection.execute("PRAGMA journal_mode=WAL")
    dbapi_connection.execute("PRAGMA synchronous=NORMAL")


class Database:
    """A ledger's database; safe to share between threads and processes."""

    def __init__(self, where: Path | str) -> None:
        self.url = parse_url(where)
        self.backend = self.url.get_backend_name()
        self.path: Path | None = None
        self.engine: Engine
        if self.backend == "sqlite":
            self.path = Path(self.url.database or "")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # AUTOCOMMIT: SQLAlchemy opens no transaction of its own; reads take no lock and
            # writers say BEGIN IMMEDIATE themselves.
            self.engine = create_engine(
                self.url,
                connect_args={"timeout": 30, "check_same_thread": False},
                isolation_level="AUTOCOMMIT",
                pool_size=8,
                max_overflow=32,
            )
            event.listen(self.engine, "connect", _sqlite_connection)
        else:
            try:
                self.engine = create_engine(
                    self.url, pool_pre_ping=True, pool_size=4, max_overflow=16
                )
            except NoSuchModuleError:
                raise ConfigError(
                    "ledger: PostgreSQL needs psycopg 3: pip install 'eventpipe[sql]'"
                ) from None
        with self._read() as db:
            current = schema_version(db) == SCHEMA_VERSION
        if not current:
            with self._tx(lock=_MIGRATION_LOCK) as db:
                migrate(db)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({redacted(self.url)!r})"

    @property
    def where(self) -> str:
        """The ledger's URL with its password masked, for messages."""
        return redacted(self.url)

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect() as db:
            yield db

    @contextmanager
    def _tx(self, lock: int | str | None = None) -> Iterator[Connection]:
        """One write transaction. ``lock`` (a pipeline name or a key) makes it exclusive
        among writers holding the same lock; on SQLite every writer is exclusive anyway."""
        with self.engine.connect() as db:
            if self.backend == "sqlite":
                db.exec_driver_sql("BEGIN IMMEDIATE")
                try:
                    yield db
                except BaseException:
                    db.exec_driver_sql("ROLLBACK")
                    raise
                db.exec_driver_sql("COMMIT")
                return
            with db.begin():
                if lock is not None:
                    key = lock if isinstance(lock, int) else _pipeline_lock_key(lock)
                    db.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
                yield db

    @property
    def skip_locked(self) -> str:
        """The clause that makes a claim's row selection skip rows other claims hold."""
        return " FOR UPDATE SKIP LOCKED" if self.backend == "postgresql" else ""

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _queue(db: Connection, event_id: str, body: Mapping[str, Any], file_id: int | None) -> None:
        """Put one event into the outbox inside the caller's transaction ``db``."""
        db.execute(
            text(
                "INSERT INTO outbox (id, body, event, file_id, created_at)"
                " VALUES (:id, :body, :event, :file_id, :created_at)"
                " ON CONFLICT (id) DO UPDATE SET sent_at=NULL, body=excluded.body,"
                " event=excluded.event"
            ),
            {
                "id": event_id,
                "body": json.dumps(body),
                "event": body.get("event"),
                "file_id": file_id,
                "created_at": time.time(),
            },
        )
