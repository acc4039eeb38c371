"""Warm interpreters for flow runs: each started ahead of time with Prefect, eventpipe's flows
and pandas imported (and the pool's pipelines loaded), then given flow runs one at a time,
which it executes as ``python -m prefect.engine`` would.

A fresh ``python -m prefect.engine`` spends seconds importing before the run begins (about
5 s of the 7 s a tuned process worker takes here). A warm process has paid that before the
run exists, and after a run it waits for the next with the engine and the pipeline's code
still warm, up to ``runs`` runs; then it exits and the pool starts a replacement (a
replacement warming up takes a core for seconds, so it starts only once a run is over). A run
that kills its process takes nothing else with it: the worker reports it Crashed and the pool
replaces the process.

The protocol is two pipes: the child writes ``ready`` on the descriptor it was given when it
waits for a run and ``done <code>`` when one is over, and reads one JSON line per run on
stdin (the flow run id, environment and working directory). End of stdin means stop. Each
child is in a session of its own, so a Ctrl-C meant for the worker never interrupts a run.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

log = logging.getLogger("eventpipe.worker")

PRELOAD = ("prefect.flow_engine", "prefect.engine", "eventpipe.flows", "pandas", "pyarrow")
"""What every warm process imports before it says it is ready."""
PRELOAD_ENV = "EVENTPIPE_WARM_PRELOAD"
"""More modules to import ahead (comma-separated): a pipeline's own, say."""
RUNS_ENV = "EVENTPIPE_WARM_RUNS"
"""How many runs a warm process executes, one after the other, before it exits."""
PIPELINES_ENV = "EVENTPIPE_WARM_PIPELINES"
"""Pipeline specs (a JSON list) to load ahead, as a run's first use of them would: the
pipelines of the pool's deployments."""
READY = b"ready\n"


@dataclass
class Job:
    """One flow run for a warm process."""

    flow_run_id: str
    env: Mapping[str, str | None] = field(default_factory=dict)
    """Set (or, for None, unset) on top of the environment the process was started with."""
    cwd: str | None = None
    entrypoint: str | None = None
    """The deployment's flow, when the worker has just read it (no pull steps)."""

    def line(self) -> bytes:
        job = {
            "flow_run_id": self.flow_run_id,
            "env": dict(self.env),
            "cwd": self.cwd,
            "entrypoint": self.entrypoint,
        }
        return (json.dumps(job) + "\n").encode()


class WarmProcess:
    """One child interpreter, warming up, ready for a run, or executing one."""

    def __init__(
        self,
        preload: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        pipelines: Sequence[str] = (),
        runs: int = 1,
    ) -> None:
        read_fd, write_fd = os.pipe()
        child_env = dict(os.environ if env is None else env)
        if preload:
            child_env[PRELOAD_ENV] = ",".join(preload)
        if pipelines:
            child_env[PIPELINES_ENV] = json.dumps(list(pipelines))
        child_env[RUNS_ENV] = str(max(runs, 1))
        self.runs_left = max(runs, 1)
        self.started = time.monotonic()
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "eventpipe.orchestration.warm", str(write_fd)],
                stdin=subprocess.PIPE,
                pass_fds=(write_fd,),
                start_new_session=True,
                env=child_env,
            )
        finally:
            os.close(write_fd)
        self._fd = read_fd
        self._buffer = b""
        self._ready = False
        self._done: int | None = None
        self._lock = threading.Lock()

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def _read(self, timeout: float) -> None:
        """Take in what the child said within ``timeout``: ``ready`` or ``done <code>``."""
        if self._fd < 0:
            return
        readable, _, _ = select.select([self._fd], [], [], timeout)
        if not readable:
            return
        chunk = os.read(self._fd, 4096)
        if not chunk:  # the child is gone
            os.close(self._fd)
            self._fd = -1
            return
        self._buffer += chunk
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            if line == READY.strip():
                self._ready = True
            elif line.startswith(b"done "):
                self._done = int(line.split()[1])

    def is_ready(self, timeout: float = 0.0) -> bool:
        """Whether the child waits for a run (waiting up to ``timeout`` for it to say so)."""
        with self._lock:
            if not self._ready:
                self._read(timeout)
            return self._ready and self.alive

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.is_ready(min(0.5, max(deadline - time.monotonic(), 0.0))):
                return True
            if not self.alive:
                return False
        return False

    def start_run(self, job: Job) -> None:
        with self._lock:
            self._ready, self._done = False, None
            self.runs_left -= 1
        stdin = self._stdin()
        stdin.write(job.line())
        stdin.flush()

    def wait_run(self, timeout: float | None = None) -> int:
        """The run's outcome: the code the child reported, or its exit code if it died
        (negative: the signal that killed it). Raises TimeoutError after ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                self._read(0.2)
                if self._done is not None:
                    return self._done
            code = self.process.poll()
            if code is not None:
                with self._lock:
                    self._read(0)  # a "done" written just before it exited
                    if self._done is not None:
                        return self._done
                return code if code != 0 else 1  # gone without reporting its run
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"the run is still executing after {timeout} s")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the child's whole session (the run's own subprocesses too)."""
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)

    def stop(self, timeout: float = 5.0) -> None:
        """Tell an idle child to exit (end of stdin); kill it if it does not."""
        with suppress(OSError):  # BrokenPipeError included
            self._stdin().close()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self.process.wait(timeout)
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def _stdin(self) -> IO[bytes]:
        stdin = self.process.stdin
        assert stdin is not None
        return stdin


