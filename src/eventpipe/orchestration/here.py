"""Runs executed in this process: ``eventpipe up`` embeds the ``eventpipe`` worker on a work
pool of its own, with the runs on threads of this process (``warm_processes`` 0).

So ``up`` claims and executes runs with the same code as ``prefect worker start --pool P`` on
an ``eventpipe`` pool: the worker hears of a run on the events websocket (the regular poll
as the fallback), claims it as Prefect's workers do (propose Pending; ``Abort`` means another
worker won) and executes it with ``eventpipe.orchestration.execute``; the only difference is
where: a thread, warm from the previous run, instead of a warm process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.exceptions import ObjectNotFound
from prefect.states import Cancelled, Crashed

from eventpipe.orchestration.worker import WORKER_TYPE, EventpipeWorker

log = logging.getLogger("eventpipe.runner")


def here_pool_name(pipeline: str, kind: str = "") -> str:
    """The work pool of the runs ``eventpipe up`` executes for ``pipeline``: one per pipeline
    (and one for its fetches), so no other process's worker takes them."""
    return f"eventpipe-up-{pipeline}" + (f"-{kind}" if kind else "")


def threads_job_template() -> dict[str, Any]:
    """The ``eventpipe`` base job template with runs on the worker's threads."""
    template = EventpipeWorker.get_default_base_job_template()
    template["variables"]["properties"]["warm_processes"]["default"] = 0
    return template


def ensure_here_pool(name: str) -> None:
    """Create work pool ``name`` (type ``eventpipe``, runs on threads), or set its template
    back to that."""
    template = threads_job_template()
    with get_client(sync_client=True) as client:
        try:
            existing = client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(
                WorkPoolCreate(
                    name=name,
                    type=WORKER_TYPE,
                    base_job_template=template,
                    description="The runs `eventpipe up` executes in its own process.",
                )
            )
            return
        if existing.base_job_template != template or existing.is_paused:
            client.update_work_pool(
                name, WorkPoolUpdate(base_job_template=template, is_paused=False)
            )


class WorkerHere:
    """An ``eventpipe`` worker on pool ``pool`` in a thread of this process, its runs on
    threads too. Reads like the rest of ``up``: :meth:`start` returns once it listens,
    :attr:`idle`, :attr:`paused` and :attr:`current_lock` for the janitor, :meth:`stop` lets
    the run in progress finish."""

    def __init__(
        self,
        pool: str,
        *,
        on_finished: Callable[[FlowRun, Any], None] | None = None,
        prefetch_seconds: float = 15.0,
    ) -> None:
        self.pool = pool
        # Runs scheduled ahead (fetches) are claimed up to prefetch_seconds early, then start
        # on time: Prefect's server makes the claim wait for their scheduled time.
        self.worker = EventpipeWorker(
            work_pool_name=pool,
            name=f"{pool} {socket.gethostname()} {os.getpid()}",
            prefetch_seconds=prefetch_seconds,
            create_pool_if_not_found=False,
            on_finished=on_finished,
            channel=False,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._serve, name=f"{pool}-worker", daemon=True)

    def start(self, wait: float = 15.0) -> WorkerHere:
        ensure_here_pool(self.pool)
        self._thread.start()
        if not self.worker.listening.wait(wait):
            log.warning("the worker does not hear the events stream yet: it polls meanwhile")
        return self

    @property
    def paused(self) -> bool:
        """Set while stopping: scheduled runs are left alone."""
        return self.worker.paused

    @paused.setter
    def paused(self, value: bool) -> None:
        self.worker.paused = value

    @property
    def current_lock(self) -> threading.Lock:
        return self.worker.current_lock

    @property
    def idle(self) -> bool:
        """Nothing claimed or running here."""
        return self.worker.idle

    def stop(self, timeout: float = 60.0) -> None:
        """Claim no more runs, let the one in progress finish (up to ``timeout``), stop."""
        self.worker.paused = True
        deadline = time.monotonic() + timeout
        while not self.worker.idle and time.monotonic() < deadline:
            time.sleep(0.05)
        loop, task = self._loop, self._task
        if loop is not None and task is not None and not loop.is_closed():
            loop.call_soon_threadsafe(task.cancel)
        self._thread.join(timeout)

    def _serve(self) -> None:
        try:
            asyncio.run(self._main())  # cancels and awaits what is left, closes the loop
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("the worker of pool %s stopped", self.pool)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        await self.worker.start(printer=log.debug)


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
