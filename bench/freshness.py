"""Freshness benchmark: file on disk (or object in a bucket) -> every analytics output updated,
eventpipe's folder and S3 sources vs. Prefect's defaults.

Both paths share one real Prefect server, the same flow, the same pipeline steps and the same
files; they differ only in how the triggered run is picked up and executed:

* eventpipe: ``eventpipe up`` (folder watcher, outbox pump, push runner in a warm process);
* eventpipe, S3: the same, watching a bucket on a ``moto_server`` through SQS notifications;
* baseline: ``materialize_pipeline.serve(...)`` in a subprocess with Prefect's defaults (a
  runner polling every 10 s, each run in a fresh interpreter). The benchmark records the file
  and sends its landed event itself, as eventpipe's watcher would;
* worker: the production topology: the flow deployed with the real ``prefect deploy`` (a
  prefect.yaml like the repository's) on a process work pool, ``prefect worker start``
  executing the runs and ``eventpipe up --runs worker`` watching the folder; once with
  ``PREFECT_WORKER_QUERY_SECONDS=1 --prefetch-seconds 0``, once with the worker's defaults.

The server is Prefect's default SQLite database (a private PREFECT_HOME), for every path.

    .venv/bin/python bench/freshness.py [--quick] [--drops 30]
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import harness
from eventpipe.core.storage import Storage
from eventpipe.demo import write_sample
from eventpipe.events.outbox import flush_outbox

# None of these import Prefect, which must first see the environment configure_prefect_env sets.
from eventpipe.intake.record import record
from eventpipe.ledger import Ledger
from eventpipe.pipeline import load_pipeline
from eventpipe.testing import Background, configure_prefect_env, drop_file, moto_s3, upload

REPO = harness.REPO
PIPELINE_FILE = harness.BENCH / "bench_pipeline.py"
RESULTS = harness.RESULTS / "freshness.json"

POLL_SECONDS = 0.002
DROP_TIMEOUT = 60.0
GAP_SECONDS = (0.3, 1.5)
SERVE_READY_TIMEOUT = 120.0
BASE_NAME = "bench_base"

SERVE_SCRIPT = """
import sys
from eventpipe.run.flow import materialize_pipeline
from eventpipe.orchestration.deploy import landed_trigger

materialize_pipeline.serve(
    name=sys.argv[3],
    parameters={"pipeline": sys.argv[1], "data": sys.argv[2]},
    triggers=[landed_trigger(sys.argv[3])],
)
"""

Sample = tuple[str, bytes]
Dropper = Callable[[str, bytes], None]


@dataclass(frozen=True)
class Drop:
    """One file: seconds from just before it was written until analytics were updated."""

    index: int
    first_seconds: float | None
    """Until the first analytics output had a new mtime (None: timed out)."""
    all_seconds: float | None
    """Until every analytics output had a new mtime (None: timed out)."""
    dropped_at: float = 0.0
    """Wall-clock time just before the write (to match the drop with the run it started)."""


@dataclass(frozen=True)
class Summary:
    path: str
    n: int
    timeouts: int
    p50: float | None
    p95: float | None
    max: float | None
    first_p50: float | None
    first_p95: float | None


# -- measuring ---------------------------------------------------------------------------------


def make_samples(staging: Path, count: int) -> list[Sample]:
    """Every file's bytes, generated up front so that producing them is not timed."""
    samples: list[Sample] = []
    for index in range(count):
        path = write_sample(staging, index, rows=50)
        samples.append((path.name, path.read_bytes()))
    return samples


def analytics_outputs(spec: str, data: Path) -> list[Path]:
    """The current-output path of every analytics step (they don't exist before the first run)."""
    pipeline = load_pipeline(spec)
    store = Storage(data, pipeline.name)
    return [Path(store.analytics_path(step.name)) for step in pipeline.analytics_order()]


def mtimes(paths: Sequence[Path]) -> list[int | None]:
    out: list[int | None] = []
    for path in paths:
        try:
            out.append(path.stat().st_mtime_ns)
        except FileNotFoundError:
            out.append(None)
    return out


def wait_fresh(
    paths: Sequence[Path], before: list[int | None], t0: float, timeout: float
) -> tuple[float | None, float | None]:
    """Poll until every path's mtime moved on from ``before``; (first, all) seconds since t0."""
    return wait_changed(lambda: mtimes(paths), before, t0, timeout)


