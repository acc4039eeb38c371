"""Freshness benchmark: file on disk (or object in a bucket) -> every analytics output updated,
eventpipe's paths vs. Prefect's defaults, all running at once and their drops interleaved.

Every path is up at the same time on one real Prefect server (Prefect's default SQLite
database, a private PREFECT_HOME). Each has its own pipeline name (the same steps: the trigger
of one never fires for another's files), inbox, data dir, PREFECT_HOME and logs; the flow, the
steps and the files are the same. The paths differ only in how the triggered run is picked up
and executed:

* folder: ``eventpipe up`` (folder watcher, outbox pump, the eventpipe worker embedded, the
  runs on its thread);
* S3 bucket: the same, watching a bucket on a ``moto_server`` through SQS notifications;
* eventpipe worker: the production topology on the ``eventpipe`` worker type: the flow
  deployed with the real ``prefect deploy`` (a prefect.yaml like the repository's) on a pool
  made with ``prefect work-pool create POOL --type eventpipe``, ``prefect worker start --pool
  POOL`` executing each run in a warm process it started ahead (2, the pool's default), and
  ``eventpipe up --runs worker`` watching the folder. The worker hears runs on the events
  websocket; its poll is left at Prefect's default (``PREFECT_WORKER_QUERY_SECONDS=10``) to
  show it does not rely on it;
* worker: the same on a process work pool (``--type process``: a fresh interpreter per run),
  once tuned (``PREFECT_WORKER_QUERY_SECONDS=1 --prefetch-seconds 0``), once with the worker's
  defaults;
* baseline: ``materialize_pipeline.serve(...)`` with Prefect's defaults (a runner polling
  every 10 s, each run in a fresh interpreter), and the same tuned
  (``PREFECT_RUNNER_POLL_FREQUENCY=1``: a poll a second, the best ``serve`` offers). The
  benchmark records the file and sends its landed event itself, as eventpipe's watcher would.
  ``serve`` owns the process it runs in, which is a subprocess of its own here, so it runs
  alongside the others like any path.

The machine (2 cores) is shared and noisy, so what is compared is interleaved: each round
drops the same file on every path in turn, one path at a time (a path's drop is timed until
every analytics output of its pipeline is new, then that path's next random gap is slept: the
same seeded sequence of gaps for every path, so each file is alone on the machine), and the
path that goes first rotates from round to round. The first round (``--warmup``) is not
counted: every path's first run after all of them started.

    .venv/bin/python bench/freshness.py [--quick] [--drops 30] [--output bench/results/x.json]
"""

from __future__ import annotations

import argparse
import math
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
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
from eventpipe.testing import (
    Background,
    client_env,
    configure_prefect_env,
    drop_file,
    moto_s3,
    upload,
)

REPO = harness.REPO
PIPELINE_FILE = harness.BENCH / "bench_pipeline.py"
RESULTS = harness.RESULTS / "freshness.json"

POLL_SECONDS = 0.002
DROP_TIMEOUT = 60.0
GAP_SECONDS = (0.3, 1.5)
WARMUP_ROUNDS = 1
START_TIMEOUT = 240.0
"""Seconds each path may take to come up: everything starts at once on 2 shared cores."""
BASE_NAME = "bench_base"
TUNED_SERVE_POLL = "1"
"""PREFECT_RUNNER_POLL_FREQUENCY of the tuned ``serve`` baseline (Prefect's default: 10)."""
OWN_PIPELINES = {"s3": "bench_s3", "eventpipe_worker": "bench_eworker"}
"""Paths whose pipeline bench_pipeline.py has no name for (running at once, two paths must
not share one: both would serve deployment materialize/<name> and take each other's runs):
each gets a copy of bench_pipeline.py (the same imports and steps) with a pipeline of this
name added, as attribute ``path_pipeline``."""
WORKER_QUERY_SECONDS = {"worker": "1", "eventpipe_worker": "10"}
"""PREFECT_WORKER_QUERY_SECONDS per worker path (10: Prefect's default); none: unset."""
GOAL_P50, GOAL_P95, GOAL_SPEEDUP = 1.0, 2.0, 5.0
"""The eventpipe worker's goal: p50 <= 1 s, p95 <= 2 s, >= 5x the tuned process worker (p50)."""

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
    position: int | None = None
    """Where the path's drop came in its round (0: first), the first path rotating."""


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


