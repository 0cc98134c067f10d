"""Streamed summaries: what Validate needs of a run's rows, computed batch by batch.

BatchInference calls :meth:`SummaryPlan.summarize` on every feature batch it scores (and on the
prediction columns it produced) and adds the result into one :class:`RunSummary`; each Ray
actor does the same for its batches and the driver merges theirs. Nothing here holds rows: a
summary is counts, bounds and fixed-bin histograms, so it is small, mergeable in any order, and
costs one vectorised pass per batch that is already in memory.

Numeric features are binned on the reference's quantile cut points (``bin_edges`` in the
model's training profile), so PSI against training needs no second pass; a feature with no
reference bins keeps only counts and bounds. Predictions are binned on the training
validation scores' cut points, else on ten equal-width bins of [0, 1].

The JSON form (``summary.json`` in the run folder) is what Validate, the report and the next
run's comparison read.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SUMMARY_FILE = "summary.json"
DEFAULT_BINS = 10
# Equal-width bins of a probability when the model has no validation-score reference.
UNIT_EDGES: list[float] = [round(0.1 * i, 1) for i in range(1, 10)]
# Distinct categories counted per feature; the rest are added up under OTHER.
MAX_CATEGORIES = 1000
OTHER = "__other__"


def quantile_edges(values: np.ndarray, bins: int = DEFAULT_BINS) -> list[float]:
    """The interior cut points of ``bins`` equal-frequency bins of ``values`` (NaN ignored),
    duplicates removed: what a training profile stores as a feature's ``bin_edges``."""
    finite = values[np.isfinite(values)]
    if not len(finite):
        return []
    cuts = np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1])
    return sorted({float(c) for c in cuts})


# Up to this many cut points a histogram counts by comparisons (see histogram).
COUNTED_EDGES = 32


def histogram(values: np.ndarray, edges: list[float]) -> list[int]:
    """Counts of ``values`` (finite, non-null) in the ``len(edges) + 1`` bins the cut points
    make: bin ``i`` holds ``edges[i-1] < v <= edges[i]`` (the first and last are open)."""
    cuts = np.asarray(edges, dtype=np.float64)
    if len(cuts) > COUNTED_EDGES:
        index = np.searchsorted(cuts, values, side="left")
        return np.bincount(index, minlength=len(cuts) + 1).astype(np.int64).tolist()
    # A profile's deciles: one vectorised comparison per cut point, 10x faster than a
    # binary search per value (4.3 -> 0.4 ms per 200k values). Cut points are ascending,
    # so the values at most each one are cumulative counts; their steps are the bins.
    at_most = [int(np.count_nonzero(values <= cut)) for cut in cuts]
    return np.diff([0, *at_most, len(values)]).astype(np.int64).tolist()


def bin_reference(values: np.ndarray, bins: int = DEFAULT_BINS) -> dict[str, Any]:
    """The reference a profile stores for a distribution: ``bin_edges`` (its quantile cut
    points) and ``bin_fractions`` (the share of its finite values in each of the
    ``len(bin_edges) + 1`` bins; both empty when it has none)."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    edges = quantile_edges(finite, bins)
    if not len(finite):
        return {"bin_edges": [], "bin_fractions": []}
    counts = np.asarray(histogram(finite, edges), dtype=np.float64)
    return {"bin_edges": edges, "bin_fractions": (counts / len(finite)).round(6).tolist()}


def prediction_reference(
    probabilities: np.ndarray, predictions: np.ndarray | None = None
) -> dict[str, Any]:
    """A profile's ``prediction_reference`` from scores of known data (a model's validation
    scores): decile bins of the probabilities, their shares, the positive rate (predictions
    equal to 1; without predictions, probabilities of at least 0.5) and the rows."""
    scores = np.asarray(probabilities, dtype=np.float64)
    summary = _predictions(scores, predictions, [])
    return {
        **bin_reference(scores),
        "positive_rate": summary.positive_rate,
        "rows": summary.rows,
    }


@dataclass
class NumericSummary:
    """A numeric feature: rows seen, nulls (NaN counts as null), bounds, sum, and counts in
    the reference's bins and outside its training range."""

    rows: int = 0
    nulls: int = 0
    minimum: float | None = None
    maximum: float | None = None
    total: float = 0.0
    bin_edges: list[float] = field(default_factory=list)
    bin_counts: list[int] = field(default_factory=list)
    below_training_min: int = 0
    above_training_max: int = 0

    def merge(self, other: NumericSummary) -> None:
        self.rows += other.rows
        self.nulls += other.nulls
        self.minimum = _min(self.minimum, other.minimum)
        self.maximum = _max(self.maximum, other.maximum)
        self.total += other.total
        self.bin_counts = _add_lists(self.bin_counts, other.bin_counts)
        self.below_training_min += other.below_training_min
        self.above_training_max += other.above_training_max

    @property
    def null_share(self) -> float:
        return self.nulls / self.rows if self.rows else 0.0

    @property
    def mean(self) -> float | None:
        known = self.rows - self.nulls
        return self.total / known if known else None


