"""A ledger written by an earlier release (8eb1e99, kept in tests/fixtures) opens with today's
code: every file, event, asset, version and fetch state reads back, and work goes on in it."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from eventpipe.core.models import Landed
from eventpipe.ledger import Ledger

FIXTURE = Path(__file__).parent / "fixtures" / "ledger-8eb1e99.sqlite"


@pytest.fixture
def old_ledger(tmp_path: Path) -> Iterator[Ledger]:
    copy = tmp_path / "data" / "ledger.sqlite"
    copy.parent.mkdir()
    shutil.copyfile(FIXTURE, copy)
    ledger = Ledger.in_data_dir(copy.parent)
    yield ledger
    ledger.close()


def test_what_the_earlier_release_recorded_reads_back(old_ledger: Ledger) -> None:
    states = {f.relative: (f.state, f.reason) for f in old_ledger.files("sales")}
    assert states == {
        "done.csv": ("done", None),
        "pending.csv": ("landed", None),
        "failed.csv": ("failed", "ZeroDivisionError"),
    }
    assert old_ledger.pipelines() == ["sales"]
    unsent = [event_id for event_id, _, _ in old_ledger.unsent()]
    assert unsent == ["landed-2", "landed-3"]
    (asset,) = old_ledger.assets("sales")
    assert (asset.name, asset.version, asset.code_version) == ("total", "v1", "c1")
    (version,) = old_ledger.versions("sales", "total")
    assert version.sources == ["cleaned/done.csv"]
    assert old_ledger.fetch_state("sales", "orders") == {"etag": "abc"}


def test_work_goes_on_in_an_earlier_ledger(old_ledger: Ledger) -> None:
    content = b"a\n4\n"
    landed = Landed(
        uri="file:///inbox/new.csv",
        relative="new.csv",
        size=len(content),
        fingerprint=hashlib.sha256(content).hexdigest(),
        source="local",
        local_path="/inbox/new.csv",
    )
    outcome, _ = old_ledger.record_landed("sales", landed, lambda o, r: None)
    assert outcome == "new"
    claimed = {row.relative for row in old_ledger.claim_pending("sales", "run-2")}
    assert claimed == {"pending.csv", "new.csv"}


def test_the_upgrade_is_recorded_and_runs_once(tmp_path: Path) -> None:
    from sqlalchemy import create_engine, text

    from eventpipe.ledger import SCHEMA_VERSION

    copy = tmp_path / "ledger.sqlite"
    shutil.copyfile(FIXTURE, copy)
    for _ in range(2):  # opening it again applies nothing twice
        Ledger(copy).close()
    engine = create_engine(f"sqlite:///{copy}")
    with engine.connect() as db:
        versions = [r[0] for r in db.execute(text("SELECT version FROM schema_version"))]
        names = dict(db.execute(text("SELECT id, event FROM outbox")).all())
    engine.dispose()
    assert versions == list(range(1, SCHEMA_VERSION + 1))
    # The earlier events got their names in the new column: found by name like new ones.
    assert names == {f"landed-{i}": "eventpipe.file.landed" for i in (1, 2, 3)}
    ledger = Ledger(copy)
    try:
        assert len(ledger.events_named("eventpipe.file.landed")) == 3
    finally:
        ledger.close()


def test_a_ledger_newer_than_this_release_is_refused(tmp_path: Path) -> None:
    from sqlalchemy import create_engine, text

    from eventpipe.exceptions import ConfigError

    path = tmp_path / "ledger.sqlite"
    Ledger(path).close()
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as db:
        db.execute(text("INSERT INTO schema_version VALUES (999, 0)"))
    engine.dispose()
    with pytest.raises(ConfigError, match="schema version 999"):
        Ledger(path)
