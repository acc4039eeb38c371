"""What a pipeline's outputs mean when steps fail: a pipeline with two process steps per file
and analytics that read both, through the running loop on a real server.

- A file that one step's ``expects`` refuses is rejected whole: no partition of any step.
- An analytics step that raises: the run ends Failed, the asset keeps its last good version
  (its current file untouched), lineage marks it failing with the exception, an
  ``eventpipe.asset.failed`` event says why, what reads it is stale (not computed); a run with
  the same inputs does not try it again; the next run whose inputs change does, and all is
  fresh again.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from eventpipe.ops.lineage import read_graph
from eventpipe.ops.webui import render_page
from eventpipe.orchestration.server import EmbeddedServer
from eventpipe.testing import wait_for
from tests.loop_harness import Harness, running_loop

TWO_STEPS = """
import os
import pandas as pd
from eventpipe import Pipeline, Schema

pipeline = Pipeline("{name}")


@pipeline.process(expects=Schema({{"day": None, "amount": "float64"}}))
def cleaned(raw: pd.DataFrame) -> pd.DataFrame:
    return raw.dropna(subset=["amount"])


@pipeline.process
def large(raw: pd.DataFrame) -> pd.DataFrame:
    return raw[raw["amount"] >= 100][["day"]]


@pipeline.analytics
def daily(cleaned: pd.DataFrame, large: pd.DataFrame) -> pd.DataFrame:
    totals = cleaned.groupby("day", as_index=False)["amount"].sum()
    counts = large.groupby("day").size().rename("large").reset_index()
    out = totals.merge(counts, on="day", how="left").fillna({{"large": 0}})
    return out.astype({{"large": "int64"}}).sort_values("day")


@pipeline.analytics
def checked(daily: pd.DataFrame) -> pd.DataFrame:
    if os.path.exists("{flag}"):
        raise RuntimeError("the books for " + str(daily["day"].max()) + " are closed")
    return daily


@pipeline.analytics
def report(checked: pd.DataFrame) -> pd.DataFrame:
    return checked.assign(share=checked["amount"] / checked["amount"].sum())
"""


@pytest.fixture
def loop(prefect_server: EmbeddedServer, tmp_path: Path) -> Iterator[Harness]:
    with running_loop(prefect_server, tmp_path, module=TWO_STEPS) as harness:
        yield harness


def health(h: Harness) -> dict[str, tuple[str, str | None]]:
    graph = read_graph(h.loop.pipeline, h.data)
    return {n.name: (n.health, n.verdict.why) for n in graph.nodes if n.kind != "raw"}


def run_states(h: Harness) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    deployment_id = h.loop.deployment_id
    assert deployment_id is not None
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
            sort=FlowRunSort.EXPECTED_START_TIME_ASC,
        )
    return [r.state_name or "" for r in runs]


def wait_runs_over(h: Harness, count: int) -> list[str]:
    """The states of the deployment's runs once ``count`` of them are final."""
    final = {"Completed", "Failed", "Crashed", "Cancelled"}

    def over() -> list[str] | None:
        states = run_states(h)
        done = [s for s in states if s in final]
        return states if len(done) >= count and len(done) == len(states) else None

    return wait_for(over, 90, interval=0.3, what=f"{count} run(s) to be over")


def test_two_process_steps_feed_analytics_and_a_refused_file_has_no_partition(
    loop: Harness,
) -> None:
    loop.drop("day1.csv", "day,amount\n2026-01-01,10\n2026-01-01,150\n2026-01-02,7\n")
    loop.drop("bad.csv", "day,amount\n2026-01-03,lots\n")
    loop.wait_file_state("day1.csv", "done")
    bad = loop.wait_file_state("bad.csv", "rejected")
    loop.wait_idle()

    assert "amount" in (bad.reason or "")
    for step in ("cleaned", "large"):
        assert loop.partition_path("day1.csv", step).exists(), step
        assert not loop.partition_path("bad.csv", step).exists(), step
    daily = loop.analytics("daily")
    assert daily.to_dict("list") == {
        "day": ["2026-01-01", "2026-01-02"],
        "amount": [160.0, 7.0],
        "large": [1, 0],
    }
    assert loop.analytics("report")["share"].round(4).tolist() == [0.9581, 0.0419]
    healthy = health(loop)
    assert {name: verdict[0] for name, verdict in healthy.items()} == {
        "cleaned": "fresh",
        "large": "fresh",
        "daily": "fresh",
        "checked": "fresh",
        "report": "fresh",
    }


