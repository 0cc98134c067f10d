"""Rows that cannot be scored: found while BatchInference streams, set aside, counted.

A row is quarantined when a value cannot be cast to the type the model was trained on
(``uncastable_value``), or when the model raises on it (``model_error``: a batch that raises
is bisected until the rows it raises on are alone; the other rows are scored). Each
quarantined row keeps its record id, the reason, a one-line detail and the row as read (JSON),
with the run's lineage, in :data:`~batchscore.sinks.schema.QUARANTINE_SCHEMA`. BatchInference
writes them to ``runs/<run_id>/quarantine/``; Publish commits them to
``<athena_database>.<athena_output_table>_quarantine``. The run fails when their share of the
snapshot exceeds ``max_quarantine_fraction`` (:func:`check_quarantine_budget`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from batchscore.errors import BatchScoreError, ModelError, QuarantineBudgetError
from batchscore.registry.base import NUMERIC_KINDS
from batchscore.sinks.schema import QUARANTINE_SCHEMA

if TYPE_CHECKING:
    from batchscore.registry import LoadedModel

UNCASTABLE = "uncastable_value"
MODEL_ERROR = "model_error"
# Past this many rows of one batch the model raises on, the batch is not a few bad rows but a
# broken model or column: the run fails (bisecting costs ~2 log2(n) model calls per bad row;
# 100 bad rows of 100,000 took 37 s against 0.3 s clean).
MAX_BISECTED_ROWS = 100
EXAMPLES = 5


class RejectedRows:
    """The rows of one batch set aside, with why; :meth:`batch` makes quarantine rows of them."""

    def __init__(self, record_identifier: str) -> None:
        self.record_identifier = record_identifier
        self.ids: list[str | None] = []
        self.reasons: list[str] = []
        self.details: list[str] = []
        self.raw: list[str] = []

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, row: pa.RecordBatch, reason: str, detail: str) -> None:
        """Set aside ``row`` (a batch of one row, as read)."""
        values = row.to_pylist()[0]
        found = values.get(self.record_identifier)
        self.ids.append(None if found is None else str(found))
        self.reasons.append(reason)
        self.details.append(detail)
        self.raw.append(raw_json(values))

    def batch(self, constants: Mapping[str, pa.Scalar]) -> pa.RecordBatch | None:
        """The rows in ``QUARANTINE_SCHEMA``, the lineage columns from ``constants``; None
        when nothing was set aside."""
        n = len(self.ids)
        if not n:
            return None
        arrays = [pa.array(self.ids, pa.string()), pa.array(self.reasons, pa.string()),
                  pa.array(self.details, pa.string()), pa.array(self.raw, pa.string())]  # fmt: skip
        arrays += [pa.repeat(constants[f.name], n) for f in list(QUARANTINE_SCHEMA)[len(arrays) :]]
        return pa.RecordBatch.from_arrays(arrays, schema=QUARANTINE_SCHEMA)


def raw_json(values: dict[str, Any]) -> str:
    """A row as read, as JSON: times and other non-JSON values as text, NaN and ±inf as
    ``"nan"``, ``"inf"``, ``"-inf"`` (JSON has no such numbers)."""
    plain = {k: str(v) if isinstance(v, float) and not np.isfinite(v) else v
             for k, v in values.items()}  # fmt: skip
    return json.dumps(plain, default=str, ensure_ascii=False)


def drop_uncastable(
    batch: pa.RecordBatch, input_types: Mapping[str, str], rejected: RejectedRows
) -> pa.RecordBatch:
    """``batch`` without the rows holding text the model cannot read as a number (set aside).

    Only text columns the model takes as numbers are checked (Arrow casts them first; only a
    failed cast looks value by value, with Python's ``float`` — what the model's cast uses).
    A column none of whose values is a number is not a row problem: it is left for the model's
    cast to refuse (``SchemaMismatchError`` naming the column).
    """
    bad = np.zeros(batch.num_rows, dtype=bool)
    for column, kind in input_types.items():
        values = batch.column(column)
        if kind not in NUMERIC_KINDS or (
            not pa.types.is_string(values.type) and not (pa.types.is_large_string(values.type))
        ):
            continue
        try:
            values.cast(pa.float64())
            continue
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
        failed = [i for i, value in enumerate(values.to_pylist())
                  if value is not None and not _is_number(value)]  # fmt: skip
        if len(failed) == len(values) - values.null_count and len(failed) > 1:
            continue  # the whole column: a retyped feature, not a poisoned row
        for i in failed:
            if not bad[i]:
                bad[i] = True
                rejected.add(
                    batch.slice(i, 1),
                    UNCASTABLE,
                    f"column {column!r} holds {values[i].as_py()!r}, which is not a number (the "
                    f"model was trained on {kind})",
                )
    return batch.filter(pa.array(~bad)) if bad.any() else batch


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def predict_bisecting(
    model: LoadedModel, batch: pa.RecordBatch, rejected: RejectedRows
) -> tuple[pa.RecordBatch, np.ndarray, np.ndarray]:
    """The model's predictions for ``batch``; when the model raises, the batch is halved until
    the rows it raises on are alone, and those are set aside.

    Returns:
        The rows scored (``batch`` without those set aside, in order), their predicted class
        and probability.

    Raises:
        BatchScoreError: batchscore's own diagnosis of the whole batch (a model that cannot
            take missing values, a column that is not numeric), as before quarantine.
        ModelError: the model raised on more than ``MAX_BISECTED_ROWS`` rows of one batch (a
            broken model or feature, not bad rows); the message has the model's error.
    """
    if batch.num_rows == 0:  # every row set aside already (a model may refuse no rows)
        return batch, np.empty(0, np.int32), np.empty(0, np.float64)
    scored: list[tuple[pa.RecordBatch, np.ndarray, np.ndarray]] = []
    first_error: list[Exception] = []

    def attempt(part: pa.RecordBatch) -> None:
        counted = dict(model.non_finite)
        try:
            scored.append((part, *model.predict(part)))
            return
        except (BatchScoreError, MemoryError):
            raise
        except Exception as exc:
            model.non_finite.clear()  # a failed attempt's ±inf are counted when they score
            model.non_finite.update(counted)
            if not first_error:
                first_error.append(exc)
            if part.num_rows == 1:
                if len(rejected) >= MAX_BISECTED_ROWS:
                    raise _too_many_error(model, batch, rejected, first_error[0]) from exc
                rejected.add(part, MODEL_ERROR, f"{type(exc).__name__}: {exc}".strip())
                return
        half = part.num_rows // 2
        attempt(part.slice(0, half))
        attempt(part.slice(half))

    attempt(batch)
    if len(scored) == 1:
        return scored[0]
    if not scored:
        return batch.slice(0, 0), np.empty(0, np.int32), np.empty(0, np.float64)
    kept = pa.Table.from_batches([part for part, _, _ in scored]).combine_chunks()
    return (
        kept.to_batches()[0],
        np.concatenate([p for _, p, _ in scored]),
        np.concatenate([q for _, _, q in scored]),
    )


def _too_many_error(
    model: LoadedModel, batch: pa.RecordBatch, rejected: RejectedRows, first: Exception
) -> ModelError:
    ids = ", ".join(repr(i) for i in rejected.ids[:3])
    return ModelError(
        f"model {model.version.label} raised on more than {MAX_BISECTED_ROWS} rows of a batch "
        f"of {batch.num_rows} (first {ids}): {type(first).__name__}: {first}. That is not a "
        "few bad rows to quarantine but the model or a feature: check that the model was "
        "trained on these features, or fix the feature upstream."
    )


# The budget ---------------------------------------------------------------------------------


def quarantine_files(path: str | Path | None) -> list[Path]:
    """The quarantine Parquet files BatchInference wrote to ``path`` (none: none)."""
    return sorted(Path(path).glob("*.parquet")) if path else []


def first_quarantined(path: str | Path | None, n: int = EXAMPLES) -> list[dict[str, Any]]:
    """The first ``n`` quarantined rows (record id, reason, detail) in ``path``."""
    import pyarrow.parquet as pq

    found: list[dict[str, Any]] = []
    for file in quarantine_files(path):
        table = pq.read_table(file, columns=["record_id", "reason", "detail"])
        found += table.slice(0, n - len(found)).to_pylist()
        if len(found) >= n:
            break
    return found


def check_quarantine_budget(
    quarantined: int, scored: int, max_fraction: float, path: str | Path | None
) -> None:
    """Fail when the rows set aside are more than ``max_fraction`` of the snapshot.

    Args:
        quarantined: rows set aside.
        scored: rows scored (the snapshot is both).
        max_fraction: ``max_quarantine_fraction`` (0: any row set aside fails the run).
        path: where they were written (``runs/<run_id>/quarantine``).

    Raises:
        QuarantineBudgetError: naming the count, the share, the first rows and their reasons,
            the folder, and the key to raise.
    """
    total = quarantined + scored
    share = quarantined / total if total else 0.0
    if not quarantined or share <= max_fraction:
        return
    examples = "; ".join(
        f"{row['record_id']!r} ({row['reason']}: {row['detail']})"
        for row in first_quarantined(path, 3)
    )
    raise QuarantineBudgetError(
        f"{quarantined} of {total} rows ({share:.2%}) could not be scored, more than "
        f"max_quarantine_fraction allows ({max_fraction:g}): {examples}. They are in "
        f"{path} (Parquet, one row each with the reason and the raw values). Fix them "
        "upstream, or set max_quarantine_fraction above "
        f"{share:.4g} to publish the other rows and put these in the quarantine table. "
        "Nothing was published."
    )
