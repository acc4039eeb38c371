"""Secrets for fetches: named in code, resolved at run time from a Prefect ``Secret`` block or
an environment variable, and scrubbed from every message that leaves a fetch.

A fetch never holds a secret in its source: it names one (``from_block("orders-token")``,
``from_env("ORDERS_DB_URL")``). Each value resolved during a fetch is remembered, and
:func:`redact` replaces it in any text bound for logs, events or artifacts.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from eventpipe.exceptions import ConfigError
from eventpipe.ledger import LEDGER_ENV

_REVEALED: ContextVar[set[str] | None] = ContextVar("eventpipe_revealed", default=None)
_MASK = "***"


@dataclass(frozen=True)
class SecretRef:
    """Where a secret comes from: a Prefect ``Secret`` block or an environment variable.

    ``template`` wraps the value (``"Bearer {}"`` for an Authorization header).
    """

    block: str | None = None
    env: str | None = None
    template: str = "{}"

    def __repr__(self) -> str:
        where = f"block {self.block!r}" if self.block else f"env {self.env!r}"
        return f"SecretRef({where})"

    def reveal(self) -> str:
        """The value, remembered for :func:`redact` in the current fetch."""
        if self.block:
            value = _from_block(self.block)
        elif self.env:
            value = os.environ.get(self.env, "")
            if not value:
                raise ConfigError(
                    f"environment variable {self.env} is not set; export it where "
                    "`eventpipe up` runs"
                )
        else:
            raise ConfigError("a SecretRef needs a block or an env name")
        revealed = _REVEALED.get()
        if revealed is not None:
            revealed.add(value)
        return self.template.format(value)


def from_block(name: str, template: str = "{}") -> SecretRef:
    """A secret kept in the Prefect ``Secret`` block ``name`` (created in the UI, or with
    ``Secret(value=...).save(name)``)."""
    return SecretRef(block=name, template=template)


def from_env(name: str, template: str = "{}") -> SecretRef:
    """A secret taken from the environment variable ``name``."""
    return SecretRef(env=name, template=template)


def reveal(value: str | SecretRef) -> str:
    """A plain string as it is; a :class:`SecretRef` resolved."""
    return value.reveal() if isinstance(value, SecretRef) else value


def remember(value: str) -> None:
    """Hide ``value`` too (a part of a secret that messages may quote alone, such as the
    password of a database URL)."""
    revealed = _REVEALED.get()
    if revealed is not None and value:
        revealed.add(value)


def _from_block(name: str) -> str:
    # Lazy: pipeline modules import the fetchers (and so this module) before `eventpipe up`
    # has pointed Prefect at its server; a secret is resolved only at run time.
    from prefect.blocks.system import Secret

    try:
        block: Any = Secret.load(name)
    except ValueError as exc:
        raise ConfigError(
            f"no Prefect Secret block named {name!r}; create it in the UI (Blocks) or with "
            f"Secret(value=...).save({name!r})"
        ) from exc
    value: Any = block.get()
    return value if isinstance(value, str) else json.dumps(value)


@contextmanager
def revealing() -> Iterator[set[str]]:
    """Collect the secrets revealed inside the block, so :func:`redact` can hide them."""
    found: set[str] = set()
    token = _REVEALED.set(found)
    try:
        yield found
    finally:
        _REVEALED.reset(token)


def redact(text: str, secrets: set[str] | None = None) -> str:
    """``text`` with every secret revealed in this fetch (and ``secrets``) masked."""
    found = set(secrets or ()) | (_REVEALED.get() or set())
    for value in sorted(found, key=len, reverse=True):
        if len(value) >= 4:
            text = text.replace(value, _MASK)
    return text


class RedactingFilter(logging.Filter):
    """Masks the current fetch's secrets in a logger's records (httpx logs each request's URL
    at INFO, and a URL may carry a token)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _REVEALED.get():
            message = record.getMessage()
            cleaned = redact(message)
            if cleaned != message:
                record.msg, record.args = cleaned, None
        return True


def guard_logger(name: str) -> None:
    """Add a :class:`RedactingFilter` to logger ``name`` (once)."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, RedactingFilter) for f in logger.filters):
        logger.addFilter(RedactingFilter())


def run_ledger_url(ledger_block: str | None) -> str | None:
    """The ledger URL a flow run uses: ``EVENTPIPE_LEDGER`` from its environment, else the
    Prefect ``Secret`` block ``ledger_block``, else None (the data dir's SQLite file). The URL
    holds a password, so it is never a deployment parameter."""
    url = os.environ.get(LEDGER_ENV)
    if url:
        return url
    return SecretRef(block=ledger_block).reveal() if ledger_block else None
