"""One process step that keeps each file as it is, one analytics step that adds them up: the
smallest pipeline with both stages."""

import pandas as pd

from eventpipe import Pipeline

pipeline = Pipeline("totals")


@pipeline.process
def cleaned(raw: pd.DataFrame) -> pd.DataFrame:
    return raw


@pipeline.analytics
def total(cleaned: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"amount": [int(cleaned["amount"].sum())], "rows": [len(cleaned)]})
