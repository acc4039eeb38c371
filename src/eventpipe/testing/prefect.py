"""A real Prefect server for tests: a private ``PREFECT_HOME``, 127.0.0.1, a free port; the
environment of a child process that talks to it; the events it stored."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from eventpipe.orchestration.server import EmbeddedServer, free_port, server_env


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


def host_env(api_url: str, home: Path, **extra: str) -> dict[str, str]:
    """The environment of one "host" for a child process (a worker, a watcher): its own
    ``HOME`` and ``PREFECT_HOME`` under ``home``, the server at ``api_url``, and none of this
    process's ``EVENTPIPE_*`` settings but those in ``extra``."""
    env = client_env(api_url, home / "prefect-home", HOME=str(home), COLUMNS="200", **extra)
    for name in [n for n in env if n.startswith("EVENTPIPE_") and n not in extra]:
        del env[name]
    return env
