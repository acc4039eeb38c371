"""The Prefect server's own floor: event posted -> flow run created by a deployment trigger.

No eventpipe code on the path and no runs executed: a deployment with an event trigger, events
POSTed every ~1.3 s, and the time until the server has created the run. Whatever this shows
(its occasional multi-second stalls included) is in every eventpipe latency too.

    .venv/bin/python bench/trigger_floor.py [--events 30]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

import harness
from eventpipe.testing import configure_prefect_env

RESULTS = harness.RESULTS / "trigger_floor.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=30)
    args = parser.parse_args()
    at_start = harness.start_state()
    # Before Prefect is imported: it reads its settings from the environment at import.
    server = configure_prefect_env(Path(tempfile.mkdtemp(prefix="eventpipe-floor-")))
    server.start()
    try:
        latencies = measure(server.api_url, args.events)
    finally:
        server.stop()
    ordered = sorted(latencies)
    p95 = ordered[max(0, -(-len(ordered) * 95 // 100) - 1)]
    stalls = sum(1 for s in latencies if s > 1.0)
    print(
        f"event -> run created: n={len(latencies)} p50={statistics.median(latencies):.3f} s "
        f"p95={p95:.3f} s max={ordered[-1]:.3f} s; over 1 s: {stalls}"
    )
    body = {
        "measure": "seconds from POST /api/events until the trigger's flow run exists",
        "latencies": latencies,
        "p50": statistics.median(latencies),
        "p95": p95,
        "over_1s": stalls,
    }
    harness.write_results(RESULTS, harness.recorded(body, at_start))


def measure(api_url: str, count: int) -> list[float]:
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.events import DeploymentEventTrigger

    @flow
    def noop() -> None:
        """Never executed: only its runs' creation is timed."""

    trigger = DeploymentEventTrigger(
        expect={"floor.landed"},
        match={"floor.pipeline": "p"},
        threshold=1,
        within=timedelta(0),
    )
    noop.to_deployment(name="floor", triggers=[trigger]).apply()  # type: ignore[union-attr]
    time.sleep(3)  # the triggers service loads the new automation
    latencies: list[float] = []
    with get_client(sync_client=True) as client, httpx.Client(timeout=30) as http:
        known = {run.id for run in client.read_flow_runs()}
        for index in range(count):
            body = {
                "id": str(uuid.uuid4()),
                "occurred": datetime.now(UTC).isoformat(),
                "event": "floor.landed",
                "resource": {"prefect.resource.id": f"floor.{index}", "floor.pipeline": "p"},
            }
            started = time.perf_counter()
            http.post(f"{api_url}/events", json=[body]).raise_for_status()
            while not (fresh := {r.id for r in client.read_flow_runs()} - known):
                time.sleep(0.01)
            latencies.append(round(time.perf_counter() - started, 4))
            known |= fresh
            time.sleep(1.0)
    return latencies


if __name__ == "__main__":
    main()
