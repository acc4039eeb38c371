"""Several hosts, on one machine, sharing nothing but three services: the ledger in PostgreSQL,
the files and every asset in S3 (moto over HTTP: uploads to a landing bucket announced on SQS,
the pipeline's data under `--data s3://…`), and the Prefect server. A pipeline registered with
`eventpipe deploy` on a process work pool, two `prefect worker start` processes (each in a
directory and HOME of its own, as on two hosts) executing its runs, and `eventpipe up --runs
worker` in a third only watching the bucket. One worker dies (SIGKILL, with the run it was
executing) while it holds files: every file still ends done exactly once, the dead run's files
on their second attempt, the analytics in the bucket equal the hand-computed values, and no
parquet, SQLite or CSV file of the pipeline is on any of the three "hosts".

The session's Prefect server is enough here (tests/test_worker.py covers Prefect on
PostgreSQL); the ledger gets a database of its own on the session's PostgreSQL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import boto3
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.client.schemas.objects import FlowRun
from prefect.exceptions import ObjectNotFound
from prefect.states import Crashed

from eventpipe.intake.aws import setup_notifications
from eventpipe.ledger import Ledger
from eventpipe.orchestration.server import EmbeddedServer
from eventpipe.testing import (
    Background,
    DataBucket,
    eventpipe_up,
    fresh_database,
    host_env,
    moto_env,
    upload,
    wait_for,
)

ACTIVE = {"SCHEDULED", "PENDING", "RUNNING", "CANCELLING"}
# Each process step waits while this file exists, so the test can catch runs mid-work.
PIPELINE = """
import time
from pathlib import Path

import pandas as pd

from eventpipe import Pipeline

pipeline = Pipeline({name!r})
HOLD = Path({hold!r})


@pipeline.process
def cleaned(raw: pd.DataFrame) -> pd.DataFrame:
    deadline = time.monotonic() + 300
    while HOLD.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return raw


@pipeline.analytics
def total(cleaned: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({{"amount": [int(cleaned["amount"].sum())], "rows": [len(cleaned)]}})
"""
WAVES = [
    {"a-1.csv": [1, 2], "a-2.csv": [30], "a-3.csv": [400, 5]},
    {"b-1.csv": [6000], "b-2.csv": [70000, 8], "b-3.csv": [900000]},
]
# Prefect's least heartbeat interval (30 s), where the runs execute and where `eventpipe deploy`
# makes the crash automation (its window: three intervals).
HEARTBEAT = {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}


PIPELINE_FILES = ("*.parquet", "*.sqlite*", "*.csv", "*.json")


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, from /proc (a flow run's process is in a session of its
    own, so killing the worker's process group does not reach it)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError, ValueError, IndexError):
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def runs_of(deployment_id: uuid.UUID) -> list[FlowRun]:
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
        )


def rows(ledger_url: str, name: str) -> list[Any]:
    with Ledger(ledger_url) as ledger:
        return ledger.files(name)


@pytest.fixture
def pool(prefect_server: EmbeddedServer) -> Iterator[str]:
    """A process work pool of its own; afterwards the pool, the deployment on it and its
    automations are gone from the session's server."""
    name = "pool-" + uuid.uuid4().hex[:10]
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=name, type="process"))
    yield name
    with get_client(sync_client=True) as client:
        for deployment in client.read_deployments():
            if deployment.work_pool_name == name:
                with suppress(ObjectNotFound):
                    client.delete_resource_owned_automations(f"prefect.deployment.{deployment.id}")
                    for automation in client.read_automations():
                        if str(deployment.id) in automation.model_dump_json():
                            client.delete_automation(automation.id)
                    client.delete_deployment(deployment.id)
        client.delete_work_pool(name)


