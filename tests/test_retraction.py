"""Retraction: with ``on_delete = retract`` a file deleted from the inbox leaves the outputs
(its partitions removed, the analytics computed without it, its versions kept); dropping it
again restores it; a duplicate's deletion never touches its twin; deletions made while `up`
was down are found at start; ``eventpipe retract`` does the same explicitly in either mode."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from eventpipe.ledger import BY_COMMAND, DELETED, Ledger
from eventpipe.orchestration.server import EmbeddedServer
from eventpipe.testing import wait_for
from tests.loop_harness import Harness, running_loop
from tests.test_cli import eventpipe

A = "day,amount\n2026-01-01,10\n2026-01-02,5\n"
B = "day,amount\n2026-01-02,7\n"


@pytest.fixture
def loop(prefect_server: EmbeddedServer, tmp_path: Path) -> Iterator[Harness]:
    with running_loop(prefect_server, tmp_path, on_delete="retract") as harness:
        yield harness


def revenue(h: Harness) -> dict[str, float]:
    frame = h.analytics("revenue_by_day")
    return dict(zip(frame["day"], frame["amount"], strict=True))


def wait_revenue(h: Harness, expected: dict[str, float]) -> None:
    wait_for(lambda: revenue(h) == expected, 60, interval=0.2, what=f"revenue {expected}")


def test_a_deleted_file_leaves_the_outputs_and_dropping_it_again_restores_it(
    loop: Harness,
) -> None:
    loop.drop("a.csv", A)
    loop.drop("b.csv", B)
    loop.wait_file_state("a.csv", "done")
    loop.wait_file_state("b.csv", "done")
    wait_revenue(loop, {"2026-01-01": 10.0, "2026-01-02": 12.0})
    partition = loop.partition_path("a.csv")
    kept = loop.asset_version("cleaned", "a.csv")
    top_before = loop.asset_version("top_day")

    (loop.inbox / "a.csv").unlink()
    row = loop.wait_file_state("a.csv", "retracted")
    assert row.reason == DELETED
    wait_revenue(loop, {"2026-01-02": 7.0})
    assert not partition.exists()
    assert loop.asset_version("cleaned", "a.csv") is None
    assert loop.asset_version("cleaned", "b.csv") is not None
    # downstream of it too (computed after revenue_by_day, in the same run)
    wait_for(lambda: loop.asset_version("top_day") != top_before, 30, what="top_day again")
    # Its versions stay in the version store, as history.
    assert kept is not None
    assert (loop.data / "versions" / loop.name / "cleaned" / f"{kept}.parquet").exists()
    retracted = loop.wait_events(
        lambda found: len(found) == 1, "eventpipe.file.retracted", what="the retracted event"
    )
    event: dict[str, Any] = retracted[0]
    assert event["resource"]["prefect.resource.name"] == "a.csv"
    assert event["payload"]["reason"] == DELETED
    assert event["payload"]["partitions"] == [
        {"step": "cleaned", "partition": "a.csv", "version": kept}
    ]
    assert loop.events("eventpipe.file.retracting")

    # The same bytes dropped again: back in the outputs.
    loop.drop("a.csv", A)
    loop.wait_file_state("a.csv", "done")
    wait_revenue(loop, {"2026-01-01": 10.0, "2026-01-02": 12.0})
    assert loop.asset_version("cleaned", "a.csv") == kept


def test_deleting_a_duplicate_never_retracts_its_twin_and_a_twin_outlives_its_original(
    loop: Harness,
) -> None:
    loop.drop("a.csv", A)
    loop.wait_file_state("a.csv", "done")
    loop.drop("copy.csv", A)
    loop.drop("other.csv", A)
    assert (
        loop.wait_file_state("copy.csv", "skipped").reason == f"duplicate of {uri(loop, 'a.csv')}"
    )
    loop.wait_file_state("other.csv", "skipped")

    (loop.inbox / "copy.csv").unlink()
    loop.wait_file_state("copy.csv", "retracted")
    loop.wait_idle()
    assert loop.file("a.csv") is not None
    assert loop.wait_file_state("a.csv", "done")
    assert revenue(loop) == {"2026-01-01": 10.0, "2026-01-02": 5.0}

    # The original goes: its duplicate still in the inbox counts as a file of its own.
    (loop.inbox / "a.csv").unlink()
    loop.wait_file_state("a.csv", "retracted")
    loop.wait_file_state("other.csv", "done")
    wait_revenue(loop, {"2026-01-01": 10.0, "2026-01-02": 5.0})
    assert loop.partition_path("other.csv").exists()
    assert not loop.partition_path("a.csv").exists()


def uri(h: Harness, relative: str) -> str:
    row = h.file(relative)
    assert row is not None
    return row.uri


def test_deletions_while_up_was_down_are_found_at_start_and_the_last_file_empties_the_analytics(
    prefect_server: EmbeddedServer, tmp_path: Path
) -> None:
    with running_loop(prefect_server, tmp_path, on_delete="retract") as first:
        first.drop("a.csv", A)
        first.drop("b.csv", B)
        first.wait_file_state("a.csv", "done")
        first.wait_file_state("b.csv", "done")
        name = first.name
    (tmp_path / "inbox" / "a.csv").unlink()
    with running_loop(prefect_server, tmp_path, name=name, on_delete="retract") as loop:
        loop.wait_file_state("a.csv", "retracted")
        wait_revenue(loop, {"2026-01-02": 7.0})

        # The last file goes: the analytics have no data, so no current version either.
        (loop.inbox / "b.csv").unlink()
        loop.wait_file_state("b.csv", "retracted")
        wait_for(lambda: loop.asset_version("top_day") is None, 60, what="top_day removed too")
        assert loop.asset_version("revenue_by_day") is None
        assert not loop.analytics_path("revenue_by_day").exists()
        assert not loop.analytics_path("top_day").exists()


def test_with_on_delete_keep_a_deletion_changes_nothing_and_retract_takes_a_file_out(
    prefect_server: EmbeddedServer, tmp_path: Path
) -> None:
    with running_loop(prefect_server, tmp_path) as loop:  # on_delete = keep, the default
        loop.drop("a.csv", A)
        loop.drop("b.csv", B)
        loop.wait_file_state("a.csv", "done")
        loop.wait_file_state("b.csv", "done")
        wait_revenue(loop, {"2026-01-01": 10.0, "2026-01-02": 12.0})
        (loop.inbox / "a.csv").unlink()
        loop.drop("c.csv", "day,amount\n2026-01-03,1\n")  # a run happens meanwhile
        loop.wait_file_state("c.csv", "done")
        assert loop.wait_file_state("a.csv", "done")
        wait_revenue(loop, {"2026-01-01": 10.0, "2026-01-02": 12.0, "2026-01-03": 1.0})

        # Explicitly, by path in the inbox, with the file still there.
        said = eventpipe("retract", "b.csv", "--data", str(loop.data), cwd=tmp_path)
        assert said.returncode == 0, said.stdout + said.stderr
        assert f"b.csv ({loop.name}): retracting" in said.stdout
        assert (loop.inbox / "b.csv").exists()  # the file itself is left alone
        assert loop.wait_file_state("b.csv", "retracted").reason == BY_COMMAND
        wait_revenue(loop, {"2026-01-01": 10.0, "2026-01-02": 5.0, "2026-01-03": 1.0})
        unknown = eventpipe("retract", "nope.csv", "--data", str(loop.data), cwd=tmp_path)
        assert unknown.returncode == 2
        assert "never seen 'nope.csv'" in unknown.stderr
    # An explicit retraction stays: the file still in the inbox is not taken again at start.
    with running_loop(prefect_server, tmp_path, name=loop.name) as again:
        again.drop("d.csv", "day,amount\n2026-01-04,2\n")
        again.wait_file_state("d.csv", "done")
        again.wait_idle()
        assert again.wait_file_state("b.csv", "retracted")
        assert "2026-01-02" in revenue(again)
        assert revenue(again)["2026-01-02"] == 5.0


def test_a_ledger_retracts_the_newest_version_once_and_brings_back_twins(
    tmp_path: Path,
) -> None:
    from eventpipe.core.models import Landed
    from eventpipe.events.build import retraction_event, sighting_event

    ledger = Ledger(tmp_path / "ledger.sqlite")

    def land(name: str, content: bytes) -> None:
        path = tmp_path / name
        path.write_bytes(content)
        landed = Landed(
            uri=f"file://{path}",
            relative=name,
            size=len(content),
            fingerprint=__import__("hashlib").sha256(content).hexdigest(),
            source="local",
            local_path=str(path),
        )
        ledger.record_landed("p", landed, lambda o, r: sighting_event(o, r, "k"))

    land("a.csv", b"x\n1\n")
    land("twin.csv", b"x\n1\n")
    claimed = ledger.claim_pending("p", "run-1")
    ledger.finish_many([r.id for r in claimed], "done")
    os.unlink(tmp_path / "a.csv")
    row = ledger.retract("p", f"file://{tmp_path / 'a.csv'}", DELETED, retraction_event)
    assert row is not None
    assert row.state == "retracting"
    assert ledger.retract("p", row.uri, DELETED, retraction_event) is None  # once
    twin = [r for r in ledger.latest_files("p") if r.relative == "twin.csv"]
    assert [(r.state, r.reason) for r in twin] == [("landed", None)]
    assert [r.relative for r in ledger.retracting("p")] == ["a.csv"]
    # A run still finishing the file cannot undo the retraction.
    ledger.finish_many([row.id], "done")
    assert ledger.retracting("p")[0].state == "retracting"
    assert ledger.close_retraction(ledger.retracting("p")[0])
    assert ledger.retracting("p") == []
    ledger.close()
