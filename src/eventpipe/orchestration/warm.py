"""Warm interpreters for flow runs: each started ahead of time, Prefect, eventpipe's flows and
pandas already imported, then given one flow run, which it executes as ``python -m
prefect.engine`` would, and exits.

A fresh ``python -m prefect.engine`` spends seconds importing before the run begins (about
5 s of the 7 s a tuned process worker takes here). A warm process has paid that before the
run exists. One run per process keeps what a process worker gives: a run that kills its
process takes nothing else with it, and no state leaks from one run into the next. The pool
starts the replacement the moment a process is taken.

The protocol is two pipes: the child writes ``ready`` on the descriptor it was given once its
imports are done, then reads one JSON line on stdin (the flow run id, environment and working
directory) and exits with the run. End of stdin before a job means stop. Each child is in a
session of its own, so a Ctrl-C meant for the worker never interrupts a run.
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
from typing import IO, Any, cast

log = logging.getLogger("eventpipe.worker")

PRELOAD = ("prefect.flow_engine", "prefect.engine", "eventpipe.flows", "pandas", "pyarrow")
"""What every warm process imports before it says it is ready."""
PRELOAD_ENV = "EVENTPIPE_WARM_PRELOAD"
"""More modules to import ahead (comma-separated): a pipeline's own, say."""
READY = b"ready\n"


@dataclass
class Job:
    """One flow run for a warm process."""

    flow_run_id: str
    env: Mapping[str, str | None] = field(default_factory=dict)
    """Set (or, for None, unset) on top of the environment the process was started with."""
    cwd: str | None = None

    def line(self) -> bytes:
        return (
            json.dumps({"flow_run_id": self.flow_run_id, "env": dict(self.env), "cwd": self.cwd})
            + "\n"
        ).encode()


class WarmProcess:
    """One child interpreter, warming up or warm, waiting for its flow run."""

    def __init__(self, preload: Sequence[str] = (), env: Mapping[str, str] | None = None) -> None:
        read_fd, write_fd = os.pipe()
        child_env = dict(os.environ if env is None else env)
        if preload:
            child_env[PRELOAD_ENV] = ",".join(preload)
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
        self._ready_fd = read_fd
        self._ready = False
        self._lock = threading.Lock()

    @property
    def pid(self) -> int:
        return self.process.pid

    def is_ready(self, timeout: float = 0.0) -> bool:
        """Whether the child finished its imports (waiting up to ``timeout``)."""
        with self._lock:
            if self._ready:
                return True
            if self._ready_fd < 0:
                return False
            readable, _, _ = select.select([self._ready_fd], [], [], timeout)
            if not readable:
                return False
            got = os.read(self._ready_fd, len(READY))
            os.close(self._ready_fd)
            self._ready_fd = -1
            self._ready = got == READY
            return self._ready

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.is_ready(min(0.5, max(deadline - time.monotonic(), 0.0))):
                return True
            if self.process.poll() is not None:
                return False
        return False

    def start_run(self, job: Job) -> None:
        stdin = self._stdin()
        stdin.write(job.line())
        stdin.close()

    def wait(self, timeout: float | None = None) -> int:
        """The child's exit code (negative: the signal that killed it)."""
        return self.process.wait(timeout)

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
        if self._ready_fd >= 0:
            os.close(self._ready_fd)
            self._ready_fd = -1

    def _stdin(self) -> IO[bytes]:
        stdin = self.process.stdin
        assert stdin is not None
        return stdin


class WarmPool:
    """Keeps ``size`` warm processes waiting; :meth:`take` hands one out and starts its
    replacement at once."""

    def __init__(self, size: int = 2, preload: Sequence[str] = ()) -> None:
        self.size = max(size, 1)
        self.preload = tuple(preload)
        self._idle: list[WarmProcess] = []
        self._lock = threading.Lock()
        self._closed = False

    def fill(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._idle = [p for p in self._idle if p.process.poll() is None]
            while len(self._idle) < self.size:
                self._idle.append(WarmProcess(self.preload))

    def take(self, timeout: float = 180.0) -> WarmProcess:
        """A warm process (the first ready one, else the one warming longest); blocks until
        it is ready. Its replacement starts warming before this returns."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the warm pool is closed")
            alive = [p for p in self._idle if p.process.poll() is None]
            ready = [p for p in alive if p.is_ready()]
            chosen = ready[0] if ready else (alive[0] if alive else WarmProcess(self.preload))
            self._idle = [p for p in alive if p is not chosen]
        self.fill()
        if not chosen.wait_ready(timeout):
            code = chosen.process.poll()
            chosen.kill()
            raise RuntimeError(
                f"a warm process did not get ready within {timeout:.0f} s (exit code {code})"
            )
        return chosen

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for process in idle:
            process.stop()


# -- the child ---------------------------------------------------------------------------------


def _serve(ready_fd: int) -> int:
    """The child's life: import, say ready, run one flow run, exit with its outcome."""
    import importlib

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker decides when a run stops
    extra = [m for m in os.environ.get(PRELOAD_ENV, "").split(",") if m]
    for module in (*PRELOAD, *extra):
        try:
            importlib.import_module(module)
        except Exception as exc:  # a bad preload must not keep the worker from running
            print(f"eventpipe warm process: could not import {module}: {exc}", file=sys.stderr)
    os.write(ready_fd, READY)
    os.close(ready_fd)
    line = sys.stdin.buffer.readline()
    if not line:
        return 0  # stopped while idle
    job: dict[str, Any] = json.loads(line)
    for name, value in (job.get("env") or {}).items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = str(value)
    if job.get("cwd"):
        os.chdir(Path(job["cwd"]))
    return _run(job["flow_run_id"])


def _run(flow_run_id: str) -> int:
    """Execute the flow run as ``python -m prefect.engine`` does, with the settings of the
    environment as it is now (the job's variables were set after Prefect was imported)."""
    from uuid import UUID

    from prefect.context import SettingsContext
    from prefect.engine import handle_engine_signals
    from prefect.flow_engine import load_flow, load_flow_run, run_flow
    from prefect.logging.loggers import flow_run_logger
    from prefect.settings import Settings

    current = SettingsContext.get()
    assert current is not None
    with SettingsContext(profile=current.profile, settings=Settings()):
        run_id = UUID(flow_run_id)
        try:
            with handle_engine_signals(run_id):
                flow_run = load_flow_run(flow_run_id=run_id)
                run_logger = flow_run_logger(flow_run=flow_run)
                try:
                    flow = load_flow(flow_run)
                except Exception:
                    run_logger.error("could not load the flow", exc_info=True)
                    raise
                # an adapter, as `python -m prefect.engine` passes it (typed as a Logger)
                run_flow(flow, flow_run=flow_run, error_logger=cast(logging.Logger, run_logger))
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
