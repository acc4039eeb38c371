"""No-change re-run cost: a run that processes N files, then a run where nothing changed (the
same N files pending again, same bytes, same code) and a run with nothing pending.

The goal: the no-change run costs at most 5 % of the full run, and every stage says it was
skipped (one ``eventpipe.asset.skipped`` per partition and per analytics asset, no task run).
Each run is the deployment flow called in this process, as `eventpipe up` executes it; the
flow body's own time (the run summary's ``total``) is reported beside the wall time, which
also holds Prefect's flow-run round trips to a server shared with the other engineers.

    .venv/bin/python bench/rerun.py [--files 1000] [--repeat 3] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import harness
from eventpipe.ledger import Ledger

NAME = "rerun"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=1000, help="files in the full run")
    parser.add_argument("--repeat", type=int, default=3, help="no-change and empty runs each")
    parser.add_argument("--quick", action="store_true", help="50 files, 2 repeats (~1-2 min)")
    args = parser.parse_args(argv)
    if args.quick:
        args.files, args.repeat = 50, 2
    return args


def skipped_events(data: Path, since: float) -> list[dict[str, Any]]:
    """The ``eventpipe.asset.skipped`` events queued since ``since`` (the outbox keeps them)."""
    ledger = Ledger(data / "ledger.sqlite")
    try:
        return ledger.events_named("eventpipe.asset.skipped", since=since)
    finally:
        ledger.close()


def main(argv: list[str] | None = None) -> dict[str, object]:
    args = parse(argv)
    at_start = harness.start_state()
    spec = harness.spec("plain")
    with harness.prefect_server(NAME) as root:
        harness.warm(root, spec)
        inbox, data = root / "inbox", root / "data"
        harness.land(data, "perf_plain", inbox, harness.write_files(inbox, 0, args.files))
        full_wall, full = harness.run_flow(spec, data)
        if full["processed"] != args.files:
            raise RuntimeError(f"the full run did not process every file: {full}")
        print(f"full run: {args.files} files in {full_wall:.2f} s", flush=True)
        harness.settle()  # the server ingests the full run's events before the next run

        unchanged: list[tuple[float, dict[str, Any]]] = []
        empty: list[tuple[float, dict[str, Any]]] = []
        skipped_per_run: list[int] = []
        for _ in range(args.repeat):
            since = time.time()
            harness.requeue_done(data, "perf_plain")
            wall, summary = harness.run_flow(spec, data)
            unchanged.append((wall, summary))
            skipped_per_run.append(len(skipped_events(data, since)))
            if summary["skipped"] != args.files or summary["assets_updated"]:
                raise RuntimeError(f"the no-change run did something: {summary}")
            empty.append(harness.run_flow(spec, data))

    analytics = 2  # revenue_by_day, revenue_by_region
    expected_skips = args.files + analytics
    med = statistics.median
    rows = {
        "full": (full_wall, full["stage_seconds"]["total"]),
        "no change": (
            med(w for w, _ in unchanged),
            med(s["stage_seconds"]["total"] for _, s in unchanged),
        ),
        "nothing pending": (
            med(w for w, _ in empty),
            med(s["stage_seconds"]["total"] for _, s in empty),
        ),
    }
    print()
    print(
        harness.table(
            ["run", "wall s", "body s", "wall / full", "body / full"],
            [
                [k, w, b, f"{w / full_wall:.1%}", f"{b / rows['full'][1]:.1%}"]
                for k, (w, b) in rows.items()
            ],
        )
    )
    print(
        f"\nno-change runs: {skipped_per_run} skipped events each "
        f"(expected {expected_skips}: {args.files} partitions + {analytics} analytics)"
    )
    result: dict[str, object] = {
        "measure": "seconds of one materialize run called in-process (wall: the flow call "
        "with Prefect's flow-run round trips; body: the run summary's total)",
        "config": {"files": args.files, "repeat": args.repeat, "rows_per_file": 50},
        "full": {"wall": full_wall, "body": rows["full"][1]},
        "no_change": {
            "wall_median": rows["no change"][0],
            "body_median": rows["no change"][1],
            "walls": [w for w, _ in unchanged],
            "skipped_events_per_run": skipped_per_run,
            "expected_skipped_events": expected_skips,
        },
        "nothing_pending": {
            "wall_median": rows["nothing pending"][0],
            "body_median": rows["nothing pending"][1],
        },
        "ratio_no_change_wall": rows["no change"][0] / full_wall,
        "ratio_no_change_body": rows["no change"][1] / rows["full"][1],
        "ratio_nothing_pending_wall": rows["nothing pending"][0] / full_wall,
        "goal": "no-change run <= 5 % of the full run",
    }
    return harness.write_results(NAME, harness.recorded(result, at_start))


if __name__ == "__main__":
    main()
