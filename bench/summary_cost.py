"""CPU seconds of summarising a bench snapshot batch by batch (what checks add to
BatchInference), against the model's predict on the same batches.

    python bench/summary_cost.py /tmp/batchscore-bench/n1000000/setup.json

Reads the setup ``bench/run.py`` left (its workspace, model and deduplicated rows).
"""

import datetime as dt
import json
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from batchscore.config import load_settings
from batchscore.registry import open_registry
from batchscore.steps.batch_inference import iter_batches, summary_plan

setup = json.loads(Path(sys.argv[1]).read_text())
settings = load_settings(setup["config"], env={})
registry = open_registry(settings)
model = registry.load(registry.resolve("bench-model"))
plan = summary_plan(settings, model, dt.datetime.now(dt.UTC))
files = sorted(str(p) for p in Path(setup["dedup_dir"]).glob("*.parquet"))
summ = score = 0.0
for batch in iter_batches(files, settings.batch_size):
    began = time.process_time()
    pred, proba = model.predict(batch)
    score += time.process_time() - began
    began = time.process_time()
    plan.summarize(batch, proba, pred)
    summ += time.process_time() - began
rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
print(
    f"rows {rows:,}  predict CPU {score:.2f}s  summarize CPU {summ:.2f}s "
    f"({summ / score:.1%} of predict)"
)
