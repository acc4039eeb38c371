"""A burst of files: every file processed exactly once, by a handful of runs."""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from eventpipe.orchestration.server import EmbeddedServer
from eventpipe.testing import wait_for
from tests.loop_harness import running_loop

FILES = 1000


def staged(root: Path, count: int, day: Callable[[int], str]) -> Path:
    """``count`` one-row files (file ``i``: day ``day(i)``, amount ``i``), ready to move in."""
    staging = root / "staging"
    staging.mkdir()
    for i in range(count):
        (staging / f"burst-{i:04d}.csv").write_text(f"day,amount\n{day(i)},{i}\n")
    return staging


def move_all(staging: Path, inbox: Path) -> None:
    """Every staged file into the inbox at once, each complete when it appears."""
    for name in sorted(os.listdir(staging)):
        os.replace(staging / name, inbox / name)


@pytest.mark.slow
@pytest.mark.timeout(900)  # all done is waited for up to 600 s, then a stop on a busy server
def test_a_burst_of_files_is_processed_once_by_few_runs(
    prefect_server: EmbeddedServer, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    staging = staged(tmp_path, FILES, lambda i: "2026-02-01")
    with running_loop(prefect_server, tmp_path) as loop:
        started = time.monotonic()
        move_all(staging, loop.inbox)

        def all_done() -> bool:
            return loop.ledger.counts(loop.name).get("done", 0) == FILES

        wait_for(all_done, 600, interval=0.5, what=f"all {FILES} files to be done")
        seconds = time.monotonic() - started
        loop.wait_idle()

        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(
                    id=DeploymentFilterId(any_=[loop.loop.deployment_id])
                )
            )
        crashed = sum(r.state_name == "Crashed" for r in runs)
        print(f"{FILES} files: {len(runs)} runs ({crashed} Crashed), {seconds:.1f} s to all done")

        # Exactly once: one ledger row per file, each done, every amount counted once.
        rows = loop.ledger.files(loop.name)
        assert len(rows) == FILES
        assert all(r.state == "done" for r in rows)
        assert loop.analytics("revenue_by_day")["amount"].tolist() == [sum(range(FILES))]
        # Every file's partition was produced exactly once: one eventpipe.asset.updated each.
        # A run that lost the server mid-way (Crashed) has its files claimed again by the next
        # run, which finds the partitions it had written current and does not produce them
        # again.
        updated = Counter(
            event["payload"]["partition"]
            for event in loop.ledger.events_named("eventpipe.asset.updated")
            if event["payload"]["step"] == "cleaned"
        )
        assert len(updated) == FILES
        assert set(updated.values()) == {1}, updated.most_common(3)
        assert all(r.attempts == 1 for r in rows) or crashed, "a file claimed twice, no crash"
        assert len(runs) <= 20


READ_FILES = 200


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_readers_of_the_outputs_see_only_whole_versions_while_a_burst_lands(
    prefect_server: EmbeddedServer, tmp_path: Path
) -> None:
    staging = staged(tmp_path, READ_FILES, lambda i: f"2026-02-{1 + i % 28:02d}")
    with running_loop(prefect_server, tmp_path) as loop:
        current = loop.data / "analytics" / loop.name / "revenue_by_day.parquet"
        partition = loop.partition_path("burst-0000.csv")
        reads: dict[Path, list[str]] = {current: [], partition: []}
        unreadable: list[str] = []
        stop = threading.Event()

        def read_outputs() -> None:
            while not stop.is_set():
                for path, digests in reads.items():
                    try:
                        data = path.read_bytes()
                    except FileNotFoundError:
                        continue  # not published yet
                    try:
                        pq.read_table(io.BytesIO(data))
                    except Exception as exc:
                        unreadable.append(f"{path.name}: {exc!r}")
                    digests.append(hashlib.sha256(data).hexdigest())

        reader = threading.Thread(target=read_outputs, daemon=True)
        reader.start()
        # One file first, published alone, so that the reads see the analytics change however
        # the burst after it is split into runs (a slow machine may take it in one round).
        first = staging / "burst-0000.csv"
        os.replace(first, loop.inbox / first.name)
        wait_for(
            lambda: any(reads[current]),
            120,
            interval=0.1,
            what="the first file's analytics to be read",
        )
        move_all(staging, loop.inbox)
        wait_for(
            lambda: loop.ledger.counts(loop.name).get("done", 0) == READ_FILES,
            300,
            interval=0.2,
            what=f"all {READ_FILES} files to be done",
        )
        loop.wait_idle()
        stop.set()
        reader.join(10)

        assert not unreadable, unreadable[:5]
        assert loop.analytics("revenue_by_day")["amount"].sum() == sum(range(READ_FILES))
        versions = loop.data / "versions" / loop.name
        for path, step in ((current, "revenue_by_day"), (partition, "cleaned")):
            stored = (versions / step).iterdir()
            whole = {hashlib.sha256(v.read_bytes()).hexdigest() for v in stored}
            assert len(reads[path]) > 20, (path, len(reads[path]))  # it was read meanwhile
            assert set(reads[path]) <= whole, path  # every read was a version, whole
        assert len(set(reads[current])) > 1  # and the reads saw the analytics change


