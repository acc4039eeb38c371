"""A running eventpipe loop on a real Prefect server, with helpers to drop files and wait."""

from __future__ import annotations

import textwrap
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from eventpipe.core.keys import asset_key, file_uri
from eventpipe.ledger import FileRow, Ledger
from eventpipe.loop.local import LocalLoop
from eventpipe.orchestration.server import EmbeddedServer
from eventpipe.settings import Settings
from eventpipe.testing import drop_file, read_events, wait_for

SALES_PIPELINE = """
import os
import pandas as pd
from eventpipe import Pipeline, Schema

pipeline = Pipeline("{name}")


@pipeline.process(retries=1, retry_delay_seconds=0, expects={expects})
def cleaned(raw: pd.DataFrame) -> pd.DataFrame:
    if os.path.exists("{flag}"):
        raise RuntimeError("the upstream service is down")
    out = raw.dropna(subset=["amount"]).copy()
    out["amount"] = out["amount"].astype(float) * {factor}
    return out


@pipeline.analytics
def revenue_by_day(cleaned: pd.DataFrame) -> pd.DataFrame:
    return cleaned.groupby("day", as_index=False)["amount"].sum().sort_values("day")


@pipeline.analytics
def top_day(revenue_by_day: pd.DataFrame) -> pd.DataFrame:
    return revenue_by_day.nlargest(1, "amount")
"""


@dataclass
class Harness:
    loop: LocalLoop
    server: EmbeddedServer
    name: str
    root: Path
    pipeline_file: Path
    flag: Path
    expects: str = "None"
    module: str = SALES_PIPELINE
    """The pipeline module's source (``str.format`` fields: name, flag, factor, expects)."""
    extra_prefixes: tuple[str, ...] = ()
    """More resource-id prefixes that are this test's (e.g. its bucket's asset keys)."""

    @property
    def inbox(self) -> Path:
        return self.loop.settings.inbox

    @property
    def data(self) -> Path:
        return self.loop.settings.data_dir

    @cached_property
    def ledger(self) -> Ledger:
        """The loop's ledger (its data dir's file, or the database of setting ``ledger``)."""
        return Ledger.of(self.loop.settings)

    def drop(self, name: str, content: str) -> Path:
        return drop_file(self.inbox, name, textwrap.dedent(content).lstrip())

    def analytics_path(self, asset: str) -> Path:
        return self.data / "analytics" / self.name / f"{asset}.parquet"

    def partition_path(self, file_name: str, step: str = "cleaned") -> Path:
        return self.data / "processed" / self.name / step / f"{file_name}.parquet"

    def analytics(self, asset: str) -> pd.DataFrame:
        return pd.read_parquet(self.analytics_path(asset))

    def file(self, relative: str) -> FileRow | None:
        rows = [r for r in self.ledger.files(self.name) if r.relative == relative]
        return max(rows, key=lambda r: r.updated_at) if rows else None

    def wait_file_state(self, relative: str, *states: str, timeout: float = 60) -> FileRow:
        def check() -> FileRow | None:
            row = self.file(relative)
            return row if row is not None and row.state in states else None

        return wait_for(check, timeout, what=f"{relative} to be {'/'.join(states)}")

    def wait_idle(self, timeout: float = 60) -> None:
        """Until no file is pending or being processed."""

        def idle() -> bool:
            counts = self.ledger.counts(self.name)
            return not counts.keys() & {"landed", "sent", "processing"}

        wait_for(idle, timeout, what="the pipeline to go idle")

    def asset_version(self, asset: str, partition: str = "") -> str | None:
        row = self.ledger.asset(self.name, asset, partition)
        return row.version if row else None

    def events(self, *names: str) -> list[dict[str, Any]]:
        """This test's events: its files, its pipeline and the assets under its directory."""
        prefixes = [
            f"eventpipe.file.{self.name}.",
            f"eventpipe.pipeline.{self.name}",
            asset_key(file_uri(self.root)),
            *self.extra_prefixes,
        ]
        return read_events(self.server.api_url, list(names) or None, prefixes)

    def wait_events(
        self, check: Any, *names: str, timeout: float = 90, what: str = "events"
    ) -> list[dict[str, Any]]:
        """The server persists events in batches of a few seconds: poll until ``check`` holds."""

        def ready() -> list[dict[str, Any]] | None:
            found = self.events(*names)
            return found if check(found) else None

        return wait_for(ready, timeout, interval=0.5, what=what)

    def edit_pipeline(self, factor: float) -> None:
        self.pipeline_file.write_text(
            self.module.format(name=self.name, flag=self.flag, factor=factor, expects=self.expects)
        )


@contextmanager
def running_loop(
    server: EmbeddedServer,
    root: Path,
    factor: float = 1.0,
    *,
    expects: str = "None",
    name: str | None = None,
    module: str = SALES_PIPELINE,
    **settings: Any,
) -> Iterator[Harness]:
    """A loop running the sales pipeline (or the pipeline module ``module``, with the same
    format fields); ``expects`` is the ``cleaned`` step's ``expects=`` (Python source,
    ``Schema`` in scope) and ``settings`` override the test settings. A ``name`` already used
    under the same ``root`` restarts that loop where it stopped."""
    name = name or "t" + uuid.uuid4().hex[:10]
    flag = root / "service-down"
    pipeline_file = root / "sales_pipeline.py"
    pipeline_file.write_text(module.format(name=name, flag=flag, factor=factor, expects=expects))
    test_settings = {
        "pipeline": f"{pipeline_file}:pipeline",
        "inbox": root / "inbox",
        "data": root / "data",
        "home": root / "home",
        "api_url": server.api_url,
        "rescan_seconds": 5,
        "sweep_seconds": 5,
    }
    loop = LocalLoop(Settings(**{**test_settings, **settings})).start()
    harness = Harness(
        loop=loop,
        server=server,
        name=name,
        root=root,
        pipeline_file=pipeline_file,
        flag=flag,
        expects=expects,
        module=module,
    )
    try:
        yield harness
    finally:
        loop.stop()
        if "ledger" in vars(harness):
            harness.ledger.close()
