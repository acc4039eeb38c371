"""The README's promises, executed: its example pipeline and file, and its two commands."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from eventpipe.app import LocalLoop
from eventpipe.server import EmbeddedServer
from eventpipe.settings import Settings
from eventpipe.testing import wait_for

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
