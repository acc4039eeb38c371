"""A burst of files: every file processed exactly once, by a handful of runs."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from eventpipe.orchestration.server import EmbeddedServer
from eventpipe.testing import wait_for
from tests.loop_harness import running_loop

FILES = 1000


@pytest.mark.slow
@pytest.mark.timeout(900)  # all done is waited for up to 600 s, then a stop on a busy server
def test_a_burst_of_files_is_processed_once_by_few_runs(
    prefect_server: EmbeddedServer, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    staging = tmp_path / "staging"
    staging.mkdir()
    for i in range(FILES):
        (staging / f"burst-{i:04d}.csv").write_text(f"day,amount\n2026-02-01,{i}\n")
    with running_loop(prefect_server, tmp_path) as loop:
        started = time.monotonic()
        for name in sorted(os.listdir(staging)):  # all at once, each complete when it appears
            os.replace(staging / name, loop.inbox / name)

        def all_done() -> bool:
            return loop.ledger.counts(loop.name).get("done", 0) == FILES

        wait_for(all_done, 600, interval=0.5, what=f"all {FILES} files to be done")
        seconds = time.monotonic() - started
        loop.wait_idle()

        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(
                    id=DeploymentFilterId(any_=[loop.loop.deployment_id])
                )
            )
        crashed = sum(r.state_name == "Crashed" for r in runs)
        print(f"{FILES} files: {len(runs)} runs ({crashed} Crashed), {seconds:.1f} s to all done")

        # Exactly once: one ledger row per file, each done, every amount counted once.
        rows = loop.ledger.files(loop.name)
        assert len(rows) == FILES
        assert all(r.state == "done" for r in rows)
        assert loop.analytics("revenue_by_day")["amount"].tolist() == [sum(range(FILES))]
        # Each file was claimed once, unless a run lost the server mid-way (a busy machine can
        # stall it): that run is Crashed and its files are taken once more by the next run.
        assert all(r.attempts <= 1 + crashed for r in rows)
        assert len(runs) <= 20
