"""Fixtures and helpers for testing eventpipe pipelines against real components.

Prefect reads its settings from the environment once, at import: call
:func:`configure_prefect_env` before anything imports Prefect (a pytest ``pytest_configure``
hook is the place), then start the server with :func:`prefect_server`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx

from eventpipe.ledger import Ledger
from eventpipe.orchestration.server import EmbeddedServer, free_port, server_env

T = TypeVar("T")


def configure_prefect_env(root: Path | None = None, port: int | None = None) -> EmbeddedServer:
    """Point Prefect (this process and its children) at a not-yet-started server with a
    private ``PREFECT_HOME`` under ``root``. Returns the server; start it with ``.start()``."""
    root = root or Path(tempfile.mkdtemp(prefix="eventpipe-prefect-"))
    server = EmbeddedServer(root / "prefect-home", port=port or free_port())
    os.environ.update(server_env(server.home, server.port))
    os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = str(root / "results")
    return server


@contextmanager
def prefect_server(root: Path | None = None) -> Iterator[EmbeddedServer]:
    """A real Prefect server on 127.0.0.1 and a free port, for the duration of the block."""
    server = configure_prefect_env(root)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def moto_s3(log_file: Path | None = None) -> Iterator[str]:
    """A real S3 + SQS protocol server (``moto_server``) on 127.0.0.1 and a free port, for the
    duration of the block; yields its endpoint URL. Sets dummy AWS credentials and a region in
    this process's environment unless some are set. Needs ``moto[server]``."""
    import shutil
    import subprocess
    import sys

    binary = Path(sys.executable).with_name("moto_server")
    command = [str(binary)] if binary.exists() else [shutil.which("moto_server") or "moto_server"]
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    for name, value in (
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        os.environ.setdefault(name, value)
    out = log_file.open("ab") if log_file else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(
            [*command, "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError as exc:
        raise RuntimeError("moto_server not found: pip install 'moto[server]'") from exc
    try:
        wait_for(lambda: _answers(endpoint), 30, 0.1, what=f"moto_server on {endpoint}")
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        if log_file and not isinstance(out, int):
            out.close()


def _answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=1)
    except httpx.HTTPError:
        return False
    return True


def upload(s3: Any, bucket: str, key: str, content: str | bytes) -> str:
    """Put one object (as producers do: a single PUT, atomic in S3); returns its eTag."""
    body = content.encode() if isinstance(content, str) else content
    return str(s3.put_object(Bucket=bucket, Key=key, Body=body)["ETag"]).strip('"')


def drop_file(inbox: Path, name: str, content: str | bytes) -> Path:
    """Write a file into ``inbox`` the way well-behaved producers do: temp name, then rename."""
    target = inbox / name
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    if isinstance(content, str):
        tmp.write_text(content, encoding="utf-8")
    else:
        tmp.write_bytes(content)
    tmp.replace(target)
    return target


def land_file(ledger: Ledger, pipeline: str, inbox: Path, name: str, content: str) -> Path:
    """Drop ``name`` into ``inbox`` and record it in ``ledger`` as the watcher would, without
    a watcher: for tests that call the materialize flow themselves."""
    from eventpipe.core.keys import file_uri
    from eventpipe.core.models import Landed
    from eventpipe.core.storage import file_digest
    from eventpipe.intake.record import record

    path = drop_file(inbox, name, content)
    landed = Landed(
        uri=file_uri(path),
        relative=name,
        size=path.stat().st_size,
        fingerprint=file_digest(path),
        source="local",
        local_path=str(path),
    )
    record(ledger, pipeline, landed)
    return path


def wait_for(
    check: Callable[[], T], timeout: float = 60.0, interval: float = 0.05, what: str = "condition"
) -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def read_events(
    api_url: str,
    names: list[str] | None = None,
    resource_prefix: list[str] | None = None,
    since: str | None = None,
    limit: int = 2000,
) -> list[dict[str, Any]]:
    """Events stored by the server, oldest first, paging through ``/api/events/filter``."""
    body: dict[str, Any] = {"filter": {"order": "ASC"}, "limit": 50}
    if names:
        body["filter"]["event"] = {"name": names}
    if resource_prefix:
        body["filter"]["resource"] = {"id_prefix": resource_prefix}
    if since:
        body["filter"]["occurred"] = {"since": since}
    else:
        body["filter"]["occurred"] = {"since": "2000-01-01T00:00:00Z"}
    out: list[dict[str, Any]] = []
    with httpx.Client(timeout=30) as client:
        page = client.post(f"{api_url}/events/filter", json=body).raise_for_status().json()
        out.extend(page["events"])
        while page.get("next_page") and len(out) < limit:
            page = client.get(page["next_page"]).raise_for_status().json()
            out.extend(page["events"])
    return out


def _postgres_binary(name: str) -> str | None:
    """``name`` on PATH, else from Debian's ``postgresql`` package (newest major version)."""
    import shutil

    found = shutil.which(name)
    if found:
        return found
    packaged = sorted(
        Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3])
    )
    return str(packaged[-1]) if packaged else None