@dataclass
class CategoricalSummary:
    """A categorical feature: rows seen, nulls, the count of each category (at most
    ``MAX_CATEGORIES``, the rest under ``OTHER``), and values outside the model's vocabulary."""

    rows: int = 0
    nulls: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    unseen: int = 0

    def merge(self, other: CategoricalSummary) -> None:
        self.rows += other.rows
        self.nulls += other.nulls
        self.unseen += other.unseen
        for value, count in other.counts.items():
            self.counts[value] = self.counts.get(value, 0) + count
        _cap_categories(self.counts)

    @property
    def null_share(self) -> float:
        return self.nulls / self.rows if self.rows else 0.0


@dataclass
class FreshnessSummary:
    """Event times of the scored rows (each customer's latest record): the newest and oldest,
    and how many are older than ``stale_before`` (the run's as-of minus ``max_feature_age``)."""

    rows: int = 0
    newest: str | None = None  # ISO timestamp, naive UTC as the snapshot stores it
    oldest: str | None = None
    stale_before: str | None = None
    stale_rows: int = 0

    def merge(self, other: FreshnessSummary) -> None:
        self.rows += other.rows
        self.newest = _max(self.newest, other.newest)
        self.oldest = _min(self.oldest, other.oldest)
        self.stale_rows += other.stale_rows
        self.stale_before = self.stale_before or other.stale_before


@dataclass
class PredictionSummary:
    """The predictions: rows, positive predictions, sum of probabilities, and the
    probabilities' counts in the reference bins."""

    rows: int = 0
    positives: int = 0
    total_probability: float = 0.0
    bin_edges: list[float] = field(default_factory=list)
    bin_counts: list[int] = field(default_factory=list)

    def merge(self, other: PredictionSummary) -> None:
        self.rows += other.rows
        self.positives += other.positives
        self.total_probability += other.total_probability
        self.bin_counts = _add_lists(self.bin_counts, other.bin_counts)

    @property
    def positive_rate(self) -> float | None:
        return self.positives / self.rows if self.rows else None