def interleave(
    lanes: Sequence[Lane], samples: list[Sample], warmup: int, seed: int
) -> dict[str, list[Drop]]:
    """Round after round, the round's file dropped on every path in turn, the first path
    rotating; each drop waits for its analytics, then for that path's next random gap (every
    path's gaps come from the same seed: the same sequence). The first ``warmup`` rounds are
    not kept."""
    gaps = {lane.key: random.Random(seed) for lane in lanes}
    timed: dict[str, list[Drop]] = {lane.key: [] for lane in lanes}
    rounds = len(samples) - warmup
    for index, sample in enumerate(samples):
        turn = index % len(lanes)
        for position, lane in enumerate([*lanes[turn:], *lanes[:turn]]):
            drop = lane.drop(index - warmup, sample, position)
            shown = f"{drop.all_seconds:6.3f} s" if drop.all_seconds is not None else "timeout"
            if index < warmup:
                print(f"  warm-up {index + 1}    {lane.short:16}: {shown}", flush=True)
            else:
                timed[lane.key].append(drop)
                print(
                    f"  round {index - warmup + 1:2}/{rounds} {lane.short:16}: {shown}", flush=True
                )
            time.sleep(gaps[lane.key].uniform(*GAP_SECONDS))
    return timed


# -- the paths ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bench:
    """What every path shares: the working directory, the server, whether to trace."""

    root: Path
    api_url: str
    trace: bool


class Lane:
    """One path: its processes, inbox, data dir, PREFECT_HOME and logs under ``root/<key>``.
    ``start`` launches it (and may block on set-up), ``wait_up`` waits until it can take a
    file, ``drop`` times one file, ``stop`` stops what it started. ``key`` names it in the
    results' ``drops``, ``label`` in the table and ``summary``, ``short`` in the progress lines
    and ``worker_stages``."""

    def __init__(self, bench: Bench, key: str, label: str, short: str, spec: str) -> None:
        self.bench, self.key, self.label, self.short, self.spec = bench, key, label, short, spec
        self.pipeline = load_pipeline(spec).name
        self.root = bench.root / key.replace("_", "-")
        self.inbox, self.data = self.root / "inbox", self.root / "data"
        self.processes: list[Background] = []
        self.outputs: list[Path] = []

    def env(self, **extra: str) -> dict[str, str]:
        """A client of the benchmark's server with this path's own PREFECT_HOME, none of this
        process's PREFECT_* or EVENTPIPE_* settings."""
        env = client_env(self.bench.api_url, self.root / "prefect-home")
        for name in [n for n in env if n.startswith("EVENTPIPE_")]:
            del env[name]
        env.update(extra)
        return env

    def start(self) -> None:
        raise NotImplementedError

    def wait_up(self) -> None:
        self.outputs = analytics_outputs(self.spec, self.data)

    def put(self, name: str, content: bytes) -> None:
        drop_file(self.inbox, name, content)

    def probe(self) -> list[int | None]:
        return mtimes(self.outputs)

    def drop(self, index: int, sample: Sample, position: int) -> Drop:
        """Write ``sample``; wait until every analytics output is new."""
        before = self.probe()
        dropped_at, t0 = time.time(), time.perf_counter()
        self.put(*sample)
        first, every = wait_changed(self.probe, before, t0, DROP_TIMEOUT)
        return Drop(index, first, every, dropped_at, position)

    def stop(self) -> None:
        for process in reversed(self.processes):  # the last started first
            process.stop(timeout=60)
        if self.bench.trace:
            for process in self.processes:
                print(f"--- {self.short}: {process.log}", file=sys.stderr)
                print(process.output(), file=sys.stderr)

    def finish(self, drops: list[Drop]) -> None:
        """After ``stop``, with the server still up."""


