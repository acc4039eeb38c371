"""The command line, run as a user runs it: a subprocess on real files and a real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from eventpipe.orchestration.server import EmbeddedServer
from eventpipe.testing import drop_file, read_events, wait_for
from tests.pipelines import write_pipeline


def eventpipe(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eventpipe.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200"},
        check=False,
    )


def test_run_status_versions_explain(prefect_server: EmbeddedServer, tmp_path: Path) -> None:
    write_pipeline("totals", tmp_path / "p.py", "cli_story")
    (tmp_path / "eventpipe.toml").write_text(
        f'pipeline = "p.py:pipeline"\napi_url = "{prefect_server.api_url}"\n'
    )
    drop_file(tmp_path / "inbox", "a.csv", "amount\n1\n2\n")
    drop_file(tmp_path / "inbox", "b <x> #1.csv", "amount\n10\n")

    first = eventpipe("run", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "2 file(s) recorded" in first.stdout
    summary = json.loads(first.stdout[first.stdout.index("{") :])
    assert summary["processed"] == 2
    assert summary["assets_updated"] == ["total"]

    status = eventpipe("status", "--json", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)["cli_story"]
    assets = {a["name"]: a for a in report["assets"]}
    assert assets["cleaned"]["partitions"] == 2
    assert assets["total"]["rows"] == 1
    assert assets["total"]["key"].startswith("file:///")
    assert {f["file"]: f["state"] for f in report["files"]} == {
        "a.csv": "done",
        "b <x> #1.csv": "done",
    }

    drop_file(tmp_path / "inbox", "a.csv", "amount\n5\n")  # a new version of a.csv
    again = eventpipe("run", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    versions = eventpipe("versions", "total", "--json", cwd=tmp_path)
    assert versions.returncode == 0, versions.stderr
    listed = json.loads(versions.stdout)
    assert len(listed) == 2
    assert all(v["rows"] == 1 for v in listed)
    assert "cleaned/a.csv" in listed[0]["sources"]

    partition = eventpipe("versions", "cleaned/a.csv", cwd=tmp_path)
    assert partition.returncode == 0, partition.stderr
    assert partition.stdout.count("a.csv") >= 2

    story = eventpipe("explain", "a.csv", cwd=tmp_path)
    assert story.returncode == 0, story.stderr
    assert "eventpipe.file.landed" in story.stdout
    assert "done" in story.stdout

    unknown = eventpipe("versions", "nope", cwd=tmp_path)
    assert unknown.returncode == 2
    assert "eventpipe status" in unknown.stderr

    # The run left its summary and table artifacts on the server, keyed per pipeline/asset.
    import httpx

    def artifacts() -> set[str]:
        found = httpx.post(f"{prefect_server.api_url}/artifacts/filter", json={}, timeout=30)
        return {a["key"] for a in found.raise_for_status().json() if a.get("key")}

    wait_for(
        lambda: {"cli-story-run-summary", "cli-story-total"} <= artifacts(),
        30,
        what="the run's artifacts",
    )
    completed = wait_for(
        lambda: read_events(
            prefect_server.api_url,
            ["eventpipe.pipeline.completed"],
            ["eventpipe.pipeline.cli_story"],
        ),
        45,
        interval=0.5,
        what="pipeline.completed events",
    )
    assert completed[0]["payload"]["processed"] == 2


def test_bad_pipeline_definition_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "p.py").write_text(
        "import pandas as pd\nfrom eventpipe import Pipeline\npipeline = Pipeline('bad')\n"
        "@pipeline.process\ndef cleaned(raw): return raw\n"
        "@pipeline.analytics\ndef total(cleand): return cleand\n"
    )
    result = eventpipe(
        "run", "--pipeline", "p.py:pipeline", "--api-url", "http://127.0.0.1:9/api", cwd=tmp_path
    )
    assert result.returncode == 2
    assert "'cleand' names no step" in result.stderr
