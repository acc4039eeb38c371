"""The demo pipeline ``eventpipe up`` runs by default: orders -> revenue by day and region."""

from __future__ import annotations

import random
from datetime import date, timedelta
from pathlib import Path

import pandas as pd

from eventpipe.pipeline import Pipeline

pipeline = Pipeline("demo")


ORDER_COLUMNS: dict[str, str | None] = {
    "order_id": "int64",
    "day": None,
    "region": None,
    "quantity": "int64",
    "unit_price": "float64",
}


@pipeline.process(expects=ORDER_COLUMNS)
def orders(raw: pd.DataFrame) -> pd.DataFrame:
    """Typed, de-duplicated orders with their amount."""
    out = raw.drop_duplicates("order_id").copy()
    out["day"] = pd.to_datetime(out["day"]).dt.date.astype(str)
    out["amount"] = (out["quantity"] * out["unit_price"]).round(2)
    return out[["order_id", "day", "region", "product", "quantity", "amount"]]


@pipeline.analytics
def revenue_by_day(orders: pd.DataFrame) -> pd.DataFrame:
    return orders.groupby("day", as_index=False).agg(
        orders=("order_id", "count"), revenue=("amount", "sum")
    )


@pipeline.analytics
def revenue_by_region(orders: pd.DataFrame) -> pd.DataFrame:
    totals = orders.groupby("region", as_index=False).agg(revenue=("amount", "sum"))
    return totals.sort_values(by="region", ignore_index=True)


@pipeline.analytics
def best_day(revenue_by_day: pd.DataFrame) -> pd.DataFrame:
    return revenue_by_day.nlargest(1, "revenue")


def write_sample(inbox: Path, index: int, rows: int = 50, seed: int | None = None) -> Path:
    """Write one sample orders file, atomically (temp name, then rename)."""
    rng = random.Random(index if seed is None else seed)
    start = date(2026, 1, 1) + timedelta(days=index)
    frame = pd.DataFrame(
        {
            "order_id": [index * 10_000 + i for i in range(rows)],
            "day": [str(start + timedelta(days=rng.randrange(3))) for _ in range(rows)],
            "region": [rng.choice(["north", "south", "east", "west"]) for _ in range(rows)],
            "product": [rng.choice(["widget", "gadget", "gizmo"]) for _ in range(rows)],
            "quantity": [rng.randint(1, 9) for _ in range(rows)],
            "unit_price": [rng.choice([2.5, 4.0, 9.99]) for _ in range(rows)],
        }
    )
    inbox.mkdir(parents=True, exist_ok=True)
    target = inbox / f"orders-{index:04d}.csv"
    tmp = inbox / f".{target.name}.tmp"
    frame.to_csv(tmp, index=False)
    tmp.replace(target)
    return target
