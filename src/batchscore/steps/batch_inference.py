"""BatchInference: stream the DataSource snapshot through the model, batch by batch.

Writes ``predictions/`` as Parquet files in the output table's exact schema (so Publish can
commit them as they are), the rows it could not score to ``quarantine/``
(:mod:`batchscore.monitoring.quarantine`) and, when the target column is present,
``evaluation.json``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batchscore.faults import failpoint
from batchscore.feature_store.latest import open_parquet, utc_naive
from batchscore.metrics import classification_metrics
from batchscore.monitoring.quarantine import (
    RejectedRows,
    check_quarantine_budget,
    drop_uncastable,
    predict_bisecting,
)
from batchscore.monitoring.summaries import SUMMARY_FILE, RunSummary, SummaryPlan
from batchscore.progress import NO_PROGRESS, Progress, tracked
from batchscore.records import format_id_range
from batchscore.registry import LoadedModel
from batchscore.scoring.compiled import Parity, ScoringPlan, check_parity
from batchscore.sinks.schema import PREDICTIONS_SCHEMA
from batchscore.steps.parts import PartWriter
from batchscore.steps.results import BatchInferenceResult, Lineage

if TYPE_CHECKING:
    from batchscore.config import Settings
    from batchscore.scoring.compiled import CompiledModel
    from batchscore.steps.context import RunContext

log = logging.getLogger("batchscore")

QUARANTINE_DIR = "quarantine"  # beside predictions/ in the run folder


def snapshot_rows(files: Sequence[str | Path]) -> int:
    """Rows in the Parquet files, from their footers (no data is read)."""
    return sum(pq.ParquetFile(path).metadata.num_rows for path in files)


# Rows between two hand-backs of freed memory to the OS while scoring (see iter_batches).
RETURN_MEMORY_ROWS = 1_000_000


def iter_batches(files: Sequence[str | Path], batch_size: int) -> Iterator[pa.RecordBatch]:
    """The files' record batches, the next one read on a background thread while the caller
    works on this one.

    Every :data:`RETURN_MEMORY_ROWS` rows, memory the previous batches freed is handed back to
    the OS (:func:`~batchscore.steps.data_source.return_memory`): the allocators otherwise
    keep it, batch after batch, and the peak grows with the rows scored.
    """
    from concurrent.futures import ThreadPoolExecutor

    from batchscore.steps.data_source import return_memory

    def read() -> Iterator[pa.RecordBatch]:
        for path in files:
            yield from open_parquet(path).iter_batches(batch_size=batch_size)

    batches = read()
    since_return = 0
    with ThreadPoolExecutor(1, thread_name_prefix="batchscore-read") as reader:
        upcoming = reader.submit(next, batches, None)
        while (batch := upcoming.result()) is not None:
            upcoming = reader.submit(next, batches, None)
            yield batch
            since_return += batch.num_rows
            if since_return >= RETURN_MEMORY_ROWS:
                return_memory(collect=False)
                since_return = 0


def _unseen_counts(
    batch: pa.RecordBatch, vocabularies: dict[str, list[str]], summary: RunSummary | None = None
) -> dict[str, int]:
    """Per column, the valid values its vocabulary does not hold; taken from ``summary``'s
    categorical counts when it has the column (the same count, which it makes anyway)."""
    counts: dict[str, int] = {}
    for column, vocabulary in vocabularies.items():
        if column not in batch.schema.names:
            continue
        counted = summary.categorical.get(column) if summary is not None else None
        if counted is not None and vocabulary:
            if counted.unseen:
                counts[column] = counted.unseen
            continue
        values = batch.column(column)
        seen = pc.is_in(values, value_set=pa.array(vocabulary, pa.string()))
        unseen = pc.sum(pc.and_(values.is_valid(), pc.invert(seen))).as_py() or 0
        if unseen:
            counts[column] = unseen
    return counts


def _add_counts(into: dict[str, int], counts: dict[str, int]) -> None:
    for column, count in counts.items():
        into[column] = into.get(column, 0) + count


@dataclass
class ScoredBatch:
    """One batch's prediction rows (the output table's schema) and what evaluation needs."""

    predictions: pa.RecordBatch
    labels: np.ndarray | None  # the target where known (masked to labelled rows)
    predicted: np.ndarray | None
    scores: np.ndarray | None
    unseen_categories: dict[str, int]
    non_finite_values: dict[str, int]
    summary: RunSummary | None = None  # the batch's features and scores (None: checks off)
    quarantined: pa.RecordBatch | None = None  # rows not scored (QUARANTINE_SCHEMA), or None
    parity: Parity | None = None  # compiled path: its check against the library (else None)


class Scorer:
    """Turns feature batches into prediction rows. The local engine calls it in a loop; the
    Ray engine holds one per actor. Stateless between batches.

    With ``compiled``, batches are scored by the compiled trees and a sample of each by the
    library too (:func:`~batchscore.scoring.compiled.check_parity`); a batch the compiled path
    cannot take as the library would is the library's, bisected for quarantine as before.
    """

    def __init__(
        self,
        model: LoadedModel,
        *,
        record_identifier: str,
        lineage: Lineage,
        target_column: str | None,
        summary_plan: SummaryPlan | None = None,
        compiled: CompiledModel | None = None,
    ) -> None:
        self.model = model
        self.compiled = compiled
        self.record_identifier = record_identifier
        self.target_column = target_column
        self.summary_plan = summary_plan
        self.vocabularies = (model.profile or {}).get("category_vocabularies", {})
        self.constants = {
            "timestamp": pa.scalar(lineage.timestamp, pa.timestamp("us")),
            "model_name": pa.scalar(model.version.group, pa.string()),
            "model_version": pa.scalar(model.version.version, pa.int32()),
            "run_id": pa.scalar(lineage.run_id, pa.string()),
            "pipeline_name": pa.scalar(lineage.pipeline_name, pa.string()),
            "id_range": pa.scalar(lineage.id_range, pa.string()),
            "inference_date": pa.scalar(lineage.inference_date, pa.date32()),
        }
        self._constants_made: tuple[int, list[pa.Array]] = (-1, [])

    def __call__(self, batch: pa.RecordBatch) -> ScoredBatch:
        self.model.non_finite.clear()
        # Rows that cannot be scored are set aside (quarantined); the rest are scored.
        rejected = RejectedRows(self.record_identifier)
        batch = drop_uncastable(batch, self.model.input_types, rejected)
        batch, prediction, probability, parity = self._predict(batch, rejected)
        arrays = [
            batch.column(self.record_identifier).cast(pa.string()),
            pa.array(prediction, pa.int32()),
            pa.array(probability, pa.float64()),
            *self._constant_columns(batch.num_rows),
        ]
        out = pa.RecordBatch.from_arrays(arrays, schema=PREDICTIONS_SCHEMA)
        labels = predicted = scores = None
        if self.target_column and self.target_column in batch.schema.names:
            truth = batch.column(self.target_column)
            valid = truth.is_valid()
            mask = valid.to_numpy(zero_copy_only=False)
            labels = truth.filter(valid).to_numpy().astype(np.int64)
            predicted, scores = prediction[mask], probability[mask]
        summary = (
            self.summary_plan.summarize(batch, probability, prediction)
            if self.summary_plan
            else None
        )
        return ScoredBatch(
            out,
            labels,
            predicted,
            scores,
            _unseen_counts(batch, self.vocabularies, summary),
            dict(self.model.non_finite),
            summary=summary,
            quarantined=rejected.batch(self.constants),
            parity=parity,
        )

    def _constant_columns(self, rows: int) -> list[pa.Array]:
        """The lineage columns (the same value on every row) for a batch of ``rows``: made
        once per length and shared by the batches of that length (Arrow arrays are immutable),
        not rebuilt per batch — four of them are strings, tens of bytes a row."""
        if self._constants_made[0] != rows:
            names = PREDICTIONS_SCHEMA.names[3:]
            columns = [pa.repeat(self.constants[name], rows) for name in names]
            self._constants_made = (rows, columns)
        return self._constants_made[1]

    def _predict(
        self, batch: pa.RecordBatch, rejected: RejectedRows
    ) -> tuple[pa.RecordBatch, np.ndarray, np.ndarray, Parity | None]:
        if self.compiled is None:
            return *predict_bisecting(self.model, batch, rejected), None
        if batch.num_rows:
            counted = dict(self.model.non_finite)
            proba = self.compiled.predict_proba(batch, self.model)
            if proba is not None:
                prediction, probability = self.model.decide(proba)
                parity = check_parity(self.model, batch, prediction, probability)
                if parity is not None:
                    return batch, prediction, probability, parity
            self.model.non_finite.clear()  # the library counts this batch's ±inf itself
            self.model.non_finite.update(counted)
        scored = predict_bisecting(self.model, batch, rejected)
        return *scored, Parity(deferred_rows=batch.num_rows)


def _compact(values: np.ndarray | None) -> np.ndarray | None:
    """Integer class labels in the smallest integer type holding them all (equal values)."""
    if values is None or not len(values) or values.dtype.kind not in "iu":
        return values
    smallest = np.result_type(np.min_scalar_type(values.min()), np.min_scalar_type(values.max()))
    return values.astype(smallest) if smallest.itemsize < values.itemsize else values


def _join(parts: list[np.ndarray]) -> np.ndarray:
    """The batches' arrays as one, the list emptied."""
    joined = np.concatenate(parts)
    parts.clear()
    return joined


