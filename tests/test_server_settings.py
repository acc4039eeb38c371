"""The embedded server's launcher (:mod:`eventpipe.orchestration.prefect_server`): a trigger's
run is created under ``BEGIN IMMEDIATE`` on SQLite, and an unexpected Prefect is left alone."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from eventpipe.orchestration import prefect_server
from eventpipe.orchestration.server import EmbeddedServer


def create_run_while_the_database_is_locked(patched: bool, home: Path) -> tuple[int, float]:
    """Another connection holds SQLite's write lock for 0.5 s while a deployment's run is
    created (as the event persister's flush does): the answer's status and its seconds."""
    with EmbeddedServer(home, patched=patched) as server, httpx.Client(timeout=60) as http:
        flow = post(http, f"{server.api_url}/flows/", {"name": "noop"})
        deployment = post(
            http, f"{server.api_url}/deployments/", {"name": "d", "flow_id": flow["id"]}
        )
        database = sqlite3.connect(
            home / "prefect.db", isolation_level=None, timeout=30, check_same_thread=False
        )
        try:
            database.execute("BEGIN IMMEDIATE")
            release = threading.Timer(0.5, database.execute, ["COMMIT"])
            release.start()
            started = time.perf_counter()
            created = http.post(
                f"{server.api_url}/deployments/{deployment['id']}/create_flow_run", json={}
            )
            elapsed = time.perf_counter() - started
            release.join()
        finally:
            database.close()
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


def test_the_patched_db_opens_transactions_with_the_write_lock_up_front() -> None:
    seen: list[dict[str, bool]] = []

    class Db:
        dialect = "sqlite"

        def session_context(self, **kwargs: bool) -> str:
            seen.append(kwargs)
            return "session"

    db = prefect_server._ImmediateTransactions(Db())

    db.session_context(begin_transaction=True)
    db.session_context()

    assert seen == [
        {"begin_transaction": True, "with_for_update": True},
        {"begin_transaction": False, "with_for_update": False},
    ]
    assert db.dialect == "sqlite"


def test_a_prefect_that_changed_shape_is_not_patched() -> None:
    async def fixed_upstream(db: Any) -> None:
        async with db.session_context(begin_transaction=True, with_for_update=True):
            pass

    async def no_db(session: Any) -> None:
        async with session.session_context(begin_transaction=True):
            pass

    def not_async(db: Any) -> None:
        db.session_context(begin_transaction=True)

    class Route:
        endpoint = staticmethod(fixed_upstream)

    assert "no longer opens" in (prefect_server.shape_mismatch(fixed_upstream) or "")
    assert "no `db`" in (prefect_server.shape_mismatch(no_db) or "")
    assert "coroutine" in (prefect_server.shape_mismatch(not_async) or "")
    assert "0 routes" in (prefect_server.unpatchable([], fixed_upstream) or "")
    assert "not `create_flow_run" in (prefect_server.unpatchable([Route()], no_db) or "")


def test_the_embedded_server_starts_through_the_launcher_unless_told_not_to(
    tmp_path: Path,
) -> None:
    assert EmbeddedServer(tmp_path).patched
    assert not EmbeddedServer(tmp_path, patched=False).patched
