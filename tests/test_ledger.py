"""The ledger's contract, on both backends (a real SQLite file; a real PostgreSQL database):
what happens to a file each time it is seen, the outbox that travels with it, claiming work
between concurrent runs and processes, and the asset catalog."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from eventpipe.core.models import Landed
from eventpipe.ledger import AssetRow, FileRow, FileState, Ledger
from eventpipe.testing import fresh_database

PIPELINE = "sales"


@pytest.fixture(params=["sqlite", "postgresql"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """Where a test's ledger lives: a SQLite file of its own, or a database of its own on the
    session's PostgreSQL."""
    if request.param == "sqlite":
        return tmp_path / "state" / "ledger.sqlite"
    return fresh_database(request.getfixturevalue("postgres_url"), "ledger")


@pytest.fixture
def ledger(where: Path | str) -> Iterator[Ledger]:
    ledger = Ledger(where)
    yield ledger
    ledger.close()


def landed(name: str, content: bytes) -> Landed:
    return Landed(
        uri=f"file:///inbox/{name}",
        relative=name,
        size=len(content),
        fingerprint=hashlib.sha256(content).hexdigest(),
        source="local",
        local_path=f"/inbox/{name}",
    )


def landed_event(outcome: str, row: FileRow) -> tuple[str, dict[str, Any]] | None:
    """Like the app: a landed event for work to do, nothing for unchanged or duplicate files."""
    if outcome in ("unchanged", "duplicate"):
        return None
    return str(uuid4()), {
        "event": "eventpipe.file.landed",
        "resource": {"prefect.resource.id": f"eventpipe.file.{row.id}"},
        "payload": {"outcome": outcome, "uri": row.uri, "generation": row.generation},
    }


def retry_event(row: FileRow) -> tuple[str, dict[str, Any]]:
    event = landed_event("retry", row)
    assert event is not None
    return event


def process(ledger: Ledger, run_id: str = "run-1", state: FileState = "done") -> list[FileRow]:
    """What a flow run does: claim everything pending and close each file."""
    claimed = ledger.claim_pending(PIPELINE, run_id)
    for row in claimed:
        ledger.finish(row.id, state)
    return claimed


# -- what a sighting means ---------------------------------------------------------------------


def test_a_file_seen_for_the_first_time_is_new_and_pending(ledger: Ledger) -> None:
    outcome, row = ledger.record_landed(PIPELINE, landed("orders.csv", b"a\n1\n"), landed_event)

    assert outcome == "new"
    assert row.state == "landed"
    assert row.uri == "file:///inbox/orders.csv"
    assert row.relative == "orders.csv"
    assert row.sha256 == hashlib.sha256(b"a\n1\n").hexdigest()
    assert row.size == 4
    assert row.source == "local"
    assert row.local_path == "/inbox/orders.csv"
    assert row.generation == 0
    assert ledger.counts(PIPELINE) == {"landed": 1}


def test_the_same_bytes_again_are_unchanged_and_queue_nothing(ledger: Ledger) -> None:
    ledger.record_landed(PIPELINE, landed("orders.csv", b"a\n1\n"), landed_event)
    process(ledger)

    outcome, row = ledger.record_landed(PIPELINE, landed("orders.csv", b"a\n1\n"), landed_event)

    assert outcome == "unchanged"
    assert row.state == "done"
    assert len(ledger.files(PIPELINE)) == 1
    assert len(ledger.events_for(row.id)) == 1  # only the first sighting's event


def test_an_unchanged_file_still_pending_is_not_queued_twice(ledger: Ledger) -> None:
    ledger.record_landed(PIPELINE, landed("orders.csv", b"a\n1\n"), landed_event)

    outcome, row = ledger.record_landed(PIPELINE, landed("orders.csv", b"a\n1\n"), landed_event)

    assert outcome == "unchanged"
    assert row.state == "landed"
    assert len(ledger.unsent()) == 1


