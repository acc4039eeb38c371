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

With ``warm_processes`` 0 the runs execute on threads of the worker's own process instead,
one run of a deployment at a time, each claimed only when its turn comes: no process starts
at all. That is how ``eventpipe up`` executes its runs (``eventpipe.orchestration.here``
embeds this worker on a pool of its own); such runs share the worker's environment and
working directory and cannot be stopped mid-way. Both kinds call one function to execute a
run (``eventpipe.orchestration.execute``).

Everything else is the base worker's: the claim (propose Pending; ``Abort`` means another
worker won), job variables, labels, the infrastructure pid, "Crashed" when the process
exits without a final state, cancelling runs that have not started. What a run waits for
before it starts is cut to the calls that decide something: no Submitting state (the run
starts at once), the worker's labels given while it starts, and its deployment read once
per poll (the claim, the job configuration and the run itself reuse that read).

A running run cancelled from the UI or the API is stopped here (its process session is
killed) and marked Cancelled; ``timeout_seconds`` stops a run that runs too long; a worker
asked to stop lets its runs finish.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast
from uuid import UUID

import anyio
import anyio.abc
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import WorkPoolFilter, WorkPoolFilterName
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.responses import DeploymentResponse, WorkerFlowRunResponse
from prefect.events.clients import get_events_subscriber
from prefect.events.filters import EventAnyResourceFilter, EventFilter, EventNameFilter
from prefect.exceptions import (
    InfrastructureNotAvailable,
    InfrastructureNotFound,
    ObjectNotFound,
)
from prefect.workers.base import (
    BaseJobConfiguration,
    BaseVariables,
    BaseWorker,
    BaseWorkerResult,
)
from pydantic import Field