BATCH_PIPELINE = """
import os
import pandas as pd
from eventpipe import Pipeline, Schema

pipeline = Pipeline("{name}")


@pipeline.process(
    retries=1, retry_delay_seconds=0, expects=Schema({{"day": None, "amount": "float64"}})
)
def cleaned(raw: pd.DataFrame) -> pd.DataFrame:
    amount = raw["amount"].astype(float)
    if (amount < 0).any():
        raise RuntimeError("negative amount")
    if (amount == 13).any() and os.path.exists("{flag}"):
        os.unlink("{flag}")  # fails once, then works
        raise RuntimeError("flaky: failed once")
    return raw.assign(amount=amount)


@pipeline.analytics
def revenue_by_day(cleaned: pd.DataFrame) -> pd.DataFrame:
    return cleaned.groupby("day", as_index=False)["amount"].sum()
"""


def test_each_file_of_a_batch_keeps_its_own_fate(
    prefect_server: EmbeddedServer, tmp_path: Path
) -> None:
    """Twelve files in the inbox when `up` starts go through batches (fewer task runs than
    files); a file rejected, one failing on every attempt and one failing once fare as they
    would alone, and every partition's materialization names its own raw file only."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterId,
        TaskRunFilter,
        TaskRunFilterName,
    )

    from eventpipe.core.keys import asset_key, file_uri

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    good = [f"good-{i:02d}.csv" for i in range(9)]
    for i, name in enumerate(good):
        (inbox / name).write_text(f"day,amount\n2026-03-01,{i + 1}\n")
    (inbox / "bad.csv").write_text("day,amount\n2026-03-01,lots\n")
    (inbox / "negative.csv").write_text("day,amount\n2026-03-01,-1\n")
    (inbox / "flaky.csv").write_text("day,amount\n2026-03-01,13\n")
    (tmp_path / "service-down").touch()  # the flag the flaky file's first attempt removes
    with running_loop(prefect_server, tmp_path, module=BATCH_PIPELINE) as loop:
        for name in [*good, "flaky.csv"]:
            loop.wait_file_state(name, "done", "failed", "rejected", timeout=120)
        bad = loop.wait_file_state("bad.csv", "rejected")
        negative = loop.wait_file_state("negative.csv", "failed")
        loop.wait_idle()

        assert "amount" in (bad.reason or "")
        assert "float64" in (bad.reason or "")
        assert (loop.data / "quarantine" / loop.name / "bad.csv").exists()
        assert not (inbox / "bad.csv").exists()
        assert negative.reason == "negative amount"
        assert loop.analytics("revenue_by_day")["amount"].tolist() == [sum(range(1, 10)) + 13]

        # One asset.updated per partition that landed (the flaky file's included), no more.
        updated = Counter(
            e["payload"]["partition"]
            for e in loop.ledger.events_named("eventpipe.asset.updated")
            if e["payload"]["step"] == "cleaned"
        )
        assert sorted(updated) == sorted(f"{n}" for n in [*good, "flaky.csv"]), updated
        assert set(updated.values()) == {1}

        # The files went through batches: fewer step task runs than files; the two that
        # failed in their batch were tried again alone.
        def step_task_runs() -> tuple[list[str], list[str]] | None:
            # Task runs reach the server through its event pipeline: a few seconds late.
            with get_client(sync_client=True) as client:
                flow_runs = client.read_flow_runs(
                    deployment_filter=DeploymentFilter(
                        id=DeploymentFilterId(any_=[loop.loop.deployment_id])
                    )
                )
                tasks = client.read_task_runs(
                    flow_run_filter=FlowRunFilter(
                        id=FlowRunFilterId(any_=[r.id for r in flow_runs])
                    ),
                    task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="cleaned")),
                )
            batched = [t.name for t in tasks if "(batch)" in t.name]
            alone = [t.name for t in tasks if "(batch)" not in t.name]
            return (batched, alone) if batched and len(alone) >= 2 else None

        batched, alone = wait_for(step_task_runs, 60, 0.5, what="the batch and one-file tasks")
        assert len(batched) + len(alone) < len(good), (batched, alone)
        assert len(alone) == 2, alone  # negative.csv and flaky.csv

        # Each partition's materialization relates its own raw file, and no other.
        def materialized(events: list[dict]) -> bool:
            return len({e["resource"]["prefect.resource.id"] for e in events}) >= len(good) + 1

        events = loop.wait_events(
            materialized,
            "prefect.asset.materialization.succeeded",
            what="the partitions' materialization events",
        )
        for name in [*good, "flaky.csv"]:
            key = asset_key(file_uri(loop.partition_path(name)))
            (event,) = [e for e in events if e["resource"]["prefect.resource.id"] == key]
            upstream = {
                r["prefect.resource.id"]
                for r in event["related"]
                if r.get("prefect.resource.role") == "asset"
            }
            assert upstream == {asset_key(file_uri(inbox / name))}, (name, upstream)
