"""Freshness under a steady stream of files, with the freshness budget (and, asked for,
without).

``eventpipe up`` subprocesses on one Prefect server (``harness.prefect_server``), each with its
own inbox, data dir and home and the harness's ``sales`` pipeline under a name of its own: by
default one, ``budget 1 s`` (the default ``EVENTPIPE_FRESHNESS_BUDGET``); with ``--path "no
budget"`` also one with a budget no run reaches (a run keeps taking the files that land while it
works, up to 10 rounds, and publishes at the end), its drops interleaved with the first's. Two
paths at ``--rate`` each put twice the load on this 2-core machine: the goal is for one.

1. Isolated files: ``--isolated`` drops per path, the paths taking turns, each file alone
   (the previous one done, then ~1 s of quiet).
2. A stream: files at ``--rate`` per second per path for ``--seconds``, the two paths'
   drops interleaved (half an interval apart).

A file's freshness is from just before it is written into the inbox until its ledger row is
``done``: a file is marked done once every analytics output downstream of it has been
published (``updated_at`` of the row). Reported per path and phase: p50, p95, max, and the
stream p50 over the isolated p50. Goal (2 files a second): stream p50 <= 2x the isolated p50,
p95 <= 2 s.

Where the time went, per path (printed and in the results): each streamed file's stages from
the ledger's timestamps (row seen, landed event sent, partition and analytics versions
published, row done) and the Prefect server's run states (created, Pending, Running,
Completed) — see :func:`stages`; the runs' counts, files per run, durations, gaps, how many
were created but never started, how many files waited at each run's start (:func:`run_facts`);
and what the server did with the landed events: wakes stored, run-deployment actions
triggered/executed (:func:`trigger_facts`). ``--keep DIR`` copies the server's log (set
``PREFECT_SERVER_LOGGING_LEVEL=DEBUG`` to see the triggers and actions services), each
``up``'s log and ledger there.

    .venv/bin/python bench/stream.py [--quick] [--rate 2] [--seconds 120] [--isolated 8]
        [--keep DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shutil
import sqlite3
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import harness
from eventpipe.demo import write_sample
from eventpipe.ledger import LEDGER_ENV, Ledger
from eventpipe.testing import Background, client_env, drop_file, read_events, wait_for

NAME = "stream"
PATHS = {"budget 1 s": ("stream_budget", "1"), "no budget": ("stream_unbounded", "1000000")}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="30 s of stream, 4 isolated drops")
    parser.add_argument("--rate", type=float, default=2.0, help="files per second per path")
    parser.add_argument("--seconds", type=float, default=None, help="stream length (120)")
    parser.add_argument("--isolated", type=int, default=None, help="isolated drops per path (8)")
    parser.add_argument("--results", default=NAME, help="results file name")
    parser.add_argument(
        "--keep", type=Path, default=None, help="copy the server's and each up's log here"
    )
    parser.add_argument(
        "--path",
        action="append",
        choices=list(PATHS),
        help="a path to measure (repeat for several, interleaved; default: budget 1 s)",
    )
    args = parser.parse_args(argv)
    args.path = args.path or ["budget 1 s"]
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

    def facts(self) -> dict[str, Any]:
        """What the ledger recorded of each file and run (read with sqlite3: every column,
        timestamps included): files, the landed events' send times, the partitions' and
        analytics' publish times, and each run's ``eventpipe.pipeline.completed`` payload."""
        db = sqlite3.connect(self.data / "ledger.sqlite")
        try:
            files = {
                rel: {"id": i, "seen": seen, "done": upd, "run": run, "state": state}
                for i, rel, seen, upd, run, state in db.execute(
                    "SELECT id, relative, seen_at, updated_at, run_id, state FROM files"
                    " WHERE pipeline=?",
                    (self.pipeline,),
                )
            }
            sent: dict[int, float] = {}
            runs: dict[str, dict[str, Any]] = {}
            for body, file_id, created, sent_at in db.execute(
                "SELECT body, file_id, created_at, sent_at FROM outbox"
            ):
                event = json.loads(body)
                if event.get("event") == "eventpipe.file.landed" and file_id is not None:
                    if sent_at is not None:
                        sent[file_id] = min(sent.get(file_id, sent_at), sent_at)
                elif event.get("event") == "eventpipe.pipeline.completed":
                    run = next(
                        r["prefect.resource.id"].removeprefix("prefect.flow-run.")
                        for r in event.get("related", [])
                        if r.get("prefect.resource.role") == "flow-run"
                    )
                    runs[run] = {"completed_event_at": created, "payload": event["payload"]}
            published: dict[tuple[str, str], float] = {}
            analytics: dict[str, list[float]] = {}
            for partition, run, at in db.execute(
                "SELECT partition, run_id, current_at FROM versions WHERE pipeline=?",
                (self.pipeline,),
            ):
                if partition:
                    published[(run, partition)] = at
                else:
                    analytics.setdefault(run, []).append(at)
            return {
                "files": files,
                "sent": sent,
                "runs": runs,
                "partition_at": published,
                "analytics_at": analytics,
            }
        finally:
            db.close()


def prefect_runs(run_ids: list[str], deployment: str | None = None) -> dict[str, dict[str, float]]:
    """Each run's creation and state times as the Prefect server recorded them (epoch s):
    the runs named, and every run of ``deployment`` (``flow/name``), executed or not."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    out: dict[str, dict[str, float]] = {}
    with get_client(sync_client=True) as client:
        if deployment is not None:
            dep = client.read_deployment_by_name(deployment)
            found: list[str] = []
            while True:
                page = client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])),
                    limit=200,
                    offset=len(found),
                )
                found += [str(r.id) for r in page]
                if len(page) < 200:
                    break
            run_ids = sorted({*run_ids, *found})
        for run_id in run_ids:
            try:
                run = client.read_flow_run(UUID(run_id))
                states = client.read_flow_run_states(UUID(run_id))
            except Exception as exc:  # a run the server lost: report it, measure the rest
                print(f"run {run_id}: {exc}", flush=True)
                continue
            times = {"created": run.created.timestamp()} if run.created else {}
            for state in states:
                times.setdefault(state.type.value.lower(), state.timestamp.timestamp())
            out[run_id] = times
    return out