def wait_changed(
    probe: Callable[[], Sequence[object]],
    before: Sequence[object],
    t0: float,
    timeout: float,
    poll: float = POLL_SECONDS,
) -> tuple[float | None, float | None]:
    """Poll ``probe`` (one token per output, None while it is missing: an mtime, an ETag) until
    every token moved on from ``before``; (first, all) seconds since t0, all None on timeout."""
    first: float | None = None
    fresh = [False] * len(before)
    deadline = t0 + timeout
    while True:
        tokens = probe()
        now = time.perf_counter()
        for i, (was, is_) in enumerate(zip(before, tokens, strict=True)):
            if not fresh[i] and is_ is not None and is_ != was:
                fresh[i] = True
                first = now - t0 if first is None else first
        if all(fresh):
            return first, now - t0
        if now > deadline:
            return first, None
        time.sleep(poll)


def measure(
    label: str, drop: Dropper, outputs: Sequence[Path], samples: list[Sample], seed: int
) -> list[Drop]:
    # Both paths get the same seed, hence the same sequence of gaps.
    rng = random.Random(seed)
    drops: list[Drop] = []
    for index, (name, content) in enumerate(samples):
        before = mtimes(outputs)
        dropped_at, t0 = time.time(), time.perf_counter()
        drop(name, content)
        first, every = wait_fresh(outputs, before, t0, DROP_TIMEOUT)
        drops.append(Drop(index, first, every, dropped_at))
        shown = f"{every:6.3f} s" if every is not None else "timeout"
        print(f"  {label:9} drop {index + 1:2}/{len(samples)}: {shown}", flush=True)
        time.sleep(rng.uniform(*GAP_SECONDS))
    return drops


# -- eventpipe ---------------------------------------------------------------------------------


def run_eventpipe(
    root: Path,
    api_url: str,
    samples: list[Sample],
    seed: int,
    trace: bool,
    label: str = "eventpipe",
    source: list[str] | None = None,
    dropper: Callable[[Path], Dropper] | None = None,
    spec: str = f"{PIPELINE_FILE}:fast",
) -> list[Drop]:
    """``eventpipe up`` in its own process, as users run it: the benchmark's polling for fresh
    outputs then competes with it for the CPU, not for its interpreter's lock. ``source``
    (extra flags) and ``dropper`` switch it from the inbox to another source."""
    tag = label.replace(" ", "-")
    inbox, data, log = root / f"{tag}-inbox", root / f"{tag}-data", root / f"{tag}-up.log"
    argv = [
        sys.executable,
        "-m",
        "eventpipe.cli",
        "up",
        "--pipeline",
        spec,
        "--inbox",
        str(inbox),
        "--data",
        str(data),
        "--api-url",
        api_url,
        *(source or []),
    ] + (["--verbose"] if trace else [])
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv, cwd=root, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 120
        while "eventpipe is up" not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"eventpipe up did not start; see {log}")
            time.sleep(0.1)
        outputs = analytics_outputs(spec, data)

        def drop(name: str, content: bytes) -> None:
            drop_file(inbox, name, content)

        return measure(label, dropper(inbox) if dropper else drop, outputs, samples, seed)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        if trace:
            print(log.read_text(errors="replace"), file=sys.stderr)


def run_bucket(
    root: Path, api_url: str, samples: list[Sample], seed: int, trace: bool
) -> list[Drop]:
    """The same, watching a bucket on a ``moto_server`` (S3 + SQS over HTTP on 127.0.0.1):
    each sample is one ``put_object``, timed from just before the PUT."""
    import boto3

    from eventpipe.intake.aws import setup_notifications

    with moto_s3(root / "moto.log") as endpoint:
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        sqs = boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1")
        queue_url = setup_notifications(s3, sqs, "bench", "bench-landed", "in/")
        flags = ["--source", "s3://bench/in/", "--queue", queue_url, "--endpoint-url", endpoint]

        def put(name: str, content: bytes) -> None:
            upload(s3, "bench", f"in/{name}", content)

        def dropper(_inbox: Path) -> Dropper:
            return put

        return run_eventpipe(root, api_url, samples, seed, trace, "s3 bucket", flags, dropper)


# -- the production topology: prefect deploy + a process worker ------------------------------


