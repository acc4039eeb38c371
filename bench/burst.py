"""Burst: many files dropped into the inbox at once -> every file done, through the whole loop
(watcher, ledger, outbox, deployment trigger, embedded worker, flow), as ``eventpipe up`` runs it.

Beside each burst, a bare single-threaded pandas loop does the same work on the same files,
once before and once after the burst (interleaved, so both see the same machine): read each
CSV, the same transform (``demo.orders``), one parquet file per input, then concatenate and
aggregate (``revenue_by_day``, ``revenue_by_region``). Goal: the burst within 1.5x of it.

Goals for 1000 files: all done within 60 s, by at most 20 flow runs. Bursts of each size in
``--sizes`` run one after the other in this one process, each with its own loop (pipeline,
inbox, data) on one Prefect server; the table gives seconds to all done, runs, and what the
runs spent per stage (summed over their threads, so it can exceed the wall time).

    .venv/bin/python bench/burst.py [--sizes 100,1000] [--quick]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import harness

NAME = "burst"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,1000", help="burst sizes, comma-separated")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per burst")
    parser.add_argument("--quick", action="store_true", help="bursts of 50 and 300 files")
    parser.add_argument(
        "--results",
        default=NAME,
        help="results file name (e.g. burst-baseline, when run with PYTHONPATH=<old src>)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes = "50,300"
    args.sizes = [int(s) for s in str(args.sizes).split(",")]
    return args


def bare_pandas(files: list[Path], out: Path) -> float:
    """Seconds for the same work as the burst's pipeline, in one thread, no eventpipe."""
    import pandas as pd

    from eventpipe import demo

    out.mkdir(parents=True)
    started = time.perf_counter()
    parts = []
    for i, path in enumerate(files):
        frame = demo.orders(pd.read_csv(path))
        target = out / f"{i}.parquet"
        frame.to_parquet(target, index=False)
        parts.append(target)
    combined = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    demo.revenue_by_day(combined)
    demo.revenue_by_region(combined)
    return time.perf_counter() - started


def burst(root: Path, api_url: str, size: int, timeout: float) -> dict[str, Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    from eventpipe.ledger import Ledger
    from eventpipe.loop.local import LocalLoop
    from eventpipe.settings import Settings

    name = f"perf_burst_{size}"
    pipeline_file = root / f"{name}.py"
    pipeline_file.write_text(
        "from eventpipe import demo\nfrom eventpipe.pipeline import Pipeline\n\n"
        f"pipeline = Pipeline({name!r})\n"
        "pipeline.process(expects=demo.ORDER_COLUMNS)(demo.orders)\n"
        "pipeline.analytics(demo.revenue_by_day)\n"
        "pipeline.analytics(demo.revenue_by_region)\n"
    )
    staging = root / f"staging-{size}"
    files = harness.write_files(staging, 0, size)
    pandas_seconds = [bare_pandas(files, root / f"pandas-{size}-before")]
    settings = Settings(
        pipeline=f"{pipeline_file}:pipeline",
        inbox=root / f"inbox-{size}",
        data=root / f"data-{size}",
        home=root / f"home-{size}",
        api_url=api_url,
    )
    loop = LocalLoop(settings).start()
    try:
        ledger = Ledger(loop.data / "ledger.sqlite")
        started = time.monotonic()
        for path in files:  # all at once, each complete when it appears
            os.replace(path, loop.settings.inbox / path.name)
        while ledger.counts(name).get("done", 0) < size:
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"{size} files: {ledger.counts(name)} after {timeout} s")
            time.sleep(0.2)
        seconds = time.monotonic() - started
        while loop.runner is not None and not loop.runner.idle:
            time.sleep(0.2)
        assert loop.deployment_id is not None
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[loop.deployment_id]))
            )
        rows = ledger.files(name)
        completed = [
            body["payload"] for body in ledger.events_named("eventpipe.pipeline.completed")
        ]
        ledger.close()
    finally:
        loop.stop()
    landed = sorted((loop.settings.inbox).glob("*.csv"))
    pandas_seconds.append(bare_pandas(landed, root / f"pandas-{size}-after"))
    pandas_mean = sum(pandas_seconds) / len(pandas_seconds)
    stages: dict[str, float] = {}
    for payload in completed:
        for stage, value in payload["stage_seconds"].items():
            stages[stage] = round(stages.get(stage, 0.0) + value, 3)
    return {
        "files": size,
        "seconds_to_all_done": round(seconds, 3),
        "files_per_second": round(size / seconds, 2),
        "bare_pandas_seconds": [round(x, 3) for x in pandas_seconds],
        "vs_bare_pandas": round(seconds / pandas_mean, 2),
        "flow_runs": len(runs),
        "runs_with_files": sum(1 for p in completed if p["files"]),
        "exactly_once": all(r.state == "done" and r.attempts == 1 for r in rows)
        and len(rows) == size,
        "stage_seconds": stages,
    }


def main(argv: list[str] | None = None) -> dict[str, object]:
    args = parse(argv)
    at_start = harness.start_state()
    results: list[dict[str, Any]] = []
    with harness.prefect_server(NAME) as root:
        api_url = os.environ["PREFECT_API_URL"]
        for size in args.sizes:
            results.append(burst(root, api_url, size, args.timeout))
            print(f"  {results[-1]}", flush=True)
    print()
    print(
        harness.table(
            ["files", "s to all done", "bare pandas s", "x pandas", "flow runs", "exactly once"],
            [
                [
                    r["files"],
                    r["seconds_to_all_done"],
                    "/".join(str(x) for x in r["bare_pandas_seconds"]),
                    r["vs_bare_pandas"],
                    r["flow_runs"],
                    r["exactly_once"],
                ]
                for r in results
            ],
        )
    )
    result: dict[str, object] = {
        "measure": "seconds from moving N complete files into the inbox at once until the "
        "ledger has all N done; flow runs of the deployment",
        "bursts": results,
        "goal": "1000 files: <= 60 s to all done, <= 20 flow runs, <= 1.5x a bare pandas loop",
    }
    return harness.write_results(args.results, harness.recorded(result, at_start))


if __name__ == "__main__":
    main()
