"""The contenders, each run as its own process by bench/run.py (so each has its own peak RSS).

    python bench/contenders.py floor SETUP.json
    python bench/contenders.py seed SETUP.json
Each prints one JSON line: {"seconds": …, "rows": …}.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def load_model(setup: dict):
    import skops.io

    from batchscore.registry.base import TRUSTED_SKOPS_TYPES

    return skops.io.load(setup["model_file"], trusted=list(TRUSTED_SKOPS_TYPES))


def frame(df, setup: dict):
    """The model's columns, typed as it was trained (numbers as float64)."""
    import pandas as pd

    out = pd.DataFrame({c: df[c].astype("float64") for c in setup["numeric"]})
    for c in setup["categorical"]:
        out[c] = df[c]
    return out


def floor(setup: dict) -> dict:
    """The model alone: predict_proba on the deduplicated rows, already in memory."""
    import pandas as pd
    import pyarrow.parquet as pq

    df = pq.read_table(setup["dedup_dir"]).to_pandas()
    x = frame(df, setup)
    model = load_model(setup)
    start = time.perf_counter()
    proba = model.predict_proba(x)[:, -1]
    seconds = time.perf_counter() - start
    pd.DataFrame({"customer_id": df["customer_id"], "p": proba}).to_parquet(setup["floor_out"])
    return {"seconds": seconds, "rows": len(df)}


def seed(setup: dict) -> dict:
    """The proof of concept's way: read the whole offline table into pandas, sort, drop
    duplicates, drop deleted, filter the id range, predict, write CSV."""
    import pandas as pd
    import pyarrow.parquet as pq

    start = time.perf_counter()
    df = pd.concat(
        [pq.read_table(f).to_pandas() for f in setup["offline_files"]], ignore_index=True
    )
    number = df["customer_id"].str.extract(r"(\d+)$")[0].astype("int64")
    df = df[(number >= setup["id_start"]) & (number <= setup["id_end"])]
    df = df.sort_values(["customer_id", "event_time", "api_invocation_time", "write_time"])
    df = df.drop_duplicates("customer_id", keep="last")
    df = df[~df["is_deleted"].astype(bool)]
    model = load_model(setup)
    proba = model.predict_proba(frame(df, setup))[:, -1]
    out = pd.DataFrame(
        {
            "customer_id": df["customer_id"],
            "prediction": (proba >= 0.5).astype(int),
            "prediction_probability": proba,
        }
    )
    out.to_csv(setup["seed_out"], index=False)
    return {"seconds": time.perf_counter() - start, "rows": len(out)}


if __name__ == "__main__":
    name, setup_path = sys.argv[1], sys.argv[2]
    result = {"floor": floor, "seed": seed}[name](json.loads(Path(setup_path).read_text()))
    print(json.dumps(result))
