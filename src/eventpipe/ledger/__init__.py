"""The ledger: what eventpipe knows for sure. Files seen and claimed, events waiting in the
outbox, the asset catalog. One SQLite file (WAL) under the data dir."""

from eventpipe.ledger.rows import (
    PENDING_STATES,
    AssetRow,
    FileRow,
    FileState,
    Outcome,
    VersionRow,
)
from eventpipe.ledger.store import LEDGER_FILE, Ledger, ledger_path

__all__ = [
    "LEDGER_FILE",
    "PENDING_STATES",
    "AssetRow",
    "FileRow",
    "FileState",
    "Ledger",
    "Outcome",
    "VersionRow",
    "ledger_path",
]
