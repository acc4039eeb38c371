"""The push runner: executes a deployment's runs in a warm process the moment they are created.

Prefect's ``serve`` and workers poll for scheduled runs and start each in a fresh interpreter
(about a second of imports), so a run starts seconds after its trigger fired. This runner
listens on Prefect's events websocket for ``prefect.flow-run.Scheduled`` of its deployment,
claims the run the way Prefect's Runner does (propose Pending; ``Abort`` means another runner
won) and executes it with Prefect's own flow engine in a long-lived thread. Runs stay ordinary
deployment runs: same states, logs, task runs, artifacts and asset events. A slow sweep picks up
any run whose event the stream dropped, and keeps the deployment marked ready.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from prefect import Flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.events.clients import get_events_subscriber
from prefect.events.filters import EventAnyResourceFilter, EventFilter, EventNameFilter
from prefect.exceptions import Abort, ObjectNotFound
from prefect.states import Cancelled, Crashed, Pending

from eventpipe.compat import propose_state_sync, run_deployment_flow_run, warm_engine

log = logging.getLogger("eventpipe.runner")


class PushRunner:
    """Runs the scheduled runs of one deployment (or of several, of the same flow) as soon as
    they are due: at once for a triggered run, at its scheduled time for one that Prefect's
    scheduler created ahead of time."""

    def __init__(
        self,
        flow: Flow[..., Any],
        deployment_id: UUID | Sequence[UUID],
        *,
        sweep_seconds: float = 30.0,
        on_finished: Callable[[FlowRun, Any], None] | None = None,
        respect_paused: bool = False,
    ) -> None:
        self.flow = flow
        self.deployment_ids = (
            [deployment_id] if isinstance(deployment_id, UUID) else list(deployment_id)
        )
        self.deployment_id = self.deployment_ids[0]
        self.sweep_seconds = sweep_seconds
        self.on_finished = on_finished
        self.respect_paused = respect_paused
        """Read the run's deployment before claiming it and leave it if paused (a schedule
        paused in the UI): for deployments whose pause ``up`` does not manage."""
        self._queue: queue.Queue[UUID | None] = queue.Queue()
        self._queued: set[UUID] = set()
        self._lock = threading.Lock()
        self._due: list[tuple[float, UUID]] = []
        self._deferred: set[UUID] = set()
        self._due_changed = threading.Condition()
        self._stop = threading.Event()
        self._listening = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._threads = [
            threading.Thread(
                target=self._listen_thread, name="eventpipe-runner-listen", daemon=True
            ),
            threading.Thread(target=self._execute_loop, name="eventpipe-runner-exec", daemon=True),
            threading.Thread(target=self._due_loop, name="eventpipe-runner-due", daemon=True),
        ]
        self.paused = False
        """Set while the deployment is paused: scheduled runs are left alone."""
        self.current: UUID | None = None
        """The run executing now, if any; changed only under ``current_lock``."""
        self.current_lock = threading.Lock()

    def start(self, wait: float = 15.0) -> PushRunner:
        for thread in self._threads:
            thread.start()
        self._listening.wait(wait)
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Stop listening; let the run in progress finish (up to ``timeout``)."""
        self._stop.set()
        self._queue.put(None)
        with self._due_changed:
            self._due_changed.notify_all()
        loop, task = self._loop, self._task
        if loop is not None and task is not None and not loop.is_closed():
            loop.call_soon_threadsafe(task.cancel)
        for thread in self._threads:
            thread.join(timeout)

    @property
    def idle(self) -> bool:
        """Nothing running and nothing waiting to run."""
        return self.current is None and self._queue.empty()

    def submit(self, flow_run_id: UUID) -> None:
        with self._lock:
            if flow_run_id in self._queued or flow_run_id in self._deferred:
                return
            self._queued.add(flow_run_id)
        self._queue.put(flow_run_id)

    # -- listening -------------------------------------------------------------------------

    def _listen_thread(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._task = loop.create_task(self._listen())
        try:
            loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            pass
        finally:
            loop.close()

    async def _listen(self) -> None:
        sweeper = asyncio.create_task(self._sweep_forever())
        stream_filter = EventFilter(
            event=EventNameFilter(name=["prefect.flow-run.Scheduled", "prefect.flow-run.Late"]),
            any_resource=EventAnyResourceFilter(
                id=[f"prefect.deployment.{d}" for d in self.deployment_ids]
            ),
        )
        retry = 0.5
        lost_at: float | None = None
        try:
            while not self._stop.is_set():
                try:
                    async with get_events_subscriber(
                        filter=stream_filter, reconnect_on_clean_close=True
                    ) as subscriber:
                        self._listening.set()
                        if lost_at is not None:
                            log.warning(
                                "event stream back after %.0f s", time.monotonic() - lost_at
                            )
                            lost_at, retry = None, 0.5
                        await self._sweep_once()
                        async for event in subscriber:
                            run_id = event.resource.id.removeprefix("prefect.flow-run.")
                            log.debug("heard %s of %s", event.event, run_id)
                            self.submit(UUID(run_id))
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the server restarts or drops us: reconnect
                    if lost_at is None:
                        lost_at = time.monotonic()
                        log.warning("event stream lost (%s); reconnecting", type(exc).__name__)
                    else:
                        log.debug("event stream still down (%s)", type(exc).__name__)
                    await asyncio.sleep(retry)
                    retry = min(retry * 2, 5.0)
        finally:
            sweeper.cancel()

    async def _sweep_forever(self) -> None:
        while not self._stop.is_set():
            await asyncio.sleep(self.sweep_seconds)
            try:
                await self._sweep_once()
            except Exception as exc:
                log.debug("sweep failed: %s", exc)

    async def _sweep_once(self) -> None:
        async with get_client() as client:
            # Runs due soon; later ones are announced by their Scheduled event and swept later.
            runs = await client.get_scheduled_flow_runs_for_deployments(
                deployment_ids=self.deployment_ids,
                scheduled_before=datetime.now(UTC) + timedelta(seconds=self.sweep_seconds + 5),
            )
        for run in runs:
            self.submit(run.id)

    # -- waiting for a run's scheduled time -------------------------------------------------------

    def _defer(self, run_id: UUID, when: float) -> None:
        with self._lock:
            if run_id in self._deferred:
                return
            self._deferred.add(run_id)
        with self._due_changed:
            heapq.heappush(self._due, (when, run_id))
            self._due_changed.notify_all()

    def _due_loop(self) -> None:
        """Submit each deferred run when its scheduled time arrives."""
        with self._due_changed:
            while not self._stop.is_set():
                if not self._due:
                    self._due_changed.wait()
                    continue
                when, run_id = self._due[0]
                wait = when - time.time()
                if wait > 0:
                    self._due_changed.wait(wait)
                    continue
                heapq.heappop(self._due)
                with self._lock:
                    self._deferred.discard(run_id)
                self.submit(run_id)

    # -- executing ---------------------------------------------------------------------------

    def _execute_loop(self) -> None:
        # One client for the runner's life (the engine would open a new one per run), and no
        # heartbeat thread: the engine waits ~1 s for it after each run.
        with warm_engine():
            while True:
                run_id = self._queue.get()
                if run_id is None or self._stop.is_set():
                    return
                with self._lock:
                    self._queued.discard(run_id)
                try:
                    self._execute(run_id)
                except Exception:
                    log.exception("run %s could not be executed", run_id)

    def _execute(self, run_id: UUID) -> None:
        with self.current_lock:
            self.current = run_id  # from before the claim: the janitor leaves it alone
        try:
            self._claim_and_run(run_id)
        finally:
            with self.current_lock:
                self.current = None

    def _claim_and_run(self, run_id: UUID) -> None:
        client = get_client(sync_client=True)
        try:
            flow_run = client.read_flow_run(run_id)
        except ObjectNotFound:
            return  # deleted: its deployment or schedule was paused, or it was rescheduled
        if flow_run.state is None or flow_run.state.type != StateType.SCHEDULED or self.paused:
            return  # already taken, finished or cancelled (the stream replays on connect)
        due = flow_run.next_scheduled_start_time or flow_run.expected_start_time
        if due is not None and due > datetime.now(UTC):
            self._defer(run_id, due.timestamp())  # created ahead by Prefect's scheduler
            return
        if (
            self.respect_paused
            and flow_run.deployment_id is not None
            and client.read_deployment(flow_run.deployment_id).paused
        ):
            return
        try:
            state = propose_state_sync(client, Pending(), flow_run_id=run_id)
        except Abort:
            return  # another runner claimed it
        if not state.is_pending():
            return
        started = time.perf_counter()
        log.debug("claimed %s", flow_run.name)
        result = self._run(flow_run.model_copy(update={"state": state}))
        log.debug("run %s finished in %.3f s", flow_run.name, time.perf_counter() - started)
        if self.on_finished is not None:
            self.on_finished(flow_run, result)

    def _run(self, flow_run: FlowRun) -> Any:
        """Run ``flow_run`` with Prefect's engine in this thread (see ``compat``)."""
        return run_deployment_flow_run(self.flow, flow_run)


def crash_orphaned_runs(deployment_id: UUID) -> list[str]:
    """Mark the deployment's Pending/Running runs Crashed: called on start, when no run of
    this deployment can be executing (runs execute only in the ``up`` process), so they are
    left over from a process that was killed. Returns their names."""
    active = FlowRunFilterStateType(any_=[StateType.PENDING, StateType.RUNNING])
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=active)),
        )
        for run in runs:
            client.set_flow_run_state(
                run.id,
                Crashed(message="eventpipe stopped while this run executed; its files are retried"),
                force=True,
            )
    return [run.name for run in runs]


def skip_missed_runs(deployment_id: UUID, grace_seconds: float = 60.0) -> int:
    """Cancel the deployment's scheduled runs that were due over ``grace_seconds`` ago, but
    the newest: a scheduled fetch missed while nothing executed its runs needs one run now,
    not one per missed tick. Returns how many were cancelled."""
    before = datetime.now(UTC) - timedelta(seconds=grace_seconds)
    with get_client(sync_client=True) as client:
        runs = client.get_scheduled_flow_runs_for_deployments(
            deployment_ids=[deployment_id], scheduled_before=before
        )
        missed = sorted(runs, key=lambda r: r.next_scheduled_start_time or before)[:-1]
        for run in missed:
            client.set_flow_run_state(
                run.id, Cancelled(message="missed while eventpipe was stopped"), force=True
            )
    return len(missed)
