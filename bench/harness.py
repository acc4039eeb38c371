"""What the benchmarks share, in one module every script imports as ``harness`` (``bench/`` is
on the path when a script runs, and in pytest's ``pythonpath``): a Prefect server for the
whole script, files recorded in a ledger as the watcher would, one materialize run called
in-process as `eventpipe up` calls it, and what every result file records (the commit,
whether the tree was clean, the load average, the machine).

The pipelines below are loaded by spec (``bench/harness.py:<name>``). Importing this module
imports no Prefect (``tests/test_bench_suite.py`` checks every script): Prefect reads its
settings once, so a script points it at its server (:func:`prefect_server`) first, and the
functions that need Prefect import it themselves.

Every result file is written the same way: note :func:`start_state` before measuring, then
``write_results(name, recorded(body, at_start))`` (or ``recorded`` alone when a run writes
nothing): the body, plus the date, the machine and its load at start and end, the commit and
the working tree's changes at start, whether they changed during the run, and the command
with its options.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pandas as pd

from eventpipe import demo
from eventpipe.core.atomic import file_digest
from eventpipe.core.keys import asset_key, file_uri
from eventpipe.core.models import Landed
from eventpipe.events.build import sighting_event
from eventpipe.events.outbox import flush_outbox
from eventpipe.intake.record import record
from eventpipe.ledger import Ledger
from eventpipe.pipeline import Pipeline
from eventpipe.testing import configure_prefect_env

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
SELF = BENCH / "harness.py"


def sales(name: str) -> Pipeline:
    """The demo's process step and its two first-level analytics, under another name."""
    pipeline = Pipeline(name)
    pipeline.process(expects=demo.ORDER_COLUMNS)(demo.orders)
    pipeline.analytics(demo.revenue_by_day)
    pipeline.analytics(demo.revenue_by_region)
    return pipeline


def by_day(partials: pd.DataFrame) -> pd.DataFrame:
    return partials.groupby("day", as_index=False)[["orders", "revenue"]].sum()


def by_region(partials: pd.DataFrame) -> pd.DataFrame:
    totals = partials.groupby("region", as_index=False)[["revenue"]].sum()
    return totals.sort_values(by="region", ignore_index=True)


def combined(name: str) -> Pipeline:
    """The same analytics in the map/combine form: per-partition partials, merged."""
    pipeline = Pipeline(name)
    pipeline.process(expects=demo.ORDER_COLUMNS)(demo.orders)
    pipeline.analytics(combine=by_day)(demo.revenue_by_day)
    pipeline.analytics(combine=by_region)(demo.revenue_by_region)
    return pipeline


def busy_score(amount: float) -> float:
    """About 0.25 ms of pure-Python arithmetic per row: step code that holds the GIL."""
    total = amount
    for i in range(2000):
        total = (total * 1.000001 + i) % 1_000_003.0
    return total


def scored(raw: pd.DataFrame) -> pd.DataFrame:
    """A CPU-bound process step: the demo's cleaning plus a per-row Python function."""
    out = demo.orders(raw)
    return out.assign(score=out["amount"].map(busy_score))


def cpu_bound(name: str) -> Pipeline:
    """The demo's analytics over a process step whose time is Python code, not I/O."""
    pipeline = Pipeline(name)
    pipeline.process(expects=demo.ORDER_COLUMNS)(scored)
    pipeline.analytics(score_by_day)
    return pipeline


def score_by_day(scored: pd.DataFrame) -> pd.DataFrame:
    return scored.groupby("day", as_index=False).agg(
        orders=("order_id", "count"), revenue=("amount", "sum"), score=("score", "mean")
    )


# The pipelines the scripts name by spec: ``spec("plain")``.
plain = sales("perf_plain")
with contextlib.suppress(TypeError):  # an older eventpipe has no map/combine (baseline runs)
    combine = combined("perf_combine")
cpu = cpu_bound("perf_cpu")
# ``plain`` under three more names, for three ``eventpipe up`` on one server (ledger_cost's part
# C): a deployment and its trigger per pipeline name, so none runs for another's files.
ledger_sqlite = sales("perf_ledger_sqlite")
ledger_pg = sales("perf_ledger_pg")
ledger_pg_bucket = sales("perf_ledger_pg_bucket")
# ... and two more for stream.py's two `eventpipe up`, one per freshness budget.
stream_budget = sales("perf_stream_budget")
stream_unbounded = sales("perf_stream_unbounded")


