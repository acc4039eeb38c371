"""The janitors: once a sweep, each looks at the ledger and the server and puts right what a
crash or a lost event left behind. One per way runs are executed:

- :class:`HereJanitor` when this process's push runner executes the runs (``eventpipe up``):
  runs left Pending/Running by a server that vanished under them are marked Crashed, their
  files go back to pending, and files that waited a whole sweep with no run coming get one.
- :class:`WorkerJanitor` when Prefect workers execute them (``--runs worker``): it never
  touches a run; files a run claimed go back to pending once that run is over, and a run is
  requested when files waited a whole sweep (or are found on start) and none is on its way.

``tend_once(now)`` decides and acts once; the loop that calls it every sweep is elsewhere
(``eventpipe.loop.tending``), so a test calls ``tend_once`` on a real ledger with plain
stand-ins for the server-facing calls, which are passed in as keyword arguments.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from uuid import UUID

from eventpipe.ledger import Ledger
from eventpipe.orchestration.deploy import request_run
from eventpipe.orchestration.runner import crash_orphaned_runs
from eventpipe.orchestration.worker_deployment import (
    deployment_problems,
    find_deployment,
    finished_runs,
    has_active_run,
)

log = logging.getLogger("eventpipe")


@dataclass(frozen=True)
class Tended:
    """What one sweep did."""

    crashed: tuple[str, ...] = ()
    """Runs marked Crashed (their names)."""
    reclaimed: int = 0
    """Files put back to pending."""
    requested: bool = False
    """Whether a run was requested for files waiting with none coming."""


class Janitor(Protocol):
    @property
    def resting(self) -> bool:
        """Whether to skip this sweep altogether (the deployment is paused)."""
        ...

    def tend_once(self, now: float) -> Tended: ...


class RunnerState(Protocol):
    """What the here-janitor reads of the push runner."""

    paused: bool
    current_lock: threading.Lock

    @property
    def idle(self) -> bool: ...


class HereJanitor:
    """Tends the runs of deployment ``deployment_id``, which execute only in this process."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        pipeline: str,
        deployment_id: UUID,
        runner: RunnerState,
        sweep_seconds: float,
        crash_runs: Callable[[UUID], list[str]] = crash_orphaned_runs,
        start_run: Callable[[UUID], None] = request_run,
    ) -> None:
        self.ledger = ledger
        self.pipeline = pipeline
        self.deployment_id = deployment_id
        self.runner = runner
        self.sweep_seconds = sweep_seconds
        self.crash_runs = crash_runs
        self.start_run = start_run

    @property
    def resting(self) -> bool:
        return self.runner.paused

    def tend_once(self, now: float) -> Tended:
        # Under the lock no run can be claimed or claim files meanwhile: while nothing runs
        # here, a Pending/Running run of this deployment is one nobody executes.
        with self.runner.current_lock:
            if not self.runner.idle:
                return Tended()
            crashed = tuple(self.crash_runs(self.deployment_id))
            reclaimed = self.ledger.reclaim_stale(self.pipeline)
        if crashed or reclaimed:
            log.warning(
                "run(s) %s lost their server mid-way: marked Crashed; %d file(s) retried",
                list(crashed),
                reclaimed,
            )
        oldest = self.ledger.oldest_pending(self.pipeline)
        requested = oldest is not None and now - oldest > self.sweep_seconds
        if requested:
            log.warning("files wait with no run coming; starting one")
            self.start_run(self.deployment_id)
        return Tended(crashed, reclaimed, requested)


@dataclass
class WorkerDeployment:
    """What the watcher knows of the deployment ``prefect deploy`` registered."""

    id: UUID | None = None
    work_pool: str | None = None
    told_missing: bool = field(default=False, repr=False)


class WorkerJanitor:
    """Tends the files of runs that Prefect workers execute; never touches a run."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        pipeline: str,
        data: Path,
        sweep_seconds: float,
        find: Callable[[str], Any] = find_deployment,
        problems: Callable[[Any, str, Path], list[str]] = deployment_problems,
        finished: Callable[[set[str]], set[str]] = finished_runs,
        active: Callable[[UUID], bool] = has_active_run,
        start_run: Callable[[UUID], None] = request_run,
    ) -> None:
        self.ledger = ledger
        self.pipeline = pipeline
        self.data = data
        self.sweep_seconds = sweep_seconds
        self.find = find
        self.problems = problems
        self.finished = finished
        self.active = active
        self.start_run = start_run
        self.deployment = WorkerDeployment()

    @property
    def resting(self) -> bool:
        return False  # a paused deployment is the workers' business; files still get tended

    def look_up_deployment(self) -> None:
        """Find the deployment `prefect deploy` registered; say what is wrong with it, if
        anything. Until it exists, files are recorded and wait."""
        found = self.find(self.pipeline)
        if found is None:
            if not self.deployment.told_missing:
                self.deployment.told_missing = True
                log.warning(
                    "no deployment materialize/%s on the server yet: run `prefect deploy` (see"
                    " prefect.yaml); files are recorded and wait for it",
                    self.pipeline,
                )
            return
        self.deployment.id, self.deployment.work_pool = found.id, found.work_pool_name
        for problem in self.problems(found, self.pipeline, self.data):
            log.warning("deployment materialize/%s: %s", self.pipeline, problem)

    def tend_once(self, now: float, *, starting: bool = False) -> Tended:
        """Files a run claimed go back to pending only once that run is over (Crashed,
        Failed, Cancelled, or gone from the server); a run is requested only when files have
        waited a whole sweep (or are found on start) and no run of the deployment is
        scheduled, pending or running."""
        if self.deployment.id is None:
            self.look_up_deployment()
        claimed = {
            f.run_id
            for f in self.ledger.files(self.pipeline)
            if f.state == "processing" and f.run_id
        }
        reclaimed = 0
        if claimed:
            over = self.finished(claimed)
            reclaimed = self.ledger.reclaim_stale(self.pipeline, live_run_ids=claimed - over)
            if reclaimed:
                log.warning(
                    "%d file(s) claimed by run(s) that ended without finishing them: retried",
                    reclaimed,
                )
        oldest = self.ledger.oldest_pending(self.pipeline)
        deployment_id = self.deployment.id
        requested = (
            oldest is not None
            and deployment_id is not None
            and (starting or now - oldest > self.sweep_seconds)
            and not self.active(deployment_id)
        )
        if requested:
            assert deployment_id is not None  # checked just above, for the type checker
            log.warning("files wait with no run coming; requesting one")
            self.start_run(deployment_id)
        return Tended(reclaimed=reclaimed, requested=requested)
