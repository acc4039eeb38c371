"""The Prefect server's own floor: event posted -> flow run created by a deployment trigger.

No eventpipe code on the path and no runs executed: a deployment with an event trigger, events
POSTed about every 1.2 s, and the time until the server has created the run. Whatever this
shows (its occasional multi-second stalls included) is in every eventpipe latency too.

Several server variants run side by side and take their events in turn (round-robin, the
order rotated every round), so a noisy moment on the machine falls on all of them alike:

- ``embedded``: the server ``eventpipe up`` starts (:class:`EmbeddedServer` with ``AT_REST``);
- ``unpatched``: the same settings, but plain ``prefect server start`` without the
  ``BEGIN IMMEDIATE`` patch of :mod:`eventpipe.orchestration.prefect_server` (the server
  before the fix);
- ``batch-500``: ``unpatched`` with the event persister's batch raised from 20 to 500 events
  (fewer flushes to collide with; the settings-only attempt at a fix);
- ``prefect-defaults``: plain ``prefect server start`` with Prefect's defaults;
- ``postgres``: Prefect's defaults on PostgreSQL (skipped if PostgreSQL cannot start).

Each server logs the database errors it answered with a 503 (``PREFECT_API_LOG_RETRYABLE_
ERRORS``): their count per variant is in the result.

    .venv/bin/python bench/trigger_floor.py [--events 30] [--quick] [--variant embedded ...]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

import harness
from eventpipe.exceptions import ServerError
from eventpipe.orchestration.server import AT_REST, EmbeddedServer
from eventpipe.testing import postgres_server

RESULTS = harness.RESULTS / "trigger_floor.json"
VARIANTS = ("embedded", "unpatched", "batch-500", "prefect-defaults", "postgres")
RETRYABLE = "Encountered retryable exception in request"
"""What the server logs for each database error it answers with a 503 (see above)."""


@dataclass
class Variant:
    name: str
    server: EmbeddedServer
    latencies: list[float] = field(default_factory=list)
    runs: int = 0
    last_post: float = 0.0


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--events", type=int, default=30, help="events per variant")
    parser.add_argument("--quick", action="store_true", help="10 events per variant")
    parser.add_argument(
        "--variant",
        action="append",
        choices=VARIANTS,
        help="a server variant to measure (repeatable); default: all",
    )
    parser.add_argument(
        "--gap", type=float, default=1.2, help="seconds between two events to one server"
    )
    args = parser.parse_args(argv)
    events = 10 if args.quick else args.events
    names = list(dict.fromkeys(args.variant or VARIANTS))
    at_start = harness.start_state()
    root = Path(tempfile.mkdtemp(prefix="eventpipe-floor-"))
    skipped: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        variants: list[Variant] = []
        for name in names:
            try:
                server = stack.enter_context(start_variant(name, root / name))
            except (RuntimeError, OSError, ServerError) as exc:
                if name != "postgres":  # only PostgreSQL may be missing from the machine
                    raise
                skipped[name] = f"{type(exc).__name__}: {exc}"
                print(f"{name}: skipped ({skipped[name]})")
                continue
            variants.append(Variant(name, server))
        with httpx.Client(timeout=30) as http:
            for variant in variants:
                create_trigger(http, variant.server.api_url)
            time.sleep(3)  # the triggers services load the new automations
            for variant in variants:  # unmeasured: a long-lived server is warm
                post_and_wait(http, variant)
            for index in range(events):
                shift = index % len(variants) if variants else 0
                for variant in variants[shift:] + variants[:shift]:
                    time.sleep(max(0.0, variant.last_post + args.gap - time.monotonic()))
                    variant.latencies.append(post_and_wait(http, variant))
        logs = {v.name: v.server.log_file for v in variants}
    summary = {v.name: summarize(v.latencies, logs[v.name]) for v in variants}
    print(
        harness.table(
            ["variant", "n", "p50 s", "p95 s", "max s", "over 1 s", "503s logged"],
            [
                [name, s["n"], s["p50"], s["p95"], s["max"], s["over_1s"], s["retryable_errors"]]
                for name, s in summary.items()
            ],
        )
    )
    with open("/proc/loadavg", encoding="ascii") as loadavg:
        load_at_end = loadavg.read().strip()
    print(f"/proc/loadavg at end: {load_at_end}")
    body = {
        "measure": "seconds from POST /api/events until the trigger's flow run exists",
        "options": {"events": events, "quick": args.quick, "variants": names, "gap": args.gap},
        "order": "round-robin over the variants, rotated every round; one warm-up event each",
        "summary": summary,
        "latencies": {v.name: v.latencies for v in variants},
        "skipped": skipped,
        "proc_loadavg_at_end": load_at_end,
    }
    embedded = summary.get("embedded")
    if embedded is not None:
        others = ", ".join(f"{k} {v['p95']} s" for k, v in summary.items() if k != "embedded")
        body["figures"] = [
            {
                "figure": "event -> trigger's run created, embedded server, p95",
                "value": f"{embedded['p95']} s (p50 {embedded['p50']} s; {others})",
                "goal": "<= 0.5 s",
                "met": embedded["p95"] is not None and embedded["p95"] <= 0.5,
            }
        ]
    return harness.write_results(RESULTS, harness.recorded(body, at_start))


@contextlib.contextmanager
def start_variant(name: str, home: Path) -> Iterator[EmbeddedServer]:
    """A started server of variant ``name`` with its home (and log) in ``home``."""
    logged = {"PREFECT_API_LOG_RETRYABLE_ERRORS": "true"}
    database_url: str | None = None
    with contextlib.ExitStack() as stack:
        if name == "embedded":  # as `eventpipe up` (configure_api) starts it
            env = {k: v for k, v in AT_REST.items() if k not in os.environ}
            server = EmbeddedServer(home, env={**env, **logged})
        elif name == "unpatched":
            env = {k: v for k, v in AT_REST.items() if k not in os.environ}
            server = EmbeddedServer(home, env={**env, **logged}, patched=False)
        elif name == "batch-500":
            env = {k: v for k, v in AT_REST.items() if k not in os.environ}
            env["PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE"] = "500"
            server = EmbeddedServer(home, env={**env, **logged}, patched=False)
        elif name == "prefect-defaults":
            server = EmbeddedServer(home, env=logged, patched=False)
        elif name == "postgres":
            database_url = stack.enter_context(postgres_server())
            database_url = database_url.replace("postgresql://", "postgresql+asyncpg://", 1)
            server = EmbeddedServer(home, env=logged, database_url=database_url, patched=False)
        else:
            raise ValueError(f"unknown variant {name!r}")
        server.start()
        stack.callback(server.stop)
        yield server


def create_trigger(http: httpx.Client, api: str) -> None:
    """A flow, its deployment and the automation a ``DeploymentEventTrigger`` would make."""
    flow = post(http, f"{api}/flows/", {"name": "noop"})
    deployment = post(http, f"{api}/deployments/", {"name": "floor", "flow_id": flow["id"]})
    automation = {
        "name": "floor",
        "trigger": {
            "type": "event",
            "posture": "Reactive",
            "expect": ["floor.landed"],
            "match": {"floor.pipeline": "p"},
            "threshold": 1,
            "within": 0,
        },
        "actions": [
            {
                "type": "run-deployment",
                "source": "selected",
                "deployment_id": deployment["id"],
                "parameters": {},
            }
        ],
    }
    post(http, f"{api}/automations/", automation)


def post(http: httpx.Client, url: str, body: Any) -> Any:
    """POST ``body``; again after a 503 (SQLite busy), as Prefect's own client would."""
    for _ in range(100):
        answer = http.post(url, json=body)
        if answer.status_code != 503:
            break
        time.sleep(0.05)
    answer.raise_for_status()
    return answer.json() if answer.content else None