def stages(loop: Loop, names: list[str], facts: dict[str, Any], runs: dict[str, Any]) -> Any:
    """Where each file's time went, drop to done, and what the runs did.

    Per file (seconds): ``landed`` drop -> ledger row; ``sent`` -> its landed event posted;
    then either ``to_run_start`` (the run that took it started after the event: trigger, the
    runner's queue behind other runs, the engine's start) + ``run_start_to_partition`` (the
    run's own work up to this file's partition), or ``to_partition_in_running_run`` (a run
    already running took it in a later round); ``partition_to_analytics`` (the run's other
    files and analytics); ``analytics_to_done``."""
    rows: list[dict[str, float]] = []
    for name in names:
        f = facts["files"].get(name)
        if f is None or f["state"] != "done" or f["run"] not in runs:
            continue
        run = runs[f["run"]]
        dropped, seen, done = loop.dropped[name], f["seen"], f["done"]
        sent = facts["sent"].get(f["id"], seen)
        partition = facts["partition_at"].get((f["run"], name), sent)
        after = [t for t in facts["analytics_at"].get(f["run"], []) if t >= partition]
        analytics = max(after) if after else done
        row = {"landed": seen - dropped, "sent": sent - seen}
        started = run.get("running", sent)
        if started >= sent:
            row["to_run_start"] = started - sent
            row["run_start_to_partition"] = partition - started
        else:
            row["to_partition_in_running_run"] = partition - sent
        row["partition_to_analytics"] = analytics - partition
        row["analytics_to_done"] = done - analytics
        row["total"] = done - dropped
        rows.append(row)
    keys = [
        "landed",
        "sent",
        "to_run_start",
        "run_start_to_partition",
        "to_partition_in_running_run",
        "partition_to_analytics",
        "analytics_to_done",
        "total",
    ]
    per_stage = {}
    for key in keys:
        values = [r[key] for r in rows if key in r]
        per_stage[key] = {
            "files": len(values),
            "p50": round(statistics.median(values), 3) if values else None,
            "p95": round(p95(values), 3) if values else None,
            "mean": round(statistics.fmean(values), 3) if values else None,
        }
    return per_stage


