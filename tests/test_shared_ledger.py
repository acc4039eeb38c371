"""The ledger on PostgreSQL, end to end: the loop records, claims and publishes through it, the
commands read it with ``--ledger``, and its password shows up nowhere (deployment, events,
artifacts, command output)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from eventpipe.cli.loop import banner
from eventpipe.exceptions import ConfigError
from eventpipe.ledger import Ledger, parse_url, redacted
from eventpipe.orchestration.server import EmbeddedServer
from eventpipe.settings import Settings
from eventpipe.testing import fresh_database, wait_for
from tests.loop_harness import Harness, running_loop
from tests.test_cli import eventpipe

DAY1 = """
    day,amount
    2026-01-01,10
    2026-01-02,7
"""
DAY2 = """
    day,amount
    2026-01-02,3
"""


@pytest.fixture
def shared(postgres_url: str) -> str:
    return fresh_database(postgres_url, "shared")


@pytest.fixture
def loop(
    prefect_server: EmbeddedServer,
    tmp_path: Path,
    shared: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Harness]:
    # As `eventpipe up --ledger URL` does for the runs it executes in its own process.
    monkeypatch.setenv("EVENTPIPE_LEDGER", shared)
    with running_loop(prefect_server, tmp_path, ledger=shared) as harness:
        yield harness


def revenue(h: Harness) -> dict[str, float] | None:
    if not h.analytics_path("revenue_by_day").exists():
        return None
    frame = h.analytics("revenue_by_day")
    return dict(zip(frame["day"], frame["amount"], strict=True))


def test_files_become_analytics_through_a_postgresql_ledger(
    loop: Harness, shared: str, tmp_path: Path
) -> None:
    password = make_url(shared).password
    assert password
    loop.drop("a.csv", DAY1)
    loop.drop("b.csv", DAY2)
    loop.wait_file_state("a.csv", "done")
    loop.wait_file_state("b.csv", "done")
    wait_for(
        lambda: revenue(loop) == {"2026-01-01": 10.0, "2026-01-02": 10.0},
        60,
        what="the analytics of both files",
    )
    # `up` says where the ledger is, password masked.
    shown = banner(loop.loop)
    assert f"ledger       {redacted(parse_url(shared))}" in shown
    assert password not in shown
    # The state is in PostgreSQL, not in a file of the data dir.
    assert not list(loop.data.rglob("*.sqlite*"))
    with Ledger(shared) as ledger:
        assert {r.relative: r.state for r in ledger.files(loop.name)} == {
            "a.csv": "done",
            "b.csv": "done",
        }
        assert ledger.asset(loop.name, "revenue_by_day") is not None

    # No password in the deployment, the events or the artifacts the runs left.
    api = loop.server.api_url
    assert loop.loop.deployment_id is not None
    deployment = httpx.get(f"{api}/deployments/{loop.loop.deployment_id}", timeout=30)
    assert password not in deployment.text
    events = loop.wait_events(
        lambda found: any(e["event"] == "eventpipe.pipeline.completed" for e in found),
        what="the run's completed event",
    )
    assert password not in json.dumps(events)
    artifacts = httpx.post(f"{api}/artifacts/filter", json={}, timeout=30).text
    assert password not in artifacts

    # The commands read the same ledger with --ledger, and never print the password.
    (tmp_path / "eventpipe.toml").write_text(
        f'pipeline = "{loop.pipeline_file}:pipeline"\ndata = "{loop.data}"\n'
    )
    status = eventpipe("status", "--json", "--ledger", shared, cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)[loop.name]
    assert {f["file"]: f["state"] for f in report["files"]} == {"a.csv": "done", "b.csv": "done"}
    versions = eventpipe("versions", "revenue_by_day", "--ledger", shared, cwd=tmp_path)
    assert versions.returncode == 0, versions.stderr
    story = eventpipe("explain", "a.csv", "--ledger", shared, cwd=tmp_path)
    assert story.returncode == 0, story.stderr
    assert "eventpipe.file.landed" in story.stdout
    lineage = eventpipe("lineage", "--format", "json", "--ledger", shared, cwd=tmp_path)
    assert lineage.returncode == 0, lineage.stderr
    graph = json.loads(lineage.stdout)
    assert graph["nodes"]
    for done in (status, versions, story, lineage):
        assert password not in done.stdout + done.stderr


def test_retry_requeues_failed_files_in_a_postgresql_ledger(
    loop: Harness, shared: str, tmp_path: Path
) -> None:
    loop.flag.write_text("down")  # the step raises: the file fails after its retry
    loop.drop("a.csv", DAY1)
    loop.wait_file_state("a.csv", "failed")
    loop.flag.unlink()
    (tmp_path / "eventpipe.toml").write_text(f'data = "{loop.data}"\n')
    retried = eventpipe("retry", "--ledger", shared, cwd=tmp_path)
    assert retried.returncode == 0, retried.stderr
    assert "1 file(s) queued again" in retried.stdout
    loop.wait_file_state("a.csv", "done")


def test_a_ledger_url_is_checked_and_never_shown_whole() -> None:
    url = "postgresql://eventpipe:s3cret-pw@db.internal:5432/pipes"
    assert parse_url(url).drivername == "postgresql+psycopg"  # psycopg 3 by default
    assert "s3cret-pw" not in redacted(parse_url(url))
    settings = Settings(ledger=url)
    assert "s3cret-pw" not in repr(settings)
    assert "s3cret-pw" not in settings.model_dump_json()
    with pytest.raises(ConfigError, match="not supported"):
        parse_url("mysql://u:p@h/db")
    with pytest.raises(ConfigError, match="not a database URL"):
        parse_url("postgresql://u:p@host:port/db")


def test_a_run_finds_the_ledger_in_its_environment_or_a_secret_block(
    prefect_server: EmbeddedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.blocks.system import Secret

    from eventpipe.run.credentials import run_ledger_url

    block = "ledger-" + tmp_path.name.replace("_", "-").lower()[-20:]
    url = f"sqlite:///{tmp_path / 'elsewhere.sqlite'}"
    Secret(value=url).save(block, overwrite=True)
    monkeypatch.delenv("EVENTPIPE_LEDGER", raising=False)
    assert run_ledger_url(None) is None  # neither: the data dir's file
    assert run_ledger_url(block) == url
    monkeypatch.setenv("EVENTPIPE_LEDGER", "postgresql+psycopg://u:p@h/db")
    assert run_ledger_url(block) == "postgresql+psycopg://u:p@h/db"  # the environment first
    monkeypatch.delenv("EVENTPIPE_LEDGER")
    with pytest.raises(ConfigError, match="no Prefect Secret block"):
        run_ledger_url(block + "-missing")
