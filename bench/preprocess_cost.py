"""Seconds of the model's preprocessing per batch: scikit-learn on ``model.frame(batch)``
against the vectorised path (``batchscore.scoring.preprocess``), alternating, medians.

    python bench/preprocess_cost.py /tmp/bs-summ-bench/n1000000/setup.json [BATCH_ROWS]

Reads the setup ``bench/run.py`` left (its config, model and deduplicated rows); checks the
two give equal matrices on every batch.
"""

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from batchscore.config import load_settings
from batchscore.registry import open_registry
from batchscore.scoring.preprocess import vectorise

setup = json.loads(Path(sys.argv[1]).read_text())
rows_per_batch = int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
settings = load_settings(setup["config"], env={})
registry = open_registry(settings, writable=False)
model = registry.load(registry.resolve(settings.model_package_group))
transformer = model.estimator[:-1]
pre = vectorise(transformer, model.input_types)
assert pre is not None, "the bench model's preprocessing is not vectorised"
print(pre.describe())

files = sorted(str(p) for p in Path(setup["dedup_dir"]).glob("*.parquet"))
table = pq.read_table(files, columns=model.input_columns)
batches = table.to_batches(max_chunksize=rows_per_batch)
library: list[float] = []
vectorised: list[float] = []
for batch in batches:
    began = time.perf_counter()
    expected = transformer.transform(model.frame(batch))
    library.append(time.perf_counter() - began)
    began = time.perf_counter()
    got = pre.transform(batch, {})
    vectorised.append(time.perf_counter() - began)
    assert np.array_equal(got, expected, equal_nan=True), "the two paths differ"
a, b = statistics.median(library), statistics.median(vectorised)
print(
    f"{len(batches)} batches of ≤{rows_per_batch:,} rows ({table.num_rows:,} in all): "
    f"model.frame + transform median {a * 1000:.1f} ms (total {sum(library):.2f} s), "
    f"vectorised median {b * 1000:.1f} ms (total {sum(vectorised):.2f} s): {a / b:.1f}× faster"
)