def test_new_bytes_under_a_known_name_are_a_change(ledger: Ledger) -> None:
    _, first = ledger.record_landed(PIPELINE, landed("orders.csv", b"a\n1\n"), landed_event)
    process(ledger)

    outcome, row = ledger.record_landed(PIPELINE, landed("orders.csv", b"a\n1\n2\n"), landed_event)

    assert outcome == "changed"
    assert row.id != first.id
    assert row.state == "landed"
    assert [r.state for r in ledger.files(PIPELINE, uri=first.uri)] == ["done", "landed"]


def test_known_bytes_under_a_new_name_are_a_skipped_duplicate(ledger: Ledger) -> None:
    ledger.record_landed(PIPELINE, landed("orders.csv", b"a\n1\n"), landed_event)

    outcome, row = ledger.record_landed(
        PIPELINE, landed("orders (copy).csv", b"a\n1\n"), landed_event
    )

    assert outcome == "duplicate"
    assert row.state == "skipped"
    assert row.reason == "duplicate of file:///inbox/orders.csv"
    assert ledger.events_for(row.id) == []
    assert [r.relative for r in ledger.claim_pending(PIPELINE, "run-1")] == ["orders.csv"]


def test_the_same_bytes_in_another_pipeline_are_not_a_duplicate(ledger: Ledger) -> None:
    ledger.record_landed("marketing", landed("orders.csv", b"a\n1\n"), landed_event)

    outcome, _ = ledger.record_landed(PIPELINE, landed("copy.csv", b"a\n1\n"), landed_event)

    assert outcome == "new"


def test_the_same_bytes_after_a_failure_are_a_retry(ledger: Ledger) -> None:
    _, first = ledger.record_landed(PIPELINE, landed("orders.csv", b"a\n1\n"), landed_event)
    [claimed] = ledger.claim_pending(PIPELINE, "run-1")
    ledger.finish(claimed.id, "failed", reason="step 'orders' raised KeyError")

    outcome, row = ledger.record_landed(PIPELINE, landed("orders.csv", b"a\n1\n"), landed_event)

    assert outcome == "retry"
    assert row.id == first.id
    assert row.state == "landed"
    assert row.reason is None
    assert row.generation == 1
    assert [e["payload"]["outcome"] for e in ledger.events_for(row.id)] == ["new", "retry"]


def test_content_reverting_to_an_earlier_version_is_processed_again(ledger: Ledger) -> None:
    ledger.record_landed(PIPELINE, landed("orders.csv", b"version 1\n"), landed_event)
    process(ledger, "run-1")
    ledger.record_landed(PIPELINE, landed("orders.csv", b"version 2\n"), landed_event)
    process(ledger, "run-2")

    outcome, row = ledger.record_landed(
        PIPELINE, landed("orders.csv", b"version 1\n"), landed_event
    )

    assert outcome == "changed"
    assert row.state == "landed"
    assert row.sha256 == hashlib.sha256(b"version 1\n").hexdigest()
    assert [r.id for r in process(ledger, "run-3")] == [row.id]
    [current] = ledger.current_files(PIPELINE)
    assert current.sha256 == hashlib.sha256(b"version 1\n").hexdigest()


# -- the outbox travels with the file ----------------------------------------------------------


def test_the_landed_event_is_queued_with_the_file_and_sent_later(ledger: Ledger) -> None:
    _, row = ledger.record_landed(PIPELINE, landed("orders.csv", b"a\n1\n"), landed_event)

    [(event_id, body, file_id)] = ledger.unsent()
    assert file_id == row.id
    assert body["event"] == "eventpipe.file.landed"
    assert body["payload"]["uri"] == row.uri

    ledger.mark_sent([event_id])

    assert ledger.unsent() == []
    assert ledger.files(PIPELINE)[0].state == "sent"
    [sent] = ledger.events_for(row.id)
    assert sent["sent_at"] is not None
    assert [r.id for r in ledger.claim_pending(PIPELINE, "run-1")] == [row.id]


