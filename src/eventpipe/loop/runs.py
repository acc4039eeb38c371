"""Who executes the deployment's runs, as two services with one shape:

- :class:`RunsHere` (``--runs here``, the default): this process registers deployment
  ``materialize/<pipeline>`` with its trigger and executes its runs warm in a push runner;
  on stop it pauses the deployment so triggered runs don't pile up.
- :class:`RunsOnWorkers` (``--runs worker``): Prefect workers execute the runs of the
  deployment ``prefect deploy`` registered; this process never registers, claims, executes
  or crashes a run, and leaves the deployment as it is on stop.

Each gives the loop its janitor and the deployment's id (once known).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

from eventpipe.ledger import Ledger
from eventpipe.orchestration import deploy
from eventpipe.orchestration.janitor import HereJanitor, Janitor, WorkerJanitor
from eventpipe.orchestration.runner import PushRunner, crash_orphaned_runs
from eventpipe.pipeline import Pipeline
from eventpipe.run.compute import warm_up
from eventpipe.run.dask import LocalDask
from eventpipe.run.flow import materialize_pipeline
from eventpipe.settings import Settings

log = logging.getLogger("eventpipe")


class RunsHere:
    """The deployment, its push runner and (with ``--task-runner dask``) a warm cluster."""

    def __init__(
        self,
        settings: Settings,
        *,
        pipeline: Pipeline,
        spec: str,
        ledger: Ledger,
        on_run: Callable[[str, Any], None] | None = None,
    ) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.spec = spec
        self.ledger = ledger
        self.on_run = on_run
        self.deployment_id: UUID | None = None
        self.work_pool: str | None = None
        self.runner: PushRunner | None = None
        self.janitor: Janitor | None = None
        self._dask: LocalDask | None = None

    def start(self) -> RunsHere:
        s, name = self.settings, self.pipeline.name
        warm_up(self.spec)
        task_runner = s.task_runner
        if task_runner == "dask":  # one cluster for all runs: workers start once, stay warm
            self._dask = LocalDask(self.spec)
            task_runner = self._dask.start()
        deployment_id = deploy.register(
            self.pipeline, self.spec, s.data, s.publish_options(), task_runner
        )
        self.deployment_id = deployment_id
        crashed = crash_orphaned_runs(deployment_id)
        if crashed:
            log.warning("marked run(s) left by a stopped eventpipe as Crashed: %s", crashed)
        recovered = self.ledger.reclaim_stale(name)
        if recovered:
            log.warning(
                "%d file(s) were being processed when eventpipe stopped; retrying", recovered
            )
        self.runner = PushRunner(
            materialize_pipeline,
            deployment_id,
            sweep_seconds=s.sweep_seconds,
            on_finished=self._finished,
        ).start()
        self.janitor = HereJanitor(
            ledger=self.ledger,
            pipeline=name,
            deployment_id=deployment_id,
            runner=self.runner,
            sweep_seconds=s.sweep_seconds,
        )
        if self.ledger.counts(name).keys() & {"landed", "sent"}:
            deploy.request_run(deployment_id)
        return self

    @property
    def task_runner_description(self) -> str:
        """Where the files' tasks run, for people."""
        return self._dask.description if self._dask is not None else self.settings.task_runner

    def _finished(self, run: Any, state: Any) -> None:
        if self.on_run is not None:
            self.on_run(run.name, state)

    def stop(self) -> None:
        """Pause the deployment and its trigger, let the current run finish."""
        if self.deployment_id is not None:
            try:
                deploy.set_paused(self.deployment_id, paused=True)
            except Exception as exc:
                log.warning("could not pause the deployment: %s", exc)
        if self.runner is not None:
            self.runner.paused = True
            self.runner.stop()
        if self._dask is not None:
            self._dask.close()


class RunsOnWorkers:
    """The watcher's view of a deployment that Prefect workers execute."""

    def __init__(self, settings: Settings, *, pipeline: Pipeline, ledger: Ledger) -> None:
        self.settings = settings
        self.runner: PushRunner | None = None
        self.worker_janitor = WorkerJanitor(
            ledger=ledger,
            pipeline=pipeline.name,
            data=settings.data,
            sweep_seconds=settings.sweep_seconds,
        )
        self.janitor: Janitor | None = self.worker_janitor

    def start(self) -> RunsOnWorkers:
        self.worker_janitor.look_up_deployment()
        self.worker_janitor.tend_once(time.time(), starting=True)
        return self

    @property
    def deployment_id(self) -> UUID | None:
        return self.worker_janitor.deployment.id

    @property
    def work_pool(self) -> str | None:
        return self.worker_janitor.deployment.work_pool

    @property
    def task_runner_description(self) -> str:
        return self.settings.task_runner

    def stop(self) -> None:
        """Nothing to stop: the deployment is `prefect deploy`'s, shared with other watchers
        and runs by other workers; it stays as it is."""
