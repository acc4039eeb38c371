"""Who executes the deployment's runs, as two services with one shape:

- :class:`RunsHere` (``--runs here``, the default): this process registers deployment
  ``materialize/<pipeline>`` with its trigger on a work pool of its own and executes its runs
  warm, with the ``eventpipe`` worker embedded (runs on its threads);
  on stop it pauses the deployment so triggered runs don't pile up.
- :class:`RunsOnWorkers` (``--runs worker``): Prefect workers execute the runs of the
  deployment ``prefect deploy`` registered; this process never registers, claims, executes
  or crashes a run, and leaves the deployment as it is on stop.

Each gives the loop its janitor and the deployment's id (once known).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

from eventpipe.intake.aws import store_options
from eventpipe.ledger import LEDGER_ENV, Ledger, share_ledger
from eventpipe.orchestration import deploy
from eventpipe.orchestration.here import (
    WorkerHere,
    crash_orphaned_runs,
    ensure_here_pool,
    here_pool_name,
)
from eventpipe.orchestration.janitor import FoundDeployment, HereJanitor, WorkerJanitor
from eventpipe.orchestration.worker_deployment import (
    deployment_problems,
    find_deployment,
    finished_runs,
    has_active_run,
)
from eventpipe.pipeline import Pipeline
from eventpipe.run.compute import warm_up
from eventpipe.run.dask import LocalDask
from eventpipe.run.flow import FRESHNESS_BUDGET_ENV
from eventpipe.settings import Settings

log = logging.getLogger("eventpipe")


class RunsHere:
    """The deployment, the worker executing its runs here and (with ``--task-runner dask``) a
    warm cluster."""

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
        self.runner: WorkerHere | None = None
        self._janitor: HereJanitor | None = None
        self._dask: LocalDask | None = None
        self._paused = False
        self._saved_env: dict[str, str | None] = {}

    def start(self) -> RunsHere:
        s, name = self.settings, self.pipeline.name
        # The runs execute in this process and read its environment: their disposable cache
        # is this loop's home's, and the ledger URL never travels in their parameters. Put
        # back as it was on stop, for a process that goes on without this loop.
        saved = ("EVENTPIPE_HOME", LEDGER_ENV, FRESHNESS_BUDGET_ENV)
        self._saved_env = {k: os.environ.get(k) for k in saved}
        os.environ["EVENTPIPE_HOME"] = str(s.home.resolve())
        os.environ[FRESHNESS_BUDGET_ENV] = str(s.freshness_budget)
        share_ledger(s)
        warm_up(self.spec)
        task_runner = s.task_runner
        if task_runner == "dask":  # one cluster for all runs: workers start once, stay warm
            self._dask = LocalDask(self.spec)
            task_runner = self._dask.start()
        pool = here_pool_name(name)
        ensure_here_pool(pool)
        deployment_id = deploy.register(
            self.pipeline,
            self.spec,
            s.data,
            s.publish_options(),
            task_runner,
            store_options(s),
            pool=pool,
        )
        self.deployment_id = deployment_id
        self.work_pool = pool
        runner = WorkerHere(pool, on_finished=self._finished)
        janitor = HereJanitor(
            ledger=self.ledger,
            pipeline=name,
            deployment_id=deployment_id,
            runner=runner,
            sweep_seconds=s.sweep_seconds,
            crash_runs=crash_orphaned_runs,
            start_run=deploy.request_run,
        )
        janitor.recover_on_start()
        self.runner = runner.start()
        self._janitor = janitor
        if self.ledger.counts(name).keys() & {"landed", "sent"}:
            deploy.request_run(deployment_id)
        return self

    @property
    def janitor(self) -> HereJanitor:
        if self._janitor is None:
            raise RuntimeError("the runs are not started")
        return self._janitor

    @property
    def task_runner_description(self) -> str:
        """Where the files' tasks run, for people."""
        return self._dask.description if self._dask is not None else self.settings.task_runner

    def _finished(self, run: Any, state: Any) -> None:
        if self.on_run is not None:
            self.on_run(run.name, state)

    def pause(self) -> None:
        """Pause the deployment and its trigger (a paused deployment's trigger would still
        create runs), so no run is triggered while the runners finish theirs."""
        if self.deployment_id is None or self._paused:
            return
        self._paused = True
        try:
            deploy.set_paused(self.deployment_id, paused=True)
        except Exception as exc:
            log.warning("could not pause the deployment: %s", exc)

    def stop(self) -> None:
        """Pause the deployment (if not yet), let the current run finish, close the cluster."""
        self.pause()
        if self.runner is not None:
            self.runner.paused = True
            self.runner.stop()
        if self._dask is not None:
            self._dask.close()
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_env = {}


class RunsOnWorkers:
    """The watcher's view of a deployment that Prefect workers execute."""

    def __init__(self, settings: Settings, *, pipeline: Pipeline, ledger: Ledger) -> None:
        self.settings = settings
        self.runner: WorkerHere | None = None
        name, data = pipeline.name, settings.data
        self.janitor = WorkerJanitor(
            ledger=ledger,
            pipeline=name,
            sweep_seconds=settings.sweep_seconds,
            find=lambda: _find_deployment(name, data),
            finished=finished_runs,
            active=has_active_run,
            start_run=deploy.request_run,
        )

    def start(self) -> RunsOnWorkers:
        self.janitor.look_up_deployment()
        self.janitor.tend_once(time.time(), starting=True)
        return self

    @property
    def deployment_id(self) -> UUID | None:
        return self.janitor.deployment.id if self.janitor.deployment else None

    @property
    def work_pool(self) -> str | None:
        return self.janitor.deployment.work_pool if self.janitor.deployment else None

    @property
    def task_runner_description(self) -> str:
        return self.settings.task_runner

    def pause(self) -> None:
        """Nothing to pause: the deployment is `prefect deploy`'s, shared with other watchers
        and runs by other workers; it stays as it is."""

    def stop(self) -> None:
        """Nothing to stop: no run executes here."""


def _find_deployment(pipeline: str, data: str) -> FoundDeployment | None:
    found = find_deployment(pipeline)
    if found is None:
        return None
    problems = deployment_problems(found, pipeline, data)
    return FoundDeployment(found.id, found.work_pool_name, tuple(problems))