def test_an_acknowledgement_after_the_run_claimed_the_file_does_not_unclaim_it(
    ledger: Ledger,
) -> None:
    ledger.record_landed(PIPELINE, landed("orders.csv", b"a\n1\n"), landed_event)
    [(event_id, _, _)] = ledger.unsent()
    [claimed] = ledger.claim_pending(PIPELINE, "run-1")  # the sweep was faster than the ack

    ledger.mark_sent([event_id])

    assert ledger.files(PIPELINE)[0].state == "processing"
    assert ledger.claim_pending(PIPELINE, "run-2") == []
    ledger.finish(claimed.id, "done")
    assert ledger.files(PIPELINE)[0].state == "done"


def test_a_failing_event_builder_records_nothing(ledger: Ledger) -> None:
    def broken(outcome: str, row: FileRow) -> tuple[str, dict[str, Any]]:
        raise RuntimeError("cannot build the event")

    with pytest.raises(RuntimeError, match="cannot build the event"):
        ledger.record_landed(PIPELINE, landed("orders.csv", b"a\n1\n"), broken)

    assert ledger.files(PIPELINE) == []
    assert ledger.unsent() == []
    outcome, _ = ledger.record_landed(PIPELINE, landed("orders.csv", b"a\n1\n"), landed_event)
    assert outcome == "new"


def test_sending_a_non_landed_event_leaves_the_file_alone(ledger: Ledger) -> None:
    _, row = ledger.record_landed(PIPELINE, landed("orders.csv", b"a\n1\n"), lambda o, r: None)
    ledger.queue_event("note-1", {"event": "eventpipe.file.noted"}, row.id)

    ledger.mark_sent(["note-1", "no-such-event"])

    assert ledger.files(PIPELINE)[0].state == "landed"


def test_the_outbox_survives_a_restart(ledger: Ledger, where: Path | str) -> None:
    ledger.record_landed(PIPELINE, landed("orders.csv", b"a\n1\n"), landed_event)
    ledger.close()

    reopened = Ledger(where)
    try:
        assert len(reopened.unsent()) == 1
        assert reopened.counts(PIPELINE) == {"landed": 1}
    finally:
        reopened.close()


# -- claiming work -----------------------------------------------------------------------------


def test_concurrent_claims_never_share_a_file_and_together_take_all(where: Path | str) -> None:
    path = where
    setup = Ledger(path)
    for i in range(120):
        setup.record_landed(
            PIPELINE, landed(f"part-{i:03}.csv", f"row {i}\n".encode()), landed_event
        )
    setup.record_landed("other", landed("elsewhere.csv", b"x\n"), lambda o, r: None)
    expected = {r.id for r in setup.files(PIPELINE)}
    setup.close()

    start = threading.Barrier(2)
    claims: dict[str, list[int]] = {"run-a": [], "run-b": []}
    errors: list[BaseException] = []

    def worker(run_id: str) -> None:
        ledger = Ledger(path)  # each run has its own connection, as separate processes would
        try:
            start.wait()
            while batch := ledger.claim_pending(PIPELINE, run_id, limit=1):
                claims[run_id].extend(r.id for r in batch)
                assert all(r.state == "processing" and r.run_id == run_id for r in batch)
        except BaseException as exc:
            errors.append(exc)
        finally:
            ledger.close()

    threads = [threading.Thread(target=worker, args=(run_id,)) for run_id in claims]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)

    assert errors == []
    a, b = set(claims["run-a"]), set(claims["run-b"])
    assert len(a) == len(claims["run-a"])
    assert len(b) == len(claims["run-b"])
    assert a.isdisjoint(b)
    assert a | b == expected
    check = Ledger(path)
    try:
        owners = {r.id: r.run_id for r in check.files(PIPELINE)}
        assert all(owners[i] == "run-a" for i in a)
        assert all(owners[i] == "run-b" for i in b)
        assert check.counts("other") == {"landed": 1}
    finally:
        check.close()


def _claim_in_a_process(where: Path | str, run_id: str, go: Any, out: Any) -> None:
    """A separate OS process claiming one file at a time until none is left."""
    ledger = Ledger(where)
    taken: list[int] = []
    go.wait(60)
    while batch := ledger.claim_pending(PIPELINE, run_id, limit=1):
        taken.extend(r.id for r in batch)
        for row in batch:
            ledger.finish(row.id, "done")
    ledger.close()
    out.put((run_id, taken))