@dataclass
class ScoringTotals:
    """What BatchInference adds up over its batches, whichever engine scored them."""

    rows: int = 0
    quarantined: int = 0
    unseen_categories: dict[str, int] = field(default_factory=dict)
    non_finite_values: dict[str, int] = field(default_factory=dict)
    labels: list[np.ndarray] = field(default_factory=list)
    predicted: list[np.ndarray] = field(default_factory=list)
    scores: list[np.ndarray] = field(default_factory=list)
    summary: RunSummary | None = None
    parity: Parity = field(default_factory=Parity)

    def add(self, scored: ScoredBatch) -> None:
        self.rows += scored.predictions.num_rows
        self.parity.merge(scored.parity)
        if scored.summary is not None:
            self.summary = (self.summary or RunSummary()).merge(scored.summary)
        self.quarantined += scored.quarantined.num_rows if scored.quarantined is not None else 0
        _add_counts(self.unseen_categories, scored.unseen_categories)
        _add_counts(self.non_finite_values, scored.non_finite_values)
        if scored.labels is not None and len(scored.labels):
            # Kept to the end for the metrics: class labels in the smallest integer type that
            # holds them (int8 for 0/1, 1 byte a row where int64 took 8), scores as they are.
            self.labels.append(_compact(scored.labels))
            self.predicted.append(_compact(scored.predicted))
            self.scores.append(scored.scores)

    def result(
        self,
        files: list[str],
        ignored: list[str],
        target_column: str | None,
        run_dir: Path,
        quarantine_path: Path | None = None,
    ) -> BatchInferenceResult:
        """Log what was noticed, write ``evaluation.json`` when labels were seen and
        ``summary.json`` when batches were summarised."""
        if self.non_finite_values:
            log.warning(
                "infinite values scored as missing: %s",
                ", ".join(f"{c}={n}" for c, n in self.non_finite_values.items()),
            )
        if self.unseen_categories:
            log.info(
                "unseen categories (scored as missing): %s",
                ", ".join(f"{c}={n}" for c, n in self.unseen_categories.items()),
            )
        evaluation = None
        evaluation_path = None
        if self.labels:
            # Each list freed as it is joined: the batches and the whole never all coexist.
            joined = [_join(parts) for parts in (self.labels, self.predicted, self.scores)]
            evaluation = classification_metrics(*joined)
            evaluation["target_column"] = target_column
            path = run_dir / "evaluation.json"
            path.write_text(json.dumps(evaluation, indent=2))
            evaluation_path = str(path)
        summary_path = None
        if self.summary is not None:
            summary_path = str(self.summary.save(run_dir / SUMMARY_FILE))
        return BatchInferenceResult(
            rows=self.rows,
            files=files,
            evaluation=evaluation,
            evaluation_path=evaluation_path,
            ignored_columns=ignored,
            unseen_categories=self.unseen_categories,
            non_finite_values=self.non_finite_values,
            summary_path=summary_path,
            quarantined=self.quarantined,
            quarantine_path=str(quarantine_path) if self.quarantined and quarantine_path else None,
        )