@dataclass
class RunSummary:
    """Everything Validate compares, for one run (or one batch before merging).

    Attributes:
        rows: Feature rows summarised.
        columns: The snapshot's columns and their Arrow types (the contract check reads it).
        numeric / categorical: Per-feature summaries, for the model's input columns.
        freshness: Event times (None when the snapshot has no event-time column).
        predictions: The scores (None before BatchInference added them).
    """

    rows: int = 0
    columns: dict[str, str] = field(default_factory=dict)
    numeric: dict[str, NumericSummary] = field(default_factory=dict)
    categorical: dict[str, CategoricalSummary] = field(default_factory=dict)
    freshness: FreshnessSummary | None = None
    predictions: PredictionSummary | None = None

    def merge(self, other: RunSummary) -> RunSummary:
        """Add ``other`` into this summary (in place) and return it."""
        self.rows += other.rows
        for name, type_name in other.columns.items():
            self.columns.setdefault(name, type_name)
        _merge_into(self.numeric, other.numeric)
        _merge_into(self.categorical, other.categorical)
        if other.freshness is not None:
            if self.freshness is None:
                self.freshness = FreshnessSummary(stale_before=other.freshness.stale_before)
            self.freshness.merge(other.freshness)
        if other.predictions is not None:
            if self.predictions is None:
                self.predictions = PredictionSummary(bin_edges=list(other.predictions.bin_edges))
            self.predictions.merge(other.predictions)
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSummary:
        freshness = data.get("freshness")
        predictions = data.get("predictions")
        return cls(
            rows=data.get("rows", 0),
            columns=dict(data.get("columns", {})),
            numeric={k: NumericSummary(**v) for k, v in data.get("numeric", {}).items()},
            categorical={
                k: CategoricalSummary(**v) for k, v in data.get("categorical", {}).items()
            },
            freshness=FreshnessSummary(**freshness) if freshness else None,
            predictions=PredictionSummary(**predictions) if predictions else None,
        )

    def save(self, path: Path) -> Path:
        """Write the summary as JSON (atomically: a crash leaves the old file or none)."""
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: Path) -> RunSummary:
        return cls.from_dict(json.loads(Path(path).read_text()))


@dataclass(frozen=True)
class SummaryPlan:
    """What to summarise of each batch, fixed once per run from the model's profile.

    Build it with :meth:`from_profile`; it is small and picklable (Ray actors get a copy).
    """

    numeric: dict[str, list[float]]  # feature -> reference bin edges ([] if none)
    training_range: dict[str, tuple[float | None, float | None]]
    categorical: dict[str, list[str]]  # feature -> the model's vocabulary ([] if unknown)
    event_time_column: str | None
    stale_before: dt.datetime | None
    prediction_edges: list[float]

    @classmethod
    def from_profile(
        cls,
        profile: dict[str, Any] | None,
        input_columns: list[str],
        *,
        event_time_column: str | None = None,
        stale_before: dt.datetime | None = None,
    ) -> SummaryPlan:
        """The plan for a model's input columns, with reference bins and ranges from its
        ``profile`` (a column the profile does not type counts as numeric if it says so in
        ``dtypes``, else categorical when it has a vocabulary, else numeric)."""
        profile = profile or {}
        statistics = profile.get("statistics", {})
        vocabularies = profile.get("category_vocabularies", {})
        categorical_names = set(profile.get("categorical_features", [])) | set(vocabularies)
        numeric: dict[str, list[float]] = {}
        ranges: dict[str, tuple[float | None, float | None]] = {}
        categorical: dict[str, list[str]] = {}
        for column in input_columns:
            if column in categorical_names:
                categorical[column] = list(vocabularies.get(column, []))
            else:
                stats = statistics.get(column, {})
                numeric[column] = [float(e) for e in stats.get("bin_edges", [])]
                ranges[column] = (stats.get("min"), stats.get("max"))
        reference = profile.get("prediction_reference") or {}
        return cls(
            numeric=numeric,
            training_range=ranges,
            categorical=categorical,
            event_time_column=event_time_column,
            stale_before=stale_before,
            prediction_edges=[float(e) for e in reference.get("bin_edges", UNIT_EDGES)],
        )

    def summarize(
        self, batch: pa.RecordBatch, probabilities: np.ndarray | None = None,
        predictions: np.ndarray | None = None,
    ) -> RunSummary:  # fmt: skip
        """The summary of one feature batch (and its scores, when given)."""
        names = batch.schema.names
        summary = RunSummary(
            rows=batch.num_rows, columns={f.name: str(f.type) for f in batch.schema}
        )
        for column, edges in self.numeric.items():
            if column in names:
                low, high = self.training_range.get(column, (None, None))
                summary.numeric[column] = _numeric(batch.column(column), edges, low, high)
        for column, vocabulary in self.categorical.items():
            if column in names:
                summary.categorical[column] = _categorical(batch.column(column), vocabulary)
        if self.event_time_column and self.event_time_column in names:
            summary.freshness = _freshness(batch.column(self.event_time_column), self.stale_before)
        if probabilities is not None:
            summary.predictions = _predictions(probabilities, predictions, self.prediction_edges)
        return summary


