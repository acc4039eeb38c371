"""Edited step code changes code versions: when the pipeline's file changes, a run is started
so what depends on the edited steps is recomputed."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("eventpipe")


class CodeWatcher:
    """Polls the modification time of ``source`` once a second; calls ``on_change``."""

    def __init__(
        self, source: Path | None, *, on_change: Callable[[], None], stop: threading.Event
    ) -> None:
        self.source = source
        self.on_change = on_change
        self._stop = stop

    def start(self) -> CodeWatcher:
        if self.source is not None:  # no file defines the pipeline: nothing to watch
            threading.Thread(
                target=self._run, args=(self.source,), name="eventpipe-code", daemon=True
            ).start()
        return self

    def _run(self, source: Path) -> None:
        last = _mtime(source)
        while not self._stop.wait(1.0):
            now = _mtime(source)
            if now == last:
                continue
            last = now
            log.info("pipeline code changed (%s); recomputing what depends on it", source)
            try:
                self.on_change()
            except Exception as exc:
                log.warning("could not start a run: %s", exc)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0
