"""Freshness under a steady stream of files, with and without the freshness budget.

Two ``eventpipe up`` subprocesses on one Prefect server (``harness.prefect_server``), each with
its own inbox, data dir and home and the harness's ``sales`` pipeline under a name of its own:
one with the default ``EVENTPIPE_FRESHNESS_BUDGET`` (1 s), one with a budget no run reaches
(the behaviour before the budget: a run keeps taking the files that land while it works, up to
10 rounds, and publishes at the end).

1. Isolated files: ``--isolated`` drops per path, the paths taking turns, each file alone
   (the previous one done, then ~1 s of quiet).
2. A stream: files at ``--rate`` per second per path for ``--seconds``, the two paths'
   drops interleaved (half an interval apart).

A file's freshness is from just before it is written into the inbox until its ledger row is
``done``: a file is marked done once every analytics output downstream of it has been
published (``updated_at`` of the row). Reported per path and phase: p50, p95, max, and the
stream p50 over the isolated p50. Goal (2 files a second): stream p50 <= 2x the isolated p50,
p95 <= 2 s.

    .venv/bin/python bench/stream.py [--quick] [--rate 2] [--seconds 120] [--isolated 8]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import harness
from eventpipe.demo import write_sample
from eventpipe.ledger import LEDGER_ENV, Ledger
from eventpipe.testing import Background, client_env, drop_file, wait_for

NAME = "stream"
PATHS = {"budget 1 s": ("stream_budget", "1"), "no budget": ("stream_unbounded", "1000000")}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="30 s of stream, 4 isolated drops")
    parser.add_argument("--rate", type=float, default=2.0, help="files per second per path")
    parser.add_argument("--seconds", type=float, default=None, help="stream length (120)")
    parser.add_argument("--isolated", type=int, default=None, help="isolated drops per path (8)")
    parser.add_argument("--results", default=NAME, help="results file name")
    args = parser.parse_args(argv)
    args.seconds = args.seconds or (30.0 if args.quick else 120.0)
    args.isolated = args.isolated or (4 if args.quick else 8)
    return args


class Loop:
    """One path's ``eventpipe up``."""

    def __init__(self, root: Path, api_url: str, label: str) -> None:
        attr, budget = PATHS[label]
        self.label = label
        self.pipeline = getattr(harness, attr).name
        self.spec = harness.spec(attr)
        self.root = root / attr
        self.inbox, self.data = self.root / "inbox", self.root / "data"
        env = client_env(api_url, self.root / "client-home", EVENTPIPE_HOME=".eventpipe")
        env.pop(LEDGER_ENV, None)
        env["EVENTPIPE_FRESHNESS_BUDGET"] = budget
        argv = [sys.executable, "-m", "eventpipe.cli", "up", "--pipeline", self.spec]
        argv += ["--inbox", str(self.inbox), "--data", str(self.data), "--api-url", api_url]
        self.process = Background(argv, self.root / "up.log", env=env, cwd=self.root)
        self.dropped: dict[str, float] = {}

    def start(self) -> Loop:
        self.root.mkdir(parents=True)
        self.process.start()
        return self

    def drop(self, name: str, content: bytes) -> None:
        self.dropped[name] = time.time()
        drop_file(self.inbox, name, content)

    def done(self) -> dict[str, float]:
        """Relative name -> when its row became done (for the files done so far)."""
        ledger = Ledger(self.data / "ledger.sqlite")
        try:
            return {
                r.relative: r.updated_at for r in ledger.files(self.pipeline) if r.state == "done"
            }
        finally:
            ledger.close()

    def latencies(self, names: list[str]) -> list[float]:
        done = self.done()
        return [done[n] - self.dropped[n] for n in names if n in done]


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(0.95 * len(ordered))) - 1]


def summary(values: list[float], expected: int) -> dict[str, Any]:
    return {
        "n": len(values),
        "missing": expected - len(values),
        "p50": round(statistics.median(values), 3) if values else None,
        "p95": round(p95(values), 3) if values else None,
        "max": round(max(values), 3) if values else None,
    }


