"""The ledger: what eventpipe knows for sure. Files seen and claimed, events waiting in the
outbox, the asset catalog. A SQLite file under the data dir, or PostgreSQL."""

from eventpipe.ledger.db import parse_url, redacted
from eventpipe.ledger.rows import (
    BY_COMMAND,
    DELETED,
    PENDING_STATES,
    AssetFailure,
    AssetRow,
    FileRow,
    FileState,
    Outcome,
    VersionRow,
)
from eventpipe.ledger.schema import SCHEMA_VERSION
from eventpipe.ledger.store import (
    LEDGER_ENV,
    LEDGER_FILE,
    Ledger,
    ledger_exists,
    ledger_location,
    ledger_path,
    ledger_url,
    share_ledger,
)

__all__ = [
    "BY_COMMAND",
    "DELETED",
    "LEDGER_ENV",
    "LEDGER_FILE",
    "PENDING_STATES",
    "SCHEMA_VERSION",
    "AssetFailure",
    "AssetRow",
    "FileRow",
    "FileState",
    "Ledger",
    "Outcome",
    "VersionRow",
    "ledger_exists",
    "ledger_location",
    "ledger_path",
    "ledger_url",
    "parse_url",
    "redacted",
    "share_ledger",
]
