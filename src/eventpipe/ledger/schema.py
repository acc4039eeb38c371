"""The ledger's tables, as SQLite DDL (created if missing)."""

from __future__ import annotations

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
