"""Seconds of the model's trees per batch: the estimator's own ``predict_proba`` against the
trees compiled by tl2cgen without and with batchscore's code generation parameters
(``CODEGEN_PARAMS``: quantized thresholds), alternating, medians.

    python bench/trees_cost.py /tmp/bs-summ-bench/n1000000/setup.json [BATCH_ROWS]

Reads the setup ``bench/run.py`` left (its config, model and deduplicated rows); the
preprocessing is done once, before the clock (batchscore's vectorised version); checks the
three give the same probabilities (within 1e-12) on every batch.
"""

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import tl2cgen
import treelite

from batchscore.config import load_settings
from batchscore.registry import open_registry
from batchscore.scoring.compiled import CODEGEN_PARAMS
from batchscore.scoring.preprocess import vectorise

setup = json.loads(Path(sys.argv[1]).read_text())
rows_per_batch = int(sys.argv[2]) if len(sys.argv) > 2 else 200_000
settings = load_settings(setup["config"], env={})
registry = open_registry(settings, writable=False)
model = registry.load(registry.resolve(settings.model_package_group))
transformer, estimator = model.estimator[:-1], model.estimator[-1]
pre = vectorise(transformer, model.input_types)
assert pre is not None, "the bench model's preprocessing is not vectorised"
table = pq.read_table(setup["dedup_dir"], columns=list(model.input_types))
matrices = [
    np.ascontiguousarray(pre.transform(batch, {}))
    for batch in table.to_batches(max_chunksize=rows_per_batch)
]
tl_model = treelite.sklearn.import_model(estimator)
folder = Path(tempfile.mkdtemp())


def compiled(name: str, params: dict) -> tl2cgen.Predictor:
    library = folder / f"{name}.so"
    start = time.perf_counter()
    tl2cgen.export_lib(
        tl_model, toolchain="gcc", libpath=str(library),
        params={**params, "parallel_comp": 8}, nthread=os.cpu_count(),
    )  # fmt: skip
    print(f"compiled {name} in {time.perf_counter() - start:.1f} s")
    return tl2cgen.Predictor(str(library), nthread=os.cpu_count())


def scorer(predictor: tl2cgen.Predictor):
    return lambda x: np.asarray(predictor.predict(tl2cgen.DMatrix(x, dtype="float64"))).ravel()


contenders = {
    "predict_proba": lambda x: estimator.predict_proba(x)[:, -1],
    "compiled": scorer(compiled("plain", {})),
    f"compiled {CODEGEN_PARAMS}": scorer(compiled("tuned", CODEGEN_PARAMS)),
}
seconds: dict[str, list[float]] = {name: [] for name in contenders}
for x in matrices:
    results = {}
    for name, score in contenders.items():
        start = time.perf_counter()
        results[name] = score(x)
        seconds[name].append(time.perf_counter() - start)
    reference = results["predict_proba"]
    for name, proba in results.items():
        assert np.abs(proba - reference).max() <= 1e-12, f"{name} differs from predict_proba"
rows = sum(len(x) for x in matrices)
print(f"{rows:,} rows in {len(matrices)} batches of up to {rows_per_batch:,}; equal within 1e-12")
for name, values in seconds.items():
    print(
        f"{name:>40}: {sum(values):6.2f} s in all, median {statistics.median(values) * 1e3:7.1f} "
        f"ms per batch"
    )