class WarmPool:
    """Keeps ``size`` warm processes waiting; :meth:`take` hands one out and starts its
    replacement at once."""

    def __init__(self, size: int = 2, preload: Sequence[str] = (), runs: int = 1) -> None:
        self.size = max(size, 1)
        self.preload = tuple(preload)
        self.runs = max(runs, 1)
        """Runs each process executes before it exits and is replaced."""
        self.pipelines: tuple[str, ...] = ()
        """Specs the processes started from now on load ahead (see :meth:`warm_pipelines`)."""
        self._idle: list[WarmProcess] = []
        self._lock = threading.Lock()
        self._closed = False

    def fill(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._idle = [p for p in self._idle if p.alive]
            while len(self._idle) < self.size:
                self._idle.append(self._new())

    def take(self, timeout: float = 180.0) -> WarmProcess:
        """A warm process (the first ready one, else the one warming longest, else a new
        one); blocks until it is ready. Call :meth:`fill` once its run is over: a replacement
        warming up (seconds of imports on one core) while the run executes would slow it."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the warm pool is closed")
            alive = [p for p in self._idle if p.alive]
            ready = [p for p in alive if p.is_ready()]
            chosen = ready[0] if ready else (alive[0] if alive else self._new())
            self._idle = [p for p in alive if p is not chosen]
        if not chosen.wait_ready(timeout):
            code = chosen.process.poll()
            chosen.kill()
            raise RuntimeError(
                f"a warm process did not get ready within {timeout:.0f} s (exit code {code})"
            )
        return chosen

    def give_back(self, process: WarmProcess) -> None:
        """A process whose run is over: waiting again for the next if it has runs left and
        lives; the pool topped up either way."""
        with self._lock:
            keep = not self._closed and process.alive and process.runs_left > 0
            if keep:
                self._idle.insert(0, process)  # the warmest first
        if not keep:
            process.stop()
        self.fill()

    def warm_pipelines(self, specs: Sequence[str]) -> None:
        """Load these pipelines ahead in the processes started from now on."""
        with self._lock:
            self.pipelines = tuple(sorted(set(specs)))

    def _new(self) -> WarmProcess:
        return WarmProcess(self.preload, pipelines=self.pipelines, runs=self.runs)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for process in idle:
            process.stop()


# -- the child ---------------------------------------------------------------------------------


def _serve(ready_fd: int) -> int:
    """The child's life: import, then say ready and run the next flow run, ``runs`` times."""
    import importlib

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker decides when a run stops
    extra = [m for m in os.environ.get(PRELOAD_ENV, "").split(",") if m]
    for module in (*PRELOAD, *extra):
        try:
            importlib.import_module(module)
        except Exception as exc:  # a bad preload must not keep the worker from running
            print(f"eventpipe warm process: could not import {module}: {exc}", file=sys.stderr)
    _warm_up(json.loads(os.environ.get(PIPELINES_ENV) or "[]"))
    runs = max(int(os.environ.get(RUNS_ENV, "1") or 1), 1)
    for _ in range(runs):
        os.write(ready_fd, READY)
        line = sys.stdin.buffer.readline()
        if not line:
            return 0  # stopped while idle
        code = _job(json.loads(line))
        os.write(ready_fd, f"done {code}\n".encode())
    return 0


def _job(job: dict[str, Any]) -> int:
    """Apply a job's environment and directory, then run its flow run."""
    changed = False
    for name, value in (job.get("env") or {}).items():
        if os.environ.get(name) == value:
            continue
        # PREFECT__* are the run's own (its id...), read where used, not Prefect settings
        changed = changed or (name.startswith("PREFECT_") and not name.startswith("PREFECT__"))
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = str(value)
    if job.get("cwd"):
        os.chdir(Path(job["cwd"]))
    return _run(job["flow_run_id"], fresh_settings=changed, entrypoint=job.get("entrypoint"))


def _warm_up(specs: list[str]) -> None:
    """What a run's first steps would pay for, paid ahead: the API client's first request, and
    each pipeline loaded into the cache the runs use (with the parquet and CSV code paths)."""
    from prefect.client.orchestration import get_client

    with suppress(Exception), get_client(sync_client=True) as client:
        client.hello()  # the server may be away for now: the run will say so
    from eventpipe.run.compute import warm_up

    for spec in specs:
        with suppress(Exception):  # a pipeline found only in the run's own directory: later
            warm_up(spec)


def _run(flow_run_id: str, fresh_settings: bool = True, entrypoint: str | None = None) -> int:
    """Execute the flow run as ``python -m prefect.engine`` does (signals handled, exit codes
    alike), with the settings of the environment as it is now (the job's variables were set
    after Prefect was imported: when they changed a Prefect setting, the settings are read
    again)."""
    from uuid import UUID

    from prefect.context import SettingsContext
    from prefect.engine import handle_engine_signals
    from prefect.settings import Settings

    from eventpipe.orchestration.execute import execute_flow_run

    current = SettingsContext.get()
    assert current is not None
    settings = Settings() if fresh_settings else current.settings
    with SettingsContext(profile=current.profile, settings=settings):
        run_id = UUID(flow_run_id)
        try:
            with handle_engine_signals(run_id):
                execute_flow_run(run_id, entrypoint)
        except SystemExit as exc:  # handle_engine_signals exits on Abort, Pause, errors
            _drain()
            return exc.code if isinstance(exc.code, int) else 1
        _drain()
    return 0


def _drain() -> None:
    """Send the logs and events still queued before the process exits."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    EventsWorker.drain_all(timeout=10)


if __name__ == "__main__":
    sys.exit(_serve(int(sys.argv[1])))
