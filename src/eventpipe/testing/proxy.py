"""A TCP proxy in front of a Prefect server that can cut its events websockets while plain
HTTP keeps flowing: what a client sees when a load balancer drops long-lived connections, or
a proxy refuses websockets."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from urllib.parse import urlsplit

from eventpipe.orchestration.server import free_port

WEBSOCKET_PATH = b" /api/events/"
"""Prefect's event streams (``/api/events/in`` and ``/api/events/out``)."""


class CutProxy:
    """Forwards 127.0.0.1:``port`` to the server at ``target``. :meth:`cut` closes the open
    event websockets and refuses new ones until :meth:`restore`; every other request passes."""

    def __init__(self, target: str) -> None:
        parts = urlsplit(target)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.port = free_port()
        self.path = parts.path.rstrip("/")
        self.cut_count = 0
        """Websocket connections closed or refused since the proxy started."""
        self._cut = threading.Event()
        self._streams: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._thread = threading.Thread(target=self._accept, name="cut-proxy", daemon=True)

    @property
    def streams(self) -> int:
        """Event websockets open through the proxy now."""
        with self._lock:
            return len(self._streams)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    def start(self) -> CutProxy:
        self._thread.start()
        return self

    def cut(self) -> None:
        self._cut.set()
        with self._lock:
            streams, self._streams = self._streams, set()
        for conn in streams:
            self.cut_count += 1
            with suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def restore(self) -> None:
        self._cut.clear()

    def close(self) -> None:
        with suppress(OSError):
            self._server.close()
        self.cut()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            first = client.recv(65536)
        except OSError:
            client.close()
            return
        websocket = WEBSOCKET_PATH in first.split(b"\r\n", 1)[0]
        if websocket and self._cut.is_set():
            self.cut_count += 1
            client.close()
            return
        try:
            upstream = socket.create_connection(self.target, timeout=10)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        if websocket:
            with self._lock:
                self._streams.add(client)
        upstream.sendall(first)
        threading.Thread(target=_pipe, args=(upstream, client), daemon=True).start()
        _pipe(client, upstream)

    def __enter__(self) -> CutProxy:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.close()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    """Copy ``source`` to ``sink`` until either side closes; then close both."""
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, sink):
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


@contextmanager
def cut_proxy(api_url: str) -> Iterator[CutProxy]:
    """A :class:`CutProxy` in front of the server at ``api_url`` for the block."""
    with CutProxy(api_url) as proxy:
        yield proxy
