"""Every event eventpipe sends is built in ``eventpipe.events.build``; each builder's body is
one Prefect's own ``Event`` model accepts, and ids are deterministic where a re-send must be
harmless."""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from typing import Any

import pytest
from prefect.events import Event

from eventpipe.core import names
from eventpipe.events import build
from eventpipe.ledger import FileRow

ROW = FileRow(
    id=1,
    pipeline="sales",
    uri="file:///inbox/2024 jan.csv",
    relative="2024 jan.csv",
    sha256="ab" * 32,
    size=10,
    source="local",
    local_path="/inbox/2024 jan.csv",
    state="landed",
    generation=0,
    seen_at=time.time(),
    updated_at=time.time(),
    run_id=None,
    reason=None,
    attempts=1,
)
RUN = "0b1c5d7e-1f2a-4b3c-8d9e-0f1a2b3c4d5e"
KEY = "file:///data/processed/sales/cleaned/2024~20jan.csv.parquet"

BUILDERS: dict[str, Callable[[], build.Built | None]] = {
    "build_event": lambda: build.build_event("eventpipe.test", {"prefect.resource.id": "x.y"}),
    "sighting_event": lambda: build.sighting_event("new", ROW, "file:///inbox/2024~20jan.csv"),
    "fetch_event": lambda: build.fetch_event(names.FETCH_COMPLETED, "sales", "orders", RUN, {}),
    "stale_event": lambda: build.stale_event("sales", "revenue", KEY, "v1", 3600.0, 3),
    "rejected_event": lambda: build.rejected_event(ROW, "bad", "/q/2024 jan.csv", RUN),
    "asset_skipped_event": lambda: build.asset_skipped_event(
        "sales", RUN, KEY, "cleaned", "unchanged", "c1"
    ),
    "asset_updated_event": lambda: build.asset_updated_event(
        "sales",
        RUN,
        key=KEY,
        step="cleaned",
        partition="2024 jan.csv",
        version="v2",
        rows=3,
        code_version="c1",
        upstream={"raw": ROW.sha256},
        upstream_keys=["file:///inbox/2024~20jan.csv"],
    ),
    "pipeline_completed_event": lambda: build.pipeline_completed_event("sales", RUN, {"files": 1}),
    "file_failed_event": lambda: build.file_failed_event(ROW, "ZeroDivisionError", RUN),
    "fetch_skipped_event": lambda: build.fetch_skipped_event("sales", "orders", RUN, "304"),
    "asset_failed_event": lambda: build.asset_failed_event(
        "sales", RUN, KEY, "revenue", "ValueError: no <b>days</b>", "v1"
    ),
    "retraction_event": lambda: build.retraction_event("retracting", ROW),
    "retracted_event": lambda: build.retracted_event(
        ROW, [{"step": "cleaned", "partition": "2024 jan.csv", "version": "v1"}], RUN
    ),
}


def test_every_builder_is_covered() -> None:
    built = {
        name
        for name, fn in vars(build).items()
        if inspect.isfunction(fn)
        and fn.__module__ == build.__name__
        and (name.endswith("_event") or name == "build_event")
        and not name.startswith("_")
    }
    assert built == set(BUILDERS)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_prefect_accepts_each_event(name: str) -> None:
    built = BUILDERS[name]()
    assert built is not None
    event_id, body = built
    event = Event.model_validate(body)
    assert str(event.id) == event_id
    assert event.event == body["event"]
    assert event.resource.id == body["resource"]["prefect.resource.id"]
    assert [r.id for r in event.related] == [r["prefect.resource.id"] for r in body["related"]]


def test_a_landing_sent_again_has_the_same_id() -> None:
    first, second = (build.sighting_event("new", ROW, "k") for _ in range(2))
    assert first is not None
    assert second is not None
    assert first[0] == second[0]
    regenerated = build.sighting_event("retry", FileRow(**{**ROW.__dict__, "generation": 1}), "k")
    assert regenerated is not None
    assert regenerated[0] != first[0]


def test_a_stale_asset_is_reported_once_per_version() -> None:
    one = build.stale_event("sales", "revenue", KEY, "v1", 60.0, 1)
    again = build.stale_event("sales", "revenue", KEY, "v1", 120.0, 2)
    newer = build.stale_event("sales", "revenue", KEY, "v2", 60.0, 1)
    assert one[0] == again[0] != newer[0]


def _payload(built: build.Built | None) -> dict[str, Any]:
    assert built is not None
    return built[1]["payload"]


def test_an_unchanged_file_is_a_skip_with_its_reason() -> None:
    payload = _payload(build.sighting_event("unchanged", ROW, "k"))
    assert payload["stage"] == "raw"
    assert payload["reason"].startswith("unchanged: same sha256")