def test_a_failing_analytics_step_keeps_its_last_good_version_until_inputs_change(
    loop: Harness,
) -> None:
    loop.drop("day1.csv", "day,amount\n2026-01-01,10\n")
    loop.wait_file_state("day1.csv", "done")
    assert set(wait_runs_over(loop, 1)) == {"Completed"}
    good = {name: loop.asset_version(name) for name in ("daily", "checked", "report")}
    current = loop.analytics_path("checked")
    before = current.stat()

    # The step raises: the run is Failed, the file itself is done.
    loop.flag.touch()
    loop.drop("day2.csv", "day,amount\n2026-01-02,30\n")
    loop.wait_file_state("day2.csv", "done")
    states = wait_runs_over(loop, 2)
    assert states[-1] == "Failed", states
    assert states.count("Failed") == 1, states
    assert loop.asset_version("daily") != good["daily"]  # upstream of the failure: updated
    assert loop.asset_version("checked") == good["checked"]  # its last good version stays
    assert loop.asset_version("report") == good["report"]  # downstream: not computed
    after = current.stat()
    assert (after.st_mtime_ns, after.st_ino) == (before.st_mtime_ns, before.st_ino)
    assert loop.analytics("checked")["day"].tolist() == ["2026-01-01"]
    verdicts = health(loop)
    assert verdicts["daily"] == ("fresh", None)
    state, why = verdicts["checked"]
    assert state == "failing"
    assert why is not None
    assert "RuntimeError" in why
    assert "the books for 2026-01-02 are closed" in why
    assert verdicts["report"] == ("stale", "input checked failing")
    page = render_page(read_graph(loop.loop.pipeline, loop.data), "http://127.0.0.1:4200")
    assert "the books for 2026-01-02 are closed" in page  # the UI page says why
    failed = loop.wait_events(lambda found: len(found) == 1, "eventpipe.asset.failed")
    event: dict[str, Any] = failed[0]
    assert event["resource"]["prefect.resource.name"] == "checked"
    assert "the books for 2026-01-02 are closed" in event["payload"]["reason"]
    assert event["payload"]["kept_version"] == good["checked"]

    # A run with the same inputs and code does not try it again (nor fail again).
    loop.loop.kick()
    states = wait_runs_over(loop, len(states) + 1)
    assert states[-1] == "Completed", states
    assert states.count("Failed") == 1, states
    assert health(loop)["checked"][0] == "failing"
    assert len(loop.events("eventpipe.asset.failed")) == 1

    # Fixed, and the inputs change: the next run computes it and what reads it.
    loop.flag.unlink()
    loop.drop("day3.csv", "day,amount\n2026-01-03,60\n")
    loop.wait_file_state("day3.csv", "done")
    states = wait_runs_over(loop, len(states) + 1)
    assert states[-1] == "Completed", states
    assert states.count("Failed") == 1, states
    assert loop.analytics("checked")["day"].tolist() == ["2026-01-01", "2026-01-02", "2026-01-03"]
    assert loop.analytics("report")["share"].round(2).tolist() == [0.1, 0.3, 0.6]
    assert {name: verdict[0] for name, verdict in health(loop).items()} == dict.fromkeys(
        ("cleaned", "large", "daily", "checked", "report"), "fresh"
    )
    assert loop.loop.ledger.failures(loop.name) == {}


HELPED = """
import pandas as pd
from eventpipe import Pipeline
import {helpers}

pipeline = Pipeline("{name}")


@pipeline.process
def cleaned(raw: pd.DataFrame) -> pd.DataFrame:
    return {helpers}.scaled(raw)


@pipeline.process
def large(raw: pd.DataFrame) -> pd.DataFrame:
    return raw[raw["amount"] >= 100][["day"]]


@pipeline.analytics
def total(cleaned: pd.DataFrame) -> pd.DataFrame:
    return cleaned[["amount"]].sum().to_frame("amount")


@pipeline.analytics
def count(large: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({{"large": [len(large)]}})
"""

HELPERS = """
FACTOR = 1


def scaled(frame):
    out = frame.copy()
    out["amount"] = out["amount"] * FACTOR
    return out
"""


def test_editing_a_helper_module_while_up_runs_recomputes_exactly_what_uses_it(
    prefect_server: EmbeddedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    helpers = "helpers_" + tmp_path.name.replace("-", "_")
    module = tmp_path / f"{helpers}.py"
    module.write_text(HELPERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    source = HELPED.replace("{helpers}", helpers)
    with running_loop(prefect_server, tmp_path, module=source) as loop:
        loop.drop("a.csv", "day,amount\n2026-01-01,10\n2026-01-01,150\n")
        loop.drop("b.csv", "day,amount\n2026-01-02,5\n")
        loop.wait_file_state("a.csv", "done")
        loop.wait_file_state("b.csv", "done")
        loop.wait_idle()
        wait_for(lambda: loop.analytics("total")["amount"].tolist() == [165], 30, what="total")
        before = {
            (step, name): (loop.asset_version(step, name), loop.partition_path(name, step).stat())
            for step in ("cleaned", "large")
            for name in ("a.csv", "b.csv")
        }
        count_version = loop.asset_version("count")

        # No file lands: the edit alone starts the run that applies it.
        module.write_text(HELPERS.replace("FACTOR = 1", "FACTOR = 10"))
        wait_for(lambda: loop.analytics("total")["amount"].tolist() == [1650], 60, what="total x10")
        loop.wait_idle()
        for (step, name), (version, stat) in before.items():
            now = loop.partition_path(name, step).stat()
            if step == "cleaned":  # uses the helper: every partition recomputed
                assert loop.asset_version(step, name) != version, (step, name)
            else:  # does not: not rewritten at all
                assert loop.asset_version(step, name) == version, (step, name)
                assert (now.st_mtime_ns, now.st_ino) == (stat.st_mtime_ns, stat.st_ino)
        assert loop.asset_version("count") == count_version
    sys.modules.pop(helpers, None)
