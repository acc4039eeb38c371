"""Incremental work: a run redoes only what changed. Unchanged files and analytics are skipped
without a task run (and say so), and map/combine analytics reuse per-partition partial results
yet equal a full recompute."""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from eventpipe.core.keys import asset_key
from eventpipe.events.build import sighting_event
from eventpipe.ledger import Ledger
from eventpipe.orchestration.server import EmbeddedServer
from eventpipe.testing import land_file

PIPELINE = """
from pathlib import Path
import pandas as pd
from eventpipe import Pipeline

pipeline = Pipeline("{name}")
CALLS = Path("{calls}")


@pipeline.process
def cleaned(raw: pd.DataFrame) -> pd.DataFrame:
    return raw.dropna(subset=["amount"])


@pipeline.analytics
def revenue_by_day(cleaned: pd.DataFrame) -> pd.DataFrame:
    return cleaned.groupby("day", as_index=False).agg(
        orders=("amount", "count"), revenue=("amount", "sum")
    )


def merge_days(partials: pd.DataFrame) -> pd.DataFrame:
    return partials.groupby("day", as_index=False)[["orders", "revenue"]].sum()


@pipeline.analytics(combine=merge_days)
def revenue_by_day_mapped(cleaned: pd.DataFrame) -> pd.DataFrame:
    with CALLS.open("a") as calls:
        calls.write(str(len(cleaned)) + "\\n")
    return cleaned.groupby("day", as_index=False).agg(
        orders=("amount", "count"), revenue=("amount", "sum")
    )
"""


class Story:
    def __init__(self, root: Path) -> None:
        self.name = "i" + uuid.uuid4().hex[:10]
        self.inbox, self.data = root / "inbox", root / "data"
        self.calls = root / "calls.txt"
        self.spec_file = root / "pipeline.py"
        self.spec_file.write_text(PIPELINE.format(name=self.name, calls=self.calls))
        self.ledger = Ledger(self.data / "ledger.sqlite")

    def drop(self, name: str, content: str) -> None:
        land_file(self.ledger, self.name, self.inbox, name, textwrap.dedent(content).lstrip())

    def run(self) -> dict[str, Any]:
        from eventpipe.run.flow import materialize_pipeline

        summary: dict[str, Any] = materialize_pipeline(f"{self.spec_file}:pipeline", str(self.data))
        return summary

    def analytics(self, asset: str) -> pd.DataFrame:
        frame = pd.read_parquet(self.data / "analytics" / self.name / f"{asset}.parquet")
        return frame.sort_values("day", ignore_index=True)

    def mapped_calls(self) -> int:
        """How many partitions the map/combine step's function has been applied to so far."""
        return len(self.calls.read_text().splitlines()) if self.calls.exists() else 0

    def skipped_events(self) -> list[dict[str, Any]]:
        return self.ledger.events_named("eventpipe.asset.skipped")


def assert_mapped_equals_full(story: Story) -> None:
    pd.testing.assert_frame_equal(
        story.analytics("revenue_by_day_mapped"), story.analytics("revenue_by_day")
    )


def test_map_combine_analytics_equal_a_full_recompute_and_read_only_new_partitions(
    prefect_server: EmbeddedServer, tmp_path: Path
) -> None:
    story = Story(tmp_path)
    story.drop("a.csv", "day,amount\n2026-01-01,1\n2026-01-02,2\n")
    story.drop("b.csv", "day,amount\n2026-01-01,3\n")
    story.drop("c.csv", "day,amount\n2026-01-03,4\n2026-01-03,\n")
    story.run()
    assert_mapped_equals_full(story)
    assert story.mapped_calls() == 3
    assert story.analytics("revenue_by_day_mapped")["revenue"].tolist() == [4.0, 2.0, 4.0]

    # One new file and one changed file: the mapped step sees only those two partitions.
    story.drop("d.csv", "day,amount\n2026-01-02,10\n")
    story.drop("b.csv", "day,amount\n2026-01-01,30\n2026-01-04,5\n")
    story.run()
    assert_mapped_equals_full(story)
    assert story.mapped_calls() == 3 + 2
    assert story.analytics("revenue_by_day_mapped")["revenue"].tolist() == [31.0, 12.0, 4.0, 5.0]

    # The partial results are a cache: without them the step recomputes every partition.
    for bundle in (story.data / ".partials").rglob("*.parquet"):
        bundle.unlink()
    story.drop("e.csv", "day,amount\n2026-01-05,1\n")
    story.run()
    assert_mapped_equals_full(story)
    assert story.mapped_calls() == 5 + 5


def test_a_run_where_nothing_changed_skips_every_stage_without_running_it(
    prefect_server: EmbeddedServer, tmp_path: Path
) -> None:
    story = Story(tmp_path)
    story.drop("a.csv", "day,amount\n2026-01-01,1\n")
    story.drop("b.csv", "day,amount\n2026-01-02,2\n")
    first = story.run()
    assert first["processed"] == 2
    versions = {a.name + a.partition: a.version for a in story.ledger.assets(story.name)}
    before = len(story.skipped_events())

    def landed_again(row: Any) -> tuple[str, dict[str, Any]]:
        event = sighting_event("retry", row, asset_key(row.uri))
        assert event is not None
        return event

    story.ledger.requeue(story.name, landed_again, states=("done",))  # same bytes, same code
    again = story.run()

    assert (again["processed"], again["skipped"], again["assets_updated"]) == (0, 2, [])
    assert sorted(again["assets_skipped"]) == [
        "cleaned",
        "cleaned",
        "revenue_by_day",
        "revenue_by_day_mapped",
    ]
    skipped = story.skipped_events()[before:]
    assert len(skipped) == 4
    assert all(e["payload"]["reason"].startswith("unchanged") for e in skipped)
    assert story.mapped_calls() == 2  # the map/combine step did not run again
    assert {a.name + a.partition: a.version for a in story.ledger.assets(story.name)} == versions
    assert {r.state for r in story.ledger.files(story.name)} == {"done"}


@pytest.mark.parametrize(
    ("decorator", "message"),
    [
        ("@pipeline.analytics(combine=merge)\ndef two(cleaned, other): ...", "exactly one"),
        ("@pipeline.analytics(combine=merge)\ndef on_analytics(total): ...", "process step"),
    ],
)
def test_combine_needs_one_process_step_parameter(decorator: str, message: str) -> None:
    from eventpipe import Pipeline, PipelineDefinitionError

    pipeline = Pipeline("shape")

    @pipeline.process
    def cleaned(raw: pd.DataFrame) -> pd.DataFrame:
        return raw

    @pipeline.process
    def other(raw: pd.DataFrame) -> pd.DataFrame:
        return raw

    @pipeline.analytics
    def total(cleaned: pd.DataFrame) -> pd.DataFrame:
        return cleaned

    def merge(partials: pd.DataFrame) -> pd.DataFrame:
        return partials

    def define() -> None:
        exec(decorator, {"pipeline": pipeline, "merge": merge})
        pipeline.validate()

    with pytest.raises(PipelineDefinitionError, match=message):
        define()
