"""BatchInference: stream the DataSource snapshot through the model, batch by batch.

Writes ``predictions/`` as Parquet files in the output table's exact schema (so Publish can
commit them as they are) and, when the target column is present, ``evaluation.json``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batchscore.faults import failpoint
from batchscore.metrics import classification_metrics
from batchscore.registry import LoadedModel
from batchscore.steps.parts import PartWriter
from batchscore.tables import PREDICTIONS_SCHEMA

log = logging.getLogger("batchscore")


@dataclass(frozen=True)
class Lineage:
    """What every prediction row carries about where it came from."""

    run_id: str
    pipeline_name: str
    id_range: str
    inference_date: dt.date
    timestamp: dt.datetime


@dataclass(frozen=True)
class BatchInferenceResult:
    rows: int
    files: list[str]
    evaluation: dict[str, Any] | None
    evaluation_path: str | None
    ignored_columns: list[str]
    unseen_categories: dict[str, int] = field(default_factory=dict)
    non_finite_values: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def iter_batches(files: Sequence[str | Path], batch_size: int) -> Iterator[pa.RecordBatch]:
    """The files' record batches, the next one read on a background thread while the caller
    works on this one."""
    from concurrent.futures import ThreadPoolExecutor

    def read() -> Iterator[pa.RecordBatch]:
        for path in files:
            yield from pq.ParquetFile(path).iter_batches(batch_size=batch_size)

    batches = read()
    with ThreadPoolExecutor(1, thread_name_prefix="batchscore-read") as reader:
        upcoming = reader.submit(next, batches, None)
        while (batch := upcoming.result()) is not None:
            upcoming = reader.submit(next, batches, None)
            yield batch


def _unseen_counts(batch: pa.RecordBatch, vocabularies: dict[str, list[str]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for column, vocabulary in vocabularies.items():
        if column not in batch.schema.names:
            continue
        values = batch.column(column)
        seen = pc.is_in(values, value_set=pa.array(vocabulary, pa.string()))
        unseen = pc.sum(pc.and_(values.is_valid(), pc.invert(seen))).as_py() or 0
        if unseen:
            counts[column] = unseen
    return counts


def batch_inference(
    input_files: Sequence[str | Path],
    model: LoadedModel,
    output_dir: Path,
    *,
    record_identifier: str,
    lineage: Lineage,
    target_column: str | None,
    source_label: str,
    batch_size: int = 100_000,
) -> BatchInferenceResult:
    """Score every row of ``input_files`` with ``model``.

    Raises:
        SchemaMismatchError: the snapshot lacks a column the model needs, or a value does not
            fit the type the model was trained on.
    """
    parts = PartWriter(output_dir)
    model.non_finite.clear()
    columns = pq.read_schema(input_files[0]).names if input_files else []
    model.check_columns(columns, source_label)
    used = {record_identifier, *model.input_columns}
    ignored = [c for c in columns if c not in used and c != target_column]
    if ignored:
        log.info(
            "ignoring %d column(s) the model does not use: %s", len(ignored), ", ".join(ignored)
        )
    vocabularies = (model.profile or {}).get("category_vocabularies", {})
    has_target = bool(target_column) and target_column in columns

    constants = {
        "timestamp": pa.scalar(lineage.timestamp, pa.timestamp("us")),
        "model_name": pa.scalar(model.version.group, pa.string()),
        "model_version": pa.scalar(model.version.version, pa.int32()),
        "run_id": pa.scalar(lineage.run_id, pa.string()),
        "pipeline_name": pa.scalar(lineage.pipeline_name, pa.string()),
        "id_range": pa.scalar(lineage.id_range, pa.string()),
        "inference_date": pa.scalar(lineage.inference_date, pa.date32()),
    }
    rows = 0
    unseen: dict[str, int] = {}
    labels: list[np.ndarray] = []
    predicted: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    try:
        for batch in iter_batches(input_files, batch_size):
            prediction, probability = model.predict(batch)
            n = batch.num_rows
            arrays = [
                batch.column(record_identifier).cast(pa.string()),
                pa.array(prediction, pa.int32()),
                pa.array(probability, pa.float64()),
                *(pa.repeat(constants[f.name], n) for f in list(PREDICTIONS_SCHEMA)[3:]),
            ]
            out = pa.RecordBatch.from_arrays(arrays, schema=PREDICTIONS_SCHEMA)
            parts.write(out)
            failpoint("BatchInference:batch")
            rows += n
            for column, count in _unseen_counts(batch, vocabularies).items():
                unseen[column] = unseen.get(column, 0) + count
            if has_target:
                truth = batch.column(target_column)
                valid = truth.is_valid()
                if pc.any(valid).as_py():
                    mask = valid.to_numpy(zero_copy_only=False)
                    labels.append(truth.filter(valid).to_numpy().astype(np.int64))
                    predicted.append(prediction[mask])
                    scores.append(probability[mask])
    finally:
        parts.close()
    if model.non_finite:
        log.warning(
            "infinite values scored as missing: %s",
            ", ".join(f"{c}={n}" for c, n in model.non_finite.items()),
        )
    if unseen:
        log.info(
            "unseen categories (scored as missing): %s",
            ", ".join(f"{c}={n}" for c, n in unseen.items()),
        )

    evaluation = None
    evaluation_path = None
    if labels:
        evaluation = classification_metrics(
            np.concatenate(labels), np.concatenate(predicted), np.concatenate(scores)
        )
        evaluation["target_column"] = target_column
        path = output_dir.parent / "evaluation.json"
        path.write_text(json.dumps(evaluation, indent=2))
        evaluation_path = str(path)
    return BatchInferenceResult(
        rows=rows,
        files=parts.files,
        evaluation=evaluation,
        evaluation_path=evaluation_path,
        ignored_columns=ignored,
        unseen_categories=unseen,
        non_finite_values=dict(model.non_finite),
    )
