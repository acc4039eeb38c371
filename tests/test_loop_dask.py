"""The loop with ``task_runner="dask"``: one warm cluster is the loop's own service, handed to
the runs, and closed only after the outbox has delivered the queued events."""

from __future__ import annotations

from pathlib import Path

import pytest

from eventpipe.orchestration.server import EmbeddedServer
from tests.loop_harness import running_loop

pytest.importorskip("distributed")

DAY1 = """
    day,amount
    2026-01-01,10
    2026-01-02,7
"""


def test_runs_go_to_the_loops_cluster_which_closes_after_the_events_are_out(
    prefect_server: EmbeddedServer, tmp_path: Path
) -> None:
    with running_loop(prefect_server, tmp_path, task_runner="dask") as harness:
        started = harness.loop.started
        assert started is not None
        assert started.dask is not None
        assert harness.loop.task_runner_description.startswith("dask cluster ")
        harness.drop("day1.csv", DAY1)
        assert harness.wait_file_state("day1.csv", "processed", timeout=120).state == "processed"
        assert harness.analytics("revenue_by_day")["amount"].tolist() == [10, 7]
    assert harness.loop.task_runner_description == "dask (not started)"  # the cluster closed
    assert harness.ledger.unsent() == []  # and the outbox delivered everything queued
