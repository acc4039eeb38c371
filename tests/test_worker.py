"""Production topology, without containers: a Prefect server on PostgreSQL, the project's
prefect.yaml deployed with the real `prefect deploy --all`, a process worker executing the runs,
and `eventpipe up --runs worker` only watching, recording and sending events. A dropped file
ends as fresh analytics, exactly once, through the deployment's own run on the worker.

Its own server (on Postgres), apart from the session's SQLite one; one for the module.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
import yaml

from eventpipe.core.keys import asset_key, file_uri
from eventpipe.ledger import Ledger
from eventpipe.orchestration.server import EmbeddedServer
from eventpipe.testing import (
    Background,
    client_env,
    drop_file,
    eventpipe_up,
    postgres_server,
    read_events,
    wait_for,
)

ROOT = Path(__file__).resolve().parent.parent
ACTIVE = {"SCHEDULED", "PENDING", "RUNNING", "CANCELLING"}
PIPELINE = """
import pandas as pd
from eventpipe import Pipeline

pipeline = Pipeline("sales")


@pipeline.process(expects={"order_id": "int64", "day": None, "amount": "float64"})
def cleaned(raw: pd.DataFrame) -> pd.DataFrame:
    return raw.drop_duplicates("order_id")[["order_id", "day", "amount"]]


@pipeline.analytics
def revenue_by_day(cleaned: pd.DataFrame) -> pd.DataFrame:
    return cleaned.groupby("day", as_index=False)["amount"].sum().sort_values("day")
