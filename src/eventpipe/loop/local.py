"""The local loop, assembled: embedded server, deployment + trigger, push runner, outbox pump
and folder watcher. ``eventpipe up`` runs one; tests and benchmarks start one in-process."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

from eventpipe.core.models import Landed
from eventpipe.core.storage import quarantine, quarantine_note
from eventpipe.exceptions import ConfigError
from eventpipe.intake.local import FolderSource, Rejected
from eventpipe.intake.record import record
from eventpipe.ledger import Ledger
from eventpipe.orchestration.server import EmbeddedServer, configure_api
from eventpipe.pipeline import Pipeline, absolute_spec, load_pipeline, pipeline_source
from eventpipe.settings import Settings

if TYPE_CHECKING:
    from eventpipe.events.outbox import OutboxPump
    from eventpipe.intake.s3 import BucketSource
    from eventpipe.orchestration.runner import PushRunner
    from eventpipe.run.dask import LocalDask

log = logging.getLogger("eventpipe")


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
        self.server: EmbeddedServer | None = None
        self.pipeline: Pipeline | None = None
        self.ledger: Ledger | None = None
        self.deployment_id: UUID | None = None
        self.work_pool: str | None = None
        self._told_no_deployment = False
        """With ``runs = "worker"``: the work pool whose workers execute the runs."""
        self.fetch_deployment_ids: dict[str, UUID] = {}
        """Deployment ``fetch/<pipeline>-<fetch>`` of each ``@pipeline.fetch``, by fetch name."""
        self._fetch_runner: PushRunner | None = None
        self._dask: LocalDask | None = None
        self._pump: OutboxPump | None = None
        self._runner: PushRunner | None = None
        self._source: FolderSource | BucketSource | None = None
        self._stop = threading.Event()
        self._stale_reported: set[tuple[str, str]] = set()
        self._watch_thread: threading.Thread | None = None

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
        if self._dask is not None:
            return self._dask.description
        return self.settings.task_runner

    @property
    def data(self) -> Path:
        return self.settings.data

    @property
    def runs_here(self) -> bool:
        """Whether this process executes the runs (else Prefect workers do)."""
        return self.settings.runs == "here"

    def start(self, *, watch: bool = True) -> LocalLoop:
        s = self.settings
        if not self.runs_here and not s.api_url:
            raise ConfigError(
                "--runs worker needs --api-url: the Prefect server that `prefect deploy` and the"
                " workers use (e.g. http://prefect:4200/api)"
            )
        self.server = configure_api(s)
        self.pipeline = load_pipeline(self.spec)
        if self.server is not None:
            self.server.start()
        from eventpipe.events.outbox import OutboxPump
        from eventpipe.orchestration import deploy
        from eventpipe.orchestration.runner import PushRunner, crash_orphaned_runs
        from eventpipe.run import flow as flows
        from eventpipe.run.deliver import prefect_sender

        s.data.mkdir(parents=True, exist_ok=True)
        self.ledger = Ledger.in_data_dir(s.data)
        self._pump = OutboxPump(self.ledger, prefect_sender()).start()
        if not self.runs_here:
            # Workers execute the runs of the deployment `prefect deploy` made: watch, record
            # and send events; never register, claim, execute or crash a run.
            self._look_up_deployment()
            self._tend_for_workers(starting=True)
            self.apply_automations()
            self._start_watching(watch)
            return self
        flows.warm_up(self.spec)
        task_runner = s.task_runner
        if task_runner == "dask":  # one cluster for all runs: workers start once, stay warm
            from eventpipe.run.dask import LocalDask

            self._dask = LocalDask(self.spec)
            task_runner = self._dask.start()
        self.deployment_id = deploy.register(
            self.pipeline, self.spec, s.data, s.publish_options(), task_runner
        )
        self.apply_automations()
        crashed = crash_orphaned_runs(self.deployment_id)
        if crashed:
            log.warning("marked run(s) left by a stopped eventpipe as Crashed: %s", crashed)
        recovered = self.ledger.reclaim_stale(self.pipeline.name)
        if recovered:
            log.warning(
                "%d file(s) were being processed when eventpipe stopped; retrying", recovered
            )
        self._runner = PushRunner(
            flows.materialize_pipeline,
            self.deployment_id,
            sweep_seconds=s.sweep_seconds,
            on_finished=self._finished,
        ).start()
        if self.ledger.counts(self.pipeline.name).keys() & {"landed", "sent"}:
            self.kick()
        self._start_fetches()
        self._start_watching(watch)
        return self

    def _start_watching(self, watch: bool) -> None:
        s = self.settings
        if watch:
            self._source = self._bucket_source() if s.watches_bucket else self._folder_source()
            self._watch_thread = threading.Thread(
                target=self._source.run, args=(self._stop,), name="eventpipe-watch", daemon=True
            )
            self._watch_thread.start()
            self._source.ready.wait(60)
        threading.Thread(target=self._watch_code, name="eventpipe-code", daemon=True).start()
        threading.Thread(target=self._tend, name="eventpipe-tend", daemon=True).start()

    def _look_up_deployment(self) -> None:
        """Find the deployment `prefect deploy` registered; say what is wrong with it, if
        anything. Until it exists, files are recorded and wait."""
        from eventpipe.orchestration.worker_deployment import deployment_problems, find_deployment

        assert self.pipeline is not None
        found = find_deployment(self.pipeline.name)
        if found is None:
            if self._told_no_deployment:
                return
            self._told_no_deployment = True
            log.warning(
                "no deployment materialize/%s on the server yet: run `prefect deploy` (see"
                " prefect.yaml); files are recorded and wait for it",
                self.pipeline.name,
            )
            return
        self.deployment_id, self.work_pool = found.id, found.work_pool_name
        for problem in deployment_problems(found, self.pipeline.name, self.settings.data):
            log.warning("deployment materialize/%s: %s", self.pipeline.name, problem)

    def _tend_for_workers(self, *, starting: bool = False) -> None:
        """The janitor when workers execute the runs. It never touches a run: files a run
        claimed go back to pending only once that run is over (Crashed, Failed, Cancelled, or
        gone from the server), and a run is requested only when files have waited a whole
        sweep (or are found on start) and no run of the deployment is scheduled, pending or
        running."""
        from eventpipe.orchestration.worker_deployment import finished_runs, has_active_run

        assert self.ledger is not None
        assert self.pipeline is not None
        name = self.pipeline.name
        if self.deployment_id is None:
            self._look_up_deployment()
        claimed = {
            f.run_id for f in self.ledger.files(name) if f.state == "processing" and f.run_id
        }
        if claimed:
            over = finished_runs(claimed)
            reclaimed = self.ledger.reclaim_stale(name, live_run_ids=claimed - over)
            if reclaimed:
                log.warning(
                    "%d file(s) claimed by run(s) that ended without finishing them: retried",
                    reclaimed,
                )
        oldest = self.ledger.oldest_pending(name)
        if (
            oldest is not None
            and self.deployment_id is not None
            and (starting or time.time() - oldest > self.settings.sweep_seconds)
            and not has_active_run(self.deployment_id)
        ):
            log.warning("files wait with no run coming; requesting one")
            self.kick()

    def _start_fetches(self) -> None:
        """Register each fetch's scheduled deployment and run its runs here when they are due.

        Runs missed while eventpipe was stopped are cancelled but the newest, which fetches
        at once; a deployment or schedule paused in the UI is left paused."""
        from eventpipe.orchestration import deploy
        from eventpipe.orchestration.runner import PushRunner, crash_orphaned_runs, skip_missed_runs
        from eventpipe.run.fetch import fetch_source

        assert self.pipeline is not None
        if not self.pipeline.fetches:
            return
        self.fetch_deployment_ids = deploy.register_fetches(
            self.pipeline, self.spec, self.settings.data
        )
        for name, deployment_id in self.fetch_deployment_ids.items():
            crash_orphaned_runs(deployment_id)
            missed = skip_missed_runs(deployment_id)
            if missed:
                log.info("fetch %s: %d run(s) missed while stopped were cancelled", name, missed)
        self._fetch_runner = PushRunner(
            fetch_source,
            list(self.fetch_deployment_ids.values()),
            sweep_seconds=self.settings.sweep_seconds,
            on_finished=self._fetched,
            respect_paused=True,
        ).start()

    def _fetched(self, run: Any, state: Any) -> None:
        if self.on_fetch is not None:
            self.on_fetch(run.name, state)

    def _tend(self) -> None:
        """Every sweep, while no run executes here (runs of this deployment execute only in
        this process): runs left Pending/Running by a server that vanished under them are
        marked Crashed, their files go back to pending, and files that have waited a whole
        sweep with no run coming (their event reached a server that then died) get one."""
        from eventpipe.orchestration.runner import crash_orphaned_runs

        assert self.ledger is not None
        assert self.pipeline is not None
        every = self.settings.sweep_seconds
        while not self._stop.wait(every):
            if not self.runs_here:
                try:
                    self._report_stale()
                    self._tend_for_workers()
                except Exception as exc:  # the server is away: the next sweep tries again
                    log.debug("tending skipped: %s", exc)
                continue
            assert self.deployment_id is not None
            runner = self._runner
            if runner is None or runner.paused:
                continue
            try:
                self._report_stale()
            except Exception as exc:
                log.debug("stale check skipped: %s", exc)
            try:
                # Under the lock no run can be claimed or claim files meanwhile.
                with runner.current_lock:
                    if not runner.idle:
                        continue
                    crashed = crash_orphaned_runs(self.deployment_id)
                    reclaimed = self.ledger.reclaim_stale(self.pipeline.name)
                if crashed or reclaimed:
                    log.warning(
                        "run(s) %s lost their server mid-way: marked Crashed; %d file(s) retried",
                        crashed,
                        reclaimed,
                    )
                oldest = self.ledger.oldest_pending(self.pipeline.name)
                if oldest is not None and time.time() - oldest > every:
                    log.warning("files wait with no run coming; starting one")
                    self.kick()
            except Exception as exc:  # the server is away: the next sweep tries again
                log.debug("tending skipped: %s", exc)

    def _report_stale(self) -> None:
        """``eventpipe.asset.stale`` (once per asset version) for each analytics asset while
        files that landed over ``stale_minutes`` ago are still not in it (waiting, or failed)."""
        from eventpipe.events.build import stale_event

        assert self.ledger is not None
        assert self.pipeline is not None
        now = time.time()
        count, oldest = self.ledger.behind(
            self.pipeline.name, now - self.settings.stale_minutes * 60
        )
        if not count or oldest is None:
            return
        for row in self.ledger.assets(self.pipeline.name):
            if row.kind != "analytics" or (row.name, row.version) in self._stale_reported:
                continue
            event_id, body = stale_event(
                self.pipeline.name, row.name, row.key, row.version, now - oldest, count
            )
            self.ledger.queue_event(event_id, body)
            self._stale_reported.add((row.name, row.version))
            log.warning(
                "%s is stale: %d file(s) not in it yet, the oldest landed %.0f min ago",
                row.name,
                count,
                (now - oldest) / 60,
            )
            if self._pump is not None:
                self._pump.poke()

    def apply_automations(self) -> list[tuple[str, str]]:
        """Create or update the pipeline's paging automations, if a notification target is
        set (``notify_webhook`` or ``notify_block``)."""
        from eventpipe.orchestration import automations

        s = self.settings
        assert self.pipeline is not None
        block_id = automations.notification_block(s.notify_block, s.notify_webhook)
        if block_id is None:
            log.info("no notify_webhook or notify_block set: automations not created")
            return []
        if self.deployment_id is None:  # workers: `prefect deploy` has not run yet
            log.warning("automations not created: the deployment does not exist yet")
            return []
        done = automations.apply(self.pipeline.name, self.deployment_id, block_id, s.stale_minutes)
        for name, what in done:
            log.info("automation %r %s", name, what)
        return done

    def _folder_source(self) -> FolderSource:
        s = self.settings
        return FolderSource(
            s.inbox,
            self._on_landed,
            self._on_rejected,
            settle_seconds=s.settle_seconds,
            max_file_bytes=s.max_file_bytes,
            rescan_seconds=s.rescan_seconds,
        )

    def _bucket_source(self) -> BucketSource:
        from eventpipe.core.storage import Storage
        from eventpipe.intake.s3 import (
            BucketSource,
            SeenObject,
            aws_clients,
            bucket_location,
            resolve_queue,
        )

        s = self.settings
        assert self.pipeline is not None
        name = self.pipeline.name
        ledger = self.ledger
        assert ledger is not None

        def seen(uri: str, tag: str) -> SeenObject | None:
            found = ledger.seen_object(name, uri, tag)
            return SeenObject(*found) if found else None

        clients = aws_clients(s)
        return BucketSource(
            bucket_location(s),
            resolve_queue(clients[1], s.queue),
            clients,
            staging=s.data / "raw" / name,
            snapshot_path=Storage(s.data, name).raw_snapshot_path,
            seen=seen,
            on_landed=self._on_landed,
            on_rejected=self._on_bucket_rejected,
            max_file_bytes=s.max_file_bytes,
            wait_seconds=s.queue_wait_seconds,
            rescan_seconds=max(s.rescan_seconds, 60.0),
        )

    def _watch_code(self) -> None:
        """Edited step code changes code versions: start a run so dependents are recomputed."""
        source = pipeline_source(self.spec)
        if source is None:
            return
        last = _mtime(source)
        while not self._stop.wait(1.0):
            now = _mtime(source)
            if now != last:
                last = now
                log.info("pipeline code changed (%s); recomputing what depends on it", source)
                try:
                    self.kick()
                except Exception as exc:
                    log.warning("could not start a run: %s", exc)

    def _finished(self, run: Any, state: Any) -> None:
        if self.on_run is not None:
            self.on_run(run.name, state)

    def kick(self) -> None:
        """Start a run now (pending work found on start, ``eventpipe retry``)."""
        from prefect.client.orchestration import get_client

        if self.deployment_id is None:  # workers: `prefect deploy` has not run yet
            return
        with get_client(sync_client=True) as client:
            client.create_flow_run_from_deployment(self.deployment_id)

    def _on_landed(self, landed: Landed) -> None:
        assert self.ledger is not None
        assert self.pipeline is not None
        assert self._pump is not None
        outcome = record(self.ledger, self.pipeline.name, landed)
        log.info("%s: %s", landed.relative, outcome)
        self._pump.poke()

    def _on_rejected(self, rejected: Rejected) -> None:
        """Refused before reading (unsupported type, too large, a link out of the inbox): move
        it to quarantine, record it and say why."""
        from eventpipe.events.build import rejected_event

        assert self.ledger is not None
        assert self.pipeline is not None
        stat = rejected.path.lstat()
        landed = Landed(
            uri="file://" + str(rejected.path),  # the link itself, never its target
            relative=rejected.relative,
            size=stat.st_size,
            fingerprint=f"unread-{stat.st_size}-{stat.st_mtime_ns}",
            source="local",
            local_path=str(rejected.path),
        )
        target = quarantine(
            self.settings.data,
            self.pipeline.name,
            rejected.path,
            rejected.relative,
            rejected.reason,
            None,
        )
        self.ledger.record_rejected(
            self.pipeline.name,
            landed,
            rejected.reason,
            lambda row: rejected_event(row, rejected.reason, str(target)),
        )
        log.warning("quarantined %s: %s", rejected.relative, rejected.reason)
        if self._pump is not None:
            self._pump.poke()

    def _on_bucket_rejected(self, landed: Landed, reason: str) -> None:
        """Refused before reading: the object stays in the bucket; quarantine holds a note."""
        from eventpipe.events.build import rejected_event

        assert self.ledger is not None
        assert self.pipeline is not None
        note = quarantine_note(
            self.settings.data, self.pipeline.name, landed.relative, reason, None, landed.uri
        )
        self.ledger.record_rejected(
            self.pipeline.name, landed, reason, lambda row: rejected_event(row, reason, str(note))
        )
        log.warning("rejected %s: %s", landed.uri, reason)
        if self._pump is not None:
            self._pump.poke()

    def stop(self) -> None:
        """Stop watching, pause the deployment and its trigger, let the current run finish,
        deliver queued events, stop the server. Stopping twice is harmless."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._watch_thread is not None:
            # A bucket source may sit in a long poll; what it takes after this is durable in
            # the ledger and its message is redelivered if not yet deleted.
            self._watch_thread.join(2 if self.settings.watches_bucket else 10)
        if self.deployment_id is not None and self.runs_here:
            # With workers the deployment is `prefect deploy`'s, shared with other watchers
            # and runs by other workers: it stays as it is.
            try:
                from eventpipe.orchestration import deploy

                deploy.set_paused(self.deployment_id, paused=True)
            except Exception as exc:
                log.warning("could not pause the deployment: %s", exc)
        if self._fetch_runner is not None:
            self._fetch_runner.stop()
        if self._runner is not None:
            self._runner.paused = True
            self._runner.stop()
        if self._pump is not None:
            self._pump.stop()
        if self._dask is not None:
            self._dask.close()
        if self.server is not None:
            self.server.stop()

    def __enter__(self) -> LocalLoop:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0