@contextmanager
def postgres_server() -> Iterator[str]:
    """A real PostgreSQL (the machine's ``initdb``/``pg_ctl``) on 127.0.0.1 and a free port,
    for the duration of the block; yields a SQLAlchemy URL without a driver
    (``postgresql://eventpipe:…@127.0.0.1:PORT/eventpipe``): add ``+asyncpg`` or ``+psycopg``.

    PostgreSQL refuses to run as root; as root the cluster is created in a directory owned by
    the ``postgres`` user and every command runs through ``runuser -u postgres --``.
    """
    import secrets
    import shutil
    import subprocess

    initdb, pg_ctl, createdb = (_postgres_binary(n) for n in ("initdb", "pg_ctl", "createdb"))
    if initdb is None or pg_ctl is None or createdb is None:
        raise RuntimeError("PostgreSQL's initdb/pg_ctl are not on PATH; install PostgreSQL")
    base = Path(tempfile.mkdtemp(prefix="eventpipe-pg-"))  # the postgres user must reach it
    as_root = os.geteuid() == 0
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    if as_root:
        shutil.chown(base, "postgres", "postgres")
    cluster, password_file = base / "cluster", base / "password"
    password = secrets.token_hex(12)
    password_file.write_text(password + "\n")
    if as_root:
        shutil.chown(password_file, "postgres", "postgres")
    port = free_port()

    def run(*command: str) -> None:
        done = subprocess.run(
            [*prefix, *command], capture_output=True, text=True, check=False, timeout=120
        )
        if done.returncode != 0:
            raise RuntimeError(f"{command[0]} failed: {done.stderr.strip() or done.stdout.strip()}")

    run(
        initdb,
        "--pgdata",
        str(cluster),
        "--username",
        "eventpipe",
        "--pwfile",
        str(password_file),
        "--auth",
        "scram-sha-256",
        "--encoding",
        "UTF8",
        "--no-sync",
    )
    options = f"-h 127.0.0.1 -p {port} -k {base} -c fsync=off -c max_connections=200"
    run(
        pg_ctl,
        "--pgdata",
        str(cluster),
        "--log",
        str(base / "postgres.log"),
        "-o",
        options,
        "--wait",
        "start",
    )
    try:
        env = {**os.environ, "PGPASSWORD": password}
        created = subprocess.run(
            [
                *prefix,
                createdb,
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                "eventpipe",
                "eventpipe",
            ],
            capture_output=True,
            text=True,
            check=False,
            env=env,
            timeout=60,
        )
        if created.returncode != 0:
            raise RuntimeError(f"createdb failed: {created.stderr.strip()}")
        yield f"postgresql://eventpipe:{password}@127.0.0.1:{port}/eventpipe"
    finally:
        run(pg_ctl, "--pgdata", str(cluster), "--mode", "fast", "--wait", "stop")
        shutil.rmtree(base, ignore_errors=True)


