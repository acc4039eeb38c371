"""The embedded Prefect server: ``prefect server start`` on 127.0.0.1 with a project-local home
(through :mod:`eventpipe.orchestration.prefect_server`, which begins its SQLite transactions
``IMMEDIATE``)."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from eventpipe.exceptions import ServerError
from eventpipe.settings import Settings

log = logging.getLogger("eventpipe")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_env(home: Path, port: int) -> dict[str, str]:
    """Environment for a Prefect client or server using ``home`` and the server on ``port``."""
    return {
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_UI_URL": f"http://127.0.0.1:{port}",
        "PREFECT_LOGGING_LEVEL": os.environ.get("PREFECT_LOGGING_LEVEL", "WARNING"),
    }


AT_REST = {
    # The embedded server serves one eventpipe: no work pool worker reports to it (foreman),
    # no flow run pauses itself (pause expirations), and what is cleaned up after cancelled
    # runs can wait a minute. Each of these is a background service that wakes the server
    # every few seconds at rest; an environment variable of the same name wins.
    "PREFECT_SERVER_SERVICES_FOREMAN_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_PAUSE_EXPIRATIONS_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_CANCELLATION_CLEANUP_LOOP_SECONDS": "60",
    "PREFECT_SERVER_SERVICES_CLEANUP_RECONCILER_LOOP_SECONDS": "60",
    # Late marks are a fallback for a missed Scheduled event (the runner's sweep is another).
    "PREFECT_SERVER_SERVICES_LATE_RUNS_LOOP_SECONDS": "15",
}
"""Server settings for ``eventpipe up``'s embedded server, which is at rest most of the time."""


class EmbeddedServer:
    """A ``prefect server start`` child process, stopped with its whole process group."""

    def __init__(
        self,
        home: Path,
        port: int | None = None,
        host: str = "127.0.0.1",
        log_file: Path | None = None,
        env: dict[str, str] | None = None,
        database_url: str | None = None,
        patched: bool = True,
    ) -> None:
        self.home = home
        self.patched = patched
        """Start the server through :mod:`eventpipe.orchestration.prefect_server` (Prefect's
        ``prefect server start`` with its SQLite transactions begun ``IMMEDIATE``: no 503 and
        2 s retry when two writers meet); False: plain ``prefect server start``."""
        self.env = dict(env or {})
        """Extra environment of the server process (e.g. ``PREFECT_SERVER_API_AUTH_STRING``)."""
        if database_url:
            # SQLAlchemy URL of the server's database, e.g. PostgreSQL through asyncpg
            # (postgresql+asyncpg://user:password@host:5432/db); default: SQLite in home.
            self.env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = database_url
        self.port = port or free_port()
        self.host = host
        self.log_file = log_file or home / "server.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> EmbeddedServer:
        self.home.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **server_env(self.home, self.port), **self.env}
        env["PREFECT_SERVER_API_HOST"] = self.host
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            self._proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    *(
                        ["eventpipe.orchestration.prefect_server"]
                        if self.patched
                        else ["prefect", "server"]
                    ),
                    "start",
                    "--host",
                    self.host,
                    "--port",
                    str(self.port),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise ServerError(
                    f"the Prefect server exited with code {self._proc.returncode}; "
                    f"see {self.log_file}"
                )
            try:
                if httpx.get(f"{self.api_url}/health", timeout=2).is_success:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise ServerError(
            f"the Prefect server did not answer within {timeout:.0f} s; see {self.log_file}"
        )

    def stop(self, timeout: float = 15.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """SIGKILL the server's process group (chaos tests)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _die_with_parent() -> None:
    """In the child, before exec: on Linux, get SIGTERM when the parent dies, even by SIGKILL,
    so a killed ``eventpipe up`` leaves no server behind."""
    if sys.platform != "linux":
        return
    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def configure_api(settings: Settings) -> EmbeddedServer | None:
    """Point this process's Prefect client at ``--api-url`` or at the embedded server (returned,
    not yet started). Call it before anything imports Prefect: Prefect reads its settings
    from the environment once, at import."""
    if settings.api_url:
        os.environ["PREFECT_API_URL"] = settings.api_url
        # As with the embedded server: one line per run here, not one per task.
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
        return None
    home = settings.home / "prefect"
    port = settings.port if settings.port and port_is_free(settings.host, settings.port) else 0
    if settings.port and not port:
        log.warning("port %d is in use; the embedded server takes a free port", settings.port)
    server = EmbeddedServer(
        home,
        port=port or None,
        host=settings.host,
        log_file=settings.home / "server.log",
        env={k: v for k, v in AT_REST.items() if k not in os.environ},
    )
    os.environ.update(server_env(home, server.port))
    auth = os.environ.get("PREFECT_SERVER_API_AUTH_STRING")
    if auth:  # the server asks for basic auth: this process's client must send it
        os.environ.setdefault("PREFECT_API_AUTH_STRING", auth)
    return server