def run_facts(facts: dict[str, Any], runs: dict[str, Any], since: float) -> dict[str, Any]:
    """The runs that started after ``since``: how many, files each, durations, gaps, the
    engine's own time around the body, and how many files waited when each run started."""
    timed = sorted(
        (times["running"], run_id, times)
        for run_id, times in runs.items()
        if "running" in times and times["running"] >= since
    )
    seen = sorted(f["seen"] for f in facts["files"].values())
    durations, empty, gaps, files, backlog, before, body = [], [], [], [], [], [], []
    trigger = []
    previous_end: float | None = None
    for start, run_id, times in timed:
        end = times.get("completed", start)
        payload = facts["runs"].get(run_id, {}).get("payload", {})
        count = payload.get("files", 0)
        files.append(count)
        (durations if count else empty).append(end - start)
        body.append(payload.get("stage_seconds", {}).get("total", 0.0))
        if "pending" in times and "created" in times:
            before.append(times["pending"] - times["created"])
        if previous_end is not None:
            gaps.append(start - previous_end)
        previous_end = end
        claimed_by_now = sum(
            1
            for f in facts["files"].values()
            if f["run"] in runs and runs[f["run"]].get("running", 0) < start
        )
        backlog.append(sum(1 for t in seen if t <= start) - claimed_by_now)
    for f in facts["files"].values():
        sent = facts["sent"].get(f["id"])
        if sent is None or sent < since:
            continue
        created = [t["created"] for t in runs.values() if t.get("created", 0) >= sent]
        if created:
            trigger.append(min(created) - sent)

    def dist(values: list[float]) -> dict[str, Any]:
        return {
            "n": len(values),
            "p50": round(statistics.median(values), 3) if values else None,
            "p95": round(p95(values), 3) if values else None,
            "max": round(max(values), 3) if values else None,
            "sum": round(sum(values), 3),
        }

    created = [t for t in runs.values() if t.get("created", 0) >= since]
    return {
        "runs_created": len(created),
        "runs_created_never_running": sum(1 for t in created if "running" not in t),
        "runs": len(timed),
        "runs_with_files": sum(1 for n in files if n),
        "files_per_run": dist([float(n) for n in files if n]),
        "run_seconds_with_files": dist(durations),
        "run_seconds_empty": dist(empty),
        "body_seconds": dist(body),
        "gap_between_runs": dist(gaps),
        "created_to_pending": dist(before),
        "event_sent_to_next_run_created": dist(trigger),
        "files_waiting_at_run_start": [int(n) for n in backlog],
        # every run of the stream, seconds after the stream began: created, then each state
        "timeline": [
            {k: round(v - since, 3) for k, v in sorted(t.items(), key=lambda kv: kv[1])}
            for t in sorted(created, key=lambda t: t["created"])
        ],
    }


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


def trigger_facts(api_url: str, pipeline: str, since: float, expected: int) -> dict[str, Any]:
    """What the server did with the stream's landed events: how many woke the deployment's
    trigger, and how many run-deployment actions it triggered, executed or failed (Prefect's
    ``prefect.automation.action.*`` events for the trigger's automation)."""
    from datetime import UTC, datetime

    iso = datetime.fromtimestamp(since, UTC).isoformat()
    landed: list[dict[str, Any]] = []

    def stored() -> bool:  # the server persists events in batches, seconds after they came
        landed[:] = read_events(
            api_url, ["eventpipe.file.landed"], [f"eventpipe.file.{pipeline}."], iso, 100_000
        )
        return len(landed) >= expected

    try:
        wait_for(stored, 60, 1.0, what="the stream's landed events stored")
    except Exception as exc:  # report what is there
        print(f"{pipeline}: {exc}", flush=True)
    wakes = [e for e in landed if e["resource"].get("eventpipe.wake") == "true"]
    actions: dict[str, int] = {}
    for event in read_events(api_url, None, ["prefect.automation."], iso, limit=100_000):
        if not event["event"].startswith("prefect.automation.action."):
            continue
        names = [event["resource"].get("prefect.resource.name", "")] + [
            r.get("prefect.resource.name", "") for r in event.get("related", [])
        ]
        if any(n == f"{pipeline}: file landed" for n in names):
            actions[event["event"]] = actions.get(event["event"], 0) + 1
    return {"landed_events": len(landed), "wake_events": len(wakes), "actions": actions}