def measure(root: Path, api_url: str, args: argparse.Namespace) -> dict[str, Any]:
    loops = [Loop(root, api_url, label) for label in PATHS]
    staging = root / "staging"
    total = 2 + args.isolated + math.ceil(args.seconds * args.rate) + 1
    samples = [write_sample(staging, i, rows=10) for i in range(total)]
    files = [(p.name, p.read_bytes()) for p in samples]
    isolated: dict[str, list[str]] = {loop.label: [] for loop in loops}
    stream: dict[str, list[str]] = {loop.label: [] for loop in loops}
    try:
        for loop in loops:
            loop.start()
        for loop in loops:
            loop.process.wait_for_output("eventpipe is up", 240)
        # 1. Isolated: 2 warm-up files each, then the timed ones, the paths taking turns.
        for index in range(2 + args.isolated):
            name, content = files[index]
            turn = index % len(loops)
            for loop in loops[turn:] + loops[:turn]:
                loop.drop(name, content)
                wait_for(lambda lp=loop, n=name: n in lp.done(), 120, 0.01, what=f"{name} done")
                if index >= 2:
                    isolated[loop.label].append(name)
                time.sleep(1.0)  # quiet between files: each one alone
        # 2. The stream: each path gets `rate` files a second, half an interval apart.
        interval = 1.0 / args.rate
        start = time.monotonic()
        for k, (name, content) in enumerate(files[2 + args.isolated :]):
            for j, loop in enumerate(loops):
                due = start + k * interval + j * interval / len(loops)
                time.sleep(max(0.0, due - time.monotonic()))
                loop.drop(name, content)
                stream[loop.label].append(name)
            if time.monotonic() - start > args.seconds:
                break
        for loop in loops:
            names = stream[loop.label]
            wait_for(
                lambda lp=loop, n=names: all(x in lp.done() for x in n), 600, 0.2, what="all done"
            )
        out: dict[str, Any] = {}
        for loop in loops:
            alone = loop.latencies(isolated[loop.label])
            flowing = loop.latencies(stream[loop.label])
            one, many = (
                summary(alone, len(isolated[loop.label])),
                summary(flowing, len(stream[loop.label])),
            )
            ratio = round(many["p50"] / one["p50"], 2) if one["p50"] and many["p50"] else None
            out[loop.label] = {
                "isolated": one,
                "stream": many,
                "stream_p50_over_isolated": ratio,
                "stream_seconds": [round(v, 3) for v in flowing],
            }
        return out
    finally:
        for loop in loops:
            loop.process.stop(timeout=60)


def main(argv: list[str] | None = None) -> dict[str, object]:
    args = parse(argv)
    at_start = harness.start_state()
    with harness.prefect_server(NAME) as root:
        try:
            results = measure(root, os.environ["PREFECT_API_URL"], args)
        finally:
            shutil.rmtree(root / "staging", ignore_errors=True)
    rows = [
        [
            label,
            r["isolated"]["p50"],
            r["stream"]["n"],
            r["stream"]["p50"],
            r["stream"]["p95"],
            r["stream"]["max"],
            r["stream_p50_over_isolated"],
        ]
        for label, r in results.items()
    ]
    print()
    print(
        "file written -> done (analytics published), seconds; stream"
        f" {args.rate:g} files/s per path for {args.seconds:g} s"
    )
    print(
        harness.table(
            [
                "path",
                "isolated p50",
                "stream n",
                "stream p50",
                "stream p95",
                "max",
                "p50 / isolated",
            ],
            rows,
        )
    )
    budget = results["budget 1 s"]
    s, unbounded = budget["stream"], results["no budget"]["stream"]
    figures = [
        {
            "figure": f"steady stream ({args.rate:g} files/s), freshness p50 / p95, budget 1 s"
            " (no budget)",
            "value": f"{s['p50']} s / {s['p95']} s ({unbounded['p50']} s / {unbounded['p95']} s);"
            f" isolated p50 {budget['isolated']['p50']} s",
            "goal": "p50 <= 2x isolated, p95 <= 2 s",
            "met": bool(
                s["p50"] is not None
                and budget["isolated"]["p50"]
                and s["p50"] <= 2 * budget["isolated"]["p50"]
                and s["p95"] is not None
                and s["p95"] <= 2.0
            ),
        }
    ]
    body = {
        "measure": "seconds from just before a file is written into an `eventpipe up` inbox until"
        " its ledger row is done (every analytics output downstream published); isolated files"
        " one at a time, then a steady stream; two `up` (freshness budget 1 s, and none) on one"
        " server, drops interleaved",
        "config": {
            "rate_per_path": args.rate,
            "stream_seconds": args.seconds,
            "isolated_drops": args.isolated,
            "rows_per_file": 10,
            "quick": args.quick,
            "paths": {
                k: {"pipeline": harness.spec(a), "EVENTPIPE_FRESHNESS_BUDGET": b}
                for k, (a, b) in PATHS.items()
            },
        },
        "results": results,
        "figures": figures,
    }
    return harness.write_results(args.results, harness.recorded(body, at_start))


if __name__ == "__main__":
    main()
