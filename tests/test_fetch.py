"""Fetching on a schedule: a ``@pipeline.fetch`` function pulls from a real HTTP server (or a
database) and its result takes the same path as a dropped file — ledger, events, skips."""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from eventpipe import Pipeline, PipelineDefinitionError
from eventpipe.exceptions import FetchError
from eventpipe.fetchers import http_csv, http_json
from eventpipe.ledger import Ledger
from eventpipe.orchestration.server import EmbeddedServer
from eventpipe.run.fetch import Fetched, as_fetched, fetch_source
from eventpipe.testing import FakeEndpoint, Reply, fake_endpoint, read_events, wait_for

ORDERS_V1 = {"items": [{"day": "2026-05-01", "amount": 10.0}, {"day": "2026-05-02", "amount": 5}]}
ORDERS_V2 = {"items": [{"day": "2026-05-01", "amount": 12.5}]}

PIPELINE = """
from datetime import timedelta

import pandas as pd

from eventpipe import Pipeline
from eventpipe.fetchers import from_block, from_env, http_json, sql_query

pipeline = Pipeline("{name}")


@pipeline.fetch(interval=timedelta(seconds={every}), retries={retries}, retry_delay_seconds=0.05)
def orders() -> pd.DataFrame:
    return http_json({url}, records="items", timeout={timeout}{extra})


@pipeline.process
def cleaned(raw: pd.DataFrame) -> pd.DataFrame:
    return raw


@pipeline.analytics
def revenue_by_day(cleaned: pd.DataFrame) -> pd.DataFrame:
    return cleaned.groupby("day", as_index=False)["amount"].sum().sort_values("day")
"""


def write_pipeline(
    root: Path,
    endpoint: FakeEndpoint,
    *,
    every: float = 3600,
    retries: int = 1,
    timeout: float = 1.0,
    url: str | None = None,
    extra: str = "",
) -> tuple[str, str]:
    """A pipeline file with an ``orders`` fetch of ``endpoint``; returns (spec, name)."""
    name = "f" + uuid.uuid4().hex[:10]
    path = root / f"{name}.py"
    path.write_text(
        PIPELINE.format(
            name=name,
            every=every,
            retries=retries,
            timeout=timeout,
            url=url or repr(endpoint.url + "/orders"),
            extra=extra,
        )
    )
    return f"{path}:pipeline", name


@pytest.fixture
def endpoint() -> Iterator[FakeEndpoint]:
    with fake_endpoint() as served:
        yield served


# -- the plugin API ------------------------------------------------------------------------------


def test_a_fetch_needs_one_schedule_no_parameters_and_its_own_name() -> None:
    pipeline = Pipeline("p")

    def orders() -> None:
        return None

    with pytest.raises(PipelineDefinitionError, match="exactly one of schedule"):
        pipeline.fetch()(orders)
    with pytest.raises(PipelineDefinitionError, match="exactly one of schedule"):
        pipeline.fetch(schedule="* * * * *", interval=60)(orders)
    with pytest.raises(PipelineDefinitionError, match="not a valid cron"):
        pipeline.fetch(schedule="every monday")(orders)
    with pytest.raises(PipelineDefinitionError, match="interval must be positive"):
        pipeline.fetch(interval=timedelta(0))(orders)

    def with_args(since: str) -> None:
        return None

    with pytest.raises(PipelineDefinitionError, match="takes no parameters"):
        pipeline.fetch(interval=60)(with_args)
    pipeline.fetch(schedule="*/15 * * * *")(orders)
    assert pipeline.fetches["orders"].every == "cron '*/15 * * * *' (UTC)"
    with pytest.raises(PipelineDefinitionError, match="already used"):
        pipeline.fetch(interval=60)(orders)

    def raw_orders() -> None:
        return None

    pipeline.fetch(interval=90.0)(raw_orders)
    assert pipeline.fetches["raw_orders"].interval == timedelta(seconds=90)


