"""Parquet part files of bounded size, written batch by batch (``part-00000.parquet`` …)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROWS_PER_FILE = 5_000_000


class PartWriter:
    """Writes record batches into ``output_dir/part-NNNNN.parquet``, a new file every
    ``rows_per_file`` rows. Files left by an earlier attempt are removed first."""

    def __init__(self, output_dir: Path, rows_per_file: int = ROWS_PER_FILE) -> None:
        output_dir.mkdir(parents=True, exist_ok=True)
        for stale in output_dir.glob("*.parquet"):
            stale.unlink()
        self.output_dir = output_dir
        self.rows_per_file = rows_per_file
        self.files: list[str] = []
        self._writer: pq.ParquetWriter | None = None
        self._in_file = 0

    def write(self, batch: pa.RecordBatch) -> None:
        if self._writer is None or self._in_file >= self.rows_per_file:
            self.close()
            path = self.output_dir / f"part-{len(self.files):05d}.parquet"
            self._writer = pq.ParquetWriter(path, batch.schema)
            self.files.append(str(path))
            self._in_file = 0
        self._writer.write_batch(batch)
        self._in_file += batch.num_rows

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> PartWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