from eventpipe.compat import warm_engine
from eventpipe.orchestration.execute import execute_flow_run
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
        ge=0,
        title="Warm processes",
        description="How many interpreters each worker keeps imported and waiting for a run"
        " (each holds Prefect, eventpipe and pandas in memory: about 150 MB). 0: the runs"
        " execute on threads of the worker's own process, one run of a deployment at a time"
        " (the pool's default decides; the runs share the worker's environment).",
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

    def __init__(
        self,
        *args: Any,
        on_finished: Callable[[FlowRun, Any], None] | None = None,
        channel: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.on_finished = on_finished
        self.channel = channel
        """False: heartbeats and pool reads over REST only, without Prefect's worker-channel
        websocket (which a worker stopped inside a longer-lived process leaves unclosed)."""
        """Called with each run executed here and its final state (threads only)."""
        self.paused = False
        """Set to claim no more runs (those scheduled are left as they are)."""
        self.current_lock = threading.Lock()
        """Held while a run becomes active here: see :attr:`idle`."""
        self.listening = threading.Event()
        """Set once the events websocket is connected (the poll works meanwhile)."""
        self._active: set[UUID] = set()
        self._turns: dict[UUID | None, asyncio.Lock] = {}
        self._lanes: dict[UUID | None, _Lane] = {}
        self._warm: WarmPool | None = None
        self._running: dict[UUID, WarmProcess] = {}
        self._cancelled: set[UUID] = set()
        self._listener: asyncio.Task[None] | None = None
        self._told_paused: set[UUID] = set()
        self._deployments: dict[UUID, tuple[float, DeploymentResponse]] = {}
        """Each deployment as read (``time.monotonic()``, response) at the last poll that found
        one of its runs."""

    # -- life ------------------------------------------------------------------------------

    async def _initialize_after_sync(self) -> None:
        await super()._initialize_after_sync()
        if self._work_pool is None:
            return
        if not self.in_threads:
            if self._warm is None:
                self._warm = WarmPool(*self._pool_settings())
            self._warm.warm_pipelines(await self._pipelines())
            await anyio.to_thread.run_sync(self._warm.fill)
        if os.environ.get(LISTEN_ENV, "true").lower() == "false":
            self.listening.set()  # nothing more to wait for: the poll finds the runs
        elif self._listener is None:
            self._listener = asyncio.get_running_loop().create_task(self._listen())

    async def sync_with_backend(self) -> None:
        if self.channel:
            await super().sync_with_backend()
            return
        # The base method with no task group for the channel: REST sync and heartbeat.
        self._ensure_worker_channel()
        if self._worker_channel is not None:
            await self._worker_channel.sync(None)
            await self._initialize_after_sync()

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

    @property
    def in_threads(self) -> bool:
        """Whether the runs execute on threads of this process (the pool's default of
        ``warm_processes`` is 0)."""
        return self._work_pool is not None and self._pool_settings()[0] == 0

    @property
    def idle(self) -> bool:
        """No run claimed or executing here. Changes from True only under
        :attr:`current_lock`, so whoever holds it and sees True knows that no run of this
        worker's can be Pending or Running meanwhile."""
        return not self._active

    async def teardown(self, *exc_info: Any) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        try:
            await super().teardown(*exc_info)  # waits for the runs in progress
        finally:
            if self._warm is not None:
                await anyio.to_thread.run_sync(self._warm.close)
            for lane in self._lanes.values():
                lane.close()
                await anyio.to_thread.run_sync(lane.join, 30.0)

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
                    self.listening.set()
                    await self._poll_once()  # runs scheduled before the stream was heard
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

    async def _get_scheduled_flow_runs(self) -> list[WorkerFlowRunResponse]:
        """The pool's due runs, but those of a paused deployment: Prefect's trigger still
        creates runs for one, and a process worker would execute them. They stay Scheduled
        and run once the deployment is resumed."""
        if self.paused:
            return []
        found = await super()._get_scheduled_flow_runs()
        paused: dict[UUID, bool] = {}
        kept = []
        for entry in found:
            deployment_id = entry.flow_run.deployment_id
            if deployment_id is not None and deployment_id not in paused:
                try:
                    deployment = await super().client.read_deployment(deployment_id)
                    self._deployments[deployment_id] = (time.monotonic(), deployment)
                    paused[deployment_id] = deployment.paused
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

    def _entrypoint(self, flow_run: FlowRun) -> str | None:
        """The run's flow as its deployment was read when the run was found, for the run not to
        read the deployment again; None (the run reads it) when it has pull steps."""
        read = self._deployments.get(flow_run.deployment_id or UUID(int=0))
        if read is None or read[1].pull_steps or not read[1].entrypoint:
            return None
        return read[1].entrypoint

    @property
    def client(self) -> PrefectClient:
        """The API client, but a deployment the poll has just read is not read again: the base
        worker reads a run's deployment to claim the run and again to resolve its job
        configuration (two API calls before each run starts)."""
        return cast(PrefectClient, _RecentDeployments(super().client, self._deployments))

    # -- claiming ----------------------------------------------------------------------------

    async def _submit_run(self, flow_run: FlowRun) -> None:
        """On threads, a run of a deployment is claimed only when the previous one is over
        (as Prefect's Runner does with a limit): a burst of triggered runs stays Scheduled,
        not claimed and queued here."""
        if not self.in_threads:
            await super()._submit_run(flow_run)
            return
        turn = self._turns.setdefault(flow_run.deployment_id, asyncio.Lock())
        async with turn:
            lane = self._lane(flow_run.deployment_id)
            await super()._submit_run(flow_run)  # returns once the run started, if claimed
            await lane.wait_over(flow_run.id)

    async def _propose_pending_state(self, flow_run: FlowRun) -> bool:
        await anyio.to_thread.run_sync(self.current_lock.acquire)
        try:
            if self.paused:
                return False
            self._active.add(flow_run.id)
        finally:
            self.current_lock.release()
        claimed = False
        try:
            claimed = await super()._propose_pending_state(flow_run)
        finally:
            if not claimed:
                self._active.discard(flow_run.id)
        return claimed

    async def _propose_submitting_state(self, flow_run: FlowRun) -> None:
        """No Submitting state: a warm process or a thread starts the run at once, and the
        engine's Running follows Pending directly (one API call less before the run starts)."""

    async def _give_worker_labels_to_flow_run(self, flow_run_id: UUID) -> None:
        """The worker's labels, given while the run starts instead of before it."""
        assert self._runs_task_group is not None
        self._runs_task_group.start_soon(self._give_labels, flow_run_id)

    async def _give_labels(self, flow_run_id: UUID) -> None:
        try:
            await super()._give_worker_labels_to_flow_run(flow_run_id)
        except Exception:
            log.warning("could not label flow run %s", flow_run_id, exc_info=True)

    # -- running ---------------------------------------------------------------------------

    async def run(
        self,
        flow_run: FlowRun,
        configuration: EventpipeJobConfiguration,
        task_status: anyio.abc.TaskStatus[int] | None = None,
    ) -> EventpipeWorkerResult:
        try:
            if self.in_threads:
                return await self._run_in_thread(flow_run, task_status)
            return await self._run_warm(flow_run, configuration, task_status)
        finally:
            self._active.discard(flow_run.id)

    async def _run_in_thread(
        self, flow_run: FlowRun, task_status: anyio.abc.TaskStatus[int] | None
    ) -> EventpipeWorkerResult:
        lane = self._lane(flow_run.deployment_id)
        lane.begin(flow_run.id)  # before the claim's `_submit_run` goes on to wait for it
        if task_status is not None:
            task_status.started(os.getpid())
        # A run scheduled ahead (a fetch) is claimed up to prefetch_seconds early; it starts
        # when due.
        due = flow_run.next_scheduled_start_time or flow_run.expected_start_time
        if due is not None:
            early = (due - datetime.now(UTC)).total_seconds()
            if early > 0:
                await asyncio.sleep(early)
        code, state = await lane.execute(flow_run.id, self._entrypoint(flow_run))
        if self.on_finished is not None and state is not None:
            try:  # in a thread: the callback may read the state's result, a sync call
                await anyio.to_thread.run_sync(self.on_finished, flow_run, state)
            except Exception:
                log.exception("on_finished failed for %s", flow_run.name)
        return EventpipeWorkerResult(identifier=str(os.getpid()), status_code=code)

    def _lane(self, deployment_id: UUID | None) -> _Lane:
        lane = self._lanes.get(deployment_id)
        if lane is None:
            lane = self._lanes[deployment_id] = _Lane(str(deployment_id))
        return lane

    async def _run_warm(
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
            job = Job(str(flow_run.id), configuration.env, cwd, self._entrypoint(flow_run))
            process.start_run(job)
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
        if pid == os.getpid() and self.in_threads:
            raise InfrastructureNotAvailable(
                "the run executes on a thread of the worker's own process: it is not stopped"
                " mid-way, it ends by itself"
            )
        for run_id, process in list(self._running.items()):
            if process.pid == pid:
                self._cancelled.add(run_id)
                process.kill()
                return
        raise InfrastructureNotFound(f"process {pid} is not one of this worker's runs")


RECENT = 5.0
"""Seconds for which a deployment read by the poll answers the claim's own reads."""


class _RecentDeployments:
    """A client whose ``read_deployment`` answers from reads at most :data:`RECENT` s old."""

    def __init__(
        self, client: PrefectClient, reads: dict[UUID, tuple[float, DeploymentResponse]]
    ) -> None:
        self._client = client
        self._reads = reads

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def read_deployment(self, deployment_id: UUID) -> DeploymentResponse:
        read = self._reads.get(deployment_id)
        if read is not None and time.monotonic() - read[0] <= RECENT:
            return read[1]
        return await self._client.read_deployment(deployment_id)


_LaneJob = tuple[UUID, str | None, asyncio.AbstractEventLoop, "asyncio.Future[Any]"]


class _Lane:
    """One thread executing one deployment's runs, one at a time, in a warm engine (one API
    client for all runs, no heartbeat thread: see ``compat.warm_engine``)."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.Queue[_LaneJob | None] = queue.Queue()
        self._over: dict[UUID, asyncio.Event] = {}
        self._thread = threading.Thread(
            target=self._serve, name=f"eventpipe-run-{name}", daemon=True
        )
        self._thread.start()

    def begin(self, run_id: UUID) -> None:
        """``run_id`` is to execute here: :meth:`wait_over` waits for it from now on."""
        self._over.setdefault(run_id, asyncio.Event())

    async def execute(self, run_id: UUID, entrypoint: str | None = None) -> tuple[int, Any]:
        """Run ``run_id`` on this lane's thread: its exit code (0: the engine reported a final
        state; 1: it raised) and its final state."""
        loop = asyncio.get_running_loop()
        over = self._over.setdefault(run_id, asyncio.Event())
        done: asyncio.Future[Any] = loop.create_future()
        self._jobs.put((run_id, entrypoint, loop, done))
        try:
            return 0, await done
        except Exception:
            log.exception("flow run %s could not be executed", run_id)
            return 1, None
        finally:
            over.set()

    async def wait_over(self, run_id: UUID) -> None:
        """Until ``run_id``'s execution here is over; at once if it never began."""
        over = self._over.get(run_id)
        if over is not None:
            await over.wait()
            self._over.pop(run_id, None)

    def _serve(self) -> None:
        with warm_engine():
            while True:
                job = self._jobs.get()
                if job is None:
                    return
                run_id, entrypoint, loop, done = job
                try:
                    result: Any = execute_flow_run(run_id, entrypoint)
                except BaseException as exc:  # SystemExit from the engine included
                    error = exc if isinstance(exc, Exception) else RuntimeError(repr(exc))
                    loop.call_soon_threadsafe(_settle, done, None, error)
                else:
                    loop.call_soon_threadsafe(_settle, done, result, None)

    def close(self) -> None:
        self._jobs.put(None)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


def _settle(future: asyncio.Future[Any], result: Any, error: Exception | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
