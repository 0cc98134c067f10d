"""The scorer and the part writer on their own: a small model trained here, Parquet inputs
written here, no catalog, registry or pipeline run. Scoring is compared with scikit-learn's
own ``predict_proba`` and ``sklearn.metrics``; parts are read back with pyarrow."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn import metrics
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder

from batchscore.errors import SchemaMismatchError
from batchscore.registry.base import LoadedModel, ModelVersion
from batchscore.sinks.schema import PREDICTIONS_SCHEMA
from batchscore.steps.batch_inference import Lineage, batch_inference
from batchscore.steps.parts import PartWriter, dictionary_columns
from tests.helpers import RecordingProgress

FEATURES = {"tenure": "double", "charges": "double", "plan": "string"}
PLANS = ["basic", "plus", "pro"]
LINEAGE = Lineage(
    run_id="20260701T020000-abc123",
    pipeline_name="scoring-pipeline",
    id_range="1-120",
    inference_date=dt.date(2026, 7, 1),
    timestamp=dt.datetime(2026, 7, 1, 2, 0, 5),
)


def customers(n: int, seed: int, *, classes: int = 2) -> pd.DataFrame:
    """Features with a learnable label; a few missing values, as real feature groups have."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "customer_id": [f"CUST_{i:06d}" for i in range(1, n + 1)],
            "tenure": rng.uniform(0, 72, n),
            "charges": rng.uniform(10, 120, n),
            "plan": rng.choice(PLANS, n),
        }
    )
    frame.loc[frame.index % 17 == 3, "charges"] = np.nan
    signal = frame.charges.fillna(60) / 40 - frame.tenure / 24 + (frame.plan == "basic")
    frame["churn"] = np.digitize(signal + rng.normal(0, 0.5, n), [0.5, 1.5][: classes - 1])
    return frame


def small_model(frame: pd.DataFrame, *, group: str = "scoring-test") -> LoadedModel:
    """An imputing, one-hot-encoding classifier, wrapped the way the registry hands it out."""
    estimator = make_pipeline(
        ColumnTransformer(
            [
                ("numbers", SimpleImputer(), ["tenure", "charges"]),
                ("plan", OneHotEncoder(handle_unknown="ignore"), ["plan"]),
            ]
        ),
        LogisticRegression(max_iter=500),
    ).fit(frame[list(FEATURES)], frame.churn)
    version = ModelVersion(group, 3, "Approved", dt.datetime(2026, 6, 1), "test")
    return LoadedModel(
        version,
        estimator,
        dict(FEATURES),
        profile={"category_vocabularies": {"plan": PLANS}},
        classes=[int(c) for c in estimator.classes_],
    )


