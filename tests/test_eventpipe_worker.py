"""The `eventpipe` worker type, as a user runs it: `prefect work-pool create P --type eventpipe`,
`eventpipe deploy --pool P`, two `prefect worker start --pool P`, and `eventpipe up --runs
worker` watching a folder. Files become analytics through runs executed in warm processes (each
started before its run existed); a warm process killed mid-run leaves its run Crashed and its
files retried by a new process; a running run cancelled through the API is stopped and ends
Cancelled, its files retried too.

On the session's Prefect server, with the ledger in a PostgreSQL database of its own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.client.schemas.objects import FlowRun
from prefect.exceptions import ObjectNotFound
from prefect.states import Cancelling

from eventpipe.ledger import Ledger
from eventpipe.orchestration.server import EmbeddedServer
from eventpipe.testing import (
    Background,
    cut_proxy,
    drop_file,
    eventpipe_up,
    fresh_database,
    host_env,
    read_events,
    wait_for,
)

ACTIVE = {"SCHEDULED", "PENDING", "RUNNING", "CANCELLING"}
# The step records which process ran it and when that process started, and waits while HOLD
# exists, so the test can catch a run mid-work.
PIPELINE = """
import json
import os
import time
from pathlib import Path

import pandas as pd

from eventpipe import Pipeline

pipeline = Pipeline({name!r})
HOLD = Path({hold!r})
SEEN = Path({seen!r})


def process_started() -> float:
    ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
    boot = next(
        float(line.split()[1])
        for line in Path("/proc/stat").read_text().splitlines()
        if line.startswith("btime")
    )
    return boot + ticks / os.sysconf("SC_CLK_TCK")


@pipeline.process
def cleaned(raw: pd.DataFrame) -> pd.DataFrame:
    record = {{"pid": os.getpid(), "started": process_started(), "run": os.environ.get(
        "PREFECT__FLOW_RUN_ID")}}
    with SEEN.open("a") as seen:
        seen.write(json.dumps(record) + "\\n")
    deadline = time.monotonic() + 300
    while HOLD.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return raw