def test_what_a_fetch_returns_becomes_bytes_in_a_readable_format() -> None:
    frame = pd.DataFrame({"a": [1, 2]})
    result = as_fetched(frame, append=False)
    assert result.kind == "content"
    assert result.fetched is not None
    assert result.fetched.format == "parquet"
    assert result.fetched.rows == 2
    assert as_fetched(frame, append=False) == result  # same frame, same bytes: skippable
    assert as_fetched(frame.iloc[:0], append=True).kind == "empty"
    assert as_fetched(None, append=False).kind == "empty"
    assert as_fetched((b"a,b\n1,2\n", "csv"), append=False).fetched == Fetched(b"a,b\n1,2\n", "csv")
    with pytest.raises(FetchError, match="return a DataFrame"):
        as_fetched({"a": 1}, append=False)
    with pytest.raises(Exception, match="not readable"):
        Fetched(b"x", "xlsx")


# -- the HTTP helpers against a real server --------------------------------------------------------


def test_http_helpers_read_json_csv_and_pages_and_say_which_failures_are_worth_a_retry(
    endpoint: FakeEndpoint,
) -> None:
    endpoint.serve("/orders", json.dumps(ORDERS_V1))
    frame = http_json(endpoint.url + "/orders", records="items")
    assert frame["amount"].tolist() == [10.0, 5.0]

    endpoint.serve("/pages", json.dumps({"rows": [{"n": 1}], "next": "/pages?after=1"}))
    endpoint.serve("/pages?after=1", json.dumps({"rows": [{"n": 2}], "next": None}))

    def next_page(response: Any) -> str | None:
        after = response.json()["next"]
        return endpoint.url + after if after else None

    paged = http_json(endpoint.url + "/pages", records="rows", paginate=next_page)
    assert paged["n"].tolist() == [1, 2]

    endpoint.serve("/day.csv", "day,amount\n2026-05-01,3\n", content_type="text/csv")
    assert http_csv(endpoint.url + "/day.csv")["amount"].tolist() == [3]

    endpoint.script(
        "/orders",
        Reply(status=503),
        Reply(stall=2.0),
        Reply(status=200, body=b'{"items": [1, 2'),
        Reply(status=404),
        Reply(status=200, body=b'{"rows": []}'),
    )
    failures = []
    for _ in range(5):
        with pytest.raises(FetchError) as caught:
            http_json(endpoint.url + "/orders", records="items", timeout=0.5)
        failures.append((str(caught.value), caught.value.retryable))
    assert failures[0] == ("HTTP 503 Service Unavailable from 127.0.0.1", True)
    assert failures[1] == ("timed out after 0.5 s (ReadTimeout)", True)
    assert failures[2][0].startswith("page 1 is not valid JSON")
    assert failures[2][1] is False
    assert failures[3] == ("HTTP 404 Not Found from 127.0.0.1", False)
    assert failures[4] == ("page 1 has no 'items' in its JSON (missing 'items')", False)


# -- the fetch flow: a result lands like a dropped file --------------------------------------------


def run_fetch(spec: str, data: Path) -> dict[str, Any]:
    result: dict[str, Any] = fetch_source(pipeline=spec, fetch="orders", data=str(data))
    return result


def test_changed_unchanged_and_304_responses_land_like_dropped_files(
    prefect_server: EmbeddedServer, endpoint: FakeEndpoint, tmp_path: Path
) -> None:
    spec, name = write_pipeline(tmp_path, endpoint)
    data = tmp_path / "data"
    endpoint.serve("/orders", json.dumps(ORDERS_V1))

    first = run_fetch(spec, data)
    assert first["outcome"] == "new"
    assert first["rows"] == 2
    assert first["http"] == {"status": 200, "pages": 1}
    landed = data / "fetched" / name / "orders.parquet"
    assert pd.read_parquet(landed)["amount"].tolist() == [10.0, 5.0]
    assert (data / "raw" / name / f"{first['sha256']}.parquet").exists()

    second = run_fetch(spec, data)  # the endpoint answers 304 to the stored ETag
    assert second["outcome"] == "unchanged"
    assert second["http"] == {"status": 304}
    assert endpoint.hits("/orders")[-1].status == 304
    assert endpoint.hits("/orders")[-1].headers["if-none-match"]

    endpoint.serve("/orders", json.dumps(ORDERS_V2))
    third = run_fetch(spec, data)
    assert third["outcome"] == "changed"
    assert pd.read_parquet(landed)["amount"].tolist() == [12.5]

    ledger = Ledger(data / "ledger.sqlite")
    rows = ledger.files(name)
    assert [(r.relative, r.source) for r in rows] == [("fetched/orders.parquet", "fetch")] * 2
    events = [e["event"] for row in rows for e in ledger.events_for(row.id)]
    assert events.count("eventpipe.file.landed") == 2
    assert events.count("eventpipe.asset.skipped") == 1


