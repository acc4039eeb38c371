"""``eventpipe up``'s hold on its pipeline (``eventpipe.ledger.holders``): taken before
anything starts, beaten while it runs, let go when it stops."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from datetime import datetime

from eventpipe.exceptions import ConfigError
from eventpipe.ledger import Ledger

log = logging.getLogger("eventpipe")

BEAT_SECONDS = 5.0
STALE_AFTER = 30.0
"""Seconds after its last beat that a holder which stopped beating is taken over."""


class Hold:
    def __init__(self, ledger: Ledger, pipeline: str, stop: threading.Event) -> None:
        self.ledger = ledger
        self.pipeline = pipeline
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self._stop = stop
        self._thread = threading.Thread(target=self._beat, name="eventpipe-hold", daemon=True)

    def take(self) -> Hold:
        """Hold the pipeline, or raise a :class:`ConfigError` naming the ``up`` that does."""
        other = self.ledger.hold(self.pipeline, self.host, self.pid, stale_after=STALE_AFTER)
        if other is not None:
            since = datetime.fromtimestamp(other.started_at).strftime("%Y-%m-%d %H:%M:%S")
            raise ConfigError(
                f"pipeline {self.pipeline!r} is already up on ledger {self.ledger.where}:"
                f" {other}, up since {since}, heard {time.time() - other.beat_at:.0f} s ago;"
                " stop that one first, or give this one a ledger of its own (--data or"
                f" --ledger). An `up` that stopped without letting go is taken over"
                f" {STALE_AFTER:.0f} s after it was last heard"
            )
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(BEAT_SECONDS):
            try:
                if not self.ledger.beat(self.pipeline, self.host, self.pid):
                    log.error(
                        "another `eventpipe up` took pipeline %r over (this one was not heard"
                        " for %.0f s): stop this one",
                        self.pipeline,
                        STALE_AFTER,
                    )
                    return
            except Exception as exc:  # the ledger is away for now: the next beat tries again
                log.debug("hold not renewed: %s", exc)

    def let_go(self) -> None:
        try:
            self.ledger.let_go(self.pipeline, self.host, self.pid)
        except Exception as exc:  # taken over later, once its beats are missed
            log.warning("could not let go of pipeline %r: %s", self.pipeline, exc)
