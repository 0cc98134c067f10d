"""DataSource: the latest live record per id in the range, written to ``input/`` as Parquet.

The snapshot is the lineage record of exactly what was scored: BatchInference reads it, and a
resumed run never goes back to the feature store.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchscore.errors import NothingToScoreError
from batchscore.feature_store import FeatureStore, ReadStats
from batchscore.progress import NO_PROGRESS, Progress, tracked
from batchscore.records import format_id_range
from batchscore.steps.parts import PartWriter
from batchscore.steps.results import DataSourceResult

if TYPE_CHECKING:
    from batchscore.steps.context import RunContext

log = logging.getLogger("batchscore")

# Below this many records a read leaves too little behind to hand back, and the full garbage
# collection return_memory starts with scans every object of the process (0.3–1 s while the
# model's libraries load beside it: a third of the demo's DataSource).
RETURN_MEMORY_ROWS = 100_000


def return_memory(*, collect: bool = True) -> None:
    """Hand memory freed by the read back to the OS before scoring starts (and, without the
    garbage collection, every million rows scored: ``collect=False``).

    Arrow's allocator (mimalloc) and glibc keep freed pages for reuse; without this, the
    read's high-water mark and scoring's add up: at 10M customers 2.45 GiB in one process
    against 1.1 GiB (DataSource) and 1.3 GiB (BatchInference) apart.
    """
    import contextlib
    import ctypes
    import gc

    import pyarrow as pa

    if collect:
        gc.collect()
    pa.default_memory_pool().release_unused()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def data_source(
    store: FeatureStore,
    feature_group_name: str,
    id_start: int | None,
    id_end: int | None,
    output_dir: Path,
    *,
    as_of: dt.datetime | None = None,
    snapshot_id: int | None = None,
    batch_size: int = 100_000,
    progress: Progress = NO_PROGRESS,
) -> DataSourceResult:
    """Write the latest live records of ids ``id_start``–``id_end`` to ``output_dir``.

    Reports the task ``DataSource`` to ``progress``: rows written (the total is known only
    at the end: ranking the versions comes before the first row).

    Raises:
        FeatureGroupError: the feature group (or the snapshot to resume from) does not exist.
        NothingToScoreError: no live record in the range; nothing is written.
    """
    snapshot = PartWriter(output_dir, statistics=False)  # read whole, never pruned
    with tracked(progress, "DataSource", unit="rows"), snapshot as parts:
        latest = store.latest_records(
            feature_group_name,
            id_start,
            id_end,
            as_of=as_of,
            snapshot_id=snapshot_id,
            batch_size=batch_size,
            temp_dir=output_dir.parent / "tmp",
        )
        for batch in latest.batches:
            parts.write(batch)
            progress.advance("DataSource", batch.num_rows)
    if latest.stats.records >= RETURN_MEMORY_ROWS:
        return_memory()
    return data_source_result(
        feature_group_name, id_start, id_end, as_of, latest.stats, parts.files,
        latest.snapshot_id, latest.schema.names,
    )  # fmt: skip


def data_source_result(
    feature_group_name: str,
    id_start: int | None,
    id_end: int | None,
    as_of: dt.datetime | None,
    stats: ReadStats,
    files: list[str],
    snapshot_id: int | None,
    columns: list[str],
) -> DataSourceResult:
    """The step's result, whichever engine read the records; NothingToScoreError when
    none was live (nothing is scored or published then)."""
    if stats.unmatched_ids:
        log.warning(
            "%d id(s) in feature group %r are not an optional non-digit prefix and digits "
            "(e.g. %s): never scored",
            stats.unmatched_ids,
            feature_group_name,
            ", ".join(repr(i) for i in stats.unmatched_id_examples),
        )
    if stats.records == 0:
        when = f" as of {as_of.isoformat(sep=' ')}" if as_of else ""
        raise NothingToScoreError(
            f"nothing to score: feature group {feature_group_name!r} has no live record with an "
            f"id in {format_id_range(id_start, id_end)}{when} "
            f"({stats.deleted_records_skipped} deleted). "
            "Check customer_id_start/customer_id_end, or ingest records first."
        )
    return DataSourceResult(
        rows=stats.records,
        files=files,
        snapshot_id=snapshot_id,
        duplicate_versions_skipped=stats.duplicate_versions_skipped,
        deleted_records_skipped=stats.deleted_records_skipped,
        columns=columns,
        unmatched_ids=stats.unmatched_ids,
        unmatched_id_examples=list(stats.unmatched_id_examples),
        files_skipped=stats.files_skipped,
        row_groups_skipped=stats.row_groups_skipped,
    )


def run(ctx: RunContext) -> dict[str, Any]:
    """The DataSource step of a run: the run's id range as of its time, read by its engine
    at the feature group snapshot the run first saw (resumed or retried, it reads the same)."""
    record = ctx.record
    result = ctx.engine.data_source(
        ctx.backends.feature_store,
        record.feature_group,
        record.id_start,
        record.id_end,
        Path(record.run_dir) / "input",
        as_of=dt.datetime.fromisoformat(record.as_of),
        snapshot_id=record.feature_snapshot_id,
        progress=ctx.progress,
    )
    log.info(
        "DataSource: %d records (skipped %d older versions, %d deleted)",
        result.rows,
        result.duplicate_versions_skipped,
        result.deleted_records_skipped,
    )
    return result.to_dict()
