"""The ledger: one SQLite file (WAL) that records every file, every event still to send and
every asset version. Exactly-once is defined here: a file is claimed by one run at a time, and
events leave only from the outbox, marked sent after the server acknowledged them.
"""

from __future__ import annotations

from pathlib import Path

from eventpipe.ledger.catalog import Catalog
from eventpipe.ledger.files import Files
from eventpipe.ledger.outbox import Outbox

LEDGER_FILE = "ledger.sqlite"


class Ledger(Files, Outbox, Catalog):
    """Access to a ledger; safe to share between threads and processes."""

    @classmethod
    def in_data_dir(cls, data: Path) -> Ledger:
        """The ledger of data dir ``data`` (``<data>/ledger.sqlite``), created if missing."""
        return cls(ledger_path(data))


def ledger_path(data: Path) -> Path:
    """Where the ledger of data dir ``data`` lives."""
    return data / LEDGER_FILE
