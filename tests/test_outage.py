"""The Prefect server goes away for a minute while files keep landing: nothing is lost, nothing
runs twice. The server also asks for basic auth (PREFECT_SERVER_API_AUTH_STRING), as a
shared server should."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from eventpipe.ledger import Ledger
from eventpipe.orchestration.server import EmbeddedServer, free_port
from eventpipe.testing import Background, drop_file, wait_for

AUTH = "ops:" + "s3cret-outage-test"
PIPELINE = """
import pandas as pd
from eventpipe import Pipeline

pipeline = Pipeline("outage")


@pipeline.process
def cleaned(raw: pd.DataFrame) -> pd.DataFrame:
    return raw


@pipeline.analytics
def total(cleaned: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"amount": [cleaned["amount"].sum()], "files": [len(cleaned)]})
"""


def counts(data: Path) -> dict[str, int]:
    path = data / "ledger.sqlite"
    if not path.exists():
        return {}
    ledger = Ledger(path)
    try:
        return ledger.counts("outage")
    finally:
        ledger.close()


@pytest.mark.slow
def test_files_landing_while_the_server_is_down_for_a_minute_are_all_processed_once(
    tmp_path: Path,
) -> None:
    port = free_port()
    server = EmbeddedServer(
        tmp_path / "server-home",
        port=port,
        env={"PREFECT_SERVER_API_AUTH_STRING": AUTH},
    )
    server.start(timeout=180)
    # Without the credentials the server refuses; eventpipe gets them the Prefect way.
    assert httpx.get(f"{server.api_url}/flows/", timeout=10).status_code == 401

    (tmp_path / "outage_pipeline.py").write_text(PIPELINE)
    inbox, data = tmp_path / "inbox", tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_API_AUTH_STRING=AUTH,
        PREFECT_HOME=str(tmp_path / "client-home"),
        EVENTPIPE_SWEEP_SECONDS="5",
        EVENTPIPE_RESCAN_SECONDS="5",
    )
    up = Background(
        [
            sys.executable,
            "-m",
            "eventpipe.cli",
            "up",
            "--pipeline",
            "outage_pipeline.py:pipeline",
            "--inbox",
            str(inbox),
            "--data",
            str(data),
            "--api-url",
            server.api_url,
        ],
        tmp_path / "up.log",
        env=env,
        cwd=tmp_path,
    )
    try:
        up.start().wait_for_output("eventpipe is up", 120)
        drop_file(inbox, "first.csv", "amount\n1000\n")
        wait_for(lambda: counts(data).get("done") == 1, 60, what="the first file")

        server.stop()
        down_at = time.monotonic()
        for i in range(100):
            drop_file(inbox, f"while-down/{i:03d}.csv", f"amount\n{i}\n")
        wait_for(
            lambda: counts(data).get("landed") == 100, 60, what="100 files recorded while down"
        )
        time.sleep(max(0.0, 60 - (time.monotonic() - down_at)))
        assert counts(data).get("done") == 1  # nothing could run without the server
        assert up.running  # and eventpipe kept going

        server.start(timeout=180)
        wait_for(
            lambda: counts(data).get("done") == 101,
            180,
            interval=0.5,
            what="the 100 files after the server came back",
        )
        ledger = Ledger(data / "ledger.sqlite")
        rows = ledger.files("outage")
        assert len(rows) == 101
        assert all(r.state == "done" and r.attempts == 1 for r in rows)
        # Every event is delivered in the end (the last run's, a moment after its files).
        wait_for(lambda: not ledger.unsent(), 60, what="the outbox to empty")
        ledger.close()
        wait_for(
            lambda: pd.read_parquet(data / "analytics/outage/total.parquet")["files"][0] == 101,
            60,
            what="analytics over all 101 files",
        )
        total = pd.read_parquet(data / "analytics" / "outage" / "total.parquet")
        assert total["amount"][0] == 1000 + sum(range(100))
        assert AUTH.split(":")[1] not in up.output()

        assert up.stop(timeout=60) == 0
    finally:
        up.kill()
        server.stop()
