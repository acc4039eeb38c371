"""The ``eventpipe`` Prefect worker type: ``prefect work-pool create P --type eventpipe``, then
``prefect worker start --pool P``, as for any worker type (the class is found through the
``prefect.collections`` entry point).

It is Prefect's worker with two changes where the seconds go:

- **Warm processes.** Each flow run executes in an interpreter started ahead of time with
  Prefect, eventpipe's flows and pandas imported and the pool's pipelines loaded
  (``eventpipe.orchestration.warm``), which then keeps executing runs one after the other,
  warm, up to ``runs_per_process``. The pool keeps ``warm_processes`` of them waiting
  (variables of the pool's base job template).
- **Runs heard at once.** Besides Prefect's poll (``PREFECT_WORKER_QUERY_SECONDS``, kept as
  the fallback), the worker listens on the events websocket for ``prefect.flow-run.Scheduled``
  of its pool's runs and polls the moment one is announced.

Everything else is the base worker's: the claim (propose Pending; ``Abort`` means another
worker won), job variables, labels, the infrastructure pid, "Crashed" when the process
exits without a final state, cancelling runs that have not started. A running run cancelled
from the UI or the API is stopped here (its process session is killed) and marked Cancelled;
``timeout_seconds`` stops a run that runs too long; a worker asked to stop lets its runs
finish.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any
from uuid import UUID

import anyio
import anyio.abc
from prefect.client.schemas.filters import WorkPoolFilter, WorkPoolFilterName
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.responses import WorkerFlowRunResponse
from prefect.events.clients import get_events_subscriber
from prefect.events.filters import EventAnyResourceFilter, EventFilter, EventNameFilter
from prefect.exceptions import InfrastructureNotFound, ObjectNotFound
from prefect.workers.base import (
    BaseJobConfiguration,
    BaseVariables,
    BaseWorker,
    BaseWorkerResult,
)
from pydantic import Field

from eventpipe.orchestration.warm import Job, WarmPool, WarmProcess

log = logging.getLogger("eventpipe.worker")

WORKER_TYPE = "eventpipe"
DEFAULT_WARM = 2
DEFAULT_RUNS = 20
CANCELLING = "prefect.flow-run.Cancelling"
LISTEN_ENV = "EVENTPIPE_WORKER_LISTEN"
"""``false``: no events websocket (behind a proxy that refuses websockets, say): only the poll
finds runs, and a run cancelled while it runs is no longer stopped by this worker."""
SCHEDULED = "prefect.flow-run.Scheduled"


class EventpipeJobConfiguration(BaseJobConfiguration):
    working_dir: Path | None = Field(default=None)
    timeout_seconds: float | None = Field(default=None)
    warm_processes: int = Field(default=DEFAULT_WARM)
    runs_per_process: int = Field(default=DEFAULT_RUNS)
    preload: list[str] = Field(default_factory=list)


class EventpipeVariables(BaseVariables):
    working_dir: Path | None = Field(
        default=None,
        title="Working directory",
        description="Where each flow run executes; by default a new temporary directory.",
    )
    timeout_seconds: float | None = Field(
        default=None,
        title="Time limit (seconds)",
        description="A run still executing after this long is stopped and marked Crashed.",
    )
    warm_processes: int = Field(
        default=DEFAULT_WARM,
        ge=1,
        title="Warm processes",
        description="How many interpreters each worker keeps imported and waiting for a run"
        " (each holds Prefect, eventpipe and pandas in memory: about 150 MB).",
    )
    runs_per_process: int = Field(
        default=DEFAULT_RUNS,
        ge=1,
        title="Runs per process",
        description="How many runs a warm process executes, one after the other, before it is"
        " replaced: 1 gives every run a new process; more keep the pipeline's code and"
        " Prefect's engine warm between runs.",
    )
    preload: list[str] = Field(
        default_factory=list,
        title="Modules to import ahead",
        description="Imported by every warm process before it waits, e.g. your pipelines'"
        " modules, so a run does not import them.",
    )


class EventpipeWorkerResult(BaseWorkerResult):
    """The exit code of a run's warm process."""


