"""Incremental cost: one new file when many partitions exist vs when few exist.

Two data directories of the same pipeline, one with ``--small`` partitions and one with
``--large``; then, in turns, one new file lands in each and one run processes it. The goal:
the run's cost with many partitions is at most 1.5 times its cost with few. Measured for the
plain analytics form (a step reads every current partition of its input) and for the
map/combine form (``@pipeline.analytics(combine=...)``: per-partition partial results,
cached, merged).

    .venv/bin/python bench/incremental.py [--small 10] [--large 1000] [--rounds 3] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

import harness

NAME = "incremental"
FORMS = {"plain": "perf_plain", "combine": "perf_combine"}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=10, help="partitions in the small case")
    parser.add_argument("--large", type=int, default=1000, help="partitions in the large case")
    parser.add_argument("--rounds", type=int, default=3, help="new files per case")
    parser.add_argument("--quick", action="store_true", help="10 vs 150 partitions, 2 rounds")
    args = parser.parse_args(argv)
    if args.quick:
        args.large, args.rounds = 150, 2
    return args


def main(argv: list[str] | None = None) -> dict[str, object]:
    args = parse(argv)
    at_start = harness.start_state()
    timings: dict[str, dict[int, list[tuple[float, float]]]] = {}
    with harness.prefect_server(NAME) as root:
        for form, pipeline in FORMS.items():
            spec = harness.spec(form)
            harness.warm(root / form, spec)
            dirs: dict[int, Path] = {}
            for size in (args.small, args.large):
                inbox, data = root / form / f"inbox-{size}", root / form / f"data-{size}"
                harness.land(data, pipeline, inbox, harness.write_files(inbox, 0, size))
                wall, summary = harness.run_flow(spec, data)
                print(f"{form}: {size} partitions built in {wall:.1f} s", flush=True)
                dirs[size] = inbox
            harness.settle()
            timings[form] = {args.small: [], args.large: []}
            for index in range(args.rounds):
                for size, inbox in dirs.items():
                    data = inbox.with_name(f"data-{size}")
                    new = harness.write_files(inbox, 50_000 + index, 1)
                    harness.land(data, pipeline, inbox, new)
                    wall, summary = harness.run_flow(spec, data)
                    if summary["processed"] != 1:
                        raise RuntimeError(f"expected one processed file: {summary}")
                    timings[form][size].append((wall, summary["stage_seconds"]["total"]))
                    print(
                        f"  {form}: one new file with {size} partitions: {wall:.2f} s "
                        f"(body {summary['stage_seconds']['total']:.2f} s)",
                        flush=True,
                    )

    med = statistics.median
    table: list[list[object]] = []
    figures: dict[str, Any] = {}
    for form, by_size in timings.items():
        small_wall = med(w for w, _ in by_size[args.small])
        small_body = med(b for _, b in by_size[args.small])
        large_wall = med(w for w, _ in by_size[args.large])
        large_body = med(b for _, b in by_size[args.large])
        figures[form] = {
            "small_wall_median": small_wall,
            "small_body_median": small_body,
            "large_wall_median": large_wall,
            "large_body_median": large_body,
            "ratio_wall": large_wall / small_wall,
            "ratio_body": large_body / small_body,
            "samples": {str(k): v for k, v in by_size.items()},
        }
        table.append(
            [
                form,
                small_wall,
                large_wall,
                f"{large_wall / small_wall:.2f}",
                small_body,
                large_body,
                f"{large_body / small_body:.2f}",
            ]
        )
    print()
    print(f"one new file: {args.small} vs {args.large} partitions (medians of {args.rounds})")
    print(
        harness.table(
            [
                "analytics form",
                f"wall {args.small}",
                f"wall {args.large}",
                "ratio",
                f"body {args.small}",
                f"body {args.large}",
                "ratio",
            ],
            table,
        )
    )
    result: dict[str, object] = {
        "measure": "seconds of the run that processes one new file (wall: the flow call; "
        "body: the run summary's total)",
        "config": {
            "small": args.small,
            "large": args.large,
            "rounds": args.rounds,
            "rows_per_file": 50,
        },
        "forms": figures,
        "goal": "ratio large / small <= 1.5",
    }
    return harness.write_results(NAME, harness.recorded(result, at_start))


if __name__ == "__main__":
    main()