def spec(attr: str) -> str:
    return f"{SELF}:{attr}"


@contextmanager
def prefect_server(prefix: str) -> Iterator[Path]:
    """A fresh Prefect server for the benchmark; yields the working directory. Call before
    anything imports Prefect (it reads its settings at import)."""
    root = Path(tempfile.mkdtemp(prefix=f"eventpipe-{prefix}-")).resolve()
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    server = configure_prefect_env(root)
    started = time.monotonic()
    server.start(timeout=600)
    print(f"server up at {server.api_url} in {time.monotonic() - started:.1f} s", flush=True)
    try:
        yield root
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def write_files(inbox: Path, start: int, count: int, rows: int = 50) -> list[Path]:
    return [demo.write_sample(inbox, i, rows=rows) for i in range(start, start + count)]


def land(
    data: Path, pipeline: str, inbox: Path, paths: list[Path], ledger_url: str | None = None
) -> None:
    """Record ``paths`` in the ledger and send their events, as the watcher and its outbox
    pump do (no deployment listens to them here: the benchmark runs the flow itself). The
    ledger is ``data``'s SQLite file, or the database ``ledger_url`` names (a run finds that
    one through ``EVENTPIPE_LEDGER``)."""
    ledger = open_ledger(data, ledger_url)
    try:
        for path in paths:
            record(ledger, pipeline, landed(inbox, path))
        send_outbox(ledger)
    finally:
        ledger.close()


def open_ledger(data: Path, ledger_url: str | None = None) -> Ledger:
    """The ledger at ``ledger_url`` if given, else ``data``'s SQLite file (opened by path, as
    an older eventpipe's ``Ledger`` is too: baseline runs)."""
    return Ledger(ledger_url) if ledger_url else Ledger(data / "ledger.sqlite")


def landed(inbox: Path, path: Path) -> Landed:
    """What eventpipe's folder source reports for ``path``."""
    return Landed(
        uri=file_uri(path),
        relative=path.relative_to(inbox).as_posix(),
        size=path.stat().st_size,
        fingerprint=file_digest(path),
        source="local",
        local_path=str(path),
    )


def send_outbox(ledger: Ledger) -> None:
    from eventpipe.run.deliver import prefect_sender  # imports Prefect

    sender = prefect_sender()
    try:
        if flush_outbox(ledger, sender) < 0:
            raise RuntimeError("the server did not take the events")
    finally:
        sender.close()


def requeue_done(data: Path, pipeline: str, ledger_url: str | None = None) -> int:
    """Make every done file pending again, unchanged: the next run finds nothing new."""
    ledger = open_ledger(data, ledger_url)
    try:

        def event_for(row: Any) -> tuple[str, dict[str, Any]]:
            event = sighting_event("retry", row, asset_key(row.uri))
            assert event is not None
            return event

        count = len(ledger.requeue(pipeline, event_for, states=("done",)))
        send_outbox(ledger)
        return count
    finally:
        ledger.close()


def run_flow(pipeline_spec: str, data: Path, **extra: Any) -> tuple[float, dict[str, Any]]:
    """One materialize run executed in this process as `eventpipe up` executes it: the run
    is created first (the deployment trigger's job, not timed), then run by Prefect's engine
    with no heartbeat thread; returns (seconds, the run's summary)."""
    from prefect.flow_engine import run_flow as execute
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from eventpipe.run.flow import materialize_pipeline

    flow = materialize_pipeline
    parameters = {"pipeline": pipeline_spec, "data": str(data), **extra}
    flow_run = _create_run(flow, parameters)
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        started = time.perf_counter()
        state = execute(flow, flow_run=flow_run, parameters=parameters, return_type="state")
        seconds = time.perf_counter() - started
    summary: dict[str, Any] = state.result()
    return seconds, summary