def _numeric(
    column: pa.Array, edges: list[float], low: float | None, high: float | None
) -> NumericSummary:
    try:
        values = column.cast(pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        # Not numeric at all (a retyped column): all of it counts as unusable here; the
        # contract check reports the type.
        return NumericSummary(rows=len(column), nulls=len(column), bin_edges=list(edges))
    array = values.to_numpy(zero_copy_only=False)  # nulls become NaN
    finite = array[np.isfinite(array)]
    summary = NumericSummary(rows=len(array), nulls=len(array) - len(finite), bin_edges=list(edges))
    if len(finite):
        summary.minimum = float(finite.min())
        summary.maximum = float(finite.max())
        summary.total = float(finite.sum())
        if low is not None:
            summary.below_training_min = int(np.count_nonzero(finite < low))
        if high is not None:
            summary.above_training_max = int(np.count_nonzero(finite > high))
    summary.bin_counts = histogram(finite, edges) if edges else [len(finite)]
    return summary


def _categorical(column: pa.Array, vocabulary: list[str]) -> CategoricalSummary:
    values = column.cast(pa.string())
    summary = CategoricalSummary(rows=len(values), nulls=values.null_count)
    counts = pc.value_counts(values)  # nulls are one entry, dropped here (cheaper than before)
    summary.counts = {
        str(value): int(count)
        for value, count in zip(
            counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True
        )
        if value is not None
    }
    if vocabulary:
        known = set(vocabulary)
        summary.unseen = sum(n for value, n in summary.counts.items() if value not in known)
    _cap_categories(summary.counts)
    return summary


def _freshness(column: pa.Array, stale_before: dt.datetime | None) -> FreshnessSummary:
    times = column.cast(pa.timestamp("us"))
    bounds = pc.min_max(times).as_py()
    summary = FreshnessSummary(
        rows=len(times),
        newest=_iso(bounds["max"]),
        oldest=_iso(bounds["min"]),
        stale_before=_iso(stale_before),
    )
    if stale_before is not None:
        threshold = pa.scalar(stale_before.replace(tzinfo=None), pa.timestamp("us"))
        summary.stale_rows = int(pc.sum(pc.less(times, threshold)).as_py() or 0)
    return summary


def _predictions(
    probabilities: np.ndarray, predictions: np.ndarray | None, edges: list[float]
) -> PredictionSummary:
    scores = np.asarray(probabilities, dtype=np.float64)
    positives = (
        int(np.count_nonzero(np.asarray(predictions) == 1))
        if predictions is not None
        else int(np.count_nonzero(scores >= 0.5))
    )
    return PredictionSummary(
        rows=len(scores),
        positives=positives,
        total_probability=float(scores.sum()),
        bin_edges=list(edges),
        bin_counts=histogram(scores, edges),
    )


def _iso(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return value.isoformat()


def _cap_categories(counts: dict[str, int]) -> None:
    if len(counts) <= MAX_CATEGORIES:
        return
    ranked = sorted(counts.items(), key=lambda item: -item[1])
    other = sum(n for _, n in ranked[MAX_CATEGORIES - 1 :])
    counts.clear()
    counts.update(ranked[: MAX_CATEGORIES - 1])
    counts[OTHER] = counts.get(OTHER, 0) + other


def _merge_into(into: dict[str, Any], other: dict[str, Any]) -> None:
    for name, summary in other.items():
        if name in into:
            into[name].merge(summary)
        else:
            into[name] = type(summary)(**asdict(summary))


def _add_lists(left: list[int], right: list[int]) -> list[int]:
    if not left:
        return list(right)
    if not right:
        return left
    return [a + b for a, b in zip(left, right, strict=True)]


def _min(a: Any, b: Any) -> Any:
    return b if a is None else a if b is None else min(a, b)


def _max(a: Any, b: Any) -> Any:
    return b if a is None else a if b is None else max(a, b)