class EventpipeWorker(
    BaseWorker[EventpipeJobConfiguration, EventpipeVariables, EventpipeWorkerResult]
):
    type = WORKER_TYPE
    job_configuration = EventpipeJobConfiguration
    job_configuration_variables = EventpipeVariables
    _description = (
        "Execute flow runs in warm Python processes on the worker, started ahead with Prefect"
        " and eventpipe imported, and pick runs up the moment they are scheduled."
    )
    _display_name = "eventpipe (warm processes)"
    _documentation_url = "https://github.com/eventpipe/eventpipe#the-eventpipe-worker"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._warm: WarmPool | None = None
        self._running: dict[UUID, WarmProcess] = {}
        self._cancelled: set[UUID] = set()
        self._listener: asyncio.Task[None] | None = None
        self._told_paused: set[UUID] = set()

    # -- life ------------------------------------------------------------------------------

    async def _initialize_after_sync(self) -> None:
        await super()._initialize_after_sync()
        if self._work_pool is None:
            return
        if self._warm is None:
            self._warm = WarmPool(*self._pool_settings())
        self._warm.warm_pipelines(await self._pipelines())
        await anyio.to_thread.run_sync(self._warm.fill)
        if self._listener is None and os.environ.get(LISTEN_ENV, "true").lower() != "false":
            self._listener = asyncio.get_running_loop().create_task(self._listen())

    async def _pipelines(self) -> list[str]:
        """The pipeline specs of the eventpipe deployments on this pool, for the warm processes
        to load ahead (read at each sync with the server)."""
        assert self._work_pool is not None
        try:
            deployments = await self.client.read_deployments(
                work_pool_filter=WorkPoolFilter(
                    name=WorkPoolFilterName(any_=[self._work_pool.name])
                )
            )
        except Exception:
            log.debug("could not read the pool's deployments", exc_info=True)
            return []
        return [
            str(d.parameters["pipeline"])
            for d in deployments
            if (d.entrypoint or "").endswith(":materialize_pipeline")
            and isinstance((d.parameters or {}).get("pipeline"), str)
        ]

    def _pool_settings(self) -> tuple[int, list[str], int]:
        """``warm_processes``, ``preload`` and ``runs_per_process`` as the pool's base job
        template defaults them."""
        template = self._work_pool.base_job_template if self._work_pool else {}
        props = (template or {}).get("variables", {}).get("properties", {})
        size = props.get("warm_processes", {}).get("default", DEFAULT_WARM)
        preload = props.get("preload", {}).get("default") or []
        runs = props.get("runs_per_process", {}).get("default", DEFAULT_RUNS)
        return int(size), [str(m) for m in preload], int(runs)

    async def teardown(self, *exc_info: Any) -> None:
        if self._listener is not None:
            self._listener.cancel()
        try:
            await super().teardown(*exc_info)  # waits for the runs in progress
        finally:
            if self._warm is not None:
                await anyio.to_thread.run_sync(self._warm.close)

    # -- hearing of runs ---------------------------------------------------------------------

    async def _listen(self) -> None:
        """Poll at once whenever a run of this pool is scheduled; stop running runs that are
        cancelled. Reconnects when the stream drops; the regular poll covers the gaps."""
        assert self._work_pool is not None
        pool = f"prefect.work-pool.{self._work_pool.id}"
        stream = EventFilter(
            event=EventNameFilter(name=[SCHEDULED, CANCELLING]),
            any_resource=EventAnyResourceFilter(id=[pool]),
        )
        retry = 0.5
        while True:
            try:
                async with get_events_subscriber(
                    filter=stream, reconnect_on_clean_close=True
                ) as events:
                    retry = 0.5
                    async for event in events:
                        run_id = UUID(event.resource.id.removeprefix("prefect.flow-run."))
                        if event.event == CANCELLING:
                            await self._stop_cancelled(run_id)
                        else:
                            await self._poll_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("event stream lost (%s); reconnecting", type(exc).__name__)
                await asyncio.sleep(retry)
                retry = min(retry * 2, 10.0)

    async def _poll_once(self) -> None:
        try:
            await self.get_and_submit_flow_runs()
        except Exception:
            log.exception("could not poll for flow runs")

    async def get_and_submit_flow_runs(self) -> list[FlowRun]:
        return await super().get_and_submit_flow_runs()

    async def _get_scheduled_flow_runs(self) -> list[WorkerFlowRunResponse]:
        """The pool's due runs, but those of a paused deployment: Prefect's trigger still
        creates runs for one, and a process worker would execute them. They stay Scheduled
        and run once the deployment is resumed."""
        found = await super()._get_scheduled_flow_runs()
        paused: dict[UUID, bool] = {}
        kept = []
        for entry in found:
            deployment_id = entry.flow_run.deployment_id
            if deployment_id is not None and deployment_id not in paused:
                try:
                    paused[deployment_id] = (
                        await self.client.read_deployment(deployment_id)
                    ).paused
                except ObjectNotFound:
                    paused[deployment_id] = False  # the base worker cancels such a run
            if deployment_id is not None and paused[deployment_id]:
                if entry.flow_run.id not in self._told_paused:
                    self._told_paused.add(entry.flow_run.id)
                    self.get_flow_run_logger(entry.flow_run).info(
                        "deployment %s is paused: flow run %s waits until it is resumed",
                        deployment_id,
                        entry.flow_run.name,
                    )
                continue
            kept.append(entry)
        return kept

    # -- running ---------------------------------------------------------------------------

    async def run(
        self,
        flow_run: FlowRun,
        configuration: EventpipeJobConfiguration,
        task_status: anyio.abc.TaskStatus[int] | None = None,
    ) -> EventpipeWorkerResult:
        if self._warm is None:  # a run submitted before the first sync finished
            self._warm = WarmPool(
                configuration.warm_processes,
                configuration.preload,
                configuration.runs_per_process,
            )
        warm = self._warm
        process = await anyio.to_thread.run_sync(warm.take)
        self._running[flow_run.id] = process
        temporary = None
        if configuration.working_dir is None:
            temporary = tempfile.TemporaryDirectory(suffix="eventpipe")
            cwd = temporary.name
        else:
            cwd = str(configuration.working_dir)
        try:
            process.start_run(Job(str(flow_run.id), configuration.env, cwd))
            if task_status is not None:
                task_status.started(process.pid)
            code = await anyio.to_thread.run_sync(
                self._wait, process, configuration.timeout_seconds, flow_run
            )
        finally:
            self._running.pop(flow_run.id, None)
            if temporary is not None:
                temporary.cleanup()
            # back to the pool for the next run if it has runs left; else stopped and replaced
            await anyio.to_thread.run_sync(warm.give_back, process)
        if flow_run.id in self._cancelled:
            self._cancelled.discard(flow_run.id)
            code = 0  # stopped on purpose and marked Cancelled: not a crash
        return EventpipeWorkerResult(identifier=str(process.pid), status_code=code)

    def _wait(self, process: WarmProcess, timeout: float | None, flow_run: FlowRun) -> int:
        try:
            return process.wait_run(timeout)
        except TimeoutError:
            self.get_flow_run_logger(flow_run).error(
                "the run is still executing after its time limit (timeout_seconds=%s): stopped",
                timeout,
            )
            process.kill(signal.SIGTERM)
            try:
                return process.wait_run(10)
            except TimeoutError:
                process.kill()
                return process.wait_run()

    async def _stop_cancelled(self, run_id: UUID) -> None:
        """A run of this worker's is Cancelling: kill its process, mark it Cancelled."""
        process = self._running.get(run_id)
        if process is None:
            return
        self._cancelled.add(run_id)
        # SIGKILL, not SIGTERM: on SIGTERM the engine would report the run Crashed itself.
        # Nothing is lost: outputs are written whole or not at all, and the files go back to
        # pending once the run is over.
        process.kill()
        deadline = time.monotonic() + 10
        while process.alive and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        flow_run = await self.client.read_flow_run(run_id)
        if flow_run.state is not None and flow_run.state.type == StateType.CANCELLING:
            await self._mark_flow_run_as_cancelled(
                flow_run, state_updates={"message": "Cancelled: the worker stopped the run."}
            )

    async def kill_infrastructure(
        self,
        infrastructure_pid: str,
        configuration: EventpipeJobConfiguration,
        grace_seconds: int = 30,
    ) -> None:
        pid = int(str(infrastructure_pid).rsplit(":", 1)[-1])
        for run_id, process in list(self._running.items()):
            if process.pid == pid:
                self._cancelled.add(run_id)
                process.kill()
                return
        raise InfrastructureNotFound(f"process {pid} is not one of this worker's runs")
