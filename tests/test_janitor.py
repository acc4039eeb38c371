"""One sweep of each janitor and of the stale check, on a real ledger, without a server: the
server-facing calls are plain stand-ins that record what was asked of them."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from uuid import UUID, uuid4

import pytest

from eventpipe.core.names import ASSET_STALE
from eventpipe.ledger import AssetRow, Ledger
from eventpipe.loop.stale import StaleReporter
from eventpipe.orchestration.janitor import FoundDeployment, HereJanitor, Tended, WorkerJanitor
from eventpipe.testing import land_file

PIPELINE = "sales"
SWEEP = 30.0


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    ledger = Ledger.in_data_dir(tmp_path / "data")
    yield ledger
    ledger.close()


def land(ledger: Ledger, inbox: Path, *names: str) -> float:
    """Record files as the watcher would; returns when they were seen."""
    for name in names:
        land_file(ledger, PIPELINE, inbox, name, f"order_id,file\n1,{name}\n")
    oldest = ledger.oldest_pending(PIPELINE)
    assert oldest is not None
    return oldest


@dataclass
class Runner:
    """Stands in for the worker that executes the runs here: what the here-janitor reads of it."""

    busy: bool = False
    paused: bool = False
    current_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def idle(self) -> bool:
        return not self.busy


@dataclass
class Server:
    """Stands in for the Prefect server; remembers what the janitor asked."""

    orphaned: list[str] = field(default_factory=list)
    over: set[str] = field(default_factory=set)
    active: bool = False
    deployment: FoundDeployment | None = None
    crashed_for: list[UUID] = field(default_factory=list)
    started: list[UUID] = field(default_factory=list)

    def crash_runs(self, deployment_id: UUID) -> list[str]:
        self.crashed_for.append(deployment_id)
        crashed, self.orphaned = self.orphaned, []
        return crashed

    def start_run(self, deployment_id: UUID) -> None:
        self.started.append(deployment_id)


def here(ledger: Ledger, runner: Runner, server: Server, deployment_id: UUID) -> HereJanitor:
    return HereJanitor(
        ledger=ledger,
        pipeline=PIPELINE,
        deployment_id=deployment_id,
        runner=runner,
        sweep_seconds=SWEEP,
        crash_runs=server.crash_runs,
        start_run=server.start_run,
    )


def found(deployment_id: UUID | None = None, *problems: str) -> FoundDeployment:
    return FoundDeployment(deployment_id or uuid4(), "pool", problems)


def workers(ledger: Ledger, server: Server) -> WorkerJanitor:
    return WorkerJanitor(
        ledger=ledger,
        pipeline=PIPELINE,
        sweep_seconds=SWEEP,
        find=lambda: server.deployment,
        finished=lambda ids: ids & server.over,
        active=lambda deployment_id: server.active,
        start_run=server.start_run,
    )


# -- runs here ---------------------------------------------------------------------------------


def test_a_run_lost_with_its_server_is_crashed_and_its_files_retried(
    ledger: Ledger, tmp_path: Path
) -> None:
    land(ledger, tmp_path / "inbox", "a.csv", "b.csv")
    assert len(ledger.claim_pending(PIPELINE, "run-lost")) == 2
    server = Server(orphaned=["brave-otter"])
    deployment = uuid4()

    done = here(ledger, Runner(), server, deployment).tend_once(time.time())

    assert done == Tended(crashed=("brave-otter",), reclaimed=2, requested=False)
    assert server.crashed_for == [deployment]
    assert {f.state for f in ledger.files(PIPELINE)} == {"landed"}


def test_files_waiting_a_whole_sweep_get_a_run(ledger: Ledger, tmp_path: Path) -> None:
    seen = land(ledger, tmp_path / "inbox", "a.csv")
    server = Server()
    deployment = uuid4()
    janitor = here(ledger, Runner(), server, deployment)

    assert janitor.tend_once(seen + SWEEP / 2) == Tended()
    assert server.started == []
    assert janitor.tend_once(seen + SWEEP + 1).requested
    assert server.started == [deployment]


def test_nothing_is_touched_while_a_run_executes_here(ledger: Ledger, tmp_path: Path) -> None:
    seen = land(ledger, tmp_path / "inbox", "a.csv")
    ledger.claim_pending(PIPELINE, "run-now")
    server = Server(orphaned=["the-run-executing-now"])

    done = here(ledger, Runner(busy=True), server, uuid4()).tend_once(seen + 10 * SWEEP)

    assert done == Tended()
    assert server.crashed_for == []
    assert server.started == []
    assert {f.state for f in ledger.files(PIPELINE)} == {"processing"}


def test_nothing_is_touched_while_the_runner_is_paused(ledger: Ledger, tmp_path: Path) -> None:
    seen = land(ledger, tmp_path / "inbox", "a.csv")
    ledger.claim_pending(PIPELINE, "run-left")
    server = Server(orphaned=["run-left"])
    runner = Runner(paused=True)
    janitor = here(ledger, runner, server, uuid4())

    assert janitor.resting  # the tending thread skips the stale check as well
    assert janitor.tend_once(seen + 10 * SWEEP) == Tended()
    assert server.crashed_for == []
    assert server.started == []
    runner.paused = False
    assert not janitor.resting


def test_on_start_runs_left_by_a_killed_process_are_crashed_and_their_files_retried(
    ledger: Ledger, tmp_path: Path
) -> None:
    land(ledger, tmp_path / "inbox", "a.csv")
    ledger.claim_pending(PIPELINE, "run-killed")
    server = Server(orphaned=["run-killed"])
    deployment = uuid4()

    done = here(ledger, Runner(), server, deployment).recover_on_start()

    assert done == Tended(crashed=("run-killed",), reclaimed=1)
    assert server.crashed_for == [deployment]
    assert server.started == []  # the loop asks for a run itself once its runner listens
    assert {f.state for f in ledger.files(PIPELINE)} == {"landed"}


# -- runs on Prefect workers -------------------------------------------------------------------


def test_files_of_a_run_that_is_over_go_back_to_pending(ledger: Ledger, tmp_path: Path) -> None:
    land(ledger, tmp_path / "inbox", "a.csv")
    ledger.claim_pending(PIPELINE, "run-crashed")
    land(ledger, tmp_path / "inbox", "b.csv")
    ledger.claim_pending(PIPELINE, "run-running")
    server = Server(over={"run-crashed"}, active=True, deployment=found())

    done = workers(ledger, server).tend_once(time.time())

    assert done == Tended(reclaimed=1, requested=False)
    states = {f.relative: f.state for f in ledger.files(PIPELINE)}
    assert states == {"a.csv": "landed", "b.csv": "processing"}


def test_files_a_run_claims_while_the_janitor_looks_are_left_to_it(
    ledger: Ledger, tmp_path: Path
) -> None:
    """A run that claims files after the janitor read the claims, and before it reclaims
    those of runs that are over, keeps them: it is not over, only new to the janitor."""
    inbox = tmp_path / "inbox"
    land(ledger, inbox, "a.csv")
    ledger.claim_pending(PIPELINE, "run-crashed")
    land(ledger, inbox, "b.csv")
    server = Server(over={"run-crashed"}, active=True, deployment=found())

    def finished(ids: set[str]) -> set[str]:  # meanwhile, on another host, a run starts
        assert ids == {"run-crashed"}
        assert [f.relative for f in ledger.claim_pending(PIPELINE, "run-starting")] == ["b.csv"]
        return ids & server.over

    janitor = workers(ledger, server)
    janitor.finished = finished
    done = janitor.tend_once(time.time())

    assert done == Tended(reclaimed=1, requested=False)
    files = {f.relative: (f.state, f.run_id) for f in ledger.files(PIPELINE)}
    assert files == {"a.csv": ("landed", "run-crashed"), "b.csv": ("processing", "run-starting")}


def test_a_run_is_requested_only_when_none_is_on_its_way(ledger: Ledger, tmp_path: Path) -> None:
    seen = land(ledger, tmp_path / "inbox", "a.csv")
    deployment = uuid4()
    server = Server(active=True, deployment=found(deployment))
    janitor = workers(ledger, server)

    assert not janitor.tend_once(seen + SWEEP + 1).requested  # a run is scheduled already
    server.active = False
    assert not janitor.tend_once(seen + SWEEP / 2).requested  # not waited a sweep yet
    assert janitor.tend_once(seen + SWEEP / 2, starting=True).requested  # found on start
    assert janitor.tend_once(seen + SWEEP + 1).requested
    assert server.started == [deployment, deployment]


def test_until_the_deployment_exists_files_wait(
    ledger: Ledger, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    seen = land(ledger, tmp_path / "inbox", "a.csv")
    server = Server()
    janitor = workers(ledger, server)
    caplog.set_level(logging.WARNING, logger="eventpipe")

    assert not janitor.tend_once(seen + 10 * SWEEP, starting=True).requested
    assert not janitor.tend_once(seen + 11 * SWEEP).requested
    assert janitor.deployment is None
    missing = [r for r in caplog.records if "no deployment materialize/sales" in r.message]
    assert len(missing) == 1  # said once, not every sweep

    server.deployment = found(None, "it is paused: `prefect deployment resume` it")
    assert janitor.tend_once(seen + 12 * SWEEP).requested
    assert janitor.deployment == server.deployment
    assert "deployment materialize/sales: it is paused" in caplog.text


# -- stale analytics -----------------------------------------------------------------------


def publish(ledger: Ledger, version: str) -> None:
    ledger.publish(
        AssetRow(
            pipeline=PIPELINE,
            name="revenue",
            partition="",
            kind="analytics",
            key="file:///data/analytics/sales/revenue.parquet",
            version=version,
            path="/data/analytics/sales/revenue.parquet",
            rows=1,
            size=1,
            mtime_ns=1,
            code_version="c1",
            input_fingerprint="f",
            updated_at=time.time(),
        ),
        f"/data/versions/sales/revenue/{version}.parquet",
        [],
        "run-1",
    )


def test_a_stale_asset_is_said_once_per_version(ledger: Ledger, tmp_path: Path) -> None:
    publish(ledger, "v1")
    seen = land(ledger, tmp_path / "inbox", "late.csv")
    pokes: list[None] = []
    reporter = StaleReporter(
        ledger=ledger, pipeline=PIPELINE, stale_minutes=1, poke=lambda: pokes.append(None)
    )

    assert reporter.report_once(seen + 30) == []  # landed only half a minute ago
    assert reporter.report_once(seen + 61) == ["revenue"]
    assert reporter.report_once(seen + 120) == []  # said already for this version
    publish(ledger, "v2")
    assert reporter.report_once(seen + 180) == ["revenue"]

    stale = [body for _, body, _ in ledger.unsent(500) if body["event"] == ASSET_STALE]
    assert [body["payload"]["version"] for body in stale] == ["v1", "v2"]
    assert len(pokes) == 2