def keep(where: Path, root: Path, loops: list[Loop]) -> None:
    """Copy the server's log and each path's ``up`` log and ledger to ``where``."""
    where.mkdir(parents=True, exist_ok=True)
    for log in [root / "prefect-home" / "server.log"] + [lp.root / "up.log" for lp in loops]:
        if log.exists():
            shutil.copy(log, where / f"{log.parent.name}-{log.name}")
    for lp in loops:
        if (lp.data / "ledger.sqlite").exists():
            shutil.copy(lp.data / "ledger.sqlite", where / f"{lp.root.name}.sqlite")


def measure(root: Path, api_url: str, args: argparse.Namespace) -> dict[str, Any]:
    loops = [Loop(root, api_url, label) for label in args.path]
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
        start, stream_started = time.monotonic(), time.time()
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
            facts = loop.facts()
            runs = prefect_runs(sorted(facts["runs"]), f"materialize/{loop.pipeline}")
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
                "stream_stages": stages(loop, stream[loop.label], facts, runs),
                "isolated_stages": stages(loop, isolated[loop.label], facts, runs),
                "stream_runs": run_facts(facts, runs, stream_started),
                "stream_trigger": trigger_facts(
                    api_url, loop.pipeline, stream_started, len(stream[loop.label])
                ),
                "stream_seconds": [round(v, 3) for v in flowing],
            }
        return out
    finally:
        for loop in loops:
            loop.process.stop(timeout=60)
        if args.keep is not None:
            keep(args.keep, root, loops)


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
    for label, r in results.items():
        print(f"\n{label}: where a streamed file's time went (s)")
        print(
            harness.table(
                ["stage", "files", "p50", "p95", "mean"],
                [
                    [k, v["files"], v["p50"], v["p95"], v["mean"]]
                    for k, v in r["stream_stages"].items()
                ],
            )
        )
        runs = r["stream_runs"]
        print(
            f"runs created {runs['runs_created']} (never running"
            f" {runs['runs_created_never_running']}), ran {runs['runs']}"
            f" ({runs['runs_with_files']} with files); files per run p50"
            f" {runs['files_per_run']['p50']} max {runs['files_per_run']['max']}; run s with"
            f" files p50 {runs['run_seconds_with_files']['p50']} p95"
            f" {runs['run_seconds_with_files']['p95']}; empty runs {runs['run_seconds_empty']['n']}"
            f" p50 {runs['run_seconds_empty']['p50']} s; body p50 {runs['body_seconds']['p50']} s;"
            f" gap p50 {runs['gap_between_runs']['p50']} s; created->pending p50"
            f" {runs['created_to_pending']['p50']} p95 {runs['created_to_pending']['p95']};"
            f" event->run created p50 {runs['event_sent_to_next_run_created']['p50']} p95"
            f" {runs['event_sent_to_next_run_created']['p95']}"
        )
        print(f"files waiting at each run's start: {runs['files_waiting_at_run_start']}")
        print(f"server side: {r['stream_trigger']}")
    budget = results.get("budget 1 s") or next(iter(results.values()))
    s = budget["stream"]
    unbounded = results["no budget"]["stream"] if "no budget" in results else None
    figures = [
        {
            "figure": f"steady stream ({args.rate:g} files/s), freshness p50 / p95, "
            + ", ".join(results)
            + (" (no budget in brackets)" if unbounded and len(results) > 1 else ""),
            "value": f"{s['p50']} s / {s['p95']} s"
            + (
                f" ({unbounded['p50']} s / {unbounded['p95']} s)"
                if unbounded and len(results) > 1
                else ""
            )
            + f"; isolated p50 {budget['isolated']['p50']} s",
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
            "keep": str(args.keep) if args.keep else None,
            "measured_paths": args.path,
            # Which Prefect server: eventpipe's patched one (a trigger's run created under
            # BEGIN IMMEDIATE) when the module exists, and any server settings set here.
            "server_patched": importlib.util.find_spec("eventpipe.orchestration.prefect_server")
            is not None,
            "server_env": {
                k: v
                for k, v in os.environ.items()
                if k.startswith("PREFECT_SERVER_")
                and not any(w in k for w in ("AUTH", "PASSWORD", "SECRET", "KEY", "URL"))
            },
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
