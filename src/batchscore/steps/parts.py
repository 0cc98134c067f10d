"""Parquet part files of bounded size, written batch by batch (``part-00000.parquet`` …)."""

from __future__ import annotations

import contextlib
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from batchscore.durable import fsync_dir, fsync_file

ROWS_PER_FILE = 5_000_000


def dictionary_columns(schema: pa.Schema) -> list[str]:
    """Columns worth dictionary-encoding: strings (categories, ids, lineage constants).

    Numbers are left plain: trying a dictionary on high-cardinality floats and falling back
    made writing three times slower (1M rows x 22 columns: 1.49 s -> 0.53 s without).
    """
    return [
        f.name
        for f in schema
        if pa.types.is_string(f.type)
        or pa.types.is_large_string(f.type)
        or pa.types.is_dictionary(f.type)
    ]


class PartWriter:
    """Writes record batches into ``output_dir/part-NNNNN.parquet``, a new file every
    ``rows_per_file`` rows. Files left by an earlier attempt are removed first.

    ``statistics``: each column's min/max/null count in the footers. Files committed to a
    table keep them (Iceberg's column bounds, readers' pruning); the DataSource snapshot, read
    whole and in order by BatchInference only, is written without (22% less writing).

    Writing happens on a background thread (Parquet encoding releases the GIL), one batch at
    a time: ``write`` returns once the *previous* batch is written, so the caller computes the
    next batch while this one is encoded, and at most one batch waits in memory. A write error
    surfaces from the next ``write`` or from ``close``.
    """

    def __init__(
        self, output_dir: Path, rows_per_file: int = ROWS_PER_FILE, *, statistics: bool = True
    ) -> None:
        output_dir.mkdir(parents=True, exist_ok=True)
        for stale in output_dir.glob("*.parquet"):
            stale.unlink()
        self.output_dir = output_dir
        self.rows_per_file = rows_per_file
        self.statistics = statistics
        self.files: list[str] = []
        self._writer: pq.ParquetWriter | None = None
        self._in_file = 0
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="batchscore-parts")
        self._pending: Future[None] | None = None

    def write(self, batch: pa.RecordBatch) -> None:
        self._wait()
        self._pending = self._worker.submit(self._write, batch)

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def _write(self, batch: pa.RecordBatch) -> None:
        if self._writer is None or self._in_file >= self.rows_per_file:
            self._close_file()
            path = self.output_dir / f"part-{len(self.files):05d}.parquet"
            self._writer = pq.ParquetWriter(
                path,
                batch.schema,
                use_dictionary=dictionary_columns(batch.schema),
                write_statistics=self.statistics,
            )
            self.files.append(str(path))
            self._in_file = 0
        self._writer.write_batch(batch)
        self._in_file += batch.num_rows

    def _close_file(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            fsync_file(self.files[-1])  # on disk before a run record or a commit names it

    def close(self) -> None:
        try:
            self._wait()
        finally:
            self._worker.submit(self._close_file).result()
            self._worker.shutdown()
        fsync_dir(self.output_dir)

    def __enter__(self) -> PartWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
            return
        with contextlib.suppress(Exception):  # keep the error already on its way out
            self.close()