def client_env(api_url: str, home: Path, **extra: str) -> dict[str, str]:
    """This process's environment for a child that talks to the Prefect server at ``api_url``
    with its own ``PREFECT_HOME``: every other ``PREFECT_*`` variable is dropped, so the child
    does not inherit this process's server or settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_API_URL=api_url,
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_LEVEL=os.environ.get("PREFECT_LOGGING_LEVEL", "WARNING"),
    )
    env.update(extra)
    return env


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


@dataclass
class Reply:
    """One scripted answer of :class:`FakeEndpoint`: a status, a body, and how long to stall
    before answering (longer than the client's timeout: a timeout)."""

    status: int = 500
    body: bytes = b"scripted failure"
    stall: float = 0.0
    content_type: str = "text/plain"


@dataclass
class SeenRequest:
    path: str
    headers: dict[str, str]
    status: int


@dataclass
class _Route:
    body: bytes
    content_type: str
    etag: str | None
    last_modified: str | None
    script: list[Reply] = field(default_factory=list)


class FakeEndpoint:
    """A real HTTP server on 127.0.0.1 (stdlib ``http.server``, a thread per request) that
    serves what a test scripts: a body per path (changing or not), ETag / Last-Modified with
    304 answers to conditional requests, and scripted failures (500s, stalls, junk)."""

    def __init__(self) -> None:
        self._routes: dict[str, _Route] = {}
        self._lock = threading.Lock()
        self.requests: list[SeenRequest] = []
        self.required_headers: dict[str, str] = {}
        """Headers every request must carry (e.g. a token); otherwise 401."""
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                endpoint._answer(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: tests read ``requests``

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def serve(
        self,
        path: str,
        body: str | bytes,
        *,
        content_type: str = "application/json",
        etag: bool = True,
        last_modified: str | None = None,
    ) -> None:
        """Serve ``body`` at ``path`` (a path, or a path with its query) from now on; its ETag is
        a digest of the body, so serving the same body again keeps it."""
        data = body.encode() if isinstance(body, str) else body
        tag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"' if etag else None
        with self._lock:
            old = self._routes.get(path)
            self._routes[path] = _Route(
                data, content_type, tag, last_modified, old.script if old else []
            )

    def script(self, path: str, *replies: Reply) -> None:
        """Answer the next requests to ``path`` with ``replies``, in order, then as served."""
        with self._lock:
            self._routes[path].script.extend(replies)

    def hits(self, path: str | None = None) -> list[SeenRequest]:
        with self._lock:
            return [r for r in self.requests if path is None or r.path.startswith(path)]

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        headers = {k.lower(): v for k, v in handler.headers.items()}
        split = urlsplit(handler.path)
        with self._lock:
            route = self._routes.get(handler.path) or self._routes.get(split.path)
            reply = route.script.pop(0) if route and route.script else None
        status, body, extra = 200, b"", dict[str, str]()
        content_type = "text/plain"
        if any(headers.get(k.lower()) != v for k, v in self.required_headers.items()):
            status, body = 401, b"missing or wrong credentials"
        elif route is None:
            status, body = 404, b"no such path"
        elif reply is not None:
            if reply.stall:
                time.sleep(reply.stall)
            status, body, content_type = reply.status, reply.body, reply.content_type
        else:
            content_type = route.content_type
            if route.etag:
                extra["ETag"] = route.etag
            if route.last_modified:
                extra["Last-Modified"] = route.last_modified
            unchanged = (route.etag and headers.get("if-none-match") == route.etag) or (
                route.last_modified and headers.get("if-modified-since") == route.last_modified
            )
            status, body = (304, b"") if unchanged else (200, route.body)
        with self._lock:
            self.requests.append(SeenRequest(handler.path, headers, status))
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", content_type)
            handler.send_header("Content-Length", str(len(body)))
            for name, value in extra.items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a stall longer than its timeout)

    def start(self) -> FakeEndpoint:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def fake_endpoint() -> Iterator[FakeEndpoint]:
    """A :class:`FakeEndpoint` on 127.0.0.1 and a free port, for the duration of the block."""
    endpoint = FakeEndpoint().start()
    try:
        yield endpoint
    finally:
        endpoint.stop()
