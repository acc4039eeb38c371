"""Commands in the background (``prefect worker start``, ``eventpipe up``), stopped with
everything they started."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from eventpipe.testing.files import wait_for
from eventpipe.testing.prefect import client_env


class Background:
    """A command in its own session, its output appended to ``log``: stopped with everything it
    started (a worker's flow runs, ``eventpipe up``'s children)."""

    def __init__(
        self,
        argv: list[str],
        log: Path,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.argv = argv
        self.log = log
        self.env = env
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> Background:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for_output(self, text: str, timeout: float = 120.0, count: int = 1) -> None:
        """Wait until ``text`` appeared ``count`` times in the log; fail early if it exits."""

        def seen() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.argv[:4]} exited with code {self.proc.returncode}:\n"
                    + self.output()[-3000:]
                )
            return self.output().count(text) >= count

        try:
            wait_for(seen, timeout, 0.1, what=f"{text!r} from {' '.join(self.argv[:4])}")
        except TimeoutError:
            print(self.output()[-5000:])  # what it was doing
            raise

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60.0) -> int | None:
        """Send ``sig`` to its process group, wait, SIGKILL after ``timeout``; the exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
            except ProcessLookupError:
                pass
        _kill_group(proc.pid)  # what it started and left behind
        return proc.returncode

    def kill(self) -> None:
        self.stop(signal.SIGKILL, 10)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def eventpipe_up(
    *flags: str, root: Path, api_url: str, env: dict[str, str] | None = None
) -> Background:
    """``eventpipe up FLAGS --api-url API_URL`` started in ``root`` (log ``root/up.log``, client
    home ``root/client-home``) and running: its "eventpipe is up" was printed."""
    up = Background(
        [sys.executable, "-m", "eventpipe.cli", "up", *flags, "--api-url", api_url],
        root / "up.log",
        env={**client_env(api_url, root / "client-home"), **(env or {})},
        cwd=root,
    )
    up.start().wait_for_output("eventpipe is up", 240)
    return up
