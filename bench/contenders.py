"""The contenders, each run as its own process by bench/run.py (so each has its own peak RSS).

    python bench/contenders.py floor SETUP.json
    python bench/contenders.py compiled-floor SETUP.json
    python bench/contenders.py seed SETUP.json
Each prints one JSON line: {"seconds": …, "rows": …} (compiled-floor adds how it scored).
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


def compiled_floor(setup: dict) -> dict:
    """The compiled model alone — the new limit: the deduplicated rows preloaded as Arrow, the
    model's preprocessing (batchscore's vectorised version where it has one, else the model's
    own) and its trees compiled to native code (treelite + tl2cgen with batchscore's code
    generation parameters, compiled before the clock starts), over the rows in the run's batch
    size, both cores."""
    import os
    import tempfile

    import numpy as np
    import pandas as pd
    import pyarrow.parquet as pq
    import tl2cgen
    import treelite

    table = pq.read_table(setup["dedup_dir"])
    pipeline = load_model(setup)
    transformer, estimator = pipeline[:-1], pipeline[-1]
    columns = [*setup["numeric"], *setup["categorical"]]
    input_types = {c: "double" for c in setup["numeric"]} | {
        c: "string" for c in setup["categorical"]
    }
    try:
        from batchscore.scoring.compiled import CODEGEN_PARAMS
    except ImportError:  # a batchscore from before the compiled path
        CODEGEN_PARAMS = {}
    try:
        from batchscore.scoring.preprocess import vectorise

        vectorised = vectorise(transformer, input_types)
    except ImportError:
        vectorised = None
    library = Path(tempfile.mkdtemp()) / "model.so"
    tl2cgen.export_lib(
        treelite.sklearn.import_model(estimator), toolchain="gcc", libpath=str(library),
        params={**CODEGEN_PARAMS, "parallel_comp": 8}, nthread=os.cpu_count(),
    )  # fmt: skip
    predictor = tl2cgen.Predictor(str(library), nthread=os.cpu_count())
    batches = table.select(columns).to_batches(max_chunksize=200_000)
    start = time.perf_counter()
    parts = []
    for batch in batches:
        if vectorised is not None:
            x = vectorised.transform(batch, {})
        else:
            x = transformer.transform(frame(batch.to_pandas(), setup))
        dmatrix = tl2cgen.DMatrix(np.ascontiguousarray(x, dtype=np.float64), dtype="float64")
        parts.append(np.asarray(predictor.predict(dmatrix)).reshape(len(x), -1)[:, -1])
    proba = np.concatenate(parts)
    seconds = time.perf_counter() - start
    ids = table.column("customer_id").to_numpy(zero_copy_only=False)
    pd.DataFrame({"customer_id": ids, "p": proba}).to_parquet(setup["compiled_floor_out"])
    how = "vectorised" if vectorised is not None else "scikit-learn"
    return {"seconds": seconds, "rows": len(proba), "preprocessing": how}


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
    contender = {"floor": floor, "compiled-floor": compiled_floor, "seed": seed}[name]
    result = contender(json.loads(Path(setup_path).read_text()))
    print(json.dumps(result))
