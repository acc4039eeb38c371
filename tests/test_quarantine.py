"""Bad input gets a clear reason, an event and a place in quarantine; the rest keeps flowing."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from eventpipe.server import EmbeddedServer
from eventpipe.testing import drop_file
from tests.loop_harness import Harness, running_loop

GOOD = "day,amount\n2026-01-01,10\n"


@pytest.fixture
def loop(prefect_server: EmbeddedServer, tmp_path: Path) -> Iterator[Harness]:
    with running_loop(prefect_server, tmp_path) as harness:
        yield harness


def quarantined(h: Harness, relative: str) -> tuple[Path, dict[str, str]]:
    target = h.data / "quarantine" / h.name / relative
    reason = json.loads(target.with_name(target.name + ".reason.json").read_text())
    return target, reason


def test_bad_files_are_quarantined_with_reasons_and_good_ones_flow(
    loop: Harness, tmp_path: Path
) -> None:
    outside = tmp_path / "secret.csv"
    outside.write_text("day,amount\n2026-01-01,999\n")
    bad: dict[str, str | bytes] = {
        "empty.csv": "",
        "garbage.csv": b"\x00\x01\x02\xff\xfe binary",
        "broken.json": '{"day": "2026-01-01", "amount": ',
        "notes.txt": "not data",
    }
    for name, content in bad.items():
        drop_file(loop.inbox, name, content)
    os.symlink(outside, loop.inbox / "link.csv")
    loop.drop("good.csv", GOOD)

    loop.wait_file_state("good.csv", "done")
    expected = {
        "empty.csv": "empty",
        "garbage.csv": "",
        "broken.json": "cannot parse",
        "notes.txt": "unsupported file type",
        "link.csv": "symlink points outside the inbox",
    }
    for name, words in expected.items():
        row = loop.wait_file_state(name, "rejected")
        assert words in (row.reason or ""), (name, row.reason)
        target, reason = quarantined(loop, name)
        assert target.exists() or target.is_symlink()
        assert reason["reason"] == row.reason
        assert not (loop.inbox / name).exists()  # moved out of the inbox, not copied
    assert outside.read_text().endswith("999\n")  # the link's target was never touched
    assert loop.analytics("revenue_by_day")["amount"].tolist() == [10.0]

    events = loop.wait_events(
        lambda evs: len({e["resource"]["prefect.resource.name"] for e in evs}) >= 5,
        "eventpipe.file.rejected",
        what="a rejected event per bad file",
    )
    assert {e["resource"]["prefect.resource.name"] for e in events} >= set(expected)