def worker_project(project: Path, pipeline: str, pool: str) -> None:
    """A project whose prefect.yaml is the repository's, its one deployment pointed at the
    benchmark's pipeline ``pipeline`` (an attribute of bench_pipeline.py) and work pool."""
    import yaml

    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    block = config["deployments"][0]
    spec = f"{PIPELINE_FILE}:{pipeline}"
    name = load_pipeline(spec).name
    block.update(name=name, tags=["eventpipe", f"eventpipe:{name}"])
    block["parameters"]["pipeline"] = spec
    block["work_pool"]["name"] = pool
    block["triggers"][0]["match"]["eventpipe.pipeline"] = name
    config["deployments"] = [block]
    project.mkdir(parents=True)
    (project / "prefect.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def run_worker(
    root: Path, api_url: str, samples: list[Sample], seed: int, trace: bool, tuned: bool
) -> list[Drop]:
    """``prefect deploy`` + ``prefect worker start`` + ``eventpipe up --runs worker``."""
    label = "worker" if tuned else "worker defaults"
    tag = label.replace(" ", "-")
    pipeline = "worker" if tuned else "worker_defaults"
    pool = f"bench-{tag}"
    project, data = root / f"{tag}-project", root / f"{tag}-data"
    worker_project(project, pipeline, pool)
    env = {**os.environ, "EVENTPIPE_DATA": str(data), "EVENTPIPE_PROJECT_DIR": str(project)}
    for argv in (
        ["work-pool", "create", pool, "--type", "process"],
        ["--no-prompt", "deploy", "--all"],
    ):
        subprocess.run(
            [sys.executable, "-m", "prefect", *argv],
            cwd=project,
            env=env,
            check=True,
            capture_output=not trace,
            timeout=300,
        )
    flags = ["--prefetch-seconds", "0"] if tuned else []
    worker = Background(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, *flags],
        root / f"{tag}.log",
        env={**env, "PREFECT_WORKER_QUERY_SECONDS": "1"} if tuned else env,
        cwd=root,
    )
    try:
        worker.start().wait_for_output("started!", 120)
        drops = run_eventpipe(
            root,
            api_url,
            samples,
            seed,
            trace,
            label,
            ["--runs", "worker"],
            spec=f"{PIPELINE_FILE}:{pipeline}",
        )
    finally:
        worker.stop(timeout=20)
    WORKER_STAGES[label] = worker_stages(pool, drops)
    print(f"  {label}: where the time went (medians, s): {WORKER_STAGES[label]}", flush=True)
    return drops


WORKER_STAGES: dict[str, dict[str, float | None]] = {}
"""Per worker path: median seconds of each stage from a drop to its run's end."""


def worker_stages(pool: str, drops: list[Drop]) -> dict[str, float | None]:
    """Split the worker path's latency with the server's records: drop -> flow run created
    (watcher, event, trigger), created -> Pending (the worker's poll claims it), Pending ->
    Running (a new process imports Prefect, eventpipe and the pipeline), Running -> Completed
    (the flow run itself)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, WorkPoolFilter, WorkPoolFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool])),
            flow_run_filter=FlowRunFilter(),
            limit=200,
        )
        history = {run.id: client.read_flow_run_states(run.id) for run in runs}
    stages: dict[str, list[float]] = {
        "drop -> run created": [],
        "created -> Pending": [],
        "Pending -> Running": [],
        "Running -> Completed": [],
    }
    created = sorted((run.created.timestamp(), run.id) for run in runs if run.created)
    for drop in drops:
        made, run_id = next(((t, i) for t, i in created if t >= drop.dropped_at), (0.0, None))
        if run_id is None:
            continue
        at = {s.type.value: s.timestamp.timestamp() for s in history[run_id] if s.timestamp}
        stages["drop -> run created"].append(made - drop.dropped_at)
        for name, (a, b) in {
            "created -> Pending": (None, "PENDING"),
            "Pending -> Running": ("PENDING", "RUNNING"),
            "Running -> Completed": ("RUNNING", "COMPLETED"),
        }.items():
            start = made if a is None else at.get(a)
            end = at.get(b)
            if start is not None and end is not None:
                stages[name].append(end - start)
    return {k: round(statistics.median(v), 3) if v else None for k, v in stages.items()}


# -- baseline: Prefect's serve with its defaults -------------------------------------------------


def start_serve(spec: str, data: Path, log: Path) -> subprocess.Popen[bytes]:
    # Only the API location and home are inherited; any runner tuning is dropped so the
    # runner polls at Prefect's default frequency.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_RUNNER_")}
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-c", SERVE_SCRIPT, spec, str(data), BASE_NAME],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its flow-run children are stopped with it
        )


def wait_serving(proc: subprocess.Popen[bytes], log: Path, timeout: float) -> UUID:
    """Wait until the deployment and its trigger exist and the runner has polled once (the
    server marks a deployment READY when its runner asks for scheduled runs)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import DeploymentStatus
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"serve exited with code {proc.returncode}; see {log}")
            try:
                deployment = client.read_deployment_by_name(f"materialize/{BASE_NAME}")
            except ObjectNotFound:
                time.sleep(0.5)
                continue
            automations = client.read_resource_related_automations(
                f"prefect.deployment.{deployment.id}"
            )
            if deployment.status == DeploymentStatus.READY and automations:
                return deployment.id
            time.sleep(0.5)
    raise TimeoutError(f"serve was not polling after {timeout:.0f} s; see {log}")