def _create_run(flow: Any, parameters: dict[str, Any]) -> Any:
    """Create the flow run; a server still ingesting the events of a thousand partitions may
    answer 503 for a while (a trigger's run creation would be retried by the server)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import PrefectHTTPStatusError

    deadline = time.monotonic() + 600
    while True:
        try:
            with get_client(sync_client=True) as client:
                return client.create_flow_run(flow, parameters=parameters)
        except PrefectHTTPStatusError as exc:
            if exc.response.status_code != 503 or time.monotonic() > deadline:
                raise
            print("server busy (503); creating the run again in 5 s", flush=True)
            time.sleep(5)


def settle(timeout: float = 600.0) -> float:
    """Wait until the server answers a small read quickly three times in a row: after a
    thousand files it ingests their events and task runs for minutes, and a run measured
    meanwhile measures that. Returns the seconds waited."""
    from prefect.client.orchestration import get_client

    started = time.monotonic()
    quick = 0
    while quick < 3 and time.monotonic() - started < timeout:
        t = time.perf_counter()
        try:
            with get_client(sync_client=True) as client:
                client.read_flow_runs(limit=1)
            quick = quick + 1 if time.perf_counter() - t < 0.25 else 0
        except Exception:
            quick = 0
        time.sleep(1)
    waited = time.monotonic() - started
    if waited > 5:
        print(f"waited {waited:.0f} s for the server to settle", flush=True)
    return waited


def warm(root: Path, pipeline_spec: str) -> None:
    """What a running ``eventpipe up`` has already paid: imports, the pipeline loaded, a
    first flow run (a warm runner never pays them per run)."""
    from eventpipe.run.compute import warm_up  # newer than some baselines' src (burst's)

    warm_up(pipeline_spec)
    inbox, data = root / "warm-inbox", root / "warm-data"
    name = pipeline_spec.rpartition(":")[2]
    land(data, globals()[name].name, inbox, write_files(inbox, 90_000, 2))
    run_flow(pipeline_spec, data)


def table(headers: list[str], rows: list[list[object]]) -> str:
    cells = [[str(h) for h in headers]] + [
        [f"{c:.3f}" if isinstance(c, float) else str(c) for c in row] for row in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in cells
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


# -- what every result file records ---------------------------------------------------------

SHARED_MACHINE = (
    "measured on a shared 2-core machine (other engineers ran tests); "
    "compare the ratios of figures taken side by side in this one run"
)


@dataclass(frozen=True)
class Start:
    """What a benchmark notes before it measures, to record with its results."""

    git: dict[str, Any]
    loadavg_1m: float


def start_state() -> Start:
    """The code about to be measured and the machine's load: call it first."""
    return Start(git_state(), os.getloadavg()[0])


def recorded(
    body: Mapping[str, Any],
    start: Start,
    *,
    note: str = SHARED_MACHINE,
    machine_facts: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``body`` and what every result file records: the date, the machine (``machine_facts``
    added, e.g. library versions) and its load at start and end, the code at start and whether
    it changed during the run, the command with its options, and ``note``."""
    return {
        **body,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            **machine(),
            "cores": os.cpu_count(),
            "loadavg_1m_at_start": start.loadavg_1m,
            **(machine_facts or {}),
        },
        "git": start.git,
        # Baseline runs import src afresh: an edit during the run changes what is measured.
        "code_changed_during_run": start.git != git_state(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "eventpipe_imported_from": str(Path(demo.__file__).parent),
        "note": note,
    }


def write_results(name: str | Path, result: dict[str, Any]) -> dict[str, Any]:
    """Write ``result`` (see :func:`recorded`) to ``bench/results/<name>.json``, or to ``name``
    if it is a path; returns it."""
    path = name if isinstance(name, Path) else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path}")
    if result.get("code_changed_during_run"):
        print("warning: the working tree changed during the run; it measured more than one version")
    return result


def machine() -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "loadavg_1m_at_end": os.getloadavg()[0],
        "python": platform.python_version(),
        "prefect": version("prefect"),
        "eventpipe": version("eventpipe"),
        "platform": platform.platform(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def git_state() -> dict[str, Any]:
    """Which code was measured: the commit, and whether the working tree differed from it
    (results files aside: the suite's scripts write them while it runs)."""

    def git(*argv: str) -> str:
        result = subprocess.run(["git", *argv], cwd=REPO, capture_output=True, text=True)
        return result.stdout.rstrip("\n")

    code = ("--", ".", f":(exclude){RESULTS.relative_to(REPO)}")
    return {
        "commit": git("rev-parse", "HEAD"),
        "dirty": git("status", "--porcelain", *code).splitlines(),
        "diff_sha256": hashlib.sha256(git("diff", "HEAD", *code).encode()).hexdigest(),
    }
