"""bench/freshness.py's interleaving and its figures, without a server: every path gets each
round's file, one path at a time, the first path rotating; the same gaps on every path; the
warm-up rounds are not kept; the eventpipe worker's figure is checked against its goal."""

from __future__ import annotations

from pathlib import Path

import pytest

import freshness


class FakeLane:
    def __init__(self, key: str, seen: list[tuple[str, str]]) -> None:
        self.key, self.short, self.seen = key, key, seen

    def drop(self, index: int, sample: freshness.Sample, position: int) -> freshness.Drop:
        self.seen.append((self.key, sample[0]))
        return freshness.Drop(index, 0.1, 0.2, 0.0, position)


def test_drops_alternate_between_paths_the_first_rotating(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gaps: list[float] = []
    monkeypatch.setattr(freshness.time, "sleep", gaps.append)
    seen: list[tuple[str, str]] = []
    lanes = [FakeLane(key, seen) for key in ("a", "b", "c")]
    samples = [(f"f{i}.csv", b"x") for i in range(4)]

    runs = freshness.interleave(lanes, samples, warmup=1, seed=7)  # type: ignore[arg-type]

    assert ["".join(k for k, _ in seen[i : i + 3]) for i in range(0, 12, 3)] == [
        "abc",
        "bca",
        "cab",
        "abc",
    ]
    assert [f for _, f in seen] == [f"f{i}.csv" for i in range(4) for _ in range(3)]
    assert {key: [d.index for d in drops] for key, drops in runs.items()} == {
        key: [0, 1, 2] for key in "abc"
    }
    assert [d.position for d in runs["b"]] == [0, 2, 1]
    per_path = {key: [gaps[i] for i, (k, _) in enumerate(seen) if k == key] for key in "abc"}
    assert per_path["a"] == per_path["b"] == per_path["c"]
    assert all(freshness.GAP_SECONDS[0] <= g <= freshness.GAP_SECONDS[1] for g in gaps)


def summary(path: str, p50: float, p95: float, timeouts: int = 0) -> freshness.Summary:
    return freshness.Summary(path, 8, timeouts, p50, p95, p95, p50, p95)


@pytest.mark.parametrize(
    ("p50", "p95", "timeouts", "met"),
    [(0.8, 1.9, 0, True), (1.2, 1.9, 0, False), (0.8, 2.5, 0, False), (0.8, 1.9, 1, False)],
)
def test_the_eventpipe_worker_figure_is_held_to_its_goal(
    p50: float, p95: float, timeouts: int, met: bool
) -> None:
    rows = {
        "eventpipe": summary("eventpipe (up, folder)", 0.5, 0.8),
        "eventpipe_worker": summary("eventpipe worker", p50, p95, timeouts),
        "worker": summary("worker (query 1 s, prefetch 0)", 7.0, 9.0),
        "baseline": summary("baseline (serve, defaults)", 10.0, 14.0),
    }
    ratios = {
        "baseline_folder": freshness.ratio(rows["baseline"], rows["eventpipe"]),
        "worker_eventpipe_worker": freshness.ratio(rows["worker"], rows["eventpipe_worker"]),
    }

    figures = freshness.figures(rows, ratios)

    goal = next(f for f in figures if f["figure"].startswith("freshness, eventpipe worker"))
    assert goal["met"] is met
    assert goal["value"].startswith(f"{p50:.2f} s / {p95:.2f} s, {7.0 / p50:.1f}x")
    assert [f["met"] for f in figures[:4]] == [True, p50 < 10.0, True, None]


def test_a_path_without_a_pipeline_name_gets_its_own(tmp_path: Path) -> None:
    specs = {key: freshness.own_pipeline(tmp_path / key, key) for key in freshness.OWN_PIPELINES}

    names = {freshness.load_pipeline(spec).name for spec in specs.values()}
    assert names == set(freshness.OWN_PIPELINES.values())
