"""The janitors: once a sweep, each looks at the ledger and the server and puts right what a
crash or a lost event left behind. One per way runs are executed:

- :class:`HereJanitor` when this process's worker executes the runs (``eventpipe up``):
  runs left Pending/Running by a server that vanished under them are marked Crashed, their
  files go back to pending, and files that waited a whole sweep with no run coming get one.
- :class:`WorkerJanitor` when Prefect workers execute them (``--runs worker``): it never
  touches a run; files a run claimed go back to pending once that run is over, and a run is
  requested when files waited a whole sweep (or are found on start) and none is on its way.

``tend_once(now)`` decides and acts once; the loop that calls it every sweep is elsewhere
(``eventpipe.loop.tending``). Every server-facing call is a required keyword argument and
this module imports no Prefect, so a test calls ``tend_once`` on a real ledger with plain
stand-ins and no server; ``eventpipe.loop.runs`` passes in the real calls.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol
from uuid import UUID

from eventpipe.ledger import Ledger

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
    """What the tending thread calls every sweep."""

    @property
    def resting(self) -> bool:
        """Whether to skip this sweep altogether (the deployment is paused)."""
        ...

    def tend_once(self, now: float) -> Tended: ...


class RunnerState(Protocol):
    """What the here-janitor reads of the worker executing the runs here."""

    @property
    def paused(self) -> bool: ...

    @property
    def current_lock(self) -> threading.Lock: ...

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
        crash_runs: Callable[[UUID], list[str]],
        start_run: Callable[[UUID], None],
    ) -> None:
        self.ledger = ledger
        self.pipeline = pipeline
        self.deployment_id = deployment_id
        self.runner = runner
        self.sweep_seconds = sweep_seconds
        self.crash_runs = crash_runs
        """Marks the deployment's Pending/Running runs Crashed; returns their names."""
        self.start_run = start_run

    @property
    def resting(self) -> bool:
        return self.runner.paused

    def recover_on_start(self) -> Tended:
        """Before the runner starts, no run of the deployment can be executing: a
        Pending/Running one, and the files it claimed, are left by a process that was killed."""
        crashed = tuple(self.crash_runs(self.deployment_id))
        if crashed:
            log.warning("marked run(s) left by a stopped eventpipe as Crashed: %s", list(crashed))
        reclaimed = self.ledger.reclaim_stale(self.pipeline)
        if reclaimed:
            log.warning(
                "%d file(s) were being processed when eventpipe stopped; retrying", reclaimed
            )
        return Tended(crashed, reclaimed)

    def tend_once(self, now: float) -> Tended:
        if self.runner.paused:  # stopping: scheduled runs are left alone, so is everything
            return Tended()
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


@dataclass(frozen=True)
class FoundDeployment:
    """The deployment ``prefect deploy`` registered, as the watcher sees it."""

    id: UUID
    work_pool: str | None
    problems: tuple[str, ...] = ()
    """What in it disagrees with this watcher (``worker_deployment.deployment_problems``)."""


class WorkerJanitor:
    """Tends the files of runs that Prefect workers execute; never touches a run."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        pipeline: str,
        sweep_seconds: float,
        find: Callable[[], FoundDeployment | None],
        finished: Callable[[set[str]], set[str]],
        active: Callable[[UUID], bool],
        start_run: Callable[[UUID], None],
    ) -> None:
        self.ledger = ledger
        self.pipeline = pipeline
        self.sweep_seconds = sweep_seconds
        self.find = find
        """Deployment ``materialize/<pipeline>``, or None while it does not exist."""
        self.finished = finished
        """Those of the given run ids that are over (or unknown to the server)."""
        self.active = active
        """Whether a run of the deployment is scheduled, pending or running."""
        self.start_run = start_run
        self.deployment: FoundDeployment | None = None
        self._told_missing = False

    @property
    def resting(self) -> bool:
        return False  # a paused deployment is the workers' business; files still get tended

    def look_up_deployment(self) -> None:
        """Find the deployment `prefect deploy` registered; say what is wrong with it, if
        anything. Until it exists, files are recorded and wait."""
        found = self.find()
        if found is None:
            if not self._told_missing:
                self._told_missing = True
                log.warning(
                    "no deployment materialize/%s on the server yet: run `eventpipe deploy"
                    " --pool POOL` (or `prefect deploy`, see prefect.yaml); files are recorded"
                    " and wait for it",
                    self.pipeline,
                )
            return
        self.deployment = found
        for problem in found.problems:
            log.warning("deployment materialize/%s: %s", self.pipeline, problem)

    def tend_once(self, now: float, *, starting: bool = False) -> Tended:
        """Files a run claimed go back to pending only once that run is over (Crashed,
        Failed, Cancelled, or gone from the server); a run is requested only when files have
        waited a whole sweep (or are found on start) and no run of the deployment is
        scheduled, pending or running."""
        if self.deployment is None:
            self.look_up_deployment()
        reclaimed = self._reclaim_files_of_runs_that_are_over()
        oldest = self.ledger.oldest_pending(self.pipeline)
        deployment = self.deployment
        if (
            oldest is None
            or deployment is None
            or not (starting or now - oldest > self.sweep_seconds)
            or self.active(deployment.id)
        ):
            return Tended(reclaimed=reclaimed)
        log.warning("files wait with no run coming; requesting one")
        self.start_run(deployment.id)
        return Tended(reclaimed=reclaimed, requested=True)

    def _reclaim_files_of_runs_that_are_over(self) -> int:
        claimed = {
            f.run_id
            for f in self.ledger.files(self.pipeline)
            if f.state == "processing" and f.run_id
        }
        if not claimed:
            return 0
        over = self.finished(claimed)
        if not over:
            return 0
        # Only the runs known to be over: a run claiming files right now is not in `claimed`.
        reclaimed = self.ledger.reclaim_stale(self.pipeline, runs=over)
        if reclaimed:
            log.warning(
                "%d file(s) claimed by run(s) that ended without finishing them: retried",
                reclaimed,
            )
        return reclaimed
