"""The embedded server's launcher (:mod:`eventpipe.orchestration.prefect_server`): its SQLite
transactions begin ``IMMEDIATE`` (a request waits for a concurrent writer instead of a 503),
and an unexpected Prefect is left alone."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from eventpipe.orchestration import prefect_server
from eventpipe.orchestration.server import EmbeddedServer


@contextmanager
def write_locked(home: Path, seconds: float = 0.5) -> Iterator[None]:
    """Another connection takes SQLite's write lock and lets it go after ``seconds`` (as the
    event persister's flush does) while the body sends its request."""
    database = sqlite3.connect(
        home / "prefect.db", isolation_level=None, timeout=30, check_same_thread=False
    )
    try:
        database.execute("BEGIN IMMEDIATE")
        release = threading.Timer(seconds, database.execute, ["COMMIT"])
        release.start()
        yield
        release.join()
    finally:
        database.close()


def create_run_while_the_database_is_locked(patched: bool, home: Path) -> tuple[int, float]:
    """A deployment's run created while another connection holds the write lock for 0.5 s:
    the answer's status and its seconds."""
    with EmbeddedServer(home, patched=patched) as server, httpx.Client(timeout=60) as http:
        flow = post(http, f"{server.api_url}/flows/", {"name": "noop"})
        deployment = post(
            http, f"{server.api_url}/deployments/", {"name": "d", "flow_id": flow["id"]}
        )
        with write_locked(home):
            started = time.perf_counter()
            created = http.post(
                f"{server.api_url}/deployments/{deployment['id']}/create_flow_run", json={}
            )
            elapsed = time.perf_counter() - started
    return created.status_code, elapsed


def post(http: httpx.Client, url: str, body: dict[str, Any]) -> Any:
    """POST, again while the just-started server's services keep SQLite busy (503)."""
    for _ in range(40):
        answer = http.post(url, json=body)
        if answer.status_code != 503:
            break
        time.sleep(0.25)
    return answer.raise_for_status().json()


def test_a_run_is_created_once_a_concurrent_writer_is_done_instead_of_a_503(
    tmp_path: Path,
) -> None:
    status, seconds = create_run_while_the_database_is_locked(True, tmp_path / "patched")

    assert status == 201
    assert 0.4 < seconds < 5


def test_unpatched_prefect_answers_503_at_once_which_its_client_retries_2_s_later(
    tmp_path: Path,
) -> None:
    """What the patch is for: if this starts passing with a 201, Prefect has fixed it."""
    status, seconds = create_run_while_the_database_is_locked(False, tmp_path / "plain")

    assert status == 503
    assert seconds < 0.4


def test_a_claim_waits_for_a_concurrent_writer_too(tmp_path: Path) -> None:
    """Not only a trigger's run: a worker's claim (propose Pending) is a write as well."""
    home = tmp_path / "claim"
    with EmbeddedServer(home) as server, httpx.Client(timeout=60) as http:
        flow = post(http, f"{server.api_url}/flows/", {"name": "noop"})
        deployment = post(
            http, f"{server.api_url}/deployments/", {"name": "d", "flow_id": flow["id"]}
        )
        run = post(http, f"{server.api_url}/deployments/{deployment['id']}/create_flow_run", {})
        with write_locked(home):
            claimed = http.post(
                f"{server.api_url}/flow_runs/{run['id']}/set_state",
                json={"state": {"type": "PENDING"}},
            )
    assert claimed.status_code == 201, claimed.text
    assert claimed.json()["status"] == "ACCEPT"


def test_a_prefect_that_changed_shape_is_not_patched() -> None:
    from prefect.server.database.configurations import AioSqliteConfiguration

    def fixed_upstream(self: Any, session: Any, with_for_update: bool = False) -> Any:
        return "IMMEDIATE"

    def other_parameters(self: Any, session: Any) -> Any:
        return None

    assert prefect_server.shape_mismatch(AioSqliteConfiguration.begin_transaction) is None
    assert "no longer begins" in (prefect_server.shape_mismatch(fixed_upstream) or "")
    assert "parameters" in (prefect_server.shape_mismatch(other_parameters) or "")
    assert "not a function" in (prefect_server.shape_mismatch(None) or "")


def test_the_embedded_server_starts_through_the_launcher_unless_told_not_to(
    tmp_path: Path,
) -> None:
    assert EmbeddedServer(tmp_path).patched
    assert not EmbeddedServer(tmp_path, patched=False).patched