"""


def sales_deployment(demo: dict[str, Any]) -> dict[str, Any]:
    """A user's own pipeline, added to prefect.yaml as its comments say: the demo's block with
    the three places that name the pipeline changed."""
    block = yaml.safe_load(yaml.safe_dump(demo))
    block.update(
        name="sales",
        description="Materializes pipelines/sales.py whenever a file lands.",
        tags=["eventpipe", "eventpipe:sales"],
    )
    block["parameters"]["pipeline"] = "pipelines/sales.py:pipeline"
    block["triggers"][0]["match"]["eventpipe.pipeline"] = "sales"
    return block


def make_project(project: Path) -> None:
    """A user's project: the repository's prefect.yaml plus one deployment for their pipeline
    file, which the worker finds relative to EVENTPIPE_PROJECT_DIR."""
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    config["deployments"].append(sales_deployment(config["deployments"][0]))
    (project / "pipelines").mkdir(parents=True)
    (project / "pipelines" / "sales.py").write_text(PIPELINE)
    (project / "prefect.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def prefect(env: dict[str, str], cwd: Path, *argv: str) -> str:
    """The real `prefect` command line."""
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "prefect", *argv],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, f"prefect {' '.join(argv)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def file_rows(data: Path) -> list[Any]:
    path = data / "ledger.sqlite"
    if not path.exists():
        return []
    ledger = Ledger(path)
    try:
        return ledger.files("sales")
    finally:
        ledger.close()


def all_done(data: Path, count: int) -> bool:
    rows = file_rows(data)
    return len(rows) == count and all(r.state == "done" for r in rows)


def revenue(data: Path) -> dict[str, float]:
    path = data / "analytics" / "sales" / "revenue_by_day.parquet"
    if not path.exists():
        return {}
    frame = pd.read_parquet(path)
    return dict(zip(frame["day"], frame["amount"], strict=True))


@pytest.mark.slow
@pytest.mark.timeout(900)  # ~2 min on an idle 2-core machine; far more when it is shared
def test_prefect_deploy_and_a_process_worker_run_what_the_watcher_records(
    tmp_path: Path,
) -> None:
    project, watcher = tmp_path / "project", tmp_path / "watcher"
    inbox, data = tmp_path / "inbox", tmp_path / "shared-data"
    make_project(project)
    watcher.mkdir()
    processes: list[Background] = []
    started = time.monotonic()

    def phase(what: str) -> None:  # shown when the test fails: where the time went
        print(f"{time.monotonic() - started:6.1f} s  {what}", flush=True)

    with postgres_server() as database:
        phase("postgres up")
        password = database.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
        server = EmbeddedServer(
            tmp_path / "server-home",
            database_url=database.replace("postgresql://", "postgresql+asyncpg://", 1),
        )
        try:
            server.start(timeout=180)
            api = server.api_url
            phase("prefect server up on postgres")
            # What an operator runs: a process work pool, then `prefect deploy --all` with
            # EVENTPIPE_DATA set to the shared data dir.
            deployer = client_env(
                api, tmp_path / "deployer-home", EVENTPIPE_DATA=str(data), COLUMNS="200"
            )
            prefect(deployer, project, "work-pool", "create", "eventpipe", "--type", "process")
            prefect(deployer, project, "--no-prompt", "deploy", "--all")
            phase("deployed")

            # A worker polling every second, taking runs only when due.
            worker = Background(
                [
                    sys.executable,
                    "-m",
                    "prefect",
                    "worker",
                    "start",
                    "--pool",
                    "eventpipe",
                    "--name",
                    "test-worker",
                    "--prefetch-seconds",
                    "0",
                ],
                tmp_path / "worker.log",
                env=client_env(
                    api,
                    tmp_path / "worker-home",
                    PREFECT_WORKER_QUERY_SECONDS="1",
                    PREFECT_LOGGING_LEVEL="INFO",
                    EVENTPIPE_PROJECT_DIR=str(project),
                ),
                cwd=tmp_path,
            )
            processes.append(worker.start())
            worker.wait_for_output("started!", 120)
            phase("worker started")

            # The watcher: records and sends events, executes nothing.
            up = eventpipe_up(
                "--runs",
                "worker",
                "--pipeline",
                f"{project}/pipelines/sales.py:pipeline",
                "--inbox",
                str(inbox),
                "--data",
                str(data),
                root=watcher,
                api_url=api,
                env={"EVENTPIPE_SWEEP_SECONDS": "5", "COLUMNS": "200"},
            )
            processes.append(up)
            phase("watcher up")
            assert "work pool eventpipe" in up.output()
            assert "deployment materialize/sales" in up.output()

            drop_file(inbox, "orders-1.csv", "order_id,day,amount\n1,2026-03-01,10.5\n")
            drop_file(inbox, "orders-2.csv", "order_id,day,amount\n2,2026-03-01,4.5\n")
            drop_file(inbox, "2026/orders-3.csv", "order_id,day,amount\n3,2026-03-02,7.0\n")
            wait_for(lambda: all_done(data, 3), 300, 0.2, what="the files done by the worker")
            phase("three files done")
            wait_for(
                lambda: revenue(data) == {"2026-03-01": 15.0, "2026-03-02": 7.0},
                30,
                what="analytics over the three files",
            )

            rows = file_rows(data)
            assert [r.attempts for r in rows] == [1, 1, 1]
            with httpx.Client(base_url=api, timeout=30) as client:
                sales = client.get("/deployments/name/materialize/sales").raise_for_status()
                demo = client.get("/deployments/name/materialize/demo").raise_for_status()
                assert demo.json()["work_pool_name"] == "eventpipe"  # the file deployed as is
                assert demo.json()["parameters"]["data"] == str(data)

                def runs() -> list[dict[str, Any]]:
                    body = {"deployments": {"id": {"any_": [sales.json()["id"]]}}}
                    found: list[dict[str, Any]] = (
                        client.post("/flow_runs/filter", json=body).raise_for_status().json()
                    )
                    return found

                # Every run the files woke is over (one may have found nothing left to claim),
                # and each completed on the worker.
                wait_for(
                    lambda: all(r["state_type"] not in ACTIVE for r in runs()),
                    300,
                    0.5,
                    what="the deployment's runs to finish",
                )
                phase("runs finished")
                by_id = {r["id"]: r for r in runs()}
                assert {r.run_id for r in rows} <= by_id.keys()
                for run in by_id.values():
                    assert run["work_pool_name"] == "eventpipe"
                    assert run["state_type"] == "COMPLETED", run["state"]
            # The watcher executed no run; the worker did.
            assert "run " not in up.output().split("eventpipe is up", 1)[1]
            assert "Beginning flow run" in worker.output()

            # Lineage in Prefect's own asset events: raw -> processed -> analytics.
            keys = {
                asset_key(file_uri(inbox / "2026" / "orders-3.csv")),
                asset_key(file_uri(data / "processed/sales/cleaned/2026%2Forders-3.csv.parquet")),
                asset_key(file_uri(data / "analytics/sales/revenue_by_day.parquet")),
            }

            def materialized() -> set[str]:
                events = read_events(api, ["prefect.asset.materialization.succeeded"])
                return keys & {e["resource"]["prefect.resource.id"] for e in events}

            wait_for(lambda: materialized() == keys, 60, 0.5, what="asset materialization events")
            phase("asset events read")

            assert up.stop() == 0
            for log in (up.log, worker.log, server.log_file):
                assert password not in log.read_text(errors="replace")
        finally:
            for process in reversed(processes):
                process.stop(timeout=20)  # a worker may hang on SIGINT: then SIGKILL
            server.stop()
