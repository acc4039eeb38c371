"""The pipelines the freshness benchmark runs: the same steps under several names, so the
trigger of one never fires for the files of another.

Apart from ``harness`` on purpose: the worker path loads this file in every flow run, so it
imports what a user's pipeline file imports and nothing more."""

from __future__ import annotations

from eventpipe import demo
from eventpipe.pipeline import Pipeline


def make(name: str) -> Pipeline:
    """The demo's process step and its two first-level analytics, under another name."""
    pipeline = Pipeline(name)
    pipeline.process(expects=demo.ORDER_COLUMNS)(demo.orders)
    pipeline.analytics(demo.revenue_by_day)
    pipeline.analytics(demo.revenue_by_region)
    return pipeline


fast = make("bench_fast")
base = make("bench_base")
base_tuned = make("bench_btuned")  # `serve` with its poll tuned to 1 s
# The production topology's paths (`prefect deploy` + a process worker): tuned and defaults.
worker = make("bench_worker")
worker_defaults = make("bench_wdef")
