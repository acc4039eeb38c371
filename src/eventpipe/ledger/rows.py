"""The rows the ledger hands out: frozen values, no database types."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

FileState = Literal["landed", "sent", "processing", "done", "failed", "rejected", "skipped"]
Outcome = Literal["new", "changed", "unchanged", "duplicate", "retry"]
PENDING_STATES = ("landed", "sent")


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