class UpLane(Lane):
    """``eventpipe up`` in its own process, as users run it: the benchmark's polling for fresh
    outputs then competes with it for the CPU, not for its interpreter's lock."""

    up: Background

    def source_flags(self) -> list[str]:
        return []

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "eventpipe.cli", "up", "--pipeline", self.spec]
        argv += ["--inbox", str(self.inbox), "--data", str(self.data)]
        argv += ["--api-url", self.bench.api_url, *self.source_flags()]
        argv += ["--verbose"] if self.bench.trace else []
        self.up = Background(argv, self.root / "up.log", env=self.env(), cwd=self.root)
        self.processes.append(self.up.start())

    def wait_up(self) -> None:
        self.up.wait_for_output("eventpipe is up", START_TIMEOUT)
        super().wait_up()


class BucketLane(UpLane):
    """The same, watching a bucket on a ``moto_server`` (S3 + SQS over HTTP on 127.0.0.1): each
    sample is one ``put_object``, timed from just before the PUT."""

    def __init__(self, bench: Bench, endpoint: str, spec: str) -> None:
        super().__init__(bench, "s3", "eventpipe, S3 bucket (moto)", "s3 bucket", spec)
        self.endpoint = endpoint
        self.flags: list[str] = []

    def start(self) -> None:
        import boto3

        from eventpipe.intake.aws import setup_notifications

        self.s3 = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")
        sqs = boto3.client("sqs", endpoint_url=self.endpoint, region_name="us-east-1")
        queue_url = setup_notifications(self.s3, sqs, "bench", "bench-landed", "in/")
        self.flags = ["--source", "s3://bench/in/", "--queue", queue_url]
        self.flags += ["--endpoint-url", self.endpoint]
        super().start()

    def source_flags(self) -> list[str]:
        return self.flags

    def put(self, name: str, content: bytes) -> None:
        upload(self.s3, "bench", f"in/{name}", content)


