"""The local loop end to end, on a real Prefect server with a real watched folder.

Each test tells one story: drop files, watch the analytics change (or not), read the events.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from eventpipe.core.keys import asset_key, file_uri
from eventpipe.intake.record import requeue_failed
from eventpipe.ledger import Ledger
from eventpipe.orchestration.server import EmbeddedServer
from eventpipe.testing import wait_for
from tests.loop_harness import Harness, running_loop
from tests.test_cli import eventpipe

DAY1 = """
    day,amount
    2026-01-01,10
    2026-01-01,5
    2026-01-02,7
"""
DAY2 = """
    day,amount
    2026-01-02,3
    2026-01-03,20
"""


@pytest.fixture
def loop(prefect_server: EmbeddedServer, tmp_path: Path) -> Iterator[Harness]:
    with running_loop(prefect_server, tmp_path) as harness:
        yield harness


def revenue(h: Harness) -> dict[str, float]:
    frame = h.analytics("revenue_by_day")
    return dict(zip(frame["day"], frame["amount"], strict=True))


def test_dropped_files_become_analytics_through_the_deployment_trigger(loop: Harness) -> None:
    loop.drop("day 1 #.csv", DAY1)
    loop.drop("day2.csv", DAY2)
    loop.wait_file_state("day 1 #.csv", "done")
    loop.wait_file_state("day2.csv", "done")
    loop.wait_idle()

    assert revenue(loop) == {"2026-01-01": 15.0, "2026-01-02": 10.0, "2026-01-03": 20.0}
    assert loop.analytics("top_day").to_dict("records") == [{"day": "2026-01-03", "amount": 20.0}]
    assert loop.partition_path("day 1 #.csv").exists()
    assert loop.partition_path("day2.csv").exists()

    # Every run came from the deployment's trigger and ran as that deployment's run.
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter

    def deployment_runs_completed() -> bool:
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(
                    id=DeploymentFilterId(any_=[loop.loop.deployment_id])
                ),
                flow_run_filter=FlowRunFilter(),
            )
        return bool(runs) and all(r.state is not None and r.state.is_completed() for r in runs)

    wait_for(deployment_runs_completed, 60, what="every triggered run to complete")

    # Lineage raw -> processed -> analytics is in the server's asset events.
    raw_key = asset_key(file_uri(loop.inbox / "day 1 #.csv"))
    processed_key = asset_key(file_uri(loop.partition_path("day 1 #.csv")))
    analytics_key = asset_key(file_uri(loop.analytics_path("revenue_by_day")))
    top_key = asset_key(file_uri(loop.analytics_path("top_day")))

    def materialized(events: list[dict]) -> bool:
        keys = {e["resource"]["prefect.resource.id"] for e in events}
        return {raw_key, processed_key, analytics_key, top_key} <= keys

    events = loop.wait_events(
        materialized, "prefect.asset.materialization.succeeded", what="asset materialization events"
    )
    by_key = {e["resource"]["prefect.resource.id"]: e for e in events}
    upstream = lambda key: {  # noqa: E731
        r["prefect.resource.id"]
        for r in by_key[key]["related"]
        if r.get("prefect.resource.role") == "asset"
    }
    assert raw_key in upstream(processed_key)
    assert processed_key in upstream(analytics_key)
    assert analytics_key in upstream(top_key)


def test_same_bytes_again_recompute_nothing_and_say_so(loop: Harness) -> None:
    loop.drop("a.csv", DAY1)
    loop.wait_file_state("a.csv", "done")
    loop.wait_idle()
    version = loop.asset_version("revenue_by_day")
    partition_version = loop.asset_version("cleaned", "a.csv")

    os.utime(loop.inbox / "a.csv")  # touched: same bytes
    loop.drop("a copy.csv", DAY1)  # the same bytes under another name

    row = loop.wait_file_state("a copy.csv", "skipped")
    assert "duplicate of" in (row.reason or "")
    skipped = loop.wait_events(
        lambda evs: (
            {"unchanged", "duplicate"}
            <= {e["payload"]["reason"].split(":")[0].split(" ")[0] for e in evs}
        ),
        "eventpipe.asset.skipped",
        what="skip events for the touch and the copy",
    )
    assert any(e["payload"]["asset"] == asset_key(file_uri(loop.inbox / "a.csv")) for e in skipped)
    assert loop.asset_version("revenue_by_day") == version
    assert loop.asset_version("cleaned", "a.csv") == partition_version
    assert loop.asset_version("cleaned", "a copy.csv") is None


def test_one_changed_file_recomputes_only_its_partition(loop: Harness) -> None:
    loop.drop("a.csv", DAY1)
    loop.drop("b.csv", DAY2)
    loop.wait_file_state("a.csv", "done")
    loop.wait_file_state("b.csv", "done")
    loop.wait_idle()
    a_version = loop.asset_version("cleaned", "a.csv")
    b_version = loop.asset_version("cleaned", "b.csv")
    analytics_version = loop.asset_version("revenue_by_day")
    a_mtime = loop.partition_path("a.csv").stat().st_mtime_ns

    loop.drop("b.csv", "day,amount\n2026-01-03,1\n")
    wait_for(
        lambda: loop.asset_version("cleaned", "b.csv") != b_version,
        60,
        what="b's partition to be recomputed",
    )
    loop.wait_idle()

    assert loop.asset_version("cleaned", "a.csv") == a_version
    assert loop.partition_path("a.csv").stat().st_mtime_ns == a_mtime
    assert loop.asset_version("revenue_by_day") != analytics_version
    assert revenue(loop) == {"2026-01-01": 15.0, "2026-01-02": 7.0, "2026-01-03": 1.0}

    # Back to b's first content: the cached partition comes back, no step code runs for it.
    loop.drop("b.csv", DAY2)
    wait_for(
        lambda: loop.asset_version("cleaned", "b.csv") == b_version,
        60,
        what="b's first version to be current again",
    )
    loop.wait_idle()
    assert loop.asset_version("revenue_by_day") == analytics_version


def test_editing_step_code_recomputes_what_depends_on_it(loop: Harness) -> None:
    loop.drop("a.csv", DAY1)
    loop.wait_file_state("a.csv", "done")
    loop.wait_idle()
    before = loop.ledger.asset(loop.name, "cleaned", "a.csv")
    assert before is not None

    time.sleep(1.1)  # a new mtime the code watcher can see
    loop.edit_pipeline(factor=2.0)

    def recomputed() -> bool:
        row = loop.ledger.asset(loop.name, "cleaned", "a.csv")
        return row is not None and row.code_version != before.code_version

    wait_for(recomputed, 60, what="the partition to be recomputed with the new code")
    wait_for(
        lambda: revenue(loop).get("2026-01-01") == 30.0,
        60,
        what="analytics computed from the new code",
    )


def test_deleted_or_overwritten_outputs_are_restored(loop: Harness) -> None:
    loop.drop("a.csv", DAY1)
    loop.wait_file_state("a.csv", "done")
    loop.wait_idle()
    expected = revenue(loop)
    partition_bytes = loop.partition_path("a.csv").read_bytes()

    loop.analytics_path("revenue_by_day").unlink()
    loop.partition_path("a.csv").write_bytes(b"not parquet any more")
    loop.loop.kick()

    wait_for(
        lambda: loop.analytics_path("revenue_by_day").exists(),
        60,
        what="the deleted analytics file to come back",
    )
    wait_for(
        lambda: loop.partition_path("a.csv").read_bytes() == partition_bytes,
        60,
        what="the overwritten partition to be restored",
    )
    assert revenue(loop) == expected


def test_a_failing_file_is_isolated_visible_and_retried(loop: Harness) -> None:
    loop.drop("good.csv", DAY1)
    loop.wait_file_state("good.csv", "done")
    loop.wait_idle()

    loop.flag.touch()  # the step now raises, on every attempt
    loop.drop("bad.csv", DAY2)
    row = loop.wait_file_state("bad.csv", "failed")
    assert "upstream service is down" in (row.reason or "")
    assert row.attempts == 1
    assert revenue(loop) == {"2026-01-01": 15.0, "2026-01-02": 7.0}  # good data still served

    loop.wait_events(
        lambda evs: any(e["resource"]["prefect.resource.name"] == "bad.csv" for e in evs),
        "eventpipe.file.failed",
        what="the failed-file event",
    )

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(
            task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="cleaned")),
        )
    failed = [t for t in tasks if t.state is not None and t.state.is_failed()]
    assert failed
    assert max(t.run_count for t in failed) == 2  # retries=1: two attempts

    loop.flag.unlink()
    assert requeue_failed(loop.ledger, loop.name) == 1
    loop.wait_file_state("bad.csv", "done")
    loop.wait_idle()
    assert revenue(loop) == {"2026-01-01": 15.0, "2026-01-02": 10.0, "2026-01-03": 20.0}


def test_files_already_in_the_inbox_and_nested_folders_are_taken(
    prefect_server: EmbeddedServer, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    (inbox / "2026" / "01").mkdir(parents=True)
    (inbox / "2026" / "01" / "données 日本.csv").write_text(DAY1.replace("    ", "").lstrip())
    with running_loop(prefect_server, tmp_path) as loop:
        loop.wait_file_state("2026/01/données 日本.csv", "done")
        nested = loop.inbox / "moved"
        staging = tmp_path / "staging"
        staging.mkdir()
        (staging / "x.csv").write_text("day,amount\n2026-02-01,1\n")
        shutil.move(staging, nested)  # a folder moved in: watchfiles reports only the folder
        loop.wait_file_state("moved/x.csv", "done")
        loop.wait_idle()
        assert revenue(loop)["2026-02-01"] == 1.0
        assert loop.partition_path("2026%2F01%2Fdonnées 日本.csv").exists()


def test_stopping_pauses_the_deployment_and_its_trigger(
    prefect_server: EmbeddedServer, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client

    with running_loop(prefect_server, tmp_path) as loop:
        deployment_id = loop.loop.deployment_id
        assert deployment_id is not None
        with get_client(sync_client=True) as client:
            assert not client.read_deployment(deployment_id).paused
    with get_client(sync_client=True) as client:
        assert client.read_deployment(deployment_id).paused
        automations = client.read_resource_related_automations(
            f"prefect.deployment.{deployment_id}"
        )
    assert automations
    assert not any(a.enabled for a in automations)  # no runs pile up while nothing runs them


def test_a_second_up_of_the_pipeline_on_its_ledger_is_refused_naming_the_first(
    prefect_server: EmbeddedServer, tmp_path: Path
) -> None:
    with running_loop(prefect_server, tmp_path) as loop:
        argv = ["--pipeline", f"{loop.pipeline_file}:pipeline", "--inbox", str(loop.inbox)]
        argv += ["--data", str(loop.data), "--api-url", prefect_server.api_url]
        second = eventpipe("up", *argv, cwd=tmp_path)
        said = second.stdout + second.stderr
        assert second.returncode != 0, said
        assert f"pipeline {loop.name!r} is already up on ledger" in said, said
        assert f"host {socket.gethostname()}, pid {os.getpid()}" in said, said
        assert "Traceback" not in said, said
        # the first goes on as before
        loop.drop("day1.csv", DAY1)
        loop.wait_file_state("day1.csv", "done")
        assert revenue(loop) == {"2026-01-01": 15.0, "2026-01-02": 7.0}
        assert loop.loop.ledger.holder(loop.name) is not None
    with Ledger.in_data_dir(loop.data) as ledger:  # stopped: it let go
        assert ledger.holder(loop.name) is None
