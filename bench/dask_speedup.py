"""Partition parallelism: one run of N new files with the default threads vs the Dask task
runner (``--task-runner dask``: a process per core), side by side.

Two pipelines: ``cpu`` has a process step whose time is Python code holding the GIL (about
0.25 ms per row, 2000 rows a file: half a second of CPU each): threads share one core, Dask's
worker processes use all of them. ``light`` is the demo's step on 50-row files, where a file
costs mostly Prefect's task bookkeeping (which stays in the flow's process): it shows what
Dask costs when there is little to spread. The Dask cluster is started once and warmed up, as
``eventpipe up --task-runner dask`` keeps it; each round uses fresh data directories, and the
order of the two runners alternates between rounds.

    .venv/bin/python bench/dask_speedup.py [--files 100] [--rounds 2] [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
from typing import Any

import harness

NAME = "dask_speedup"
PIPELINES = {"cpu": ("cpu", 2000), "light": ("plain", 50)}
"""Case -> (pipeline attribute in harness, rows per file)."""


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=100, help="new files in each run")
    parser.add_argument("--rounds", type=int, default=2, help="runs per runner and pipeline")
    parser.add_argument("--quick", action="store_true", help="30 files, 1 round")
    args = parser.parse_args(argv)
    if args.quick:
        args.files, args.rounds = 30, 1
    return args


def main(argv: list[str] | None = None) -> dict[str, object]:
    args = parse(argv)
    at_start = harness.start_state()
    walls: dict[str, dict[str, list[float]]] = {}
    with harness.prefect_server(NAME) as root:
        from eventpipe.run.dask import LocalDask

        for case, (attr, rows) in PIPELINES.items():
            spec = harness.spec(attr)
            pipeline = getattr(harness, attr).name
            harness.warm(root / case, spec)
            cluster = LocalDask(spec)
            address = cluster.start()
            print(f"{case}: {cluster.description}", flush=True)
            try:
                walls[case] = {"threads": [], "dask": []}
                for index in range(args.rounds):
                    order = ("threads", "dask") if index % 2 == 0 else ("dask", "threads")
                    for runner in order:
                        inbox = root / case / f"inbox-{runner}-{index}"
                        data = root / case / f"data-{runner}-{index}"
                        files = harness.write_files(inbox, 0, args.files, rows=rows)
                        harness.land(data, pipeline, inbox, files)
                        task_runner = address if runner == "dask" else "threads"
                        wall, summary = harness.run_flow(spec, data, task_runner=task_runner)
                        if summary["processed"] != args.files:
                            raise RuntimeError(f"expected {args.files} processed: {summary}")
                        walls[case][runner].append(wall)
                        print(f"  {case} {runner}: {args.files} files in {wall:.2f} s", flush=True)
            finally:
                cluster.close()

    med = statistics.median
    figures: list[dict[str, Any]] = []
    cases: dict[str, Any] = {}
    rows_out: list[list[object]] = []
    for case, by_runner in walls.items():
        threads, dask = med(by_runner["threads"]), med(by_runner["dask"])
        speedup = threads / dask
        cases[case] = {
            "threads_wall_median": threads,
            "dask_wall_median": dask,
            "speedup": speedup,
            "rows_per_file": PIPELINES[case][1],
            "samples": by_runner,
        }
        rows_out.append([case, threads, dask, f"x{speedup:.2f}"])
        label = "CPU-bound step" if case == "cpu" else "light step (demo, 50 rows)"
        figures.append(
            {
                "figure": f"{args.files} files in one run, {label}: Dask vs threads",
                "value": f"x{speedup:.2f} ({threads:.1f} s -> {dask:.1f} s)",
                "goal": "uses all cores" if case == "cpu" else "-",
                "met": speedup > 1.2 if case == "cpu" else None,
            }
        )
    print()
    print(f"{args.files} new files, one run, medians of {args.rounds} (cores: {os.cpu_count()})")
    print(harness.table(["pipeline", "threads s", "dask s", "speed-up"], rows_out))
    result: dict[str, object] = {
        "measure": "wall seconds of one materialize run processing N new files, called in this "
        "process as `eventpipe up` calls it; Dask: a warm LocalCluster, a process per core",
        "config": {"files": args.files, "rounds": args.rounds, "workers": os.cpu_count()},
        "cases": cases,
        "figures": figures,
    }
    return harness.write_results(NAME, harness.recorded(result, at_start))


if __name__ == "__main__":
    main()