def deploy(
    api_url: str, spec: str, name: str, pool: str, data: str, where: Path, env: dict[str, str]
) -> uuid.UUID:
    """`eventpipe deploy` as an operator runs it; the deployment's id."""
    where.mkdir()
    argv = ["deploy", "--pipeline", spec, "--pool", pool, "--data", data]
    done = subprocess.run(
        [sys.executable, "-m", "eventpipe.cli", *argv, "--api-url", api_url],
        cwd=where,
        env=host_env(api_url, where, **HEARTBEAT, **env),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"deployment materialize/{name} on work pool {pool}" in done.stdout
    assert f"automation eventpipe/{name}: run unresponsive" in done.stdout
    with get_client(sync_client=True) as client:
        return client.read_deployment_by_name(f"materialize/{name}").id


class Hosts:
    """Two "hosts", each a `prefect worker start` in a directory and HOME of its own, taking
    one flow run at a time: while one is busy, the other takes the next run."""

    def __init__(
        self, api_url: str, pool: str, ledger: str, roots: list[Path], s3: dict[str, str]
    ) -> None:
        self.ledger = ledger
        self.workers: list[Background] = []
        for i, home in enumerate(roots, 1):
            home.mkdir()
            env = host_env(
                api_url,
                home,
                EVENTPIPE_LEDGER=ledger,
                PREFECT_WORKER_QUERY_SECONDS="1",
                PREFECT_LOGGING_LEVEL="INFO",
                **HEARTBEAT,
                **s3,
            )
            argv = ["worker", "start", "--pool", pool, "--name", f"{pool}-{i}", "--limit", "1"]
            self.workers.append(
                Background(
                    [sys.executable, "-m", "prefect", *argv, "--prefetch-seconds", "0"],
                    home / "worker.log",
                    env=env,
                    cwd=home,
                )
            )

    def start(self) -> None:
        for worker in self.workers:
            worker.start()
        for worker in self.workers:
            worker.wait_for_output("started!", 180)

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop(timeout=20)  # a worker may hang on SIGINT: then SIGKILL

    def worker_of(self, run: FlowRun) -> int | None:
        """Which worker executes the run, if it is running: its process is below it."""
        if run.state_type is None or run.state_type.value != "RUNNING":
            return None
        if not run.infrastructure_pid:
            return None
        for i, worker in enumerate(self.workers):
            if worker.proc and int(run.infrastructure_pid) in descendants(worker.proc.pid):
                return i
        return None

    def busy(self, name: str, deployment_id: uuid.UUID) -> dict[int, str]:
        """Worker index -> the id of the run it executes, for runs holding claimed files."""
        held = holders(self.ledger, name)
        busy: dict[int, str] = {}
        for run in runs_of(deployment_id):
            if str(run.id) in held and (i := self.worker_of(run)) is not None:
                busy[i] = str(run.id)
        return busy

    def story(self, name: str, deployment_id: uuid.UUID, up: Background) -> str:
        """What the hosts, the runs and the ledger say: shown when the test times out."""
        found = [(r.relative, r.state, r.run_id, r.attempts) for r in rows(self.ledger, name)]
        lines = [f"ledger: {found}"]
        for run in runs_of(deployment_id):
            lines.append(
                f"run {run.id} {run.state_type} pid={run.infrastructure_pid} "
                f"worker={self.worker_of(run)} created={run.created}"
            )
        for i, worker in enumerate(self.workers):
            lines.append(f"--- worker {i + 1} ---\n" + worker.output()[-6000:])
        lines.append("--- watcher ---\n" + up.output()[-4000:])
        return "\n".join(lines)

    def kill(self, i: int) -> None:
        """The host dies: SIGKILL its worker and everything below it (a flow run's process
        is in a session of its own: killing the worker's process group does not reach it)."""
        worker = self.workers[i]
        assert worker.proc is not None
        below = descendants(worker.proc.pid)
        worker.kill()
        for pid in below:
            for kill in (os.killpg, os.kill):
                with suppress(ProcessLookupError, PermissionError):
                    kill(pid, signal.SIGKILL)
        wait_for(lambda: not any(alive(p) for p in below), 30, 0.1, what="the dead host")


def holders(ledger: str, name: str) -> dict[str, set[str]]:
    """Run id -> the files it has claimed and not finished."""
    held: dict[str, set[str]] = {}
    for row in rows(ledger, name):
        if row.state == "processing" and row.run_id:
            held.setdefault(row.run_id, set()).add(row.uri)
    return held


class Landing:
    """The bucket producers upload to, its ObjectCreated notifications on an SQS queue."""

    def __init__(self, endpoint: str) -> None:
        self.name = "landing-" + uuid.uuid4().hex[:10]
        self.s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        sqs = boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1")
        self.queue_url = setup_notifications(self.s3, sqs, self.name, f"{self.name}-q", "in/")

    def drop_wave(self, wave: dict[str, list[int]]) -> None:
        for relative, amounts in wave.items():
            body = "amount\n" + "".join(f"{a}\n" for a in amounts)
            upload(self.s3, self.name, f"in/{relative}", body)


def pipeline_files(root: Path) -> list[Path]:
    return sorted(p for pattern in PIPELINE_FILES for p in root.rglob(pattern))


def all_done(ledger: str, name: str, count: int) -> bool:
    found = rows(ledger, name)
    return len(found) == count and all(r.state == "done" for r in found)


def analytics(data: DataBucket, current: str) -> dict[str, list[int]]:
    if current not in data.objects(current):
        return {}
    frame = data.frame(current)  # one GET: never a torn object
    return {c: [int(v) for v in frame[c]] for c in frame.columns}


def run_states(deployment_id: uuid.UUID) -> dict[str, str]:
    return {str(r.id): r.state_type.value if r.state_type else "" for r in runs_of(deployment_id)}


@pytest.mark.slow
@pytest.mark.timeout(600)  # ~1 min on an idle 2-core machine; far more when it is shared
def test_two_workers_share_a_postgresql_ledger_and_survive_one_killed_mid_run(
    prefect_server: EmbeddedServer,
    postgres_url: str,
    moto_endpoint: str,
    pool: str,
    tmp_path: Path,
) -> None:
    api = prefect_server.api_url
    name = "two" + uuid.uuid4().hex[:10]
    ledger = fresh_database(postgres_url, "two")
    s3 = moto_env(moto_endpoint)  # where every "host" finds S3, as any AWS client
    data, landing = DataBucket(moto_endpoint), Landing(moto_endpoint)
    hold, watcher = tmp_path / "hold", tmp_path / "watcher"
    (tmp_path / "project").mkdir()
    watcher.mkdir()
    pipeline_file = tmp_path / "project" / "pipeline.py"
    pipeline_file.write_text(PIPELINE.format(name=name, hold=str(hold)))
    spec = f"{pipeline_file}:pipeline"
    files = [f for wave in WAVES for f in wave]
    hosts = Hosts(api, pool, ledger, [tmp_path / "worker-1", tmp_path / "worker-2"], s3)
    up: Background | None = None
    started = time.monotonic()

    def phase(what: str) -> None:  # shown when the test fails: where the time went
        print(f"{time.monotonic() - started:6.1f} s  {what}", flush=True)

    try:
        deployment_id = deploy(
            api,
            spec,
            name,
            pool,
            data.uri,
            tmp_path / "deployer",
            {**s3, "EVENTPIPE_LEDGER": ledger},
        )
        phase("deployed")
        hosts.start()
        phase("workers started")
        watcher_env = {k: v for k, v in host_env(api, watcher, **s3).items() if k != "PREFECT_HOME"}
        up = eventpipe_up(
            *("--runs", "worker", "--pipeline", spec, "--data", data.uri, "--ledger", ledger),
            *("--source", f"s3://{landing.name}/in/", "--queue", landing.queue_url),
            root=watcher,
            api_url=api,
            env={
                **watcher_env,
                "EVENTPIPE_SWEEP_SECONDS": "2",
                "EVENTPIPE_QUEUE_WAIT_SECONDS": "1",
            },
        )
        phase("watcher up")

        # Wave 1, then wave 2: the first worker's run sits on its files (HOLD), so the
        # second worker takes a later run and claims files too.
        hold.touch()
        landing.drop_wave(WAVES[0])
        wait_for(lambda: hosts.busy(name, deployment_id), 180, 0.3, what="a run holding files")
        phase("wave 1 claimed")
        landing.drop_wave(WAVES[1])
        try:
            wait_for(
                lambda: len(hosts.busy(name, deployment_id)) == 2,
                180,
                0.3,
                what="both workers' runs holding files",
            )
        except TimeoutError as exc:
            raise AssertionError(hosts.story(name, deployment_id, up)) from exc
        phase("both workers busy")

        # One host dies mid-step, with the run it executes and the files that run holds.
        busy = hosts.busy(name, deployment_id)
        victim = min(busy)
        killed_run = busy[victim]
        killed_files = holders(ledger, name)[killed_run]
        hosts.kill(victim)
        phase(f"worker {victim + 1} killed with run {killed_run}")
        # A dead run stays Running until the crash automation sees its heartbeats missing for
        # its window: 3 x 30 s at the least (Prefect refuses a shorter heartbeat interval),
        # too long for this test. Mark it Crashed as that automation would
        # (tests/test_automations.py covers the automation itself).
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(
                uuid.UUID(killed_run), Crashed(message="worker killed"), force=True
            )
        hold.unlink()

        wait_for(lambda: all_done(ledger, name, len(files)), 240, 0.3, what="every file done")
        phase("all files done")
        found = rows(ledger, name)
        assert sorted(r.relative for r in found) == sorted(files)  # each file once
        attempts = {r.uri: r.attempts for r in found}
        assert {u: attempts[u] for u in killed_files} == dict.fromkeys(killed_files, 2)
        assert all(n == 1 for u, n in attempts.items() if u not in killed_files), attempts
        assert all(r.run_id != killed_run for r in found)

        # By hand from WAVES: 1+2+30+400+5 + 6000+70000+8+900000, in 9 rows.
        expected = {"amount": [976446], "rows": [9]}
        current = f"analytics/{name}/total.parquet"
        wait_for(lambda: analytics(data, current) == expected, 60, 0.3, what="the analytics")

        # Every run is over: the killed one Crashed, every other Completed.
        wait_for(
            lambda: not ACTIVE & set(run_states(deployment_id).values()),
            180,
            0.5,
            what="the deployment's runs to finish",
        )
        states = run_states(deployment_id)
        assert states.pop(killed_run) == "CRASHED"
        assert set(states.values()) == {"COMPLETED"}, states
        phase("runs over")

        # The state is in PostgreSQL and the bucket: no file of the pipeline on any "host"
        # (each one's disposable cache under its home aside, and that holds none either).
        for where in (watcher, tmp_path / "worker-1", tmp_path / "worker-2"):
            assert not pipeline_files(where), where
        assert f"processed/{name}/cleaned/a-1.csv.parquet" in data.objects()
        assert len(data.objects(f"raw/{name}/")) == len(files)
        assert "Beginning flow run" in hosts.workers[1 - victim].output()
        assert up.stop() == 0
    finally:
        if up is not None:
            up.stop(timeout=20)
        hosts.stop()
        with suppress(FileNotFoundError):
            hold.unlink()
