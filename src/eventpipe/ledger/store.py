"""The ledger: the database that records every file, every event still to send and every asset
version — a SQLite file (WAL) under the data dir by default, or PostgreSQL shared by hosts.
Exactly-once is defined here: a file is claimed by one run at a time, and events leave only
from the outbox, marked sent after the server acknowledged them.
"""

from __future__ import annotations

import os
from pathlib import Path

from eventpipe.exceptions import ConfigError
from eventpipe.ledger.catalog import Catalog
from eventpipe.ledger.db import parse_url, redacted
from eventpipe.ledger.files import Files
from eventpipe.ledger.holders import Holders
from eventpipe.ledger.outbox import Outbox
from eventpipe.ledger.retraction import Retraction
from eventpipe.settings import Settings

LEDGER_FILE = "ledger.sqlite"
LEDGER_ENV = "EVENTPIPE_LEDGER"
"""The environment variable naming the ledger's database URL (the setting ``ledger``)."""


class Ledger(Files, Outbox, Catalog, Holders, Retraction):
    """Access to a ledger; safe to share between threads and processes."""

    @classmethod
    def in_data_dir(cls, data: Path) -> Ledger:
        """The ledger of data dir ``data`` (``<data>/ledger.sqlite``), created if missing."""
        return cls(ledger_path(data))

    @classmethod
    def open(cls, data: Path | str, url: str | None = None) -> Ledger:
        """The ledger at database ``url`` if given, else the one of the local data dir
        ``data``; a bucket data dir has none (a :class:`ConfigError`)."""
        if url:
            return cls(url)
        if str(data).startswith("s3://"):
            raise ConfigError(
                f"no ledger database for the data dir {data}: a bucket cannot hold the ledger;"
                " set EVENTPIPE_LEDGER (or --ledger) to postgresql+psycopg://user@host/db, or"
                " name a Prefect Secret block holding it with --ledger-block"
            )
        return cls.in_data_dir(Path(data))

    @classmethod
    def of(cls, settings: Settings) -> Ledger:
        """The ledger ``settings`` name: setting ``ledger`` (a URL), else the data dir's."""
        return cls.open(settings.data, ledger_url(settings))


def ledger_url(settings: Settings) -> str | None:
    """The ledger URL of ``settings`` (with its password), or None for the data dir's file."""
    return settings.ledger.get_secret_value() if settings.ledger else None


def share_ledger(settings: Settings) -> None:
    """Put the ledger URL of ``settings`` into this process's environment as
    ``EVENTPIPE_LEDGER``: where the runs it executes (and the processes it starts) look for
    the ledger, since a URL with a password never travels in a run's parameters."""
    url = ledger_url(settings)
    if url:
        os.environ[LEDGER_ENV] = url


def ledger_location(settings: Settings) -> str:
    """Where the ledger of ``settings`` is, fit to show: a path, or a URL without password."""
    url = ledger_url(settings)
    return redacted(parse_url(url)) if url else str(ledger_path(settings.data_dir))


def ledger_exists(settings: Settings) -> bool:
    """Whether the ledger of ``settings`` has been created (a database URL always counts: it
    is opened, and made, by whoever names it)."""
    return ledger_url(settings) is not None or (
        not settings.data_in_bucket and ledger_path(settings.data_dir).exists()
    )


def ledger_path(data: Path) -> Path:
    """Where the ledger of data dir ``data`` lives."""
    return data / LEDGER_FILE
