"""Chaos: 500 files land while eventpipe (watcher + runner) and the Prefect server are killed
with SIGKILL at random moments, five kills in all, each restarted. In the end every file is done
exactly once in the ledger and the analytics equal those computed directly from the 500 files.

In eventpipe the watcher, the outbox and the runner live in one process (``eventpipe up``), so
"kill the watcher" and "kill the runner" are both a SIGKILL of that process: one while files are
landing between runs, one while a run is executing.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from eventpipe.ledger import Ledger
from eventpipe.orchestration.server import EmbeddedServer, free_port
from eventpipe.testing import drop_file, wait_for
from tests.pipelines import write_pipeline

FILES = 500


def content(i: int) -> str:
    return f"amount\n{i + 1}\n"


class Up:
    """``eventpipe up --api-url`` as a process that can be killed and started again."""

    def __init__(self, root: Path, api_url: str) -> None:
        self.root = root
        self.api_url = api_url
        self.log = root / "up.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(
            PREFECT_HOME=str(self.root / "client-home"),
            EVENTPIPE_SWEEP_SECONDS="3",
            EVENTPIPE_RESCAN_SECONDS="3",
        )
        self.starts += 1
        with self.log.open("a") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "eventpipe.cli",
                    "up",
                    "--pipeline",
                    "chaos_pipeline.py:pipeline",
                    "--inbox",
                    str(self.root / "inbox"),
                    "--data",
                    str(self.root / "data"),
                    "--api-url",
                    self.api_url,
                ],
                cwd=self.root,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_for(
                lambda: (
                    self.log.read_text(errors="replace").count("eventpipe is up") == self.starts
                ),
                240,
                interval=0.2,
                what="`eventpipe up` to start",
            )
        except TimeoutError:
            print(self.log.read_text(errors="replace")[-5000:])  # what it was doing
            raise

    def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def run_states(api_url: str) -> list[str]:
    """The state type of every flow run on the server."""
    states: list[str] = []
    with httpx.Client(base_url=api_url, timeout=30) as client:
        while True:
            page = client.post(
                "/flow_runs/filter", json={"limit": 200, "offset": len(states)}
            ).json()
            states.extend(run["state_type"] for run in page)
            if len(page) < 200:
                return states


def ledger_counts(data: Path) -> dict[str, int]:
    path = data / "ledger.sqlite"
    if not path.exists():
        return {}
    ledger = Ledger(path)
    try:
        return ledger.counts("chaos")
    finally:
        ledger.close()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_every_file_is_processed_exactly_once_through_five_kills(tmp_path: Path) -> None:
    rng = random.Random(20261125)
    server = EmbeddedServer(tmp_path / "server-home", port=free_port())
    server.start(timeout=180)
    write_pipeline("totals", tmp_path / "chaos_pipeline.py", "chaos")
    inbox, data = tmp_path / "inbox", tmp_path / "data"
    up = Up(tmp_path, server.api_url)
    up.start()

    dropped = threading.Event()

    def producer() -> None:
        for i in range(FILES):
            drop_file(inbox, f"batch-{i // 100}/{i:03d}.csv", content(i))
            time.sleep(rng.uniform(0.1, 0.4))  # about two minutes of landing files
        dropped.set()

    kills: list[dict[str, object]] = []
    mid_run: list[bool] = []
    started = time.monotonic()

    def kill_up(when: str) -> None:
        if when == "mid-run":
            try:
                wait_for(
                    lambda: ledger_counts(data).get("processing", 0) > 0,
                    60,
                    interval=0.01,
                    what="a run in progress",
                )
                mid_run.append(True)
            except TimeoutError:
                when = "no run was in progress"
        up.kill()
        kills.append({"what": f"eventpipe up ({when})", "at": round(time.monotonic() - started, 1)})
        time.sleep(rng.uniform(0.5, 3))
        up.start()

    def kill_server() -> None:
        server.kill()
        kills.append({"what": "prefect server", "at": round(time.monotonic() - started, 1)})
        time.sleep(rng.uniform(1, 5))
        server.start(timeout=180)

    thread = threading.Thread(target=producer, daemon=True)
    thread.start()
    try:
        for kill in (
            lambda: kill_up("between runs"),
            kill_server,
            lambda: kill_up("mid-run"),
            kill_server,
            lambda: kill_up("mid-run"),
        ):
            time.sleep(rng.uniform(2, 8))
            kill()
        thread.join(300)
        assert dropped.is_set()
        wait_for(
            lambda: ledger_counts(data).get("done", 0) == FILES,
            300,
            interval=1,
            what=f"all {FILES} files done",
        )
        expected_total = sum(range(1, FILES + 1))
        analytics = data / "analytics" / "chaos" / "total.parquet"
        wait_for(
            lambda: int(pd.read_parquet(analytics)["rows"][0]) == FILES,
            120,
            interval=1,
            what="analytics over every file",
        )
        total = pd.read_parquet(analytics)

        ledger = Ledger(data / "ledger.sqlite")
        rows = ledger.files("chaos")
        ledger.close()
        landed = sorted(p.relative_to(inbox).as_posix() for p in inbox.rglob("*.csv"))
        done = sorted(r.relative for r in rows if r.state == "done")
        wait_for(
            lambda: not {"RUNNING", "PENDING"} & set(run_states(server.api_url)),
            60,
            interval=1,
            what="no run left looking alive",
        )
        runs = run_states(server.api_url)
        report = {
            "files": FILES,
            "kills": kills,
            "lost": len(set(landed) - set(done)),
            "duplicated": len(done) - len(set(done)),
            "retried_after_a_kill": sum(1 for r in rows if r.attempts > 1),
            "flow_runs": len(runs),
            "flow_run_states": {s: runs.count(s) for s in sorted(set(runs))},
            "seconds": round(time.monotonic() - started, 1),
        }
        print("chaos:", json.dumps(report))
        (tmp_path / "chaos.json").write_text(json.dumps(report, indent=2))

        assert len(landed) == FILES
        assert len(rows) == FILES  # one row per file: nothing recorded twice
        assert done == landed  # nothing lost
        assert int(total["amount"][0]) == expected_total
        assert int(total["rows"][0]) == FILES
        assert len(kills) == 5
        if mid_run:  # runs killed under us say so
            assert "CRASHED" in report["flow_run_states"]
    finally:
        up.stop()
        server.stop()
