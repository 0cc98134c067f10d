"""Straightforward pandas references the tests compare batchscore against."""

from __future__ import annotations

import pandas as pd


def reference_latest(versions: pd.DataFrame, start: int, end: int, as_of=None) -> pd.DataFrame:
    """SageMaker DatasetBuilder semantics, written the obvious way in pandas."""
    df = versions.copy()
    number = pd.to_numeric(df.customer_id.str.extract(r"(\d+)$")[0], errors="coerce")
    df = df[(number >= start) & (number <= end)]
    if as_of is not None:
        df = df[df.event_time <= as_of]
    df = df.sort_values(
        ["event_time", "api_invocation_time", "write_time"], ascending=False, kind="stable"
    )
    newest = df.drop_duplicates("customer_id", keep="first")  # rank first …
    return newest[~newest.is_deleted.astype(bool)]  # … then drop delete markers