def _ack_in_a_process(where: Path | str, ids: list[str], go: Any, out: Any) -> None:
    """A separate OS process acknowledging every event, as a second sender would."""
    ledger = Ledger(where)
    go.wait(60)
    for event_id in ids:
        ledger.mark_sent([event_id])
    ledger.close()
    out.put("done")


def test_two_processes_claim_each_file_once(where: Path | str) -> None:
    setup = Ledger(where)
    for i in range(60):
        setup.record_landed(PIPELINE, landed(f"p-{i:02}.csv", f"{i}\n".encode()), landed_event)
    expected = {r.id for r in setup.files(PIPELINE)}
    setup.close()
    spawn = multiprocessing.get_context("spawn")  # fresh interpreters, as on two hosts
    go, out = spawn.Event(), spawn.Queue()
    procs = [
        spawn.Process(target=_claim_in_a_process, args=(where, run_id, go, out))
        for run_id in ("host-a", "host-b")
    ]
    for p in procs:
        p.start()
    go.set()
    results = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0

    a, b = results["host-a"], results["host-b"]
    assert len(a) + len(b) == len(expected)  # nothing claimed twice, within or across
    assert set(a) | set(b) == expected
    check = Ledger(where)
    try:
        assert check.counts(PIPELINE) == {"done": len(expected)}
        assert all(r.attempts == 1 for r in check.files(PIPELINE))
    finally:
        check.close()


def test_two_senders_acknowledge_each_event_once(where: Path | str) -> None:
    setup = Ledger(where)
    for i in range(40):
        setup.record_landed(PIPELINE, landed(f"e-{i:02}.csv", f"{i}\n".encode()), landed_event)
    ids = [event_id for event_id, _, _ in setup.unsent()]
    setup.close()
    spawn = multiprocessing.get_context("spawn")
    go, out = spawn.Event(), spawn.Queue()
    procs = [
        spawn.Process(target=_ack_in_a_process, args=(where, order, go, out))
        for order in (ids, ids[::-1])
    ]
    for p in procs:
        p.start()
    go.set()
    for _ in procs:
        assert out.get(timeout=120) == "done"
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0

    check = Ledger(where)
    try:
        assert check.unsent() == []
        assert check.counts(PIPELINE) == {"sent": 40}
        attempts = {
            event["id"]: event["attempts"]
            for row in check.files(PIPELINE)
            for event in check.outbox_entries(row.id)
        }
        assert set(attempts) == set(ids)
        assert set(attempts.values()) == {1}  # one acknowledgement counted per event
    finally:
        check.close()


def test_claims_follow_landing_order_and_respect_the_limit(ledger: Ledger) -> None:
    for name in ("c.csv", "a.csv", "b.csv"):
        ledger.record_landed(PIPELINE, landed(name, name.encode()), landed_event)

    first = ledger.claim_pending(PIPELINE, "run-1", limit=2)
    rest = ledger.claim_pending(PIPELINE, "run-2")

    assert [r.relative for r in first] == ["c.csv", "a.csv"]
    assert [r.relative for r in rest] == ["b.csv"]
    assert all(r.attempts == 1 for r in first + rest)
    assert ledger.claim_pending(PIPELINE, "run-3") == []


def test_finish_closes_a_file_and_queues_its_event_atomically(ledger: Ledger) -> None:
    ledger.record_landed(PIPELINE, landed("good.csv", b"a\n1\n"), lambda o, r: None)
    ledger.record_landed(PIPELINE, landed("bad.csv", b"\xff\xfe"), lambda o, r: None)
    good, bad = ledger.claim_pending(PIPELINE, "run-1")

    ledger.finish(good.id, "done", event=("done-1", {"event": "eventpipe.file.processed"}))
    ledger.finish(bad.id, "rejected", reason="not valid UTF-8 text")

    states = {r.relative: (r.state, r.reason) for r in ledger.files(PIPELINE)}
    assert states == {
        "good.csv": ("done", None),
        "bad.csv": ("rejected", "not valid UTF-8 text"),
    }
    assert [(i, b["event"], f) for i, b, f in ledger.unsent()] == [
        ("done-1", "eventpipe.file.processed", good.id)
    ]