def post_and_wait(http: httpx.Client, variant: Variant) -> float:
    """Post one event to the variant's server; seconds until its run exists."""
    api = variant.server.api_url
    body = {
        "id": str(uuid.uuid4()),
        "occurred": datetime.now(UTC).isoformat(),
        "event": "floor.landed",
        "resource": {"prefect.resource.id": f"floor.{variant.runs}", "floor.pipeline": "p"},
    }
    variant.last_post = time.monotonic()
    started = time.perf_counter()
    post(http, f"{api}/events", [body])
    while post(http, f"{api}/flow_runs/count", {}) <= variant.runs:
        time.sleep(0.01)
    elapsed = round(time.perf_counter() - started, 4)
    variant.runs += 1
    return elapsed


def summarize(latencies: list[float], log_file: Path) -> dict[str, Any]:
    ordered = sorted(latencies)
    if not ordered:
        return {"n": 0, "p50": None, "p95": None, "max": None, "over_1s": 0}
    text = log_file.read_text(encoding="utf-8", errors="replace") if log_file.exists() else ""
    return {
        "n": len(ordered),
        "p50": statistics.median(ordered),
        "p95": ordered[max(0, -(-len(ordered) * 95 // 100) - 1)],
        "max": ordered[-1],
        "over_1s": sum(1 for s in ordered if s > 1.0),
        "retryable_errors": text.count(RETRYABLE),
        "database_is_locked": text.count("database is locked"),
    }


if __name__ == "__main__":
    main()
