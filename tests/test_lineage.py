"""`eventpipe lineage`: the health rules on tiny rows, the four formats, and a real loop's graph."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from eventpipe import cli
from eventpipe.cli import app
from eventpipe.core.models import Landed
from eventpipe.ledger import AssetRow, FileRow, Ledger
from eventpipe.ops.formats import to_dict, to_dot, to_mermaid
from eventpipe.ops.lineage import (
    Graph,
    Upstream,
    Verdict,
    build_graph,
    failing_files,
    judge,
    last_run,
)
from eventpipe.orchestration.server import EmbeddedServer
from eventpipe.pipeline import Pipeline
from tests.loop_harness import Harness, running_loop

NOW = 1_800_000_000.0
HOUR = 3600.0
HOSTILE = 'q"uote <script>&amp; #35; `tick` back\\N [x]{y}|z\nline.csv'


def file_row(
    name: str,
    state: str = "done",
    updated_at: float = NOW - HOUR,
    run_id: str | None = "run-1",
    reason: str | None = None,
) -> FileRow:
    return FileRow(
        id=abs(hash(name)) % 10_000,
        pipeline="sales",
        uri=f"file:///inbox/{name}",
        relative=name,
        sha256="ab" * 32,
        size=10,
        source="folder",
        local_path=f"/inbox/{name}",
        state=state,  # type: ignore[arg-type]
        generation=0,
        seen_at=updated_at,
        updated_at=updated_at,
        run_id=run_id,
        reason=reason,
        attempts=1,
    )


def asset_row(
    name: str, updated_at: float, kind: str = "analytics", partition: str = ""
) -> AssetRow:
    return AssetRow(
        pipeline="sales",
        name=name,
        partition=partition,
        kind=kind,
        key=f"file:///data/{name}/{partition}",
        version=(name + partition).encode().hex()[:16].ljust(16, "0"),
        path=f"/data/{name}",
        rows=3,
        size=100,
        mtime_ns=0,
        code_version="c",
        input_fingerprint="f",
        updated_at=updated_at,
    )


def sales_pipeline() -> Pipeline:
    pipeline = Pipeline("sales")

    @pipeline.process
    def cleaned(raw: pd.DataFrame) -> pd.DataFrame:
        return raw

    @pipeline.analytics
    def revenue_by_day(cleaned: pd.DataFrame) -> pd.DataFrame:
        return cleaned

    @pipeline.analytics
    def top_day(revenue_by_day: pd.DataFrame) -> pd.DataFrame:
        return revenue_by_day

    return pipeline


def built(files: list[FileRow], **kwargs: Any) -> dict[str, str]:
    """Health by node name of the sales graph, every asset built an hour ago in that order."""
    assets = [
        *(asset_row("cleaned", NOW - HOUR, "processed", f.relative) for f in files),
        asset_row("revenue_by_day", NOW - HOUR + 1),
        asset_row("top_day", NOW - HOUR + 2),
        *kwargs.pop("assets", []),
    ]
    graph = build_graph(sales_pipeline(), files, assets, data=Path("/data"), now=NOW, **kwargs)
    return {n.name: n.health for n in graph.nodes}


# -- health rules ------------------------------------------------------------------------------


def test_everything_built_after_its_files_is_fresh() -> None:
    health = built([file_row("a.csv"), file_row("b.csv")], stale_minutes=0)

    assert health == {
        "a.csv": "fresh",
        "b.csv": "fresh",
        "cleaned": "fresh",
        "revenue_by_day": "fresh",
        "top_day": "fresh",
    }


def test_a_failed_file_makes_its_node_and_step_failing_and_what_they_feed_stale() -> None:
    failed = file_row("b.csv", "failed", NOW - 60, reason="upstream down")

    health = built([file_row("a.csv"), failed])

    assert health["b.csv"] == "failing"
    assert health["a.csv"] == "fresh"
    assert health["cleaned"] == "failing"
    assert {health[n] for n in ("revenue_by_day", "top_day")} == {"stale"}


def test_a_rejected_file_marks_only_its_own_node() -> None:
    rejected = file_row("b.csv", "rejected", NOW - 60, run_id=None, reason="not UTF-8")

    health = built([file_row("a.csv"), rejected])

    assert health["b.csv"] == "failing"
    assert {health[n] for n in ("a.csv", "cleaned", "revenue_by_day", "top_day")} == {"fresh"}


def test_a_rejection_counts_only_in_the_last_run_or_at_landing_since_it() -> None:
    old = file_row("old.csv", "rejected", NOW - 300, run_id="run-1", reason="missing columns")
    recent = file_row("new.csv", "rejected", NOW - 100, run_id="run-2", reason="not UTF-8")
    done = file_row("ok.csv", "done", NOW - 90, run_id="run-2")
    at_landing = file_row("x.exe", "rejected", NOW - 50, run_id=None, reason="unsupported")
    before_run = file_row("y.exe", "rejected", NOW - 200, run_id=None, reason="unsupported")

    assert last_run([old, recent, done, at_landing]) == ("run-2", NOW - 90)
    assert last_run([at_landing]) == (None, float("-inf"))
    rows = [old, recent, done, at_landing, before_run]
    assert [f.relative for f in failing_files(rows)] == ["new.csv", "x.exe"]
    # Once a later run went through, the rejections are history.
    later = file_row("later.csv", "done", NOW - 10, run_id="run-3")
    assert failing_files([*rows, later]) == []


def test_an_old_asset_with_a_newer_pending_file_is_stale_only_past_the_threshold() -> None:
    pending = file_row("c.csv", "sent", NOW - 120, run_id=None)
    built_at = NOW - 600

    assert judge(built_at, now=NOW, stale_minutes=5, files=[pending]).health == "stale"
    assert judge(built_at, now=NOW, stale_minutes=60, files=[pending]).health == "fresh"
    # A file that was pending before the last update, or is done, does not make it stale.
    assert judge(NOW - 60, now=NOW, stale_minutes=0, files=[pending]).health == "fresh"
    done = file_row("c.csv", "done", NOW - 120)
    assert judge(built_at, now=NOW, stale_minutes=0, files=[done]).health == "fresh"
    verdict = judge(built_at, now=NOW, stale_minutes=0, files=[pending])
    assert verdict.why == "1 newer file not in it yet and last updated 10 min ago"


def test_an_input_updated_after_it_or_not_current_makes_an_asset_stale() -> None:
    newer = Upstream("revenue_by_day", NOW - 10, "fresh")
    older = Upstream("revenue_by_day", NOW - 100, "fresh")

    assert judge(NOW - 50, now=NOW, stale_minutes=60, inputs=[newer]).health == "stale"
    assert judge(NOW - 50, now=NOW, stale_minutes=60, inputs=[older]).health == "fresh"
    lagging = Upstream("revenue_by_day", NOW - 100, "stale")
    assert judge(NOW - 50, now=NOW, stale_minutes=60, inputs=[lagging]).health == "stale"


def test_never_built_is_missing_and_a_failing_input_makes_an_asset_stale() -> None:
    assert judge(None, now=NOW, stale_minutes=60).health == "missing"
    broken = Upstream("cleaned", NOW - 10, "failing")
    assert judge(None, now=NOW, stale_minutes=60, inputs=[broken]).health == "missing"
    verdict = judge(NOW - 5, now=NOW, stale_minutes=60, inputs=[broken])
    assert verdict == Verdict("stale", "input cleaned failing")
    assert judge(None, now=NOW, stale_minutes=60, failing=["a.csv"]).why == (
        "1 file failing: a.csv"
    )


def test_an_analytics_asset_never_built_is_in_the_graph_as_missing() -> None:
    graph = build_graph(
        sales_pipeline(),
        [file_row("a.csv")],
        [asset_row("cleaned", NOW - HOUR, "processed", "a.csv")],
        data=Path("/data"),
        now=NOW,
    )
    nodes = {n.name: n for n in graph.nodes}

    assert nodes["cleaned"].health == "fresh"
    assert nodes["revenue_by_day"].health == "missing"
    assert nodes["top_day"].health == "missing"
    assert nodes["top_day"].key == "file:///data/analytics/sales/top_day.parquet"
    assert nodes["top_day"].version is None


def test_many_files_collapse_into_one_raw_node_and_none_is_missing() -> None:
    files = [file_row(f"f{i:02}.csv") for i in range(21)]
    graph = build_graph(sales_pipeline(), files, [], data=Path("/data"), now=NOW)
    raw = [n for n in graph.nodes if n.kind == "raw"]

    assert [(n.id, n.files, n.key) for n in raw] == [("raw_files", 21, "file:///inbox/")]
    assert ("raw_files", "processed_cleaned") in graph.edges
    nothing = build_graph(sales_pipeline(), [], [], data=Path("/data"), now=NOW)
    assert {n.name: n.health for n in nothing.nodes} == {
        "raw files": "missing",
        "cleaned": "missing",
        "revenue_by_day": "missing",
        "top_day": "missing",
    }
    assert len(build_graph(sales_pipeline(), files[:20], [], data=Path("/"), now=NOW).edges) == 22


def test_the_latest_row_of_each_uri_is_where_the_file_stands(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")

    def land(relative: str, sha: str) -> FileRow:
        landed = Landed(f"file:///in/{relative}", relative, 1, sha, "local")
        return ledger.record_landed("sales", landed, lambda outcome, row: None)[1]

    first = land("a.csv", "1" * 64)
    ledger.finish(first.id, "failed", "boom")
    land("a.csv", "2" * 64)
    land("b.csv", "3" * 64)
    assert [(f.relative, f.sha256[0], f.state) for f in ledger.latest_files("sales")] == [
        ("a.csv", "2", "landed"),
        ("b.csv", "3", "landed"),
    ]
    land("a.csv", "1" * 64)  # the first bytes again: that row is the newest once more
    assert [(f.relative, f.sha256[0]) for f in ledger.latest_files("sales")] == [
        ("a.csv", "1"),
        ("b.csv", "3"),
    ]
    assert ledger.latest_files("other") == []
    ledger.close()


# -- formats -------------------------------------------------------------------------------


def hostile_graph() -> Graph:
    """A graph whose file name is built to break quoting, markup and escapes."""
    files = [file_row(HOSTILE, "failed", NOW - 5, reason='bad "value"'), file_row("a.csv")]
    assets = [asset_row("cleaned", NOW - HOUR, "processed", "a.csv")]
    return build_graph(sales_pipeline(), files, assets, data=Path("/data"), now=NOW)


def test_json_has_the_documented_schema() -> None:
    document = json.loads(json.dumps(to_dict(hostile_graph())))

    assert set(document) == {"pipeline", "generated_at", "stale_minutes", "nodes", "edges"}
    assert document["pipeline"] == "sales"
    ids = {n["id"] for n in document["nodes"]}
    base = {"id", "kind", "name", "key", "version", "updated_at", "age_seconds", "rows"}
    for node in document["nodes"]:
        assert base | {"health", "why"} <= set(node)
        assert re.fullmatch(r"[a-z0-9_]+", node["id"])
        assert node["health"] in {"fresh", "stale", "failing", "missing"}
        assert ("partitions" in node) == (node["kind"] == "processed")
    assert all(a in ids and b in ids for a, b in document["edges"])
    by_name = {n["name"]: n for n in document["nodes"]}
    assert by_name[HOSTILE]["state"] == "failed"
    assert by_name["cleaned"]["partitions"] == 1
    assert by_name["cleaned"]["age_seconds"] == HOUR
    assert by_name["top_day"]["updated_at"] is None


def test_mermaid_declares_every_node_and_escapes_names() -> None:
    text = to_mermaid(hostile_graph())
    lines = text.splitlines()

    assert lines[0] == "flowchart LR"
    declared = {}
    for line in lines[1:]:
        node = re.fullmatch(r'    ([a-z0-9_]+)\["([^"]*)"\]:::(fresh|stale|failing|missing)', line)
        edge = re.fullmatch(r"    ([a-z0-9_]+) --> ([a-z0-9_]+)", line)
        style = re.fullmatch(r"    classDef (fresh|stale|failing|missing) \S.*", line)
        assert node or edge or style, f"not a node, edge or classDef line: {line!r}"
        if node:
            declared[node[1]] = node[2]
            assert not set("<>`&\n") & set(node[2].replace("<br/>", "")), node[2]
        if edge:
            assert edge[1] in declared
            assert edge[2] in declared
    assert {"fresh", "stale", "failing", "missing"} <= set(re.findall(r"classDef (\w+)", text))
    label = next(v for v in declared.values() if v.startswith("q#34;uote"))
    assert "#60;script#62;#38;amp#59; #35;35#59;" in label


def test_dot_is_a_digraph_with_every_string_closed() -> None:
    text = to_dot(hostile_graph())
    lines = text.splitlines()

    assert lines[0] == 'digraph "eventpipe sales" {'
    assert lines[-1] == "}"
    quoted = r'"(?:[^"\\\n]|\\.)*"'
    node = re.compile(rf'  "([a-z0-9_]+)" \[label={quoted}(, \w+={quoted})+\];')
    edge = re.compile(r'  "([a-z0-9_]+)" -> "([a-z0-9_]+)";')
    nodes = {m[1] for line in lines if (m := node.fullmatch(line))}
    edges = [(m[1], m[2]) for line in lines if (m := edge.fullmatch(line))]
    assert len(nodes) == 5
    assert len(edges) == 4
    assert all(a in nodes and b in nodes for a, b in edges)
    assert len(lines) == 3 + len(nodes) + len(edges) + 1
    assert r"back\\N" in text  # a backslash in a name is not a dot escape
    assert r"q\"uote" in text
    assert 'fillcolor="#f8d7da"' in text  # failing


# -- the command, in-process ---------------------------------------------------------------


def lineage(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    capsys.readouterr()
    app(["lineage", *args], result_action="return_value", exit_on_error=False)
    return capsys.readouterr().out


def lineage_json(capsys: pytest.CaptureFixture[str], h: Harness, *args: str) -> dict[str, Any]:
    out = lineage(
        capsys,
        "--pipeline",
        f"{h.pipeline_file}:pipeline",
        "--data",
        str(h.data),
        "--format",
        "json",
        *args,
    )
    document: dict[str, Any] = json.loads(out)
    return document


def health_by_name(document: dict[str, Any]) -> dict[str, str]:
    return {n["name"]: n["health"] for n in document["nodes"]}


def test_before_anything_ran_every_asset_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli.console, "width", 200)
    (tmp_path / "p.py").write_text(
        "import pandas as pd\nfrom eventpipe import Pipeline\npipeline = Pipeline('fresh_start')\n"
        "@pipeline.process\ndef cleaned(raw): return raw\n"
        "@pipeline.analytics\ndef total(cleaned): return cleaned\n"
    )
    (tmp_path / "eventpipe.toml").write_text('pipeline = "p.py:pipeline"\n')

    table = lineage(capsys, "--data", "nowhere")
    mermaid = lineage(capsys, "--data", "nowhere", "--format", "mermaid")

    assert "fresh_start" in table
    assert "never built" in table
    assert "missing" in table
    assert mermaid.startswith("flowchart LR\n")
    assert "raw_files --> processed_cleaned" in mermaid
    assert "processed_cleaned --> analytics_total" in mermaid
    assert not (tmp_path / "nowhere").exists()


def test_lineage_follows_a_running_loop(
    prefect_server: EmbeddedServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from eventpipe.intake.record import scan_once

    monkeypatch.chdir(tmp_path)
    with running_loop(prefect_server, tmp_path) as h:
        h.drop("a.csv", "day,amount\n2026-03-01,1.5\n2026-03-02,2\n")
        h.drop("b.csv", "day,amount\n2026-03-01,4\n")
        h.wait_file_state("a.csv", "done")
        h.wait_file_state("b.csv", "done")

        document = lineage_json(capsys, h)
        names = {n["id"]: n["name"] for n in document["nodes"]}
        assert {(names[a], names[b]) for a, b in document["edges"]} == {
            ("a.csv", "cleaned"),
            ("b.csv", "cleaned"),
            ("cleaned", "revenue_by_day"),
            ("revenue_by_day", "top_day"),
        }
        assert set(health_by_name(document).values()) == {"fresh"}
        nodes = {n["name"]: n for n in document["nodes"]}
        assert nodes["cleaned"]["partitions"] == 2
        assert nodes["cleaned"]["rows"] == 3
        assert nodes["top_day"]["version"] == h.asset_version("top_day")
        assert nodes["top_day"]["key"].endswith(f"/analytics/{h.name}/top_day.parquet")
        assert nodes["a.csv"]["state"] == "done"

        # The upstream service goes down: c.csv fails in cleaned; what cleaned feeds is behind.
        h.flag.touch()
        h.drop("c.csv", "day,amount\n2026-03-03,9\n")
        h.wait_file_state("c.csv", "failed")
        failing = health_by_name(lineage_json(capsys, h))
        assert failing == {
            "a.csv": "fresh",
            "b.csv": "fresh",
            "c.csv": "failing",
            "cleaned": "failing",
            "revenue_by_day": "stale",
            "top_day": "stale",
        }

        # Back up; c.csv is dropped again and goes through.
        h.flag.unlink()
        h.drop("c.csv", "day,amount\n2026-03-03,10\n")
        h.wait_file_state("c.csv", "done")
        assert set(health_by_name(lineage_json(capsys, h)).values()) == {"fresh"}

    # The loop is stopped; d.csv lands and is recorded, but no run comes to take it.
    h.drop("d.csv", "day,amount\n2026-03-04,1\n")
    assert scan_once(h.loop.settings) == 1
    assert health_by_name(lineage_json(capsys, h))["top_day"] == "fresh"  # within the hour
    behind = lineage_json(capsys, h, "--stale-minutes", "0")
    health = health_by_name(behind)
    assert health["d.csv"] == "fresh"
    assert {health[n] for n in ("cleaned", "revenue_by_day", "top_day")} == {"stale"}
    why = {n["name"]: n["why"] for n in behind["nodes"]}
    assert why["cleaned"].startswith("1 newer file not in it yet")
    assert why["top_day"] == "input revenue_by_day not current"

    mermaid = lineage(
        capsys,
        "--pipeline",
        f"{h.pipeline_file}:pipeline",
        "--data",
        str(h.data),
        "--format",
        "mermaid",
        "--stale-minutes",
        "0",
    )
    assert mermaid.startswith("flowchart LR\n")
    assert ":::stale" in mermaid