def test_requeue_makes_failed_files_pending_again_with_an_event(ledger: Ledger) -> None:
    for name in ("failed.csv", "rejected.csv", "done.csv"):
        ledger.record_landed(PIPELINE, landed(name, name.encode()), lambda o, r: None)
    rows = {r.relative: r for r in ledger.claim_pending(PIPELINE, "run-1")}
    ledger.finish(rows["failed.csv"].id, "failed", reason="boom")
    ledger.finish(rows["rejected.csv"].id, "rejected", reason="no columns")
    ledger.finish(rows["done.csv"].id, "done")

    requeued = ledger.requeue(PIPELINE, retry_event)

    assert [r.relative for r in requeued] == ["failed.csv"]
    assert requeued[0].state == "landed"
    assert requeued[0].reason is None
    assert requeued[0].generation == 1
    assert [f for _, _, f in ledger.unsent()] == [requeued[0].id]

    again = ledger.requeue(PIPELINE, retry_event, states=("rejected",))

    assert [r.relative for r in again] == ["rejected.csv"]
    assert {r.relative for r in ledger.claim_pending(PIPELINE, "run-2")} == {
        "failed.csv",
        "rejected.csv",
    }


def test_reclaim_stale_returns_files_of_dead_runs_only(ledger: Ledger) -> None:
    for name in ("a.csv", "b.csv", "c.csv"):
        ledger.record_landed(PIPELINE, landed(name, name.encode()), lambda o, r: None)
    ledger.claim_pending(PIPELINE, "crashed-run", limit=2)
    ledger.claim_pending(PIPELINE, "live-run")

    assert ledger.reclaim_stale(PIPELINE, runs={"crashed-run"}) == 2
    assert ledger.counts(PIPELINE) == {"landed": 2, "processing": 1}
    assert ledger.reclaim_stale(PIPELINE, runs={"crashed-run", "unknown-run"}) == 0
    assert [r.relative for r in ledger.claim_pending(PIPELINE, "next-run")] == ["a.csv", "b.csv"]

    assert ledger.reclaim_stale(PIPELINE) == 3  # no live runs known: everything goes back
    assert ledger.counts(PIPELINE) == {"landed": 3}


def test_current_files_are_the_latest_processed_version_of_each_file(ledger: Ledger) -> None:
    ledger.record_landed(PIPELINE, landed("orders.csv", b"v1"), lambda o, r: None)
    ledger.record_landed(PIPELINE, landed("refunds.csv", b"r1"), lambda o, r: None)
    ledger.record_landed(PIPELINE, landed("broken.csv", b"oops"), lambda o, r: None)
    rows = {r.relative: r for r in ledger.claim_pending(PIPELINE, "run-1")}
    ledger.finish(rows["orders.csv"].id, "done")
    ledger.finish(rows["refunds.csv"].id, "done")
    ledger.finish(rows["broken.csv"].id, "failed")
    ledger.record_landed(PIPELINE, landed("orders.csv", b"v2"), lambda o, r: None)
    ledger.record_landed(PIPELINE, landed("copy.csv", b"r1"), lambda o, r: None)  # duplicate

    def current() -> dict[str, bytes]:
        by_sha = {hashlib.sha256(c).hexdigest(): c for c in (b"v1", b"v2", b"r1", b"oops")}
        return {r.relative: by_sha[r.sha256] for r in ledger.current_files(PIPELINE)}

    assert current() == {"orders.csv": b"v1", "refunds.csv": b"r1"}  # v2 not processed yet

    [v2] = ledger.claim_pending(PIPELINE, "run-2")
    ledger.finish(v2.id, "done")

    assert current() == {"orders.csv": b"v2", "refunds.csv": b"r1"}


# -- the asset catalog -------------------------------------------------------------------------