def test_a_failing_fetch_is_retried_then_reported_and_the_next_run_works(
    prefect_server: EmbeddedServer, endpoint: FakeEndpoint, tmp_path: Path
) -> None:
    spec, name = write_pipeline(tmp_path, endpoint, retries=2, timeout=0.5)
    data = tmp_path / "data"
    endpoint.serve("/orders", json.dumps(ORDERS_V1))
    endpoint.script("/orders", Reply(status=500), Reply(stall=1.5), Reply(status=502))
    with pytest.raises(FetchError, match="failed after its retries: HTTP 502"):
        run_fetch(spec, data)
    wait_for(lambda: len(endpoint.hits("/orders")) == 3, 10, what="the stalled request's end")
    assert sorted(r.status for r in endpoint.hits("/orders")) == [500, 500, 502]

    endpoint.script("/orders", Reply(status=500))  # one failure, then the retry succeeds
    assert run_fetch(spec, data)["outcome"] == "new"

    endpoint.script("/orders", Reply(status=200, body=b"<html>maintenance</html>"))
    with pytest.raises(FetchError, match="not valid JSON"):
        run_fetch(spec, data)  # malformed: not retried, reported
    statuses = [r.status for r in endpoint.hits("/orders")]
    assert statuses[-1] == 200  # the malformed page was asked for once: no retry
    assert statuses.count(200) == 2

    def fetch_events() -> list[dict[str, Any]]:
        return read_events(prefect_server.api_url, None, [f"eventpipe.fetch.{name}."])

    events = wait_for(lambda: len(fetch_events()) >= 3 and fetch_events(), 60, 0.5)
    assert [e["event"] for e in events] == [
        "eventpipe.fetch.failed",
        "eventpipe.fetch.completed",
        "eventpipe.fetch.failed",
    ]
    failed = events[0]["payload"]
    assert failed["attempts"] == 3
    assert failed["reason"] == "HTTP 502 Bad Gateway from 127.0.0.1"
    assert events[2]["payload"]["attempts"] == 1
    assert events[1]["related"][0]["prefect.resource.id"] == f"eventpipe.pipeline.{name}"


# -- SQL: SQLite and PostgreSQL, incrementally ---------------------------------------------------