def run_processes(serve_pid: int) -> list[int]:
    """The serve process's flow-run children (scanned from /proc: this kernel has no
    /proc/<pid>/task/*/children). Multiprocessing's resource tracker lives as long as serve."""
    found: list[int] = []
    for proc_dir in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((proc_dir / "stat").read_text().rpartition(")")[2].split()[1])
            if ppid != serve_pid:
                continue
            if b"resource_tracker" not in (proc_dir / "cmdline").read_bytes():
                found.append(int(proc_dir.name))
        except (OSError, IndexError, ValueError):
            continue  # exited while we looked
    return found


def wait_runs_exited(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Let the last run's process exit first: signalled while still exiting, a run that
    already reported Completed ends up Cancelled."""
    deadline = time.monotonic() + timeout
    while run_processes(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)


def stop_serve(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
    except ProcessLookupError:
        pass


def run_baseline(root: Path, samples: list[Sample], seed: int) -> list[Drop]:
    from eventpipe.orchestration import deploy
    from eventpipe.run.deliver import prefect_sender  # imports Prefect: not at module level

    inbox = (root / "base-inbox").resolve()
    data = (root / "base-data").resolve()
    spec = f"{PIPELINE_FILE}:base"
    log = root / "serve.log"
    inbox.mkdir(parents=True)
    proc = start_serve(spec, data, log)
    deployment_id: UUID | None = None
    try:
        deployment_id = wait_serving(proc, log, SERVE_READY_TIMEOUT)
        ledger = Ledger(data / "ledger.sqlite")
        sender = prefect_sender()

        def drop(name: str, content: bytes) -> None:
            path = drop_file(inbox, name, content)
            record(ledger, BASE_NAME, harness.landed(inbox, path))
            if flush_outbox(ledger, sender) < 0:
                raise RuntimeError("the server did not take the landed event")

        try:
            return measure("baseline", drop, analytics_outputs(spec, data), samples, seed)
        finally:
            sender.close()
            ledger.close()
    finally:
        if deployment_id is not None:
            deploy.set_paused(deployment_id, paused=True)
        wait_runs_exited(proc)
        stop_serve(proc)


# -- reporting ---------------------------------------------------------------------------------


def p95(values: list[float]) -> float:
    """Nearest-rank 95th percentile."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(0.95 * len(ordered))) - 1]


def summarize(path: str, drops: list[Drop]) -> Summary:
    every = [d.all_seconds for d in drops if d.all_seconds is not None]
    first = [d.first_seconds for d in drops if d.first_seconds is not None]
    return Summary(
        path=path,
        n=len(every),
        timeouts=len(drops) - len(every),
        p50=statistics.median(every) if every else None,
        p95=p95(every) if every else None,
        max=max(every) if every else None,
        first_p50=statistics.median(first) if first else None,
        first_p95=p95(first) if first else None,
    )


def ratio(baseline: Summary, fast: Summary) -> float | None:
    if baseline.p50 is None or not fast.p50:
        return None
    return baseline.p50 / fast.p50


def _s(value: float | None) -> str:
    return f"{value:.3f}" if value is not None else "-"


def print_table(rows: list[Summary], speedup: float | None) -> None:
    print()
    print("file on disk -> every analytics output updated (seconds)")
    header = f"{'path':<28} {'n':>3} {'p50':>7} {'p95':>7} {'max':>7}   {'first p50':>9}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r.path:<28} {r.n:>3} {_s(r.p50):>7} {_s(r.p95):>7} {_s(r.max):>7}"
            f"   {_s(r.first_p50):>9}" + (f"  ({r.timeouts} timed out)" if r.timeouts else "")
        )
    shown = f"{speedup:.1f}x" if speedup is not None else "-"
    if speedup is not None:
        print(f"\nratio (baseline p50 / eventpipe p50): {shown}")
    folder, bucket = rows[0], next((r for r in rows if "S3" in r.path), None)
    if bucket is not None and bucket.p50 is not None and folder.p50 is not None:
        print(f"S3 p50 - folder p50: {bucket.p50 - folder.p50:+.3f} s")


