"""Seconds of DataSource's read alone (no model, no run): the feature store's
``latest_records`` streamed to the end, and written as the snapshot when ``--write``.

    python bench/read_cost.py /tmp/bench16/n10000000/bench.yaml [--write]

Prints when pass 1 (the ranking in DuckDB) ended, the first batch, the whole read, the
rows and the read's statistics.
"""

import sys
import tempfile
import time
from pathlib import Path

started = time.perf_counter()
import batchscore.feature_store.latest as latest  # noqa: E402
from batchscore.config import load_settings  # noqa: E402
from batchscore.feature_store import open_feature_store  # noqa: E402
from batchscore.steps.parts import PartWriter  # noqa: E402

settings = load_settings(sys.argv[1], env={})
store = open_feature_store(settings, writable=False)
marks: dict[str, float] = {}
rank_newest = latest.rank_newest


def timed_rank(*args, **kwargs):
    result = rank_newest(*args, **kwargs)
    marks["pass 1"] = time.perf_counter()
    return result


latest.rank_newest = timed_rank
opened = time.perf_counter()
records = store.latest_records(
    settings.feature_group_name, settings.customer_id_start, settings.customer_id_end,
    batch_size=settings.batch_size, temp_dir=None,
)  # fmt: skip
rows = 0
# The snapshot as DataSource writes it (no column statistics), removed at the end: 1.2 GB at
# 10M customers.
with tempfile.TemporaryDirectory(prefix="read-cost-") as folder:
    with PartWriter(Path(folder), statistics=False) as parts:
        for batch in records.batches:
            marks.setdefault("first batch", time.perf_counter())
            rows += batch.num_rows
            if "--write" in sys.argv:
                parts.write(batch)
    marks["done"] = time.perf_counter()  # the files written and closed
print(f"imports and store {opened - started:.2f} s; from the read's start:")
for name, moment in marks.items():
    print(f"  {name:>12}: {moment - opened:6.2f} s")
print(f"{rows:,} rows; {records.stats}")
