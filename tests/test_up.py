"""`eventpipe up` as a user starts it: its own embedded server, sample files, Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from eventpipe.orchestration.server import free_port
from eventpipe.testing import wait_for


@pytest.mark.slow
def test_up_runs_the_demo_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    log = (tmp_path / "up.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "eventpipe.cli", "up", "--samples", "2", "--port", str(port)],
        cwd=tmp_path,
        env={**env, "COLUMNS": "200"},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    output = tmp_path / "up.log"
    try:
        wait_for(
            lambda: "eventpipe is up" in output.read_text(),
            180,
            interval=0.5,
            what="`eventpipe up` to start",
        )
        text = output.read_text()
        assert f"http://127.0.0.1:{port}" in text
        assert str(tmp_path / "inbox") in text

        revenue = tmp_path / "data/analytics/demo/revenue_by_day.parquet"
        wait_for(
            lambda: "2 processed" in output.read_text() or revenue.exists(),
            60,
            what="the sample files to be processed",
        )
        wait_for(revenue.exists, 60, what="demo analytics")
        frame = pd.read_parquet(revenue)
        assert frame["orders"].sum() == 100  # two samples of 50 orders

        # More files keep flowing while it runs.
        sample = tmp_path / "inbox" / "orders-0000.csv"
        extra = sample.read_text().replace("\n0,", "\n900000,")
        tmp = tmp_path / "inbox" / ".extra.tmp"
        tmp.write_text(extra.replace("order_id", "order_id", 1))
        os.replace(tmp, tmp_path / "inbox" / "extra.csv")
        wait_for(lambda: "extra.csv: new" in output.read_text(), 30, what="the extra file")
        # Each run that finishes says what it did, its summary read from the run's result.
        wait_for(
            lambda: re.search(r"run \S+: \d+ processed, \d+ skipped", output.read_text()),
            60,
            what="a run's summary line",
        )

        home = tmp_path / ".eventpipe" / "prefect"
        assert home.is_dir()  # a project-local PREFECT_HOME
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()

    text = output.read_text()
    assert "stopped." in text
    assert "Warning" not in text, text
    # No orphan: the embedded server went with it.
    time.sleep(0.5)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2)
    leftover = subprocess.run(
        ["pgrep", "-f", f"--port {port}"], capture_output=True, text=True, check=False
    )
    assert leftover.stdout.strip() == ""
