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
