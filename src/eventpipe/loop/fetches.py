"""Scheduled fetches: each ``@pipeline.fetch`` gets a scheduled deployment, and its runs are
executed here, warm, when they are due.

Runs missed while eventpipe was stopped are cancelled but the newest, which fetches at once;
a deployment or schedule paused in the UI is left paused."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from uuid import UUID

from eventpipe.orchestration.deploy import register_fetches
from eventpipe.orchestration.here import (
    WorkerHere,
    crash_orphaned_runs,
    ensure_here_pool,
    here_pool_name,
    skip_missed_runs,
)
from eventpipe.pipeline import Pipeline

log = logging.getLogger("eventpipe")


class FetchScheduler:
    """The fetch deployments of one pipeline and the worker that executes their runs here."""

    def __init__(
        self,
        *,
        pipeline: Pipeline,
        spec: str,
        data: str,
        storage: dict[str, str] | None,
        sweep_seconds: float,
        on_fetch: Callable[[str, Any], None] | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.spec = spec
        self.data = data
        self.storage = storage
        self.sweep_seconds = sweep_seconds
        self.on_fetch = on_fetch
        self.deployment_ids: dict[str, UUID] = {}
        """Deployment ``fetch/<pipeline>-<fetch>`` of each ``@pipeline.fetch``, by fetch name."""
        self._worker: WorkerHere | None = None

    def start(self) -> FetchScheduler:
        if not self.pipeline.fetches:
            return self
        pool = here_pool_name(self.pipeline.name, "fetches")
        ensure_here_pool(pool)
        self.deployment_ids = register_fetches(
            self.pipeline, self.spec, self.data, self.storage, pool=pool
        )
        for name, deployment_id in self.deployment_ids.items():
            crash_orphaned_runs(deployment_id)
            missed = skip_missed_runs(deployment_id)
            if missed:
                log.info("fetch %s: %d run(s) missed while stopped were cancelled", name, missed)
        # a deployment paused in the UI: its runs stay Scheduled (the worker reads the pause)
        self._worker = WorkerHere(pool, on_finished=self._fetched).start()
        return self

    def stop(self) -> None:
        if self._worker is not None:
            self._worker.stop()

    def _fetched(self, run: Any, state: Any) -> None:
        if self.on_fetch is not None:
            self.on_fetch(run.name, state)