def write_inputs(frame: pd.DataFrame, folder: Path, files: int = 2) -> list[Path]:
    """The snapshot DataSource would write: ``files`` Parquet files of the rows in order."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    bounds = np.linspace(0, len(frame), files + 1).astype(int)
    for i in range(files):
        path = folder / f"part-{i:05d}.parquet"
        part = frame.iloc[bounds[i] : bounds[i + 1]]
        pq.write_table(pa.Table.from_pandas(part, preserve_index=False), path)
        paths.append(path)
    return paths


def score(inputs: list[Path], model: LoadedModel, run_dir: Path, **kw):
    kw = {"record_identifier": "customer_id", "lineage": LINEAGE, "target_column": "churn",
          "source_label": "the test snapshot", "batch_size": 16, **kw}  # fmt: skip
    return batch_inference(inputs, model, run_dir / "predictions", **kw)


def scored_rows(files: list[str]) -> pd.DataFrame:
    return pa.concat_tables(pq.read_table(f) for f in files).to_pandas()


def test_probabilities_and_classes_are_the_estimators_own(tmp_path: Path) -> None:
    model = small_model(customers(400, seed=1))
    new = customers(120, seed=2)
    new.loc[5, "charges"] = np.inf  # batchscore scores ±inf as missing, and counts it
    new.loc[6, "plan"] = "enterprise"  # never seen in training
    progress = RecordingProgress()
    result = score(write_inputs(new, tmp_path / "input"), model, tmp_path, progress=progress)

    rows = scored_rows(result.files)
    reference = new[list(FEATURES)].replace([np.inf, -np.inf], np.nan)
    assert rows.customer_id.tolist() == new.customer_id.tolist()  # every row, in order
    np.testing.assert_allclose(
        rows.prediction_probability, model.estimator.predict_proba(reference)[:, 1], rtol=1e-12
    )
    assert rows.prediction.tolist() == model.estimator.predict(reference).tolist()
    assert result.rows == 120
    assert result.non_finite_values == {"charges": 1}
    assert result.unseen_categories == {"plan": 1}
    assert sum(c[2] for c in progress.of("BatchInference") if c[0] == "advance") == 120


@pytest.mark.parametrize("summarised", [False, True], ids=["checks-off", "summarised"])
def test_unseen_categories_are_counted_with_or_without_the_batch_summaries(
    tmp_path: Path, summarised: bool
) -> None:
    """Summarised batches take the count from the summary's categorical counts; unsummarised
    ones (checks off) count it themselves: the same numbers either way."""
    from batchscore.monitoring.summaries import SummaryPlan

    model = small_model(customers(300, seed=1))
    new = customers(100, seed=5)
    new.loc[[3, 40, 41, 99], "plan"] = ["enterprise", "enterprise", "trial", "enterprise"]
    new.loc[7, "plan"] = None  # missing is not unseen
    plan = SummaryPlan.from_profile(model.profile, list(FEATURES)) if summarised else None
    result = score(write_inputs(new, tmp_path / "input"), model, tmp_path, summary_plan=plan)
    assert result.unseen_categories == {"plan": 4}
    assert (result.summary_path is not None) == summarised


def test_every_row_carries_its_lineage_in_the_tables_schema(tmp_path: Path) -> None:
    model = small_model(customers(300, seed=1), group="lineage-model")
    result = score(write_inputs(customers(50, seed=4), tmp_path / "input"), model, tmp_path)
    for path in result.files:
        assert pq.read_schema(path).remove_metadata() == PREDICTIONS_SCHEMA
    rows = scored_rows(result.files)
    assert set(rows.model_name) == {"lineage-model"} and set(rows.model_version) == {3}
    assert set(rows.run_id) == {LINEAGE.run_id}
    assert set(rows.pipeline_name) == {LINEAGE.pipeline_name}
    assert set(rows.id_range) == {LINEAGE.id_range}
    assert set(rows.inference_date) == {LINEAGE.inference_date}
    assert set(rows.timestamp) == {pd.Timestamp(LINEAGE.timestamp)}


@pytest.mark.parametrize("classes", [2, 3])
def test_evaluation_equals_sklearn_metrics_on_the_labelled_rows(
    tmp_path: Path, classes: int
) -> None:
    model = small_model(customers(500, seed=1, classes=classes))
    new = customers(150, seed=5, classes=classes)
    new["churn"] = new.churn.astype("Int64")
    new.loc[new.index % 10 == 0, "churn"] = pd.NA  # unlabelled rows are scored, not evaluated
    result = score(write_inputs(new, tmp_path / "input", files=3), model, tmp_path)

    labelled = new[new.churn.notna()]
    truth = labelled.churn.astype(int).to_numpy()
    proba = model.estimator.predict_proba(labelled[list(FEATURES)])
    predicted = model.estimator.predict(labelled[list(FEATURES)])
    average = "binary" if classes == 2 else "weighted"
    evaluation = result.evaluation
    assert evaluation["rows"] == len(labelled) == 135
    assert evaluation["target_column"] == "churn"
    assert evaluation["accuracy"] == pytest.approx(metrics.accuracy_score(truth, predicted))
    for name, function in (("precision", metrics.precision_score),
                           ("recall", metrics.recall_score), ("f1", metrics.f1_score)):  # fmt: skip
        expected = function(truth, predicted, average=average, zero_division=0)
        assert evaluation[name] == pytest.approx(expected), name
    assert evaluation["confusion_matrix"] == metrics.confusion_matrix(truth, predicted).tolist()
    if classes == 2:
        assert evaluation["roc_auc"] == pytest.approx(metrics.roc_auc_score(truth, proba[:, 1]))
    else:
        assert evaluation["roc_auc"] is None  # only defined for two classes here
    assert result.evaluation_path == str(tmp_path / "evaluation.json")
    assert json.loads(Path(result.evaluation_path).read_text()) == evaluation


def test_without_the_target_column_there_is_no_evaluation(tmp_path: Path) -> None:
    model = small_model(customers(300, seed=1))
    new = customers(40, seed=6).drop(columns="churn").assign(extra="x")
    result = score(write_inputs(new, tmp_path / "input"), model, tmp_path)
    assert result.rows == 40 and result.evaluation is None and result.evaluation_path is None
    assert result.ignored_columns == ["extra"]
    assert not (tmp_path / "evaluation.json").exists()


def test_a_missing_model_column_is_named_before_anything_is_written(tmp_path: Path) -> None:
    model = small_model(customers(300, seed=1))
    inputs = write_inputs(customers(40, seed=7).drop(columns="charges"), tmp_path / "input")
    with pytest.raises(SchemaMismatchError, match="'charges'") as err:
        score(inputs, model, tmp_path)
    assert "the test snapshot" in str(err.value)
    assert not (tmp_path / "predictions").exists()


def test_an_empty_snapshot_scores_nothing_and_writes_no_part(tmp_path: Path) -> None:
    model = small_model(customers(300, seed=1))
    inputs = write_inputs(customers(10, seed=8).iloc[:0], tmp_path / "input", files=1)
    result = score(inputs, model, tmp_path)
    assert (result.rows, result.files, result.evaluation) == (0, [], None)
    assert list((tmp_path / "predictions").iterdir()) == []


# The part writer ---------------------------------------------------------------------------

SCHEMA = pa.schema([("customer_id", pa.string()), ("score", pa.float64()), ("n", pa.int32())])


def batch(start: int, rows: int, schema: pa.Schema = SCHEMA) -> pa.RecordBatch:
    ids = [f"CUST_{i:06d}" for i in range(start, start + rows)]
    return pa.RecordBatch.from_arrays(
        [pa.array(ids), pa.array(np.linspace(0, 1, rows)), pa.array(range(rows), pa.int32())],
        schema=schema,
    )


def test_parts_roll_over_after_rows_per_file_and_keep_every_row_in_order(tmp_path: Path) -> None:
    start = 0
    with PartWriter(tmp_path / "out", rows_per_file=10) as parts:
        for rows in (5, 5, 4, 4, 4, 5, 3):
            parts.write(batch(start, rows))
            start += rows
    names = [Path(f).name for f in parts.files]
    assert names == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    # A file takes whole batches until it holds rows_per_file rows, then the next one starts.
    assert [pq.ParquetFile(f).metadata.num_rows for f in parts.files] == [10, 12, 8]
    table = pa.concat_tables(pq.read_table(f) for f in parts.files)
    assert table.column("customer_id").to_pylist() == [f"CUST_{i:06d}" for i in range(30)]
    assert sorted(str(p) for p in (tmp_path / "out").iterdir()) == parts.files


def test_parts_keep_the_schema_and_dictionary_encode_strings_only(tmp_path: Path) -> None:
    with PartWriter(tmp_path / "out") as parts:
        parts.write(batch(0, 5))
    (path,) = parts.files
    assert pq.read_schema(path).remove_metadata() == SCHEMA
    encodings = {
        name: pq.ParquetFile(path).metadata.row_group(0).column(i).encodings
        for i, name in enumerate(SCHEMA.names)
    }
    assert "RLE_DICTIONARY" in encodings["customer_id"]
    assert "RLE_DICTIONARY" not in encodings["score"] and "RLE_DICTIONARY" not in encodings["n"]
    assert dictionary_columns(SCHEMA) == ["customer_id"]


def test_a_failed_write_surfaces_and_the_next_attempt_starts_clean(tmp_path: Path) -> None:
    out = tmp_path / "out"
    other = pa.schema([("customer_id", pa.string()), ("score", pa.string()), ("n", pa.int32())])
    mismatched = pa.RecordBatch.from_arrays(
        [pa.array(["x"]), pa.array(["not a number"]), pa.array([1], pa.int32())], schema=other
    )
    # Written on the background thread: the error comes out of the next write …
    with pytest.raises(ValueError, match="schema"), PartWriter(out) as parts:
        parts.write(batch(0, 4))
        parts.write(mismatched)
        parts.write(batch(4, 4))
    assert [Path(f).name for f in parts.files] == ["part-00000.parquet"]
    # … or out of close, when it was the last batch.
    with pytest.raises(ValueError, match="schema"), PartWriter(out) as parts:
        parts.write(batch(0, 4))
        parts.write(mismatched)
    # A retry removes what the failed attempt left before writing its own parts.
    (out / "part-00007.parquet").write_bytes(b"left by a killed attempt")
    with PartWriter(out, rows_per_file=4) as parts:
        parts.write(batch(0, 4))
        parts.write(batch(4, 4))
    assert sorted(str(p) for p in out.iterdir()) == parts.files
    assert [pq.ParquetFile(f).metadata.num_rows for f in parts.files] == [4, 4]


def test_nothing_written_means_no_part(tmp_path: Path) -> None:
    with PartWriter(tmp_path / "out") as parts:
        pass
    assert parts.files == [] and list((tmp_path / "out").iterdir()) == []


def test_reading_the_snapshot_holds_one_batch_not_the_file(tmp_path: Path) -> None:
    """The snapshot is streamed: Arrow memory while reading stays near a batch or two, not
    the row groups read so far (pyarrow's pre-buffering cached them all until the file
    closed: 640 MB more at 5M rows)."""
    from batchscore.steps.batch_inference import iter_batches

    rng = np.random.default_rng(0)
    rows, groups = 40_000, 30
    path = tmp_path / "part-00000.parquet"
    with pq.ParquetWriter(path, pa.schema([(f"f{i}", pa.float64()) for i in range(8)])) as w:
        for _ in range(groups):
            w.write_table(pa.table({f"f{i}": rng.random(rows) for i in range(8)}))
    batch_bytes = rows * 8 * 8
    baseline = pa.total_allocated_bytes()
    peak = 0
    for batch in iter_batches([path], rows):
        assert batch.num_rows == rows
        peak = max(peak, pa.total_allocated_bytes() - baseline)
        del batch
    # The batch read ahead, the one in hand and decoding buffers: ~5; all 30 groups: ~40.
    assert peak < 10 * batch_bytes, f"{peak / batch_bytes:.1f} batches held"
