"""Under a steady stream a run publishes in time: once its oldest file has waited longer than
the freshness budget, it stops taking the files that land while it works and leaves them to
the next run; within the budget it takes them too (a burst drains in few runs)."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from eventpipe.exceptions import ConfigError
from eventpipe.ledger import Ledger
from eventpipe.orchestration.server import EmbeddedServer
from eventpipe.run.flow import FRESHNESS_BUDGET_ENV, freshness_budget
from eventpipe.testing import land_file, wait_for

PIPELINE = """
import time
from pathlib import Path
import pandas as pd
from eventpipe import Pipeline

pipeline = Pipeline("{name}")
STARTED, GO = Path("{started}"), Path("{go}")


@pipeline.process
def cleaned(raw: pd.DataFrame) -> pd.DataFrame:
    if "first" in raw.columns:  # the first file: hold until the test has landed another
        STARTED.touch()
        deadline = time.monotonic() + 120
        while not GO.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    return raw


@pipeline.analytics
def count(cleaned: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({{"rows": [len(cleaned)]}})
"""


def held_run(root: Path) -> tuple[dict[str, Any], list[Any]]:
    """A run that takes a.csv and, while it works on it, b.csv lands: its summary and the
    ledger's rows after it."""
    from eventpipe.run.flow import materialize_pipeline

    name = "fb" + uuid.uuid4().hex[:10]
    started, go = root / "started", root / "go"
    spec = root / "pipeline.py"
    spec.write_text(PIPELINE.format(name=name, started=started, go=go))
    data, inbox = root / "data", root / "inbox"
    ledger = Ledger(data / "ledger.sqlite")
    land_file(ledger, name, inbox, "a.csv", "first\n1\n")
    summary: dict[str, Any] = {}

    def run() -> None:
        summary.update(materialize_pipeline(f"{spec}:pipeline", str(data)))

    thread = threading.Thread(target=run)
    thread.start()
    wait_for(started.exists, 120, what="the run working on a.csv")
    land_file(ledger, name, inbox, "b.csv", "second\n2\n")
    go.touch()
    thread.join(120)
    rows = ledger.files(name)
    ledger.close()
    return summary, rows


def test_past_its_budget_a_run_publishes_and_leaves_newcomers_to_the_next(
    prefect_server: EmbeddedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(FRESHNESS_BUDGET_ENV, "0")
    summary, rows = held_run(tmp_path)
    assert summary["files"] == 1
    states = {r.relative: r.state for r in rows}
    assert states["a.csv"] == "done"
    assert states["b.csv"] in {"landed", "sent"}  # pending (its event sent or not), unclaimed
    assert next(r for r in rows if r.relative == "b.csv").attempts == 0


def test_within_its_budget_a_run_takes_the_files_that_land_meanwhile(
    prefect_server: EmbeddedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(FRESHNESS_BUDGET_ENV, "600")
    summary, rows = held_run(tmp_path)
    assert summary["files"] == 2
    assert {r.relative: r.state for r in rows} == {"a.csv": "done", "b.csv": "done"}


def test_the_budget_is_a_number_of_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FRESHNESS_BUDGET_ENV, raising=False)
    assert freshness_budget() == 1.0
    monkeypatch.setenv(FRESHNESS_BUDGET_ENV, "2.5")
    assert freshness_budget() == 2.5
    for bad in ("soon", "-1"):
        monkeypatch.setenv(FRESHNESS_BUDGET_ENV, bad)
        with pytest.raises(ConfigError, match=FRESHNESS_BUDGET_ENV):
            freshness_budget()