SQL_PIPELINE = """
import pandas as pd

from eventpipe import Pipeline
from eventpipe.fetchers import from_env, sql_query

pipeline = Pipeline("{name}")


@pipeline.fetch(schedule="*/5 * * * *", append=True, retries=0)
def orders() -> pd.DataFrame:
    return sql_query(
        from_env("{env}"), "SELECT id, day, amount FROM orders WHERE amount > 0", incremental="id"
    )


@pipeline.process
def cleaned(raw: pd.DataFrame) -> pd.DataFrame:
    return raw
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'source.sqlite'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


def test_an_incremental_sql_fetch_takes_only_new_rows(
    prefect_server: EmbeddedServer,
    database: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sqlalchemy import create_engine, text

    name = "s" + uuid.uuid4().hex[:10]
    env = "EVENTPIPE_TEST_DB_" + name.upper()
    monkeypatch.setenv(env, database)
    (tmp_path / "sql_pipeline.py").write_text(SQL_PIPELINE.format(name=name, env=env))
    spec, data = f"{tmp_path / 'sql_pipeline.py'}:pipeline", tmp_path / "data"
    engine = create_engine(database.replace("postgresql://", "postgresql+psycopg://"))
    table = f"orders_{name}"  # PostgreSQL is shared by the module's tests

    def insert(*rows: tuple[int, str, float]) -> None:
        with engine.begin() as db:
            for row in rows:
                db.execute(
                    text(f"INSERT INTO {table} VALUES (:id, :day, :amount)"),
                    {"id": row[0], "day": row[1], "amount": row[2]},
                )

    (tmp_path / "sql_pipeline.py").write_text(
        SQL_PIPELINE.format(name=name, env=env).replace("FROM orders", f"FROM {table}")
    )
    with engine.begin() as db:
        db.execute(text(f"CREATE TABLE {table} (id INTEGER, day TEXT, amount REAL)"))
    insert((1, "2026-05-01", 10.0), (2, "2026-05-01", 5.0), (3, "2026-05-02", 0.0))
    try:
        first = run_fetch(spec, data)
        insert((4, "2026-05-02", 7.0), (5, "2026-05-03", 1.0))
        second = run_fetch(spec, data)
        third = run_fetch(spec, data)
    finally:
        with engine.begin() as db:
            db.execute(text(f"DROP TABLE {table}"))
        engine.dispose()
    assert (first["outcome"], first["rows"], first["cursor"]) == ("new", 2, 2)
    assert (second["outcome"], second["rows"], second["cursor"]) == ("new", 2, 5)
    assert third["outcome"] == "empty"  # nothing past the cursor: a skip, no file
    files = Ledger(data / "ledger.sqlite").files(name)
    assert [f.relative for f in files] == [first["file"], second["file"]]
    assert first["file"].startswith("fetched/orders/")
    taken = [pd.read_parquet(data / "fetched" / name / f.relative[8:])["id"] for f in files]
    assert [t.tolist() for t in taken] == [[1, 2], [4, 5]]


def test_an_incremental_sql_fetch_must_append(
    prefect_server: EmbeddedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = "s" + uuid.uuid4().hex[:10]
    env = "EVENTPIPE_TEST_DB_" + name.upper()
    monkeypatch.setenv(env, f"sqlite:///{tmp_path / 'db.sqlite'}")
    (tmp_path / "p.py").write_text(
        SQL_PIPELINE.format(name=name, env=env).replace("append=True", "append=False")
    )
    with pytest.raises(Exception, match=r"append=True"):
        run_fetch(f"{tmp_path / 'p.py'}:pipeline", tmp_path / "data")


# -- secrets never leave the fetch -----------------------------------------------------------------


def test_secrets_from_a_block_and_the_environment_reach_no_log_event_or_artifact(
    prefect_server: EmbeddedServer,
    endpoint: FakeEndpoint,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import httpx
    from prefect.blocks.system import Secret

    token, in_url = "canary-" + uuid.uuid4().hex, "canary-" + uuid.uuid4().hex
    block = "ep-" + uuid.uuid4().hex[:8]
    Secret(value=token).save(block)
    env = "EVENTPIPE_TEST_URL_" + uuid.uuid4().hex[:8].upper()
    monkeypatch.setenv(env, f"{endpoint.url}/orders?token={in_url}")
    endpoint.required_headers = {"authorization": f"Bearer {token}"}
    endpoint.serve("/orders", json.dumps(ORDERS_V1))
    spec, name = write_pipeline(
        tmp_path,
        endpoint,
        url=f"from_env({env!r})",
        extra=f', headers={{"Authorization": from_block({block!r}, "Bearer {{}}")}}',
        retries=1,
    )
    caplog.set_level("DEBUG")
    data = tmp_path / "data"
    endpoint.script("/orders", Reply(status=500))  # a failure and a retry, logged
    assert run_fetch(spec, data)["outcome"] == "new"
    assert run_fetch(spec, data)["outcome"] == "unchanged"
    endpoint.required_headers = {"authorization": "Bearer another"}
    with pytest.raises(FetchError, match="HTTP 401"):
        run_fetch(spec, data)
    assert [r.status for r in endpoint.hits("/orders")] == [500, 200, 304, 401]

    events = wait_for(
        lambda: (
            (
                found := read_events(
                    prefect_server.api_url,
                    None,
                    [f"eventpipe.fetch.{name}.", f"eventpipe.file.{name}"],
                )
            )
            and len([e for e in found if e["event"].startswith("eventpipe.fetch")]) >= 3
            and found
        ),
        60,
        0.5,
    )
    run_ids = sorted(
        {
            r["prefect.resource.id"].removeprefix("prefect.flow-run.")
            for e in events
            for r in e["related"]
            if r["prefect.resource.id"].startswith("prefect.flow-run.")
        }
    )
    assert len(run_ids) == 3
    with httpx.Client(base_url=prefect_server.api_url, timeout=30) as client:
        artifacts = client.post(
            "/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": run_ids}}}
        )

        def failure_logged() -> httpx.Response | None:
            # Run logs reach the server from Prefect's background log worker: soon, not at once.
            found = client.post("/logs/filter", json={"logs": {"flow_run_id": {"any_": run_ids}}})
            text = found.text
            return found if "Retries are exhausted" in text or "HTTP 401" in text else None

        logs = wait_for(failure_logged, 60, 0.5, what="the failed fetch's run logs")
    # One markdown summary, of the fetch that landed something (the failed run has Prefect's
    # own record of its exception).
    assert [a["type"] for a in artifacts.json()].count("markdown") == 1
    assert "HTTP 401" in json.dumps(events)
    for where, text in {
        "events": json.dumps(events),
        "artifacts": artifacts.text,
        "run logs": logs.text,
        "local logs": caplog.text,
        "ledger": (data / "ledger.sqlite").read_bytes().decode("latin-1"),
    }.items():
        assert token not in text, where
        assert in_url not in text, where
    assert "***" in caplog.text  # httpx's request line, with the URL's token masked


# -- end to end: a real deployment schedule, executed by `eventpipe up` ------------------------


def test_up_runs_a_scheduled_fetch_through_the_pipeline_and_pausing_stops_it(
    prefect_server: EmbeddedServer, endpoint: FakeEndpoint, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    from eventpipe.loop.local import LocalLoop
    from eventpipe.orchestration.deploy import register_fetches
    from eventpipe.orchestration.here import here_pool_name
    from eventpipe.pipeline import load_pipeline
    from eventpipe.settings import Settings

    spec, name = write_pipeline(tmp_path, endpoint, every=2, retries=1)
    endpoint.serve("/orders", json.dumps(ORDERS_V1))
    settings = Settings(
        pipeline=spec,
        inbox=tmp_path / "inbox",
        data=tmp_path / "data",
        home=tmp_path / "home",
        api_url=prefect_server.api_url,
        rescan_seconds=5,
        sweep_seconds=5,
    )
    analytics = tmp_path / "data" / "analytics" / name / "revenue_by_day.parquet"

    def amounts() -> list[float]:
        if not analytics.exists():
            return []
        # One open: pyarrow opens a path twice (footer, then pages), and a run may replace
        # the file in between; its bytes are always one whole version.
        return pd.read_parquet(io.BytesIO(analytics.read_bytes()))["amount"].tolist()

    def statuses() -> list[int]:
        return [r.status for r in endpoint.hits("/orders")]

    with LocalLoop(settings) as loop:
        deployment_id = loop.fetch_deployment_ids["orders"]
        wait_for(lambda: amounts() == [10.0, 5.0], 120, what="analytics from the first fetch")
        wait_for(lambda: 304 in statuses(), 60, what="an unchanged fetch (304)")

        endpoint.serve("/orders", json.dumps(ORDERS_V2))
        wait_for(lambda: amounts() == [12.5], 60, what="analytics from the changed endpoint")

        seen = len(statuses())
        endpoint.script("/orders", Reply(status=500), Reply(status=500))  # beyond its 1 retry
        wait_for(lambda: statuses()[seen:].count(500) == 2, 60, what="a failed fetch")
        wait_for(lambda: [s for s in statuses()[seen:] if s != 500], 60, what="the next tick")

        with get_client(sync_client=True) as client:
            client.pause_deployment(deployment_id)
            schedules = client.read_deployment(deployment_id).schedules
        assert [type(s.schedule).__name__ for s in schedules] == ["IntervalSchedule"]
        # A run claimed before the pause may still finish; then nothing more is fetched.
        time.sleep(4)
        paused_at = len(statuses())
        time.sleep(8)
        assert len(statuses()) == paused_at
        assert loop.ledger is not None

    # `eventpipe up` started again registers the deployment again: a pause made in the UI holds.
    again = register_fetches(
        load_pipeline(spec), spec, tmp_path / "data", pool=here_pool_name(name, "fetches")
    )
    with get_client(sync_client=True) as client:
        assert client.read_deployment(again["orders"]).paused
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
        )
    executed = [r for r in runs if r.start_time is not None]
    assert {r.state_name for r in executed} >= {"Completed", "Failed"}
    # Scheduled ahead by Prefect's scheduler, each run started only when it was due.
    assert all(r.start_time >= r.expected_start_time for r in executed)  # type: ignore[operator]

    events = read_events(
        prefect_server.api_url,
        None,
        [f"eventpipe.fetch.{name}.", f"eventpipe.file.{name}.", f"eventpipe.pipeline.{name}"],
    )
    story = [(e["event"], e["payload"].get("outcome")) for e in events]
    first = story.index(("eventpipe.fetch.completed", "new"))
    assert story[first + 1][0] == "eventpipe.file.landed"
    assert ("eventpipe.pipeline.completed", None) in story[first + 2 :]
    unchanged = story.index(("eventpipe.fetch.completed", "unchanged"))
    assert ("eventpipe.asset.skipped", None) in story[unchanged - 1 : unchanged + 2]
    assert ("eventpipe.fetch.completed", "changed") in story
    assert ("eventpipe.fetch.failed", None) in story


# -- the README's example, as written ----------------------------------------------------------


def test_readme_fetch_example_runs_as_written(
    prefect_server: EmbeddedServer, tmp_path: Path
) -> None:
    import os
    import shlex
    import subprocess
    import sys

    from eventpipe.loop.local import LocalLoop
    from eventpipe.orchestration.server import free_port
    from eventpipe.settings import Settings
    from tests.test_readme import readme_files

    files = readme_files()
    port = str(free_port())
    (tmp_path / "orders_api.py").write_text(files["orders_api.py"].replace("8000", port))
    (tmp_path / "api").mkdir()
    orders = tmp_path / "api" / "orders.json"
    orders.write_text(files["api/orders.json"])
    serve_line, up_line = files["fetch.sh"].splitlines()
    serve = shlex.split(serve_line.replace("8000", port), comments=True)
    assert serve[:3] == [".venv/bin/python", "-m", "http.server"]
    assert shlex.split(up_line) == [
        ".venv/bin/eventpipe", "up", "--pipeline", "orders_api.py:pipeline"
    ]  # fmt: skip
    log = (tmp_path / "http.log").open("w")
    api = subprocess.Popen(
        [sys.executable, *serve[1:-1]], cwd=tmp_path, stderr=log, stdout=log
    )  # serve[-1] is the "&"
    settings = Settings(
        pipeline=f"{tmp_path / 'orders_api.py'}:pipeline",
        inbox=tmp_path / "inbox",
        data=tmp_path / "data",
        home=tmp_path / "home",
        api_url=prefect_server.api_url,
    )
    revenue = tmp_path / "data/analytics/orders_api/revenue_by_day.parquet"

    def by_day() -> dict[str, float]:
        if not revenue.exists():
            return {}
        frame = pd.read_parquet(revenue)
        return dict(zip(frame["day"], frame["amount"], strict=True))

    try:
        with LocalLoop(settings):
            wait_for(lambda: by_day() == {"2026-04-01": 25.5, "2026-04-02": 8.0}, 120)
            wait_for(lambda: '"GET /orders.json HTTP/1.1" 304' in _read(tmp_path / "http.log"), 60)
            orders.write_text(orders.read_text().replace("8.0", "9.0"))
            later = time.time() + 2  # Last-Modified has whole seconds
            os.utime(orders, (later, later))
            wait_for(lambda: by_day() == {"2026-04-01": 25.5, "2026-04-02": 9.0}, 60)
    finally:
        api.terminate()
        api.wait(10)
        log.close()


def _read(path: Path) -> str:
    return path.read_text(errors="replace")
