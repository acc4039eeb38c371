"""A scripted HTTP endpoint (stdlib ``http.server`` on 127.0.0.1) for fetch tests: bodies,
ETags and 304s, failures and stalls."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit


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