def worker_project(project: Path, spec: str, pool: str) -> None:
    """A project whose prefect.yaml is the repository's, its one deployment pointed at the
    pipeline ``spec`` and the work pool ``pool``."""
    import yaml

    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    block = config["deployments"][0]
    name = load_pipeline(spec).name
    block.update(name=name, tags=["eventpipe", f"eventpipe:{name}"])
    block["parameters"]["pipeline"] = spec
    block["work_pool"]["name"] = pool
    block["triggers"][0]["match"]["eventpipe.pipeline"] = name
    config["deployments"] = [block]
    project.mkdir(parents=True, exist_ok=True)
    (project / "prefect.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def own_pipeline(where: Path, key: str) -> str:
    """The spec of path ``key``'s own pipeline (see ``OWN_PIPELINES``), in a copy of
    bench_pipeline.py written into ``where``."""
    where.mkdir(parents=True, exist_ok=True)
    path = where / PIPELINE_FILE.name
    extra = f"\n# Added by freshness.py for its {key} path.\n"
    extra += f'path_pipeline = make("{OWN_PIPELINES[key]}")\n'
    path.write_text(PIPELINE_FILE.read_text() + extra)
    return f"{path}:path_pipeline"


class WorkerLane(UpLane):
    """``prefect work-pool create`` + ``prefect deploy`` + ``prefect worker start`` +
    ``eventpipe up --runs worker``."""

    def __init__(
        self,
        bench: Bench,
        key: str,
        label: str,
        short: str,
        spec: str,
        pool_type: str,
        flags: Sequence[str] = (),
    ) -> None:
        super().__init__(bench, key, label, short, spec)
        self.pool_type, self.flags = pool_type, list(flags)
        self.pool = f"bench-{key.replace('_', '-')}"
        self.project = self.root / "project"

    def source_flags(self) -> list[str]:
        return ["--runs", "worker"]

    def start(self) -> None:
        worker_project(self.project, self.spec, self.pool)
        env = self.env(EVENTPIPE_DATA=str(self.data), EVENTPIPE_PROJECT_DIR=str(self.project))
        for argv in (
            ["work-pool", "create", self.pool, "--type", self.pool_type],
            ["--no-prompt", "deploy", "--all"],
        ):
            done = subprocess.run(
                [sys.executable, "-m", "prefect", *argv],
                cwd=self.project,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            if self.bench.trace or done.returncode:
                print(done.stdout + done.stderr, file=sys.stderr)
            if done.returncode:
                raise RuntimeError(f"{self.short}: prefect {' '.join(argv)} failed")
        query = WORKER_QUERY_SECONDS.get(self.key)
        self.worker = Background(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", self.pool, *self.flags],
            self.root / "worker.log",
            env={**env, "PREFECT_WORKER_QUERY_SECONDS": query} if query else env,
            cwd=self.root,
        )
        self.processes.append(self.worker.start())
        super().start()

    def wait_up(self) -> None:
        self.worker.wait_for_output("started!", START_TIMEOUT)
        super().wait_up()

    def finish(self, drops: list[Drop]) -> None:
        WORKER_STAGES[self.short] = worker_stages(self.pool, drops)
        print(f"  {self.short}: where the time went (medians, s): {WORKER_STAGES[self.short]}")


WORKER_STAGES: dict[str, dict[str, float | None]] = {}
"""Per worker path: median seconds of each stage from a drop to its run's end."""


def worker_stages(pool: str, drops: list[Drop]) -> dict[str, float | None]:
    """Split a worker path's latency with the server's records: drop -> flow run created
    (watcher, event, trigger), created -> Pending (the worker hears of the run, by its poll or,
    for the eventpipe worker, by the events websocket, and claims it), Pending -> Running (a
    process worker's new process imports Prefect, eventpipe and the pipeline; an eventpipe
    worker hands the run to a warm process), Running -> Completed (the flow run itself)."""
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


def wait_serving(
    proc: subprocess.Popen[bytes], log: Path, timeout: float, name: str = BASE_NAME
) -> UUID:
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
                deployment = client.read_deployment_by_name(f"materialize/{name}")
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


class BaselineLane(Lane):
    """``serve`` in a subprocess with Prefect's defaults. Only the API location and a home
    are passed on (``client_env``): no runner tuning, so the runner polls at Prefect's default
    frequency; ``tuned``: it polls every second (``PREFECT_RUNNER_POLL_FREQUENCY``). Its
    flow-run children are in its session, stopped with it."""

    def __init__(self, bench: Bench, *, tuned: bool = False) -> None:
        if tuned:
            key, label, short = "baseline_tuned", "baseline (serve, poll 1 s)", "serve tuned"
            spec = f"{PIPELINE_FILE}:base_tuned"
        else:
            key, label, short = "baseline", "baseline (serve, defaults)", "baseline"
            spec = f"{PIPELINE_FILE}:base"
        super().__init__(bench, key, label, short, spec)
        self.tuned = tuned
        self.deployment_id: UUID | None = None
        self.ledger: Ledger | None = None
        self.sender: Any = None
        self.serve: Background | None = None

    def start(self) -> None:
        self.inbox.mkdir(parents=True, exist_ok=True)
        extra = {"PREFECT_RUNNER_POLL_FREQUENCY": TUNED_SERVE_POLL} if self.tuned else {}
        self.serve = Background(
            [sys.executable, "-c", SERVE_SCRIPT, self.spec, str(self.data), self.pipeline],
            self.root / "serve.log",
            env=self.env(**extra),
            cwd=REPO,
        )
        self.processes.append(self.serve.start())

    def wait_up(self) -> None:
        from eventpipe.run.deliver import prefect_sender  # imports Prefect: not at module level

        assert self.serve is not None
        assert self.serve.proc is not None
        self.deployment_id = wait_serving(
            self.serve.proc, self.serve.log, START_TIMEOUT, self.pipeline
        )
        self.ledger = Ledger(self.data / "ledger.sqlite")
        self.sender = prefect_sender()
        super().wait_up()

    def put(self, name: str, content: bytes) -> None:
        assert self.ledger is not None
        path = drop_file(self.inbox, name, content)
        record(self.ledger, self.pipeline, harness.landed(self.inbox, path))
        if flush_outbox(self.ledger, self.sender) < 0:
            raise RuntimeError("the server did not take the landed event")

    def stop(self) -> None:
        from eventpipe.orchestration import deploy

        if self.serve is None:
            return
        try:
            if self.sender is not None:
                self.sender.close()
            if self.ledger is not None:
                self.ledger.close()
            if self.deployment_id is not None:
                deploy.set_paused(self.deployment_id, paused=True)
            if self.serve.proc is not None:
                wait_runs_exited(self.serve.proc)
        finally:
            self.serve.stop(signal.SIGTERM, timeout=20)
        if self.bench.trace:
            print(f"--- {self.short}: {self.serve.log}\n{self.serve.output()}", file=sys.stderr)


def make_lanes(bench: Bench, args: argparse.Namespace, endpoint: str | None) -> list[Lane]:
    """The paths in the order of their drops in the first round (and of the table)."""
    lanes: list[Lane] = [
        UpLane(bench, "eventpipe", "eventpipe (up, folder)", "eventpipe", f"{PIPELINE_FILE}:fast")
    ]
    if endpoint is not None:
        lanes.append(BucketLane(bench, endpoint, own_pipeline(bench.root / "s3", "s3")))
    if not args.no_worker:
        spec = own_pipeline(bench.root / "eventpipe-worker" / "project", "eventpipe_worker")
        lanes += [
            WorkerLane(
                bench, "eventpipe_worker", "eventpipe worker", "eventpipe worker", spec, "eventpipe"
            ),
            WorkerLane(
                bench,
                "worker",
                "worker (query 1 s, prefetch 0)",
                "worker",
                f"{PIPELINE_FILE}:worker",
                "process",
                ["--prefetch-seconds", "0"],
            ),
            WorkerLane(
                bench,
                "worker_defaults",
                "worker (defaults)",
                "worker defaults",
                f"{PIPELINE_FILE}:worker_defaults",
                "process",
            ),
        ]
    if not args.eventpipe_only:
        lanes += [BaselineLane(bench), BaselineLane(bench, tuned=True)]
    return lanes


def run_lanes(
    bench: Bench, args: argparse.Namespace, samples: list[Sample]
) -> tuple[list[Lane], dict[str, list[Drop]]]:
    """Every path started at once, the drops interleaved, every path stopped."""
    with ExitStack() as stack:
        endpoint = None if args.no_s3 else stack.enter_context(moto_s3(bench.root / "moto.log"))
        lanes = make_lanes(bench, args, endpoint)
        started: list[Lane] = []
        try:
            # Those that only launch processes first: they come up while the workers deploy.
            for lane in sorted(lanes, key=lambda lane: isinstance(lane, WorkerLane)):
                started.append(lane)
                lane.start()
            for lane in lanes:
                lane.wait_up()
            print(
                f"all {len(lanes)} paths up: {', '.join(lane.short for lane in lanes)}", flush=True
            )
            runs = interleave(lanes, samples, args.warmup, args.seed)
        finally:
            for lane in reversed(started):
                try:
                    lane.stop()
                except Exception as exc:  # stop the others all the same
                    print(f"  {lane.short}: stopping failed: {exc!r}", file=sys.stderr)
        for lane in lanes:
            lane.finish(runs[lane.key])
    return lanes, runs


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


def ratio(slow: Summary | None, fast: Summary | None) -> float | None:
    """``slow``'s p50 / ``fast``'s p50: how many times faster ``fast`` is at the median."""
    if slow is None or fast is None or slow.p50 is None or not fast.p50:
        return None
    return slow.p50 / fast.p50


def _s(value: float | None) -> str:
    return f"{value:.3f}" if value is not None else "-"


def _x(value: float | None) -> str:
    return f"{value:.1f}x" if value is not None else "-"


def print_table(rows: dict[str, Summary], ratios: dict[str, float | None]) -> None:
    print()
    print("file on disk -> every analytics output updated (seconds), paths interleaved")
    header = f"{'path':<32} {'n':>3} {'p50':>7} {'p95':>7} {'max':>7}   {'first p50':>9}"
    print(header)
    print("-" * len(header))
    for r in rows.values():
        print(
            f"{r.path:<32} {r.n:>3} {_s(r.p50):>7} {_s(r.p95):>7} {_s(r.max):>7}"
            f"   {_s(r.first_p50):>9}" + (f"  ({r.timeouts} timed out)" if r.timeouts else "")
        )
    print()
    if ratios.get("baseline_folder") is not None:
        print(f"ratio (baseline p50 / eventpipe p50): {_x(ratios['baseline_folder'])}")
    if ratios.get("worker_eventpipe_worker") is not None:
        print(
            "ratio (tuned process worker p50 / eventpipe worker p50): "
            f"{_x(ratios['worker_eventpipe_worker'])}"
        )
    folder, bucket = rows.get("eventpipe"), rows.get("s3")
    if bucket is not None and folder is not None and bucket.p50 is not None and folder.p50:
        print(f"S3 p50 - folder p50: {bucket.p50 - folder.p50:+.3f} s")


def figures(rows: dict[str, Summary], ratios: dict[str, float | None]) -> list[dict[str, Any]]:
    """The suite's figures (``{"figure", "value", "goal", "met"}``): each path's p50 / p95
    against Prefect's defaults, and the eventpipe worker against its goal."""
    base = rows.get("baseline")
    base_p50 = base.p50 if base is not None else None
    out: list[dict[str, Any]] = []
    for key, r in rows.items():
        value = f"{r.p50:.2f} s / {r.p95:.2f} s" if r.p50 is not None and r.p95 is not None else "-"
        value += f" ({r.timeouts} timed out)" if r.timeouts else ""
        if key in ("baseline", "baseline_tuned"):
            goal, met = "(the reference)", None
        else:
            goal = f"p50 below Prefect defaults' ({base_p50:.1f} s)" if base_p50 else "-"
            met = r.p50 < base_p50 if r.p50 is not None and base_p50 else None
        out.append(
            {"figure": f"freshness p50 / p95, {r.path}", "value": value, "goal": goal, "met": met}
        )
    worker, speedup = rows.get("eventpipe_worker"), ratios.get("worker_eventpipe_worker")
    if worker is not None:
        value, met = "-", None
        if worker.p50 is not None and worker.p95 is not None and speedup is not None:
            value = f"{worker.p50:.2f} s / {worker.p95:.2f} s, {_x(speedup)}"
            met = (
                worker.timeouts == 0
                and worker.p50 <= GOAL_P50
                and worker.p95 <= GOAL_P95
                and speedup >= GOAL_SPEEDUP
            )
        out.append(
            {
                "figure": "freshness, eventpipe worker: p50 / p95, and how many times faster "
                "than the tuned process worker at the median",
                "value": value + (f" ({worker.timeouts} timed out)" if worker.timeouts else ""),
                "goal": f"p50 <= {GOAL_P50:.1f} s, p95 <= {GOAL_P95:.0f} s, "
                f">= {GOAL_SPEEDUP:.0f}x the tuned process worker",
                "met": met,
            }
        )
    if ratios.get("baseline_folder") is not None:
        out.append(
            {
                "figure": "freshness: Prefect defaults' p50 / folder p50",
                "value": _x(ratios["baseline_folder"]),
                "goal": "-",
                "met": None,
            }
        )
    return out


def write_results(
    args: argparse.Namespace,
    lanes: Sequence[Lane],
    runs: dict[str, list[Drop]],
    rows: dict[str, Summary],
    ratios: dict[str, float | None],
    at_start: harness.Start,
) -> dict[str, Any]:
    folder, bucket = rows.get("eventpipe"), rows.get("s3")
    body = {
        "measure": "seconds from just before a file is written into the inbox (or PUT into "
        "the bucket) until every "
        "analytics parquet of its pipeline has a new mtime; every path up at once on one "
        "server, the drops interleaved (each round the same file on every path in turn, one "
        "at a time, the first path rotating)",
        "config": {
            "drops": args.drops,
            "warmup_rounds": args.warmup,
            "seed": args.seed,
            "gap_seconds": GAP_SECONDS,
            "poll_seconds": POLL_SECONDS,
            "drop_timeout_seconds": DROP_TIMEOUT,
            "rows_per_file": 50,
            "interleaved": True,
            "paths": {lane.key: lane.label for lane in lanes},
            "pipelines": {lane.key: lane.pipeline for lane in lanes},
            "worker_query_seconds": WORKER_QUERY_SECONDS,
            "eventpipe_worker": "pool --type eventpipe, its default job template "
            "(2 warm processes), PREFECT_WORKER_QUERY_SECONDS=10, no prefetch flag",
        },
        "summary": {r.path: asdict(r) for r in rows.values()},
        "worker_stages_median_seconds": WORKER_STAGES,
        "ratio_p50": ratios.get("baseline_folder"),
        "ratio_worker_eventpipe_worker_p50": ratios.get("worker_eventpipe_worker"),
        "server_database": "sqlite (Prefect's default, private PREFECT_HOME)",
        "s3_minus_folder_p50": (
            bucket.p50 - folder.p50
            if bucket is not None and folder is not None and bucket.p50 and folder.p50
            else None
        ),
        "figures": figures(rows, ratios),
        "drops": {name: [asdict(d) for d in drops] for name, drops in runs.items()},
    }
    output: Path = args.output
    return harness.write_results(output, harness.recorded(body, at_start))


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--drops", type=int, default=None, help="files dropped per path (30)")
    parser.add_argument("--quick", action="store_true", help="8 drops per path instead of 30")
    parser.add_argument(
        "--warmup",
        type=int,
        default=WARMUP_ROUNDS,
        help=f"rounds dropped on every path first, not counted ({WARMUP_ROUNDS})",
    )
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
        help="skip the prefect deploy + worker paths (eventpipe worker, process worker tuned "
        "and defaults)",
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
    samples = make_samples(root / "staging", args.warmup + args.drops)
    started = time.monotonic()
    server.start(timeout=300)  # a shared, busy machine can take minutes
    print(f"server up at {server.api_url} in {time.monotonic() - started:.1f} s", flush=True)
    try:
        lanes, runs = run_lanes(Bench(root, server.api_url, args.trace), args, samples)
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    rows = {lane.key: summarize(lane.label, runs[lane.key]) for lane in lanes}
    ratios = {
        "baseline_folder": ratio(rows.get("baseline"), rows.get("eventpipe")),
        "worker_eventpipe_worker": ratio(rows.get("worker"), rows.get("eventpipe_worker")),
    }
    print_table(rows, ratios)
    if args.eventpipe_only:
        return {"name": "freshness", "summary": {r.path: asdict(r) for r in rows.values()}}
    return write_results(args, lanes, runs, rows, ratios, at_start)


if __name__ == "__main__":
    main()