def asset(name: str, version: str, at: float, partition: str = "", rows: int = 10) -> AssetRow:
    return AssetRow(
        pipeline=PIPELINE,
        name=name,
        partition=partition,
        kind="process" if partition else "analytics",
        key=f"file:///data/{name}/{partition or 'all'}.parquet",
        version=version,
        path=f"/data/{name}/{partition or 'all'}.parquet",
        rows=rows,
        size=1000 + rows,
        mtime_ns=int(at * 1e9),
        code_version="c0ffee",
        input_fingerprint=f"inputs-{version}",
        updated_at=at,
    )


def test_publish_makes_a_version_current_and_remembers_every_version(ledger: Ledger) -> None:
    ledger.publish(asset("revenue", "v1", 100.0, rows=3), "/versions/v1.parquet", ["a"], "run-1")
    ledger.publish(asset("revenue", "v2", 200.0, rows=5), "/versions/v2.parquet", ["a", "b"], None)
    ledger.publish(
        asset("orders", "p1", 150.0, partition="a.csv"), "/versions/p1.parquet", [], None
    )

    assert ledger.asset(PIPELINE, "revenue") == asset("revenue", "v2", 200.0, rows=5)
    assert ledger.asset(PIPELINE, "orders", "a.csv") is not None
    assert ledger.asset(PIPELINE, "orders") is None
    assert [(a.name, a.partition, a.version) for a in ledger.assets(PIPELINE)] == [
        ("orders", "a.csv", "p1"),
        ("revenue", "", "v2"),
    ]
    assert [a.version for a in ledger.assets(PIPELINE, "revenue")] == ["v2"]
    assert ledger.assets("other") == []
    versions = ledger.versions(PIPELINE, "revenue")
    assert [(v.version, v.rows, v.sources, v.run_id, v.path) for v in versions] == [
        ("v1", 3, ["a"], "run-1", "/versions/v1.parquet"),
        ("v2", 5, ["a", "b"], None, "/versions/v2.parquet"),
    ]
    assert ledger.versions(PIPELINE, "orders", partition="a.csv")[0].version == "p1"
    assert ledger.versions(PIPELINE, "orders", partition="b.csv") == []
    assert ledger.pipelines() == [PIPELINE]


def test_republishing_an_old_version_makes_it_current_without_a_second_record(
    ledger: Ledger,
) -> None:
    ledger.publish(asset("revenue", "v1", 100.0), "/versions/v1.parquet", ["a"], "run-1")
    ledger.publish(asset("revenue", "v2", 200.0), "/versions/v2.parquet", ["a", "b"], "run-2")

    ledger.publish(asset("revenue", "v1", 300.0), "/versions/v1.parquet", ["a"], "run-3")

    assert ledger.asset(PIPELINE, "revenue").version == "v1"  # type: ignore[union-attr]
    versions = {v.version: v for v in ledger.versions(PIPELINE, "revenue")}
    assert sorted(versions) == ["v1", "v2"]
    assert versions["v1"].created_at == 100.0
    assert versions["v1"].current_at == 300.0
    assert versions["v1"].run_id == "run-3"


def test_a_run_is_on_its_way_while_an_announced_file_is_unclaimed(ledger: Ledger) -> None:
    from eventpipe.events.outbox import mark_wakes

    ledger.record_landed(PIPELINE, landed("a.csv", b"a\n1\n"), landed_event)
    assert not ledger.run_on_its_way(PIPELINE)  # landed, not announced: nothing woken yet
    ledger.mark_sent([event_id for event_id, _, _ in ledger.unsent()])
    assert ledger.run_on_its_way(PIPELINE)
    assert not ledger.run_on_its_way("other")

    # A file landing now wakes no second run: the woken one claims it too.
    ledger.record_landed(PIPELINE, landed("b.csv", b"a\n2\n"), landed_event)
    bodies = [
        {**body, "resource": {**body["resource"], "eventpipe.pipeline": PIPELINE}}
        for _, body, _ in ledger.unsent()
    ]
    assert "eventpipe.wake" not in mark_wakes(bodies, {PIPELINE})[-1]["resource"]
    assert mark_wakes(bodies)[-1]["resource"]["eventpipe.wake"] == "true"
    assert {r.relative for r in ledger.claim_pending(PIPELINE, "run-1")} == {"a.csv", "b.csv"}
    assert not ledger.run_on_its_way(PIPELINE)  # claimed: the next landing wakes a run

    ledger.record_landed(PIPELINE, landed("c.csv", b"a\n3\n"), landed_event)
    ledger.mark_sent([event_id for event_id, _, _ in ledger.unsent()])
    assert not ledger.run_on_its_way(PIPELINE, within=-1.0)  # announced too long ago: wake


