"""Stale analytics, said once: an analytics asset is stale while files that landed over
``stale_minutes`` ago are still not in it (waiting, or failed)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from eventpipe.events.build import stale_event
from eventpipe.ledger import Ledger

log = logging.getLogger("eventpipe")


class StaleReporter:
    """Queues one ``eventpipe.asset.stale`` per analytics asset version that is stale."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        pipeline: str,
        stale_minutes: float,
        poke: Callable[[], None],
    ) -> None:
        self.ledger = ledger
        self.pipeline = pipeline
        self.stale_minutes = stale_minutes
        self.poke = poke
        """Wakes the outbox pump, so the events go out now."""
        self._reported: set[tuple[str, str]] = set()

    def report_once(self, now: float) -> list[str]:
        """Queue the events for assets newly found stale; returns their names."""
        count, oldest = self.ledger.behind(self.pipeline, now - self.stale_minutes * 60)
        if not count or oldest is None:
            return []
        stale: list[str] = []
        for row in self.ledger.assets(self.pipeline):
            if row.kind != "analytics" or (row.name, row.version) in self._reported:
                continue
            event_id, body = stale_event(
                self.pipeline, row.name, row.key, row.version, now - oldest, count
            )
            self.ledger.queue_event(event_id, body)
            self._reported.add((row.name, row.version))
            stale.append(row.name)
            log.warning(
                "%s is stale: %d file(s) not in it yet, the oldest landed %.0f min ago",
                row.name,
                count,
                (now - oldest) / 60,
            )
        if stale:
            self.poke()
        return stale
