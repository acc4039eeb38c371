"""The freshness plot: each path's distribution of file landed -> analytics updated.

Reads ``bench/results/freshness.json`` (every drop of every path) and writes
``docs/images/freshness.png``: the empirical CDF of each path on a log time axis, and each
drop as a point with the path's median and p95 marked. Rendered with matplotlib's Agg
backend: no display needed.

    .venv/bin/python bench/plot.py [--results bench/results/freshness.json] [--out PNG]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results" / "freshness.json"
IMAGE = REPO / "docs" / "images" / "freshness.png"

# (key in freshness.json's "drops", label, colour); keys not listed are drawn under their name.
PATHS = (
    ("eventpipe", "folder (eventpipe up)", "#1f77b4"),
    ("s3", "S3 bucket (eventpipe up)", "#2ca02c"),
    ("eventpipe_worker", "eventpipe worker (warm)", "#ff7f0e"),
    ("worker", "worker path", "#9467bd"),
    ("baseline", "flow.serve, Prefect defaults", "#d62728"),
)
OTHER_COLOURS = ("#bcbd22", "#8c564b", "#e377c2", "#17becf")


def series(result: dict[str, Any]) -> list[tuple[str, str, list[float]]]:
    """(label, colour, seconds of each drop) per path, known paths first, timeouts left out."""
    drops = result.get("drops")
    if not isinstance(drops, dict):
        raise ValueError("freshness results have no 'drops'")
    known = {key: (label, colour) for key, label, colour in PATHS}
    order = [k for k, _, _ in PATHS if k in drops] + [k for k in drops if k not in known]
    out = []
    for index, key in enumerate(order):
        values = [
            float(d["all_seconds"])
            for d in drops[key]
            if isinstance(d, dict) and d.get("all_seconds") is not None
        ]
        if not values:
            continue
        label, colour = known.get(key, (key, OTHER_COLOURS[index % len(OTHER_COLOURS)]))
        out.append((label, colour, values))
    return out


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(0.95 * len(ordered))) - 1]


def render(result: dict[str, Any], image: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = series(result)
    fig, (cdf, dots) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    jitter = random.Random(7)
    for row, (label, colour, values) in enumerate(paths):
        ordered = sorted(values)
        share = [(i + 1) / len(ordered) for i in range(len(ordered))]
        median, tail = statistics.median(values), p95(values)
        cdf.step(ordered, share, where="post", color=colour, linewidth=2, label=label)
        y = len(paths) - 1 - row
        dots.scatter(
            values,
            [y + jitter.uniform(-0.18, 0.18) for _ in values],
            s=14,
            color=colour,
            alpha=0.6,
            linewidths=0,
        )
        dots.vlines(median, y - 0.32, y + 0.32, color=colour, linewidth=3)
        dots.vlines(tail, y - 0.25, y + 0.25, color=colour, linewidth=1.5, linestyles="dashed")
        dots.annotate(
            f"p50 {median:.2f} s, p95 {tail:.2f} s",
            (min(values), y + 0.36),
            fontsize=8,
            color=colour,
        )
    for axis in (cdf, dots):
        axis.set_xscale("log")
        axis.set_xlabel("file landed -> every analytics output updated (s, log scale)")
        axis.grid(True, which="both", axis="x", alpha=0.3)
    cdf.set_ylabel("share of drops done")
    cdf.set_ylim(0, 1.02)
    cdf.legend(loc="lower right", fontsize=8)
    cdf.set_title("cumulative distribution", fontsize=10)
    dots.set_yticks(range(len(paths)), [label for label, _, _ in reversed(paths)], fontsize=8)
    dots.set_ylim(-0.6, len(paths) - 0.3)
    everything = [v for _, _, values in paths for v in values]
    if everything:
        dots.set_xlim(min(everything) / 1.5, max(everything) * 1.8)
    dots.set_title("each drop (solid: p50, dashed: p95)", fontsize=10)
    machine = result.get("machine") or {}
    drops = (result.get("config") or {}).get("drops", "?")
    fig.suptitle(
        f"eventpipe freshness: {drops} drops per path, {machine.get('nproc', '?')} cores, "
        f"Prefect {machine.get('prefect', '?')}, {str(machine.get('date', ''))[:10]}",
        fontsize=11,
    )
    image.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(image, dpi=110)
    plt.close(fig)
    return image


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="(accepted; the plot is quick)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--out", type=Path, default=IMAGE)
    args = parser.parse_args(argv)
    result = json.loads(args.results.read_text(encoding="utf-8"))
    image = render(result, args.out)
    print(f"wrote {image}")
    return {"name": "plot", "image": str(image), "paths": [s[0] for s in series(result)]}


if __name__ == "__main__":
    main()
