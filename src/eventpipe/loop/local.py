"""The local loop, assembled: ``eventpipe up`` runs one; tests and benchmarks start one
in-process. ``LocalLoop`` only starts services in order and stops them in reverse:

    embedded server -> ledger + outbox pump -> runs (here: deployment, embedded worker; or the
    view of a worker deployment) -> automations -> fetches -> intake (watcher) -> code
    watcher -> tending (janitor + stale check, every sweep)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

from eventpipe.events.outbox import OutboxPump
from eventpipe.exceptions import ConfigError
from eventpipe.ledger import Ledger
from eventpipe.loop.code_watch import CodeWatcher
from eventpipe.loop.hold import Hold
from eventpipe.loop.intake import Intake
from eventpipe.loop.stale import StaleReporter
from eventpipe.loop.tending import Tending
from eventpipe.orchestration.server import EmbeddedServer, configure_api
from eventpipe.pipeline import Pipeline, absolute_spec, load_pipeline
from eventpipe.settings import Settings

if TYPE_CHECKING:
    from eventpipe.loop.fetches import FetchScheduler
    from eventpipe.loop.runs import RunsHere, RunsOnWorkers
    from eventpipe.orchestration.here import WorkerHere

log = logging.getLogger("eventpipe")


@dataclass(frozen=True)
class Started:
    """The services ``start`` built, in the order it starts them; ``stop`` stops them in
    reverse. Built once the server, the ledger and the pump are up."""

    server: EmbeddedServer | None
    pipeline: Pipeline
    ledger: Ledger
    pump: OutboxPump
    runs: RunsHere | RunsOnWorkers
    fetches: FetchScheduler | None
    """Only when runs are here: workers execute no fetch."""
    intake: Intake | None
    """None with ``start(watch=False)``."""


class LocalLoop:
    """Everything ``eventpipe up`` runs, started and stopped as one."""

    def __init__(
        self,
        settings: Settings,
        on_run: Callable[[str, Any], None] | None = None,
        on_fetch: Callable[[str, Any], None] | None = None,
    ) -> None:
        self.settings = settings.resolved()
        self.on_run = on_run
        self.on_fetch = on_fetch
        self.spec = absolute_spec(self.settings.pipeline)
        self.started: Started | None = None
        self._stop = threading.Event()
        self._server: EmbeddedServer | None = None
        """The embedded server from the moment it starts: stopped even if start fails later."""
        self._hold: Hold | None = None
        self._ledger: Ledger | None = None

    # -- what was started, for the CLI, tests and benchmarks ------------------------------------

    def _up(self) -> Started:
        if self.started is None:
            raise RuntimeError("the loop is not started")
        return self.started

    @property
    def pipeline(self) -> Pipeline:
        return self._up().pipeline

    @property
    def ledger(self) -> Ledger:
        return self._up().ledger

    @property
    def server(self) -> EmbeddedServer | None:
        return self._up().server

    @property
    def deployment_id(self) -> UUID | None:
        """Deployment ``materialize/<pipeline>`` (with workers: None until it exists)."""
        return self._up().runs.deployment_id

    @property
    def work_pool(self) -> str | None:
        """The work pool whose workers execute the runs (here: this process's own pool)."""
        return self._up().runs.work_pool

    @property
    def runner(self) -> WorkerHere | None:
        """The worker executing the runs here (None when workers elsewhere execute them)."""
        return self._up().runs.runner

    @property
    def fetch_deployment_ids(self) -> dict[str, UUID]:
        """Deployment ``fetch/<pipeline>-<fetch>`` of each ``@pipeline.fetch``, by fetch name."""
        fetches = self._up().fetches
        return fetches.deployment_ids if fetches is not None else {}

    @property
    def source_description(self) -> str:
        """What is watched, for people: the inbox path or ``s3://bucket/prefix``."""
        if self.settings.source:
            return self.settings.source
        if self.settings.s3_bucket_block:
            return f"S3Bucket block {self.settings.s3_bucket_block!r}"
        return str(self.settings.inbox)

    @property
    def task_runner_description(self) -> str:
        """Where the files' tasks run, for people."""
        return self._up().runs.task_runner_description

    @property
    def data(self) -> Path:
        """The local data dir (a bucket data dir has none: see :attr:`data_location`)."""
        return self.settings.data_dir

    @property
    def data_location(self) -> str:
        """The data dir: a folder's path, or ``s3://bucket/prefix``."""
        return self.settings.data

    @property
    def runs_here(self) -> bool:
        """Whether this process executes the runs (else Prefect workers do)."""
        return self.settings.runs == "here"

    # -- starting and stopping ---------------------------------------------------------------

    def start(self, *, watch: bool = True) -> LocalLoop:
        """Start every service, in order; if one fails, what was started is stopped again
        (the server, the hold on the pipeline, the ledger's connections)."""
        try:
            return self._start(watch)
        except BaseException:
            self.stop()
            raise

    def _start(self, watch: bool) -> LocalLoop:
        s = self.settings
        if not self.runs_here and not s.api_url:
            raise ConfigError(
                "--runs worker needs --api-url: the Prefect server that `prefect deploy` and the"
                " workers use (e.g. http://prefect:4200/api)"
            )
        pipeline = load_pipeline(self.spec)
        if not s.data_in_bucket:
            s.data_dir.mkdir(parents=True, exist_ok=True)
        ledger = self._ledger = Ledger.of(s)
        # Before anything starts: a second `up` of this pipeline and ledger stops here.
        self._hold = Hold(ledger, pipeline.name, self._stop).take()
        server = self._server = configure_api(s)
        if server is not None:
            server.start()
        # Prefect reads its settings once, at import: what imports it loads only now that
        # configure_api has pointed it at the server.
        from eventpipe.intake.aws import store_options
        from eventpipe.loop.fetches import FetchScheduler
        from eventpipe.loop.runs import RunsHere, RunsOnWorkers
        from eventpipe.run.deliver import prefect_sender

        pump = OutboxPump(ledger, prefect_sender()).start()
        runs: RunsHere | RunsOnWorkers = (
            RunsHere(s, pipeline=pipeline, spec=self.spec, ledger=ledger, on_run=self.on_run)
            if self.runs_here
            else RunsOnWorkers(s, pipeline=pipeline, ledger=ledger)
        )
        fetches = (
            FetchScheduler(
                pipeline=pipeline,
                spec=self.spec,
                data=s.data,
                storage=store_options(s),
                sweep_seconds=s.sweep_seconds,
                on_fetch=self.on_fetch,
            )
            if self.runs_here
            else None
        )
        intake = (
            Intake(s, pipeline=pipeline.name, ledger=ledger, poke=pump.poke, stop=self._stop)
            if watch
            else None
        )
        self.started = Started(server, pipeline, ledger, pump, runs, fetches, intake)
        runs.start()
        self.apply_automations()
        if fetches is not None:
            fetches.start()
        if intake is not None:
            intake.start()
        CodeWatcher(self.code_files, on_change=self.kick, stop=self._stop).start()
        stale = StaleReporter(
            ledger=ledger, pipeline=pipeline.name, stale_minutes=s.stale_minutes, poke=pump.poke
        )
        Tending(janitor=runs.janitor, stale=stale, every=s.sweep_seconds, stop=self._stop).start()
        return self

    def apply_automations(self) -> list[tuple[str, str]]:
        """Create or update the pipeline's paging automations, if a notification target is
        set (``notify_webhook`` or ``notify_block``)."""
        from eventpipe.orchestration import automations  # imports Prefect: after start()

        s = self.settings
        block_id = automations.notification_block(s.notify_block, s.notify_webhook)
        if block_id is None:
            log.info("no notify_webhook or notify_block set: automations not created")
            return []
        deployment_id = self.deployment_id
        if deployment_id is None:  # workers: `prefect deploy` has not run yet
            log.warning("automations not created: the deployment does not exist yet")
            return []
        done = automations.apply(self.pipeline.name, deployment_id, block_id, s.stale_minutes)
        for name, what in done:
            log.info("automation %r %s", name, what)
        return done

    def code_files(self) -> list[str]:
        """The files of the pipeline's code: as loaded at start, and as the runs executed in
        this process last loaded it."""
        from eventpipe.run.context import watched_files  # imports Prefect: after start()

        return sorted({*self.pipeline.code_files, *watched_files(self.spec)})

    def kick(self) -> None:
        """Start a run now (pending work found on start, edited code, ``eventpipe retry``)."""
        from eventpipe.orchestration.deploy import request_run  # imports Prefect: after start()

        deployment_id = self.deployment_id
        if deployment_id is not None:  # workers: `prefect deploy` has not run yet
            request_run(deployment_id)

    def stop(self) -> None:
        """Stop watching, pause the deployment and its trigger (when runs are here), let the
        current run finish, deliver queued events, stop the server. Stopping twice is
        harmless."""
        if self._stop.is_set():
            return
        self._stop.set()  # the watcher, the code watcher and the tending thread end
        started = self.started
        if started is None:  # start failed before the services were up
            if self._server is not None:
                self._server.stop()
            self._let_go()
            return
        if started.intake is not None:
            started.intake.join()
        started.runs.pause()  # first: no run is triggered while the runners finish theirs
        if started.fetches is not None:
            started.fetches.stop()
        started.runs.stop()
        started.pump.stop()
        self._let_go()
        if started.server is not None:
            started.server.stop()

    def _let_go(self) -> None:
        """Let go of the pipeline and close the ledger's connections (last: everything that
        used them has stopped)."""
        if self._hold is not None:
            self._hold.let_go()
            self._hold = None
        if self._ledger is not None:
            self._ledger.close()

    def __enter__(self) -> LocalLoop:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
