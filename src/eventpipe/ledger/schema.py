"""The ledger's tables, one definition for SQLite and PostgreSQL, and the ordered migrations that
bring any earlier ledger up to date.

``schema_version`` records each migration applied. A ledger written before that table existed
(release 8eb1e99 and earlier) holds the version-1 tables and no record: it counts as version 1.
Migrations run in one transaction each, under the backend's writer lock (``BEGIN IMMEDIATE`` on
SQLite, an advisory lock on PostgreSQL), so processes opening a ledger at the same time apply
each step once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Float,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    inspect,
    text,
)

from eventpipe.exceptions import ConfigError

# -- version 1: the tables as release 8eb1e99 wrote them -----------------------------------------

_v1 = MetaData()

Table(
    "files",
    _v1,
    # Integer, not BigInteger: on SQLite only an INTEGER primary key is the rowid.
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("pipeline", Text, nullable=False),
    Column("uri", Text, nullable=False),
    Column("relative", Text, nullable=False),
    Column("sha256", Text, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("source", Text, nullable=False),
    Column("local_path", Text),
    Column("state", Text, nullable=False),
    Column("generation", Integer, nullable=False, server_default=text("0")),
    Column("landed_seq", BigInteger, nullable=False),
    Column("seen_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("run_id", Text),
    Column("reason", Text),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    UniqueConstraint("pipeline", "uri", "sha256"),
    Index("files_state", "pipeline", "state"),
    Index("files_sha", "pipeline", "sha256"),
    Index("files_uri", "pipeline", "uri", "landed_seq"),
    Index("files_seq", "landed_seq"),
)
Table(
    "objects",
    _v1,
    Column("pipeline", Text, nullable=False),
    Column("uri", Text, nullable=False),
    Column("tag", Text, nullable=False),
    Column("stamp", Text, nullable=False),
    Column("sha256", Text, nullable=False),
    Column("file_id", Integer, nullable=False),
    PrimaryKeyConstraint("pipeline", "uri", "tag"),
)
Table(
    "fetch_state",
    _v1,
    Column("pipeline", Text, nullable=False),
    Column("fetch", Text, nullable=False),
    Column("state", Text, nullable=False),
    Column("updated_at", Float, nullable=False),
    PrimaryKeyConstraint("pipeline", "fetch"),
)
_outbox = Table(
    "outbox",
    _v1,
    Column("id", Text, primary_key=True),
    Column("body", Text, nullable=False),
    Column("file_id", Integer),
    Column("created_at", Float, nullable=False),
    Column("sent_at", Float),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
)
Index(
    "outbox_unsent",
    _outbox.c.sent_at,
    sqlite_where=_outbox.c.sent_at.is_(None),
    postgresql_where=_outbox.c.sent_at.is_(None),
)
Table(
    "assets",
    _v1,
    Column("pipeline", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("partition", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("key", Text, nullable=False),
    Column("version", Text, nullable=False),
    Column("path", Text, nullable=False),
    Column("rows", BigInteger, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("mtime_ns", BigInteger, nullable=False),
    Column("code_version", Text, nullable=False),
    Column("input_fingerprint", Text, nullable=False),
    Column("updated_at", Float, nullable=False),
    PrimaryKeyConstraint("pipeline", "name", "partition"),
)
Table(
    "versions",
    _v1,
    Column("key", Text, nullable=False),
    Column("version", Text, nullable=False),
    Column("pipeline", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("partition", Text, nullable=False),
    Column("path", Text, nullable=False),
    Column("rows", BigInteger, nullable=False),
    Column("sources", Text, nullable=False),
    Column("run_id", Text),
    Column("created_at", Float, nullable=False),
    Column("current_at", Float, nullable=False),
    PrimaryKeyConstraint("key", "version"),
)

_versions = MetaData()
_schema_version = Table(
    "schema_version",
    _versions,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("applied_at", Float, nullable=False),
)


def _create_v1(db: Connection) -> None:
    _v1.create_all(db, checkfirst=True)


def _outbox_event_names(db: Connection) -> None:
    """Version 2: the outbox keeps each event's name in a column of its own, so both backends
    find events by name without a JSON function of their own dialect."""
    db.execute(text("ALTER TABLE outbox ADD COLUMN event TEXT"))
    rows = db.execute(text("SELECT id, body FROM outbox")).all()
    if rows:
        db.execute(
            text("UPDATE outbox SET event=:event WHERE id=:id"),
            [{"id": r[0], "event": json.loads(r[1]).get("event")} for r in rows],
        )
    db.execute(text("CREATE INDEX outbox_event ON outbox (event, created_at)"))


def _holders(db: Connection) -> None:
    """Version 3: which ``eventpipe up`` holds each pipeline (``eventpipe.ledger.holders``)."""
    db.execute(
        text(
            "CREATE TABLE holders (pipeline TEXT PRIMARY KEY, host TEXT NOT NULL,"
            " pid INTEGER NOT NULL, started_at FLOAT NOT NULL, beat_at FLOAT NOT NULL)"
        )
    )


def _asset_failures(db: Connection) -> None:
    """Version 4: the analytics assets whose step raised, until a version of them publishes."""
    db.execute(
        text(
            "CREATE TABLE asset_failures (pipeline TEXT NOT NULL, name TEXT NOT NULL,"
            " reason TEXT NOT NULL, run_id TEXT, failed_at FLOAT NOT NULL,"
            " input_fingerprint TEXT NOT NULL, code_version TEXT NOT NULL,"
            " PRIMARY KEY (pipeline, name))"
        )
    )


MIGRATIONS: list[Callable[[Connection], None]] = [
    _create_v1,
    _outbox_event_names,
    _holders,
    _asset_failures,
]
"""Migration ``i`` brings a ledger from version ``i`` to ``i + 1``; append only."""

SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(db: Connection) -> int:
    """The version of the ledger behind ``db``: what ``schema_version`` records, else 1 for a
    ledger of the tables of version 1, else 0 (an empty database)."""
    tables = set(inspect(db).get_table_names())
    if "schema_version" in tables:
        found = db.execute(text("SELECT MAX(version) FROM schema_version")).scalar()
        return int(found or 0)
    return 1 if "files" in tables else 0


def migrate(db: Connection) -> list[int]:
    """Apply the migrations the ledger behind ``db`` lacks, inside the caller's (locked)
    transaction; the versions applied, in order."""
    current = schema_version(db)
    if current > SCHEMA_VERSION:
        raise ConfigError(
            f"the ledger is at schema version {current}, newer than this eventpipe knows"
            f" ({SCHEMA_VERSION}): upgrade eventpipe"
        )
    _versions.create_all(db, checkfirst=True)
    if current == 1 and not db.execute(text("SELECT 1 FROM schema_version")).first():
        db.execute(_schema_version.insert().values(version=1, applied_at=time.time()))
    applied = []
    for version in range(current + 1, SCHEMA_VERSION + 1):
        MIGRATIONS[version - 1](db)
        db.execute(_schema_version.insert().values(version=version, applied_at=time.time()))
        applied.append(version)
    return applied