def check_inputs(
    columns: list[str],
    model: LoadedModel,
    *,
    record_identifier: str,
    target_column: str | None,
    source_label: str,
) -> list[str]:
    """Raise SchemaMismatchError when a model column is missing; the columns it ignores."""
    model.check_columns(columns, source_label)
    used = {record_identifier, *model.input_columns}
    ignored = [c for c in columns if c not in used and c != target_column]
    if ignored:
        log.info(
            "ignoring %d column(s) the model does not use: %s", len(ignored), ", ".join(ignored)
        )
    return ignored


def batch_inference(
    input_files: Sequence[str | Path],
    model: LoadedModel,
    output_dir: Path,
    *,
    record_identifier: str,
    lineage: Lineage,
    target_column: str | None,
    source_label: str,
    summary_plan: SummaryPlan | None = None,
    batch_size: int = 100_000,
    progress: Progress = NO_PROGRESS,
    scoring: ScoringPlan | None = None,
) -> BatchInferenceResult:
    """Score every row of ``input_files`` with ``model``, reporting the task
    ``BatchInference`` to ``progress``: rows scored of the rows in the files, per batch.
    With a ``summary_plan``, every batch is summarised too, into ``summary.json``. With a
    compiled ``scoring`` plan, the compiled trees score; when a batch's parity check fails,
    every row is scored again by the library (``scoring: auto``).

    Raises:
        SchemaMismatchError: the snapshot lacks a column the model needs, or a value does not
            fit the type the model was trained on.
        ModelError: ``scoring: compiled`` and the compiled trees differ from the library.
    """
    columns = pq.read_schema(input_files[0]).names if input_files else []
    ignored = check_inputs(
        columns,
        model,
        record_identifier=record_identifier,
        target_column=target_column,
        source_label=source_label,
    )
    while True:
        scorer = Scorer(
            model,
            record_identifier=record_identifier,
            lineage=lineage,
            target_column=target_column,
            summary_plan=summary_plan,
            compiled=scoring.compiled if scoring else None,
        )
        totals = ScoringTotals()
        with (
            tracked(progress, "BatchInference", snapshot_rows(input_files), "rows"),
            PartWriter(output_dir) as parts,
            PartWriter(output_dir.parent / QUARANTINE_DIR) as quarantine,
        ):
            for batch in iter_batches(input_files, batch_size):
                scored = scorer(batch)
                totals.add(scored)
                if scoring is not None and totals.parity.failed:
                    break
                if scored.predictions.num_rows:  # none when every row was set aside
                    parts.write(scored.predictions)
                if scored.quarantined is not None:
                    quarantine.write(scored.quarantined)
                failpoint("BatchInference:batch")
                progress.advance("BatchInference", batch.num_rows)
        if scoring is not None and totals.parity.failed:
            scoring.parity_failed(totals.parity)  # raises with scoring: compiled
            model.non_finite.clear()
            continue  # new PartWriters remove the parts written so far
        break
    result = totals.result(
        parts.files, ignored, target_column, output_dir.parent, quarantine.output_dir
    )
    if scoring is None:
        return result
    if scoring.fallback is None:
        scoring.parity = totals.parity
    return dataclasses.replace(result, scoring=scoring.record())


