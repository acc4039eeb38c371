"""Partition parallelism on Dask: with ``task_runner="dask"`` the files' process steps
run in Dask worker processes, and the run's outcome (outputs, versions, cache, rejections,
failures, events) is the one the default threads give."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from eventpipe.core.keys import asset_key, file_uri
from eventpipe.exceptions import ConfigError
from eventpipe.ledger import Ledger
from eventpipe.orchestration.server import EmbeddedServer
from eventpipe.run.dask import LocalDask
from eventpipe.settings import check_task_runner
from eventpipe.testing import drop_file, eventpipe_up, land_file, read_events, wait_for

pytestmark = pytest.mark.slow

PIPELINE = """
import os
import pandas as pd
from eventpipe import Pipeline

pipeline = Pipeline("{name}")


@pipeline.process
def cleaned(raw: pd.DataFrame) -> pd.DataFrame:
    if (raw["amount"] < 0).any():
        raise ValueError("negative amount")
    return raw.assign(pid=os.getpid())


@pipeline.analytics
def revenue_by_day(cleaned: pd.DataFrame) -> pd.DataFrame:
    return cleaned.groupby("day", as_index=False)["amount"].sum()
"""

FILES = {
    "a.csv": "day,amount\n2026-01-01,1\n2026-01-02,2\n",
    "b.csv": "day,amount\n2026-01-01,3\n",
    "c.csv": "day,amount\n2026-01-03,4\n",
    "sub/d.csv": "day,amount\n2026-01-02,10\n",
    "bad.csv": "day,amount\n2026-01-04,-1\n",  # the step raises: failed
    "notes.txt": "not a table\n",  # unsupported type: rejected
}


class Run:
    def __init__(self, root: Path, name: str) -> None:
        self.name = name
        self.inbox, self.data = root / "inbox", root / "data"
        root.mkdir(parents=True)
        self.spec_file = root / "pipeline.py"
        self.spec_file.write_text(PIPELINE.format(name=name))
        self.ledger = Ledger(self.data / "ledger.sqlite")

    def drop_all(self) -> None:
        for relative, content in FILES.items():
            land_file(self.ledger, self.name, self.inbox, relative, content)

    def run(self, task_runner: str) -> dict[str, Any]:
        from eventpipe.run.flow import materialize_pipeline

        materialize_pipeline(
            f"{self.spec_file}:pipeline",
            str(self.data),
            task_runner=task_runner,
            return_state=True,  # Failed when a file failed: the summary is in the event
        )
        summary: dict[str, Any] = self.outbox("eventpipe.pipeline.completed")[-1]["payload"]
        return summary

    def states(self) -> dict[str, str]:
        return {r.relative: r.state for r in self.ledger.files(self.name)}

    def partitions(self) -> pd.DataFrame:
        root = self.data / "processed" / self.name / "cleaned"
        frames = [pd.read_parquet(p) for p in sorted(root.glob("*.parquet"))]
        return pd.concat(frames, ignore_index=True)

    def analytics(self) -> pd.DataFrame:
        frame = pd.read_parquet(self.data / "analytics" / self.name / "revenue_by_day.parquet")
        return frame.sort_values("day", ignore_index=True)

    def outbox(self, name: str) -> list[dict[str, Any]]:
        return self.ledger.events_named(name)


def test_files_processed_on_a_dask_cluster_give_the_outcome_of_threads(
    prefect_server: EmbeddedServer, tmp_path: Path
) -> None:
    threads = Run(tmp_path / "threads", "t" + uuid.uuid4().hex[:10])
    dask = Run(tmp_path / "dask", "d" + uuid.uuid4().hex[:10])
    threads.drop_all()
    dask.drop_all()

    by_threads = threads.run("threads")
    cluster = LocalDask(f"{dask.spec_file}:pipeline", workers=2)
    address = cluster.start()
    try:
        by_dask = dask.run(address)

        # The step code ran in the worker processes, not here.
        pids = set(dask.partitions()["pid"])
        assert os.getpid() not in pids
        assert set(threads.partitions()["pid"]) == {os.getpid()}

        # Same outcome, file by file: processed, failed (the step raised), rejected.
        for key in ("processed", "skipped", "rejected", "failed"):
            assert by_dask[key] == by_threads[key], (key, by_dask, by_threads)
        assert (by_dask["processed"], by_dask["failed"], by_dask["rejected"]) == (4, 1, 1)
        assert dask.states() == threads.states()
        assert dask.states()["bad.csv"] == "failed"
        assert dask.states()["notes.txt"] == "rejected"
        assert (dask.data / "quarantine" / dask.name / "notes.txt").exists()
        pd.testing.assert_frame_equal(dask.analytics(), threads.analytics())
        assert dask.analytics()["amount"].tolist() == [4, 12, 4]

        failed = dask.outbox("eventpipe.file.failed")
        assert [e["payload"]["reason"] for e in failed] == ["negative amount"]
        updated = {
            e["resource"]["prefect.resource.name"] for e in dask.outbox("eventpipe.asset.updated")
        }
        assert {"cleaned/a.csv", "cleaned/sub%2Fd.csv", "revenue_by_day"} <= updated

        # The worker processes told the server about the partitions they materialized.
        key = asset_key(file_uri(dask.data / "processed" / dask.name / "cleaned" / "a.csv.parquet"))

        def materialized() -> bool:
            events = read_events(
                prefect_server.api_url, ["prefect.asset.materialization.succeeded"], [key]
            )
            return bool(events)

        wait_for(materialized, 60, 0.5, what="the partition's materialization event")

        # The same bytes again: nothing to process.
        dask.drop_all()
        again = dask.run(address)
        assert again["processed"] == 0, again
    finally:
        cluster.close()


def test_up_with_the_dask_task_runner_processes_dropped_files_on_its_cluster(
    prefect_server: EmbeddedServer, tmp_path: Path
) -> None:
    name = "u" + uuid.uuid4().hex[:10]
    (tmp_path / "pipeline.py").write_text(PIPELINE.format(name=name))
    up = eventpipe_up(
        "--pipeline",
        "pipeline.py:pipeline",
        "--task-runner",
        "dask",
        root=tmp_path,
        api_url=prefect_server.api_url,
    )
    try:
        assert "dask cluster tcp://127.0.0.1:" in up.output()
        for relative in ("a.csv", "b.csv", "sub/d.csv"):
            drop_file(tmp_path / "inbox", relative, FILES[relative])
        target = tmp_path / "data" / "analytics" / name / "revenue_by_day.parquet"

        def revenue() -> list[int] | None:
            if not target.exists():
                return None
            days = pd.read_parquet(target).sort_values("day")["amount"].tolist()
            return days if sum(days) == 16 else None

        assert wait_for(revenue, 120, 0.5, what="analytics of the three files") == [4, 12]
        root = tmp_path / "data" / "processed" / name / "cleaned"
        pids = {int(p) for f in root.glob("*.parquet") for p in pd.read_parquet(f)["pid"]}
        assert up.proc is not None
        assert up.proc.pid not in pids  # the step code ran in the cluster's workers
        assert up.stop() == 0
        assert "Traceback" not in up.output()
    finally:
        up.stop(timeout=30)


def test_an_unknown_task_runner_is_refused_with_what_to_use() -> None:
    with pytest.raises(ConfigError, match="'threads', 'dask' or the address"):
        check_task_runner("ray")
    assert check_task_runner("tcp://127.0.0.1:8786") == "tcp://127.0.0.1:8786"
