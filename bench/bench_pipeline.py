"""The pipelines the freshness benchmark runs: the same steps under two names, so the trigger
of one never fires for the files of the other."""

from __future__ import annotations

import pandas as pd

from eventpipe.pipeline import Pipeline

ORDER_COLUMNS: dict[str, str | None] = {
    "order_id": "int64",
    "day": None,
    "region": None,
    "quantity": "int64",
    "unit_price": "float64",
}


def make(name: str) -> Pipeline:
    """One process step and two analytics steps over it, like the demo pipeline."""
    pipeline = Pipeline(name)

    @pipeline.process(expects=ORDER_COLUMNS)
    def orders(raw: pd.DataFrame) -> pd.DataFrame:
        out = raw.drop_duplicates("order_id").copy()
        out["amount"] = (out["quantity"] * out["unit_price"]).round(2)
        return out[["order_id", "day", "region", "product", "quantity", "amount"]]

    @pipeline.analytics
    def revenue_by_day(orders: pd.DataFrame) -> pd.DataFrame:
        return orders.groupby("day", as_index=False).agg(
            orders=("order_id", "count"), revenue=("amount", "sum")
        )

    @pipeline.analytics
    def revenue_by_region(orders: pd.DataFrame) -> pd.DataFrame:
        return (
            orders.groupby("region", as_index=False)
            .agg(revenue=("amount", "sum"))
            .sort_values("region")
        )

    return pipeline


fast = make("bench_fast")
base = make("bench_base")