def summary_plan(settings: Settings, model: LoadedModel, as_of: dt.datetime) -> SummaryPlan | None:
    """What Validate needs summarised of each batch: the model's input columns on its
    profile's reference bins, and the event times against ``as_of - max_feature_age``.
    None when checks are disabled (nothing is summarised)."""
    checks = settings.checks
    if not checks.enabled:
        return None
    max_feature_age = checks.freshness.max_feature_age
    stale_before = (
        utc_naive(as_of) - dt.timedelta(seconds=max_feature_age)
        if max_feature_age is not None and checks.freshness.action != "off"
        else None
    )
    return SummaryPlan.from_profile(
        model.profile,
        list(model.input_columns),
        event_time_column=settings.event_time_feature,
        stale_before=stale_before,
    )


def run(ctx: RunContext) -> dict[str, Any]:
    """The BatchInference step of a run: the DataSource snapshot scored by the run's model on
    its engine, every row carrying the run's lineage."""
    record = ctx.record
    model = ctx.loaded_model()
    lineage = Lineage(
        run_id=record.run_id,
        pipeline_name=record.pipeline_name,
        id_range=format_id_range(record.id_start, record.id_end),
        inference_date=dt.date.fromisoformat(record.logical_date),
        timestamp=dt.datetime.fromisoformat(record.started),
    )
    scoring = ctx.scoring_plan(model)
    result = ctx.engine.batch_inference(
        record.outputs("DataSource")["files"],
        model,
        Path(record.run_dir) / "predictions",
        record_identifier=ctx.settings.record_identifier,
        lineage=lineage,
        summary_plan=summary_plan(ctx.settings, model, dt.datetime.fromisoformat(record.as_of)),
        target_column=ctx.settings.target_column,
        source_label=f"feature group {record.feature_group!r}",
        progress=ctx.progress,
        scoring=scoring,
    )
    check_quarantine_budget(
        result.quarantined, result.rows, ctx.settings.max_quarantine_fraction,
        result.quarantine_path,
    )  # fmt: skip
    if result.quarantined:
        log.warning(
            "BatchInference: %d row(s) could not be scored, set aside in %s (within "
            "max_quarantine_fraction %g)",
            result.quarantined, result.quarantine_path, ctx.settings.max_quarantine_fraction,
        )  # fmt: skip
    if model.vocabulary_source.startswith("none"):
        log.warning("category vocabularies: %s", model.vocabulary_source)
    if result.evaluation:
        e = result.evaluation
        log.info(
            "evaluation on %d labelled rows: accuracy %.3f, F1 %.3f, ROC AUC %s",
            e["rows"],
            e["accuracy"],
            e["f1"],
            f"{e['roc_auc']:.3f}" if e["roc_auc"] is not None else "n/a",
        )
    # Models batchscore did not train: the record says where vocabularies came from.
    return {**result.to_dict(), "category_vocabularies_from": model.vocabulary_source}