def runs_p50(rows: list[Summary], label: str) -> float:
    return next((r.p50 or 0.0 for r in rows if label in r.path), 0.0)


def write_results(
    args: argparse.Namespace,
    runs: dict[str, list[Drop]],
    rows: list[Summary],
    speedup: float | None,
    at_start: harness.Start,
) -> dict[str, Any]:
    body = {
        "measure": "seconds from just before a file is written into the inbox (or PUT into "
        "the bucket) until every "
        "analytics parquet of its pipeline has a new mtime",
        "config": {
            "drops": args.drops,
            "seed": args.seed,
            "gap_seconds": GAP_SECONDS,
            "poll_seconds": POLL_SECONDS,
            "drop_timeout_seconds": DROP_TIMEOUT,
            "rows_per_file": 50,
        },
        "summary": {r.path: asdict(r) for r in rows},
        "worker_stages_median_seconds": WORKER_STAGES,
        "ratio_p50": speedup,
        "server_database": "sqlite (Prefect's default, private PREFECT_HOME)",
        "s3_minus_folder_p50": (
            runs_p50(rows, "S3") - runs_p50(rows, "push runner")
            if "s3" in runs and runs_p50(rows, "S3") and runs_p50(rows, "push runner")
            else None
        ),
        "drops": {name: [asdict(d) for d in drops] for name, drops in runs.items()},
    }
    output: Path = args.output
    return harness.write_results(output, harness.recorded(body, at_start))


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--drops", type=int, default=None, help="files dropped per path (30)")
    parser.add_argument("--quick", action="store_true", help="8 drops per path instead of 30")
    parser.add_argument("--seed", type=int, default=7, help="seed of the gaps between drops")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, data)")
    parser.add_argument(
        "--trace", action="store_true", help="print eventpipe's debug log (its timeline)"
    )
    parser.add_argument(
        "--eventpipe-only",
        action="store_true",
        help="skip the baseline (quick checks; results are not written)",
    )
    parser.add_argument(
        "--no-s3", action="store_true", help="skip the S3 bucket source (moto_server)"
    )
    parser.add_argument(
        "--no-worker",
        action="store_true",
        help="skip the prefect deploy + process worker paths (tuned and defaults)",
    )
    parser.add_argument(
        "--output", type=Path, default=RESULTS, help=f"results file (default {RESULTS})"
    )
    args = parser.parse_args(argv)
    args.drops = args.drops or (8 if args.quick else 30)
    return args


def main(argv: list[str] | None = None) -> dict[str, object]:
    """The suite's contract: ``--quick``, writes bench/results/freshness.json, returns it."""
    args = parse_args(argv)

    at_start = harness.start_state()
    root = Path(tempfile.mkdtemp(prefix="eventpipe-bench-")).resolve()
    print(f"working in {root}", flush=True)
    # Before anything imports Prefect: it reads its settings from the environment at import.
    server = configure_prefect_env(root)
    samples = make_samples(root / "staging", args.drops)
    started = time.monotonic()
    server.start(timeout=300)  # a shared, busy machine can take minutes
    print(f"server up at {server.api_url} in {time.monotonic() - started:.1f} s", flush=True)
    try:
        runs = {"eventpipe": run_eventpipe(root, server.api_url, samples, args.seed, args.trace)}
        if not args.no_s3:
            runs["s3"] = run_bucket(root, server.api_url, samples, args.seed, args.trace)
        if not args.no_worker:
            for tuned, key in ((True, "worker"), (False, "worker_defaults")):
                runs[key] = run_worker(root, server.api_url, samples, args.seed, args.trace, tuned)
        if not args.eventpipe_only:
            runs["baseline"] = run_baseline(root, samples, args.seed)
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    rows = [summarize("eventpipe (push runner)", runs["eventpipe"])]
    if "s3" in runs:
        rows.append(summarize("eventpipe, S3 bucket (moto)", runs["s3"]))
    if "worker" in runs:
        rows.append(summarize("worker (query 1 s, prefetch 0)", runs["worker"]))
        rows.append(summarize("worker (defaults)", runs["worker_defaults"]))
    if args.eventpipe_only:
        print_table(rows, None)
        return {"name": "freshness", "summary": {r.path: asdict(r) for r in rows}}
    rows.append(summarize("baseline (serve, defaults)", runs["baseline"]))
    speedup = ratio(rows[-1], rows[0])
    print_table(rows, speedup)
    return write_results(args, runs, rows, speedup, at_start)


if __name__ == "__main__":
    main()
