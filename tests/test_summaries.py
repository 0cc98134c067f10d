"""Streamed summaries (monitoring/summaries.py) and the reference they are compared with.

Summaries merge to the same result however the rows are split into batches, and equal a direct
NumPy/pandas computation; a real run's ``summary.json`` matches its snapshot and its published
probabilities; the Ray engine's equals the local engine's (tests/test_ray.py); training
profiles carry decile bins and a prediction reference, and so does the profile computed for a
model logged by plain MLflow.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchscore.monitoring.summaries import (
    SUMMARY_FILE,
    RunSummary,
    SummaryPlan,
    quantile_edges,
)

EDGES = [-1.0, 0.0, 2.5]
VOCABULARY = ["a", "b"]
STALE_BEFORE = dt.datetime(2026, 1, 10)
PLAN = SummaryPlan.from_profile(
    {
        "statistics": {"x": {"bin_edges": EDGES, "min": -2.0, "max": 3.0}},
        "categorical_features": ["c"],
        "category_vocabularies": {"c": VOCABULARY},
        "prediction_reference": {"bin_edges": [0.25, 0.5, 0.75]},
    },
    ["x", "c"],
    event_time_column="t",
    stale_before=STALE_BEFORE,
)


def rows_table(xs: list[float | None], cs: list[str | None], days: list[int]) -> pa.Table:
    times = [dt.datetime(2026, 1, 1) + dt.timedelta(days=d) for d in days]
    return pa.table({
        "x": pa.array(xs, pa.float64()),
        "c": pa.array(cs, pa.string()),
        "t": pa.array(times, pa.timestamp("us")),
    })  # fmt: skip


def summarize_in_batches(table: pa.Table, scores: np.ndarray, cuts: list[int]) -> RunSummary:
    """The table cut at ``cuts`` into batches, each summarised, merged in reverse order."""
    bounds = [0, *sorted(set(cuts)), table.num_rows]
    parts = [
        PLAN.summarize(
            pa.RecordBatch.from_pylist(table.slice(a, b - a).to_pylist(), schema=table.schema),
            scores[a:b],
            (scores[a:b] >= 0.5).astype(np.int32),
        )
        for a, b in itertools.pairwise(bounds)
    ]
    merged = RunSummary()
    for part in reversed(parts):
        merged.merge(part)
    return merged


def rounded(summary: RunSummary) -> dict:
    """The summary's dict with float sums rounded (summing in another order moves the last
    bits) and category counts in a sorted order."""
    data = summary.to_dict()
    for numeric in data["numeric"].values():
        numeric["total"] = round(numeric["total"], 6)
    if data["predictions"]:
        data["predictions"]["total_probability"] = round(
            data["predictions"]["total_probability"], 6
        )
    return json.loads(json.dumps(data, sort_keys=True))


# Values on the edges and the training bounds too, where an off-by-one bin would show.
values = st.one_of(
    st.none(),
    st.just(float("nan")),
    st.sampled_from([*EDGES, -2.0, 3.0]),
    st.floats(-5, 5, allow_nan=False, allow_infinity=False),
)


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(
        st.tuples(values, st.sampled_from(["a", "b", "z", None]), st.integers(0, 20)),
        min_size=1,
        max_size=60,
    ),
    cuts=st.lists(st.integers(0, 60), max_size=5),
    seed=st.integers(0, 2**16),
)
def test_batches_merge_to_the_whole_and_to_a_direct_computation(rows, cuts, seed) -> None:
    xs, cs, days = (list(column) for column in zip(*rows, strict=True))
    table = rows_table(xs, cs, days)
    scores = np.random.default_rng(seed).random(len(rows))
    whole = PLAN.summarize(table.to_batches()[0], scores, (scores >= 0.5).astype(np.int32))
    split = summarize_in_batches(table, scores, [c for c in cuts if c <= len(rows)])
    assert rounded(split) == rounded(whole)

    # The same numbers from pandas and NumPy directly.
    frame = table.to_pandas()
    x = frame.x.dropna()  # NaN is null, as for a model
    numeric = split.numeric["x"]
    assert (numeric.rows, numeric.nulls) == (len(frame), frame.x.isna().sum())
    assert (
        numeric.bin_counts == pd.cut(x, [-np.inf, *EDGES, np.inf]).value_counts(sort=False).tolist()
    )
    assert numeric.below_training_min == (x < -2).sum()
    assert numeric.above_training_max == (x > 3).sum()
    assert numeric.minimum == (x.min() if len(x) else None)
    assert numeric.total == pytest.approx(x.sum())
    categorical = split.categorical["c"]
    assert categorical.counts == frame.c.value_counts().to_dict()
    assert categorical.nulls == frame.c.isna().sum()
    assert categorical.unseen == (frame.c == "z").sum()
    assert split.freshness.stale_rows == (frame.t < STALE_BEFORE).sum()
    assert split.freshness.newest == frame.t.max().isoformat()
    predictions = split.predictions
    assert predictions.bin_counts == np.histogram(scores, [0, 0.25, 0.5, 0.75, 1])[0].tolist()
    assert predictions.positives == (scores >= 0.5).sum()


def test_a_profile_without_bins_keeps_counts_only() -> None:
    """Profiles written before the reference bins existed still plan a summary: counts and
    bounds, one bin of every known value, and ten equal-width prediction bins."""
    old = {"statistics": {"x": {"min": 0.0, "max": 1.0, "mean": 0.5}}}
    plan = SummaryPlan.from_profile(old, ["x"])
    table = rows_table([0.5, None, 7.0], ["a", "a", "a"], [0, 1, 2])
    summary = plan.summarize(table.to_batches()[0], np.array([0.05, 0.5, 0.95]))
    assert summary.numeric["x"].bin_edges == []
    assert summary.numeric["x"].bin_counts == [2]
    assert summary.numeric["x"].above_training_max == 1
    assert summary.predictions.bin_counts == [1, 0, 0, 0, 1, 0, 0, 0, 0, 1]


# A real run -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scored(published):
    """The ``published`` run's record, its model's profile and its summary."""
    from batchscore.records import RunRecord
    from batchscore.registry import open_registry

    settings = published.settings
    record = RunRecord.load(settings.runs_path / published.run_id)
    registry = open_registry(settings)
    model = registry.load(registry.resolve(settings.model_package_group))
    return record, model, settings


def test_a_run_writes_the_summary_of_its_snapshot_and_its_predictions(scored) -> None:
    from batchscore.catalog import load_table, open_catalog

    record, model, settings = scored
    outputs = record.outputs("BatchInference")
    path = Path(outputs["summary_path"])
    assert path == Path(record.run_dir) / SUMMARY_FILE
    summary = RunSummary.load(path)
    snapshot = pq.read_table(record.outputs("DataSource")["files"]).to_pandas()
    assert summary.rows == len(snapshot) == outputs["rows"]
    assert set(summary.numeric) | set(summary.categorical) == set(model.input_columns)

    statistics = model.profile["statistics"]
    for column, numeric in summary.numeric.items():
        edges = statistics[column]["bin_edges"]
        assert numeric.bin_edges == edges and len(edges) >= 3, column
        values = snapshot[column].astype("float64").dropna()
        assert (
            numeric.bin_counts
            == np.bincount(
                np.searchsorted(edges, values, side="left"), minlength=len(edges) + 1
            ).tolist()
        ), column
        assert numeric.nulls == snapshot[column].isna().sum(), column
    for column, categorical in summary.categorical.items():
        assert categorical.counts == snapshot[column].value_counts().to_dict(), column

    as_of = dt.datetime.fromisoformat(record.as_of)
    times = pd.to_datetime(snapshot[settings.event_time_feature])
    max_feature_age = settings.checks.freshness.max_feature_age
    if max_feature_age is None:  # unset by default: no stale count (tests/test_validate.py sets it)
        assert summary.freshness.stale_before is None and summary.freshness.stale_rows == 0
    else:
        stale_before = as_of - dt.timedelta(seconds=max_feature_age)
        assert summary.freshness.stale_before == stale_before.isoformat()
        assert summary.freshness.stale_rows == (times < stale_before).sum()
    assert summary.freshness.newest == times.max().isoformat()

    # The predictions as published, on the training validation scores' deciles.
    table = load_table(open_catalog(settings), settings.output_table).scan().to_arrow()
    probability = table.column("prediction_probability").to_numpy()
    edges = model.profile["prediction_reference"]["bin_edges"]
    assert summary.predictions.bin_edges == edges
    assert (
        summary.predictions.bin_counts
        == np.bincount(
            np.searchsorted(edges, probability, side="left"), minlength=len(edges) + 1
        ).tolist()
    )
    assert summary.predictions.positives == int((table.column("prediction").to_numpy() == 1).sum())


def test_checks_disabled_summarise_nothing(make) -> None:
    from batchscore.pipeline import Pipeline

    run = Pipeline(make(customer_id_end=4100, checks={"enabled": False})).run()
    assert run.status == "succeeded"
    assert run.steps["BatchInference"].outputs["summary_path"] is None
    assert not (Path(run.run_dir) / SUMMARY_FILE).exists()


# The reference --------------------------------------------------------------------------------


def test_a_training_profile_has_decile_bins_and_the_validation_scores_reference(
    scored,
) -> None:
    from batchscore.feature_store import open_feature_store

    _, model, settings = scored
    profile = model.profile
    # The training rows as train_model read them (ids 1–4000, labelled), computed apart.
    rows = (
        open_feature_store(settings)
        .latest_records(settings.feature_group_name, 1, 4000)
        .to_table()
        .to_pandas()
    )
    rows = rows[rows[settings.target_column].notna()]
    for column in profile["numeric_features"]:
        stats = profile["statistics"][column]
        values = rows[column].astype("float64").dropna().to_numpy()
        expected = sorted({float(q) for q in np.quantile(values, np.arange(1, 10) / 10)})
        assert stats["bin_edges"] == pytest.approx(expected), column
        shares = np.bincount(
            np.searchsorted(expected, values, side="left"), minlength=len(expected) + 1
        ) / len(values)
        assert stats["bin_fractions"] == pytest.approx(shares, abs=1e-6), column
    reference = profile["prediction_reference"]
    assert reference["rows"] == round(len(rows) * 0.2)  # train_model's validation split
    assert len(reference["bin_edges"]) == 9
    assert sum(reference["bin_fractions"]) == pytest.approx(1.0, abs=1e-5)  # rounded shares
    assert reference["bin_fractions"] == pytest.approx([0.1] * 10, abs=0.02)
    assert 0 < reference["positive_rate"] < 1


def test_a_model_logged_by_plain_mlflow_gets_bins_from_its_training_data(
    make, tmp_path: Path
) -> None:
    import mlflow.sklearn

    from tests.test_training_profiles import (
        FEATURES,
        cached_profiles,
        log_and_approve,
        scoring_outputs,
        sklearn_logger,
        training_rows,
        with_training_data,
        write_parquet,
    )

    group = f"summ-skl-{uuid.uuid4().hex[:6]}"
    rows = training_rows(make(model_package_group=group))
    data = write_parquet(rows, tmp_path / "lake" / "train.parquet")
    settings = with_training_data(make, group, data)
    log_and_approve(settings, group, sklearn_logger(rows))

    outputs = scoring_outputs(settings)
    [cached] = cached_profiles(settings)
    profile = json.loads(cached.read_text())
    edges = profile["statistics"]["tenure_months"]["bin_edges"]
    assert edges == quantile_edges(rows.tenure_months.to_numpy())
    # The prediction reference: the model's own scores of its training data (MLflow loads it).
    model = mlflow.sklearn.load_model(f"models:/{group}/1")
    scores = model.predict_proba(rows[FEATURES])[:, 1]
    reference = profile["prediction_reference"]
    assert reference["rows"] == len(rows)
    assert reference["bin_edges"] == pytest.approx(quantile_edges(scores))
    assert reference["positive_rate"] == pytest.approx((scores >= 0.5).mean())
    # The run summarised on those bins.
    summary = RunSummary.load(Path(outputs["summary_path"]))
    assert summary.numeric["tenure_months"].bin_edges == edges
    assert summary.predictions.bin_edges == reference["bin_edges"]


@pytest.mark.parametrize("cuts", [1, 9, 32, 33, 100])
def test_histogram_bins_are_the_binary_searchs_with_ties_and_repeated_cut_points(cuts) -> None:
    """Bin i holds edges[i-1] < v <= edges[i], whichever way the bins are counted: a value
    equal to a cut point falls in the bin it closes, and a repeated cut point makes an
    empty bin."""
    from batchscore.monitoring.summaries import histogram

    rng = np.random.default_rng(cuts)
    values = np.round(rng.normal(size=5_000), 1)  # many values equal to a cut point
    edges = np.sort(rng.choice(values, size=cuts)).tolist()
    if cuts > 1:
        edges[1] = edges[0]  # a repeated cut point
    expected = np.bincount(np.searchsorted(edges, values, side="left"), minlength=cuts + 1)
    assert histogram(values, edges) == expected.tolist()
    assert sum(histogram(values, edges)) == len(values)
