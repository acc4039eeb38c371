"""What an unchanged scheduled fetch costs, next to a changed one.

A real Prefect server, a real HTTP endpoint on 127.0.0.1 (``eventpipe.testing.FakeEndpoint``,
JSON with an ETag) and the ``fetch`` flow run in this process as ``eventpipe up``'s runner
runs it. Each round serves new content once (a 200, a landed file, a materialize run) and then
fetches again unchanged (a 304 to the stored ETag, an ``eventpipe.asset.skipped``, no run).

    .venv/bin/python bench/fetch_cost.py [--quick] [--rows N] [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import harness
from eventpipe.testing import configure_prefect_env, fake_endpoint

RESULTS = harness.RESULTS / "fetch_cost.json"

PIPELINE = """
import pandas as pd

from eventpipe import Pipeline
from eventpipe.fetchers import http_json

pipeline = Pipeline("fetch_bench")


@pipeline.fetch(schedule="*/15 * * * *", retries=0)
def orders() -> pd.DataFrame:
    return http_json({url!r}, records="items")


@pipeline.process
def cleaned(raw: pd.DataFrame) -> pd.DataFrame:
    return raw


@pipeline.analytics
def revenue_by_day(cleaned: pd.DataFrame) -> pd.DataFrame:
    return cleaned.groupby("day", as_index=False)["amount"].sum()
"""


def body(rows: int, round_no: int) -> str:
    items = [
        {"order_id": i, "day": f"2026-05-{1 + i % 28:02d}", "amount": round_no + i / 100}
        for i in range(rows)
    ]
    return json.dumps({"items": items})


def median(values: list[float]) -> float:
    return round(statistics.median(values), 4) if values else float("nan")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few rounds, small body")
    parser.add_argument("--rows", type=int, default=None, help="rows in the endpoint's JSON")
    parser.add_argument("--rounds", type=int, default=None, help="changed + unchanged rounds")
    parser.add_argument("--api-url", default=None, help="use this Prefect server")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, object]:
    args = parse_args(argv)
    at_start = harness.start_state()
    rows = args.rows or (200 if args.quick else 5000)
    rounds = args.rounds or (3 if args.quick else 15)
    root = Path(tempfile.mkdtemp(prefix="eventpipe-fetch-bench-")).resolve()
    server = None
    if args.api_url:
        os.environ["PREFECT_API_URL"] = args.api_url
    else:  # before anything imports Prefect
        server = configure_prefect_env(root)
        started = time.monotonic()
        server.start(timeout=300)
        print(f"server up in {time.monotonic() - started:.1f} s", flush=True)
    try:
        measured = _measure(root, rows, rounds)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)
    body = {"rows": rows, "rounds": rounds, **measured}
    result = harness.write_results(args.out, harness.recorded(body, at_start))
    print(json.dumps({k: v for k, v in body.items() if k != "samples"}, indent=2))
    return result


def _measure(root: Path, rows: int, rounds: int) -> dict[str, Any]:
    import httpx
    from prefect.context import SyncClientContext
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from eventpipe.run.fetch import fetch_source
    from eventpipe.run.flow import materialize_pipeline

    data = root / "data"
    samples: list[dict[str, Any]] = []
    # As eventpipe's runner executes runs: no heartbeat thread, one client for every run.
    with (
        fake_endpoint() as endpoint,
        temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
        SyncClientContext.get_or_create(),
    ):
        url = endpoint.url + "/orders"
        (root / "pipeline.py").write_text(PIPELINE.format(url=url))
        spec = f"{root / 'pipeline.py'}:pipeline"
        for round_no in range(rounds + 1):  # round 0 warms up imports and the first run
            endpoint.serve("/orders", body(rows, round_no))
            t0 = time.perf_counter()
            changed = fetch_source(pipeline=spec, fetch="orders", data=str(data))
            t1 = time.perf_counter()
            run = materialize_pipeline(pipeline=spec, data=str(data))
            t2 = time.perf_counter()
            unchanged = fetch_source(pipeline=spec, fetch="orders", data=str(data))
            t3 = time.perf_counter()
            assert changed["outcome"] in ("new", "changed"), changed
            assert unchanged["outcome"] == "unchanged", unchanged
            assert unchanged["http"]["status"] == 304, unchanged
            # The HTTP round trips alone: the full body vs a 304 to its ETag.
            with httpx.Client() as client:
                h0 = time.perf_counter()
                full = client.get(url)
                h1 = time.perf_counter()
                etag = full.headers["etag"]
                not_modified = client.get(url, headers={"If-None-Match": etag})
                h2 = time.perf_counter()
            assert not_modified.status_code == 304
            if round_no == 0:
                continue
            samples.append(
                {
                    "changed_fetch_run_s": round(t1 - t0, 4),
                    "materialize_run_s": round(t2 - t1, 4),
                    "unchanged_fetch_run_s": round(t3 - t2, 4),
                    "http_200_s": round(h1 - h0, 5),
                    "http_304_s": round(h2 - h1, 5),
                    "body_bytes": len(full.content),
                    "processed": run["processed"],
                }
            )
    column = {k: [float(s[k]) for s in samples] for k in samples[0]}
    changed_total = [
        a + b
        for a, b in zip(column["changed_fetch_run_s"], column["materialize_run_s"], strict=True)
    ]
    return {
        "median": {
            "unchanged_fetch_run_s": median(column["unchanged_fetch_run_s"]),
            "changed_fetch_run_s": median(column["changed_fetch_run_s"]),
            "changed_materialize_run_s": median(column["materialize_run_s"]),
            "changed_total_s": median(changed_total),
            "http_304_s": median(column["http_304_s"]),
            "http_200_s": median(column["http_200_s"]),
        },
        "bytes": {"changed_response_body": samples[0]["body_bytes"], "unchanged_response_body": 0},
        "runs_started": {"changed": 2, "unchanged": 1},
        "samples": samples,
    }


if __name__ == "__main__":
    main(sys.argv[1:])
