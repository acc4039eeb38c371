"""Dropping files the way producers do, landing them in a ledger without a watcher, and
waiting for a condition (never for a fixed time)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from eventpipe.core.atomic import file_digest
from eventpipe.core.keys import file_uri
from eventpipe.core.models import Landed
from eventpipe.intake.record import record
from eventpipe.ledger import Ledger

T = TypeVar("T")


def drop_file(inbox: Path, name: str, content: str | bytes) -> Path:
    """Write a file into ``inbox`` the way well-behaved producers do: temp name, then rename."""
    target = inbox / name
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    if isinstance(content, str):
        tmp.write_text(content, encoding="utf-8")
    else:
        tmp.write_bytes(content)
    tmp.replace(target)
    return target


def land_file(ledger: Ledger, pipeline: str, inbox: Path, name: str, content: str) -> Path:
    """Drop ``name`` into ``inbox`` and record it in ``ledger`` as the watcher would, without
    a watcher: for tests that call the materialize flow themselves."""

    path = drop_file(inbox, name, content)
    landed = Landed(
        uri=file_uri(path),
        relative=name,
        size=path.stat().st_size,
        fingerprint=file_digest(path),
        source="local",
        local_path=str(path),
    )
    record(ledger, pipeline, landed)
    return path


def wait_for(
    check: Callable[[], T], timeout: float = 60.0, interval: float = 0.05, what: str = "condition"
) -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
