"""Benchmark data: N customers, two record versions each, 14 numeric and 6 categorical
features with about 2% missing, written to a feature group in chunks (bounded memory)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

NUMERIC = [f"num_{i:02d}" for i in range(14)]
CATEGORICAL = [f"cat_{i}" for i in range(6)]
LEVELS = [["a", "b", "c"], ["x", "y", "z", "w"], ["north", "south", "east", "west"],
          ["basic", "plus", "premium"], ["card", "bank", "cash", "check", "wallet"],
          ["dsl", "fiber", "none"]]  # fmt: skip
DEFINITION = {"customer_id": "String", "event_time": "String",
              **dict.fromkeys(NUMERIC, "Fractional"), **dict.fromkeys(CATEGORICAL, "String"),
              "label": "Integral"}  # fmt: skip
T0 = np.datetime64("2025-01-01T00:00:00", "us")


def chunk(start: int, stop: int, seed: int) -> pa.Table:
    """Two versions for each customer number in [start, stop)."""
    rng = np.random.default_rng(seed + start)
    numbers = np.repeat(np.arange(start, stop), 2)
    n = len(numbers)
    ids = np.char.add("CUST_", np.char.zfill(numbers.astype(str), 8))
    days = rng.integers(0, 200, n) + np.tile([0, 200], n // 2)  # the second version is newer
    columns: dict[str, pa.Array] = {
        "customer_id": pa.array(ids, pa.string()),
        "event_time": pa.array(T0 + (days * 86_400_000_000).astype("timedelta64[us]")),
    }
    logit = np.zeros(n)
    for i, name in enumerate(NUMERIC):
        values = rng.normal(0, 1, n)
        logit += values * (0.6 if i < 4 else 0.05)
        columns[name] = pa.array(values, pa.float64(), mask=rng.uniform(size=n) < 0.02)
    for levels, name in zip(LEVELS, CATEGORICAL, strict=True):
        codes = rng.integers(0, len(levels), n)
        logit += (codes == 0) * 0.5
        values = np.asarray(levels, dtype=object)[codes]
        columns[name] = pa.array(values, pa.string(), mask=rng.uniform(size=n) < 0.02)
    label = rng.uniform(size=n) < 1 / (1 + np.exp(-(logit + rng.normal(0, 1, n) - 0.5)))
    columns["label"] = pa.array(label.astype(np.int64))
    return pa.table(columns)


def fill_feature_group(
    store, name: str, customers: int, seed: int = 7, chunk_size: int = 1_000_000
) -> None:
    store.create_feature_group(name, DEFINITION)
    for start in range(1, customers + 1, chunk_size):
        store.ingest(name, chunk(start, min(start + chunk_size, customers + 1), seed))
