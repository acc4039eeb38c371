"""The tending thread: every sweep, the stale check and one janitor sweep. The decisions are
the janitor's and the reporter's (``tend_once``, ``report_once``); this only keeps time and
keeps going when the server is away."""

from __future__ import annotations

import logging
import threading
import time

from eventpipe.loop.stale import StaleReporter
from eventpipe.orchestration.janitor import Janitor

log = logging.getLogger("eventpipe")


class Tending:
    """Calls ``stale.report_once`` and ``janitor.tend_once`` every ``every`` seconds."""

    def __init__(
        self, *, janitor: Janitor, stale: StaleReporter, every: float, stop: threading.Event
    ) -> None:
        self.janitor = janitor
        self.stale = stale
        self.every = every
        self._stop = stop
        self._thread = threading.Thread(target=self._run, name="eventpipe-tend", daemon=True)

    def start(self) -> Tending:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            if self.janitor.resting:  # the deployment is paused: nothing is due
                continue
            self.sweep(time.time())

    def sweep(self, now: float) -> None:
        try:
            self.stale.report_once(now)
        except Exception as exc:  # the ledger is busy: the next sweep tries again
            log.debug("stale check skipped: %s", exc)
        try:
            self.janitor.tend_once(now)
        except Exception as exc:  # the server is away: the next sweep tries again
            log.debug("tending skipped: %s", exc)
