"""The README's promises, executed: its example pipeline and file, and its two commands."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd

from eventpipe.loop.local import LocalLoop
from eventpipe.orchestration.server import EmbeddedServer
from eventpipe.settings import Settings
from eventpipe.testing import Background, wait_for

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
_BLOCK = re.compile(r"<!-- readme-test: (?P<path>\S+) -->\n```\w*\n(?P<body>.*?)```", re.S)


def readme_files() -> dict[str, str]:
    return {m["path"]: m["body"] for m in _BLOCK.finditer(README)}


def test_readme_example_runs_as_written(prefect_server: EmbeddedServer, tmp_path: Path) -> None:
    files = readme_files()
    assert {"sales_pipeline.py", "inbox/orders-1.csv"} <= files.keys()
    (tmp_path / "sales_pipeline.py").write_text(files["sales_pipeline.py"])
    settings = Settings(
        pipeline=str(tmp_path / "sales_pipeline.py") + ":pipeline",
        inbox=tmp_path / "inbox",
        data=tmp_path / "data",
        home=tmp_path / "home",
        api_url=prefect_server.api_url,
    )
    with LocalLoop(settings):
        staged = tmp_path / "orders-1.csv"
        staged.write_text(files["inbox/orders-1.csv"])
        (tmp_path / "inbox").mkdir(exist_ok=True)
        staged.replace(tmp_path / "inbox" / "orders-1.csv")

        revenue = tmp_path / "data/analytics/sales/revenue_by_day.parquet"
        top = tmp_path / "data/analytics/sales/top_days.parquet"
        wait_for(lambda: revenue.exists() and top.exists(), 60, what="the README's analytics")
        frame = pd.read_parquet(revenue)
        assert dict(zip(frame["day"], frame["amount"], strict=True)) == {
            "2026-03-01": 15.0,
            "2026-03-02": 7.0,
        }
        partition = pd.read_parquet(tmp_path / "data/processed/sales/cleaned/orders-1.csv.parquet")
        assert sorted(partition["order_id"]) == [1, 2, 3]


def test_readme_gives_two_commands_and_ci_runs_the_test_one() -> None:
    assert "make demo" in README
    assert "make test" in README
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M)
    assert "FRESHNESS_TABLE" not in README, "the README must carry measured freshness figures"


def _command(line: str, endpoint: str) -> list[str]:
    """A README command line, run with this interpreter and the session's moto endpoint."""
    argv = shlex.split(line.replace("http://127.0.0.1:5000", endpoint), comments=True)
    if argv[0] == ".venv/bin/eventpipe":
        return [sys.executable, "-m", "eventpipe.cli", *argv[1:]]
    if argv[0] == ".venv/bin/python":
        return [sys.executable, *argv[1:]]
    raise AssertionError(f"unexpected README command: {line}")


def test_readme_bucket_example_runs_as_written(
    prefect_server: EmbeddedServer, moto_endpoint: str, tmp_path: Path
) -> None:
    lines = [
        line
        for line in readme_files()["bucket.sh"].splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0].startswith(".venv/bin/moto_server -H 127.0.0.1 -p 5000")  # the session's
    exports = shlex.split(lines[1])
    assert exports[0] == "export"
    env = {**os.environ, **dict(item.split("=", 1) for item in exports[1:])}
    setup, up, upload = (_command(line, moto_endpoint) for line in lines[2:5])
    files = readme_files()
    (tmp_path / "sales_pipeline.py").write_text(files["sales_pipeline.py"])
    (tmp_path / "orders-1.csv").write_text(files["inbox/orders-1.csv"])

    done = subprocess.run(setup, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    watcher = Background(
        [*up, "--api-url", prefect_server.api_url], tmp_path / "up.log", env=env, cwd=tmp_path
    )
    try:
        watcher.start().wait_for_output("eventpipe is up", 120)
        assert "s3://sales-landing/incoming/" in watcher.output()
        subprocess.run(upload, cwd=tmp_path, env=env, check=True)
        revenue = tmp_path / "data/analytics/sales/revenue_by_day.parquet"
        wait_for(revenue.exists, 60, what="analytics from the uploaded file")
        frame = pd.read_parquet(revenue)
        assert dict(zip(frame["day"], frame["amount"], strict=True)) == {
            "2026-03-01": 15.0,
            "2026-03-02": 7.0,
        }
        assert watcher.stop(timeout=60) == 0
    finally:
        watcher.kill()