@pipeline.analytics
def total(cleaned: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({{"amount": [int(cleaned["amount"].sum())], "rows": [len(cleaned)]}})
"""


def cli(env: dict[str, str], cwd: Path, *argv: str) -> str:
    done = subprocess.run(
        [sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def runs_of(deployment_id: uuid.UUID) -> list[FlowRun]:
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
        )


def states(deployment_id: uuid.UUID) -> dict[str, str]:
    return {str(r.id): r.state_type.value if r.state_type else "" for r in runs_of(deployment_id)}


class Setup:
    """A pool of type eventpipe with the pipeline deployed on it, two workers, a watcher."""

    def __init__(self, api: str, root: Path, ledger: str) -> None:
        self.api, self.root, self.ledger = api, root, ledger
        self.name = "warm" + uuid.uuid4().hex[:10]
        self.pool = "pool-" + uuid.uuid4().hex[:10]
        self.hold, self.seen = root / "hold", root / "seen.jsonl"
        self.data, self.inbox = root / "data", root / "watcher" / "inbox"
        (root / "project").mkdir()
        pipeline = root / "project" / "pipeline.py"
        pipeline.write_text(
            PIPELINE.format(name=self.name, hold=str(self.hold), seen=str(self.seen))
        )
        self.spec = f"{pipeline}:pipeline"
        self.workers: list[Background] = []
        self.up: Background | None = None
        self.deployment_id: uuid.UUID | None = None

    def env(self, home: Path, api: str | None = None, **extra: str) -> dict[str, str]:
        home.mkdir(parents=True, exist_ok=True)
        return host_env(api or self.api, home, EVENTPIPE_LEDGER=self.ledger, **extra)

    def deploy(self) -> str:
        where = self.root / "deployer"
        env = self.env(where)
        created = cli(
            env, where, "-m", "prefect", "work-pool", "create", self.pool, "--type", "eventpipe"
        )
        argv = ["deploy", "--pipeline", self.spec, "--pool", self.pool, "--data", str(self.data)]
        cli(env, where, "-m", "eventpipe.cli", *argv, "--api-url", self.api)
        with get_client(sync_client=True) as client:
            self.deployment_id = client.read_deployment_by_name(f"materialize/{self.name}").id
        return created

    def start_workers(self, count: int = 2, api: str | None = None, **extra: str) -> None:
        for i in range(1, count + 1):
            home = self.root / f"worker-{i}"
            settings = {"PREFECT_WORKER_QUERY_SECONDS": "10", **extra}
            env = self.env(home, api, PREFECT_LOGGING_LEVEL="INFO", **settings)
            argv = ["worker", "start", "--pool", self.pool, "--name", f"{self.pool}-{i}"]
            worker = Background(
                [sys.executable, "-m", "prefect", *argv, "--limit", "1"],
                home / "worker.log",
                env=env,
                cwd=home,
            )
            self.workers.append(worker.start())
        for worker in self.workers:
            worker.wait_for_output("started!", 180)

    def start_watcher(self) -> None:
        home = self.root / "watcher"
        self.up = eventpipe_up(
            *("--runs", "worker", "--pipeline", self.spec, "--data", str(self.data)),
            *("--inbox", str(self.inbox)),
            root=home,
            api_url=self.api,
            env={**self.env(home), "EVENTPIPE_SWEEP_SECONDS": "2"},
        )

    def files(self) -> list[Any]:
        with Ledger(self.ledger) as ledger:
            return ledger.files(self.name)

    def all_done(self, count: int) -> bool:
        found = self.files()
        return len(found) == count and all(f.state == "done" for f in found)

    def seen_records(self) -> list[dict[str, Any]]:
        if not self.seen.exists():
            return []
        return [json.loads(line) for line in self.seen.read_text().splitlines() if line]

    def running_run(self) -> FlowRun | None:
        assert self.deployment_id is not None
        held = {f.run_id for f in self.files() if f.state == "processing"}
        for run in runs_of(self.deployment_id):
            if (
                run.state_type is not None
                and run.state_type.value == "RUNNING"
                and str(run.id) in held
            ):
                return run
        return None

    def story(self) -> str:
        lines = [f"ledger: {[(f.relative, f.state, f.run_id, f.attempts) for f in self.files()]}"]
        if self.deployment_id is not None:
            lines += [
                f"run {r.id} {r.state_type} pid={r.infrastructure_pid}"
                for r in runs_of(self.deployment_id)
            ]
        for i, worker in enumerate(self.workers, 1):
            lines.append(f"--- worker {i} ---\n" + worker.output()[-5000:])
        if self.up is not None:
            lines.append("--- watcher ---\n" + self.up.output()[-3000:])
        return "\n".join(lines)

    def stop(self) -> None:
        if self.up is not None:
            self.up.stop(timeout=20)
        for worker in self.workers:
            worker.stop(timeout=30)
        with get_client(sync_client=True) as client:
            for deployment in client.read_deployments():
                if deployment.work_pool_name == self.pool:
                    with suppress(ObjectNotFound):
                        client.delete_resource_owned_automations(
                            f"prefect.deployment.{deployment.id}"
                        )
                        client.delete_deployment(deployment.id)
            with suppress(ObjectNotFound):
                client.delete_work_pool(self.pool)


@pytest.fixture
def setup(prefect_server: EmbeddedServer, postgres_url: str, tmp_path: Path) -> Iterator[Setup]:
    made = Setup(prefect_server.api_url, tmp_path, fresh_database(postgres_url, "warm"))
    try:
        yield made
    finally:
        made.stop()
        with suppress(FileNotFoundError):
            made.hold.unlink()


def drop(setup: Setup, name: str, *amounts: int) -> None:
    drop_file(setup.inbox, name, "amount\n" + "".join(f"{a}\n" for a in amounts))


def waiting(setup: Setup, check: Any, timeout: float, what: str) -> Any:
    try:
        return wait_for(check, timeout, 0.2, what=what)
    except TimeoutError as exc:
        raise AssertionError(f"timed out waiting for {what}\n{setup.story()}") from exc


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_eventpipe_workers_run_files_into_analytics_in_warm_processes(setup: Setup) -> None:
    created = setup.deploy()
    assert f"Created work pool {setup.pool!r}" in created
    setup.start_workers(2)
    setup.start_watcher()

    for i, amounts in enumerate([(1, 2), (30,), (400, 5)], 1):
        drop(setup, f"f-{i}.csv", *amounts)
        waiting(setup, lambda n=i: setup.all_done(n), 120, f"file {i} done")
    assert setup.deployment_id is not None
    waiting(setup, lambda: not ACTIVE & set(states(setup.deployment_id).values()), 60, "runs over")
    assert set(states(setup.deployment_id).values()) == {"COMPLETED"}
    frame = __import__("pandas").read_parquet(
        setup.data / "analytics" / setup.name / "total.parquet"
    )
    assert frame.to_dict("list") == {"amount": [438], "rows": [5]}

    # Every step ran in a process that existed before its run was created: a warm one.
    created_at = {
        str(r.id): r.created.timestamp() for r in runs_of(setup.deployment_id) if r.created
    }
    records = setup.seen_records()
    assert len(records) == 3
    for record in records:
        assert record["started"] < created_at[record["run"]] - 0.5, record
    # A process executes several runs (runs_per_process, 20), each its own state; the four
    # processes of the two workers take turns.
    assert len({r["run"] for r in records}) == 3
    assert any("submitting flow run" in w.output() for w in setup.workers)
    # Each run carries the labels of the worker that ran it (given while the run starts).
    for run in runs_of(setup.deployment_id):
        assert run.labels.get("prefect.worker.type") == "eventpipe", run.labels
        assert run.labels.get("prefect.work-pool.name") == setup.pool, run.labels


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_killed_warm_process_crashes_its_run_and_a_cancelled_run_stops(setup: Setup) -> None:
    setup.deploy()
    setup.start_workers(1)
    setup.start_watcher()

    # Killed mid-step: the worker reports the run Crashed, the watcher retries its files.
    setup.hold.touch()
    drop(setup, "k-1.csv", 7)
    run = waiting(setup, setup.running_run, 120, "a run holding k-1.csv")
    assert run.infrastructure_pid
    os.killpg(int(run.infrastructure_pid), signal.SIGKILL)
    waiting(setup, lambda: states(setup.deployment_id)[str(run.id)] == "CRASHED", 60, "Crashed")

    # Cancelled through the API while it runs: stopped, Cancelled, its files retried.
    retry = waiting(
        setup,
        lambda: (r := setup.running_run()) is not None and r.id != run.id and r,
        120,
        "the retry holding k-1.csv",
    )
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(retry.id, Cancelling(), force=True)
    waiting(
        setup, lambda: states(setup.deployment_id)[str(retry.id)] == "CANCELLED", 60, "Cancelled"
    )
    with suppress(ProcessLookupError):
        os.kill(int(retry.infrastructure_pid or 0), 0)
        raise AssertionError("the cancelled run's process is still alive")

    setup.hold.unlink()
    waiting(setup, lambda: setup.all_done(1), 120, "k-1.csv done on its third attempt")
    (row,) = setup.files()
    assert row.attempts == 3
    worker = setup.workers[0]
    assert worker.running  # the worker lives on, with fresh warm processes

    # Asked to stop (Ctrl-C) mid-run, the worker lets the run finish, then exits.
    setup.hold.touch()
    drop(setup, "k-2.csv", 8)
    last = waiting(setup, setup.running_run, 120, "a run holding k-2.csv")
    assert worker.proc is not None
    worker.proc.send_signal(signal.SIGINT)
    # The worker says it stopped (an event sent as it tears down) while the run still holds.
    slug = f"prefect.worker.eventpipe.{setup.pool}-1"
    waiting(
        setup,
        lambda: read_events(setup.api, ["prefect.worker.stopped"], [slug]),
        60,
        "the worker's stopped event",
    )
    assert states(setup.deployment_id)[str(last.id)] == "RUNNING"
    setup.hold.unlink()
    waiting(setup, lambda: setup.all_done(2), 120, "k-2.csv done while the worker stops")
    waiting(
        setup, lambda: states(setup.deployment_id)[str(last.id)] == "COMPLETED", 60, "Completed"
    )
    waiting(setup, lambda: not worker.running, 60, "the worker to exit")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_without_the_websocket_the_poll_runs_files_and_a_paused_deployment_waits(
    setup: Setup,
) -> None:
    setup.deploy()
    # No events websocket (as behind a proxy that refuses one): Prefect's poll alone.
    setup.start_workers(1, EVENTPIPE_WORKER_LISTEN="false", PREFECT_WORKER_QUERY_SECONDS="1")
    setup.start_watcher()
    drop(setup, "p-1.csv", 3)
    waiting(setup, lambda: setup.all_done(1), 120, "p-1.csv done through the poll")

    # Paused: the trigger still makes a run, the worker leaves it Scheduled until resumed.
    assert setup.deployment_id is not None
    with get_client(sync_client=True) as client:
        client.pause_deployment(setup.deployment_id)
    drop(setup, "p-2.csv", 4)
    worker = setup.workers[0]
    waiting(setup, lambda: "is paused: flow run" in worker.output(), 120, "the worker to leave it")
    waiting_runs = [r for r, state in states(setup.deployment_id).items() if state == "SCHEDULED"]
    assert waiting_runs, states(setup.deployment_id)
    assert {f.relative: f.state for f in setup.files()}["p-2.csv"] != "done"
    with get_client(sync_client=True) as client:
        client.resume_deployment(setup.deployment_id)
    waiting(setup, lambda: setup.all_done(2), 120, "p-2.csv done once resumed")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_when_the_websocket_is_cut_the_poll_takes_over(setup: Setup) -> None:
    setup.deploy()
    with cut_proxy(setup.api) as proxy:  # the worker (and its runs) reach the server through it
        setup.start_workers(1, api=proxy.api_url, PREFECT_WORKER_QUERY_SECONDS="1")
        setup.start_watcher()
        waiting(setup, lambda: proxy.streams, 60, "the worker's event stream")
        proxy.cut()  # open streams closed, new ones refused; plain HTTP passes
        drop(setup, "c-1.csv", 5)
        waiting(setup, lambda: setup.all_done(1), 120, "c-1.csv done through the poll")
        assert proxy.streams == 0
        assert proxy.cut_count >= 2  # the stream it had, and at least one reconnection refused

        proxy.restore()
        waiting(setup, lambda: proxy.streams, 60, "the worker's stream back")
        drop(setup, "c-2.csv", 6)
        waiting(setup, lambda: setup.all_done(2), 120, "c-2.csv done")
        setup.stop()