def test_one_up_holds_a_pipeline_until_it_lets_go_or_is_no_longer_heard(ledger: Ledger) -> None:
    assert ledger.hold(PIPELINE, "host-a", 100, stale_after=30) is None
    other = ledger.hold(PIPELINE, "host-b", 200, stale_after=30)
    assert other is not None
    assert (other.pipeline, other.host, other.pid) == (PIPELINE, "host-a", 100)
    assert str(other) == "host host-a, pid 100"
    assert ledger.hold("another-pipeline", "host-b", 200, stale_after=30) is None  # per pipeline
    assert ledger.hold(PIPELINE, "host-a", 100, stale_after=30) is None  # the holder again
    assert ledger.beat(PIPELINE, "host-a", 100)
    assert not ledger.beat(PIPELINE, "host-b", 200)

    # Not heard for longer than stale_after: taken over; the old holder's beats then fail.
    assert ledger.hold(PIPELINE, "host-b", 200, stale_after=0) is None
    assert not ledger.beat(PIPELINE, "host-a", 100)
    holder = ledger.holder(PIPELINE)
    assert holder is not None
    assert (holder.host, holder.pid) == ("host-b", 200)

    ledger.let_go(PIPELINE, "host-a", 100)  # not the holder: changes nothing
    assert ledger.holder(PIPELINE) == holder
    ledger.let_go(PIPELINE, "host-b", 200)
    assert ledger.holder(PIPELINE) is None


def test_a_holder_on_this_host_whose_process_is_gone_is_taken_over_at_once(
    ledger: Ledger,
) -> None:
    host = socket.gethostname()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert ledger.hold(PIPELINE, host, gone.pid, stale_after=3600) is None
    alive = ledger.hold(PIPELINE, host, os.getpid(), stale_after=3600)
    assert alive is None
    holder = ledger.holder(PIPELINE)
    assert holder is not None
    assert holder.pid == os.getpid()
    # ... while a live process on this host keeps it
    other = ledger.hold(PIPELINE, host, gone.pid, stale_after=3600)
    assert other is not None
    assert other.pid == os.getpid()


def test_the_rows_of_a_runs_partitions_come_without_the_whole_catalog(ledger: Ledger) -> None:
    """A run looks up its own files' partitions (in chunks) and the partitions older code
    computed, not every row of a catalog that may hold 100,000."""
    from dataclasses import replace

    items = [
        (asset("orders", f"p{i}", 100.0, partition=f"f{i:04d}.csv"), f"/v/p{i}.parquet", [])
        for i in range(1200)
    ]
    ledger.publish_many(items, "run-1")
    old = replace(asset("orders", "old", 100.0, partition="f0007.csv"), code_version="0ld")
    ledger.publish(old, "/v/old.parquet", [], None)
    ledger.publish(asset("cleaned", "c", 100.0, partition="f0008.csv"), "/v/c.parquet", [], None)

    wanted = [f"f{i:04d}.csv" for i in range(0, 1200, 2)] + ["missing.csv"]  # more than a chunk
    found = ledger.assets_of(PIPELINE, wanted)
    assert sorted((a.name, a.partition) for a in found) == sorted(
        [("orders", p) for p in wanted[:-1]] + [("cleaned", "f0008.csv")]
    )
    assert ledger.outdated(PIPELINE, "orders", "c0ffee") == ["f0007.csv"]
    assert ledger.outdated(PIPELINE, "cleaned", "c0ffee") == []
    assert ledger.outdated("other", "orders", "c0ffee") == []
