"""The pipeline end to end through the library, on real SQLite catalogs and MLflow stores."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from batchscore.catalog import load_table, open_catalog
from batchscore.errors import (
    FeatureGroupError,
    NoApprovedModelError,
    NothingToScoreError,
    SchemaMismatchError,
)
from batchscore.pipeline import Pipeline
from batchscore.queries import run_query
from batchscore.records import RunRecord
from tests.helpers import block_publish, expected_latest, table_rows, table_snapshot
from tests.reliability import record


def test_run_publishes_one_row_per_live_customer(settings) -> None:
    record = Pipeline(settings).run()
    assert record.status == "succeeded"
    rows = table_rows(settings)
    expected = expected_latest(settings)
    assert sorted(rows.customer_id) == sorted(expected.customer_id)
    assert rows.customer_id.is_unique
    assert set(rows.run_id) == {record.run_id}
    assert set(rows.model_name) == {"classification-model-group"}
    assert set(rows.model_version) == {record.model_version}
    assert set(rows.id_range) == {"4000-5000"}
    assert set(rows.inference_date) == {dt.date.fromisoformat(record.logical_date)}
    assert rows.prediction.isin([0, 1]).all()
    assert rows.prediction_probability.between(0, 1).all()
    # DataSource skipped what the reference says it should.
    data = record.steps["DataSource"].outputs
    assert data["rows"] == len(expected)
    assert data["deleted_records_skipped"] > 0 and data["duplicate_versions_skipped"] > 0


def test_predictions_equal_the_models_own_predict_proba(settings) -> None:
    import mlflow.pyfunc

    record = Pipeline(settings).run()
    rows = table_rows(settings).set_index("customer_id").sort_index()
    latest = expected_latest(settings).set_index("customer_id").sort_index()
    # MLflow's own loader and schema enforcement, independent of batchscore's scoring path.
    import os

    os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "true"
    try:
        mlflow.set_registry_uri(settings.tracking_uri)
        model = mlflow.pyfunc.load_model(f"models:/{record.model_name}/{record.model_version}")
    finally:
        os.environ.pop("MLFLOW_ALLOW_PICKLE_DESERIALIZATION")
    columns = model.metadata.get_input_schema().input_names()
    frame = latest[columns].copy()
    for name, kind in zip(columns, model.metadata.get_input_schema().input_types(), strict=True):
        if str(kind) == "double" or getattr(kind, "name", "") == "double":
            frame[name] = frame[name].astype("float64")
    proba = np.asarray(model.predict(frame))
    proba = proba[:, -1] if proba.ndim == 2 else proba
    np.testing.assert_allclose(rows.loc[latest.index, "prediction_probability"], proba, rtol=1e-9)


def test_evaluation_is_written_when_labels_exist(settings) -> None:
    record = Pipeline(settings).run()
    path = Path(record.run_dir) / "evaluation.json"
    evaluation = json.loads(path.read_text())
    assert set(evaluation) >= {
        "accuracy",
        "precision",
        "recall",
        "f1",
        "roc_auc",
        "confusion_matrix",
    }
    assert 0.7 < evaluation["roc_auc"] < 0.95  # noisy labels: a real model, not a leak
    assert np.sum(evaluation["confusion_matrix"]) == record.steps["BatchInference"].rows


def test_no_evaluation_without_target(make) -> None:
    settings = make(target_column=None)
    record = Pipeline(settings).run()
    assert record.steps["BatchInference"].outputs["evaluation"] is None
    assert not (Path(record.run_dir) / "evaluation.json").exists()


def test_rerun_replaces_its_own_rows(make) -> None:
    settings = make()
    first = Pipeline(settings).run()
    count = len(table_rows(settings))
    other = make(
        athena_output_table=settings.athena_output_table, customer_id_start=1, customer_id_end=100
    )
    Pipeline(other).run()  # another id range in the same table and partition: kept
    second = Pipeline(settings).run()
    rows = table_rows(settings)
    assert len(rows) == count + len(expected_latest(settings, 1, 100))
    assert first.run_id not in set(rows.run_id)
    assert (rows.run_id == second.run_id).sum() == count


def test_append_and_overwrite_modes(make) -> None:
    settings = make(write_mode="append", customer_id_end=4100)
    Pipeline(settings).run()
    Pipeline(settings).run()
    n = len(expected_latest(settings, 4000, 4100))
    assert len(table_rows(settings)) == 2 * n
    overwrite = make(
        athena_output_table=settings.athena_output_table,
        write_mode="overwrite",
        customer_id_start=4050,
        customer_id_end=4100,
    )
    Pipeline(overwrite).run()
    assert len(table_rows(settings)) == len(expected_latest(settings, 4050, 4100))


def test_backfill_date_scores_as_of_end_of_that_day(make) -> None:
    settings = make()
    day = dt.date(2025, 6, 30)
    record = Pipeline(settings).run(date=day)
    expected = expected_latest(settings, as_of=dt.datetime(2025, 6, 30, 23, 59, 59, 999999))
    rows = table_rows(settings)
    assert sorted(rows.customer_id) == sorted(expected.customer_id)
    assert set(rows.inference_date) == {day}
    assert record.as_of.startswith("2025-06-30T23:59:59")


def test_run_folder_holds_the_lineage(settings) -> None:
    record = Pipeline(settings).run()
    run_dir = Path(record.run_dir)
    snapshot_input = pd.read_parquet(run_dir / "input")
    assert len(snapshot_input) == record.steps["DataSource"].rows
    assert {"customer_id", "event_time", "contract_type"} <= set(snapshot_input.columns)
    assert len(pd.read_parquet(run_dir / "predictions")) == record.steps["BatchInference"].rows
    saved = RunRecord.load(run_dir)
    assert saved.status == "succeeded" and saved.steps["Publish"].outputs["snapshot_id"]
    assert "DataSource: done" in (run_dir / "run.log").read_text()


def test_published_files_carry_column_statistics_and_the_snapshot_does_not(settings) -> None:
    """The predictions committed to the table keep each column's min/max in their footers
    (Iceberg's column bounds, what readers prune by); the DataSource snapshot, which only
    BatchInference reads whole, is written without them (cheaper to write)."""
    import pyarrow.parquet as pq

    def statistics_set(folder: Path) -> set[bool]:
        seen = set()
        for path in folder.glob("*.parquet"):
            meta = pq.ParquetFile(path).metadata
            for group in range(meta.num_row_groups):
                for column in range(meta.num_columns):
                    seen.add(meta.row_group(group).column(column).is_stats_set)
        return seen

    record = Pipeline(settings).run()
    run_dir = Path(record.run_dir)
    assert statistics_set(run_dir / "predictions") == {True}
    assert statistics_set(run_dir / "input") == {False}
    table = load_table(open_catalog(settings), settings.output_table)
    files = table.inspect.files().to_pylist()
    assert files and all(f["lower_bounds"] and f["upper_bounds"] for f in files)


def test_query_runs_sql_over_the_table(settings) -> None:
    from batchscore import query

    Pipeline(settings).run()
    sql = f"SELECT count(*) AS n, count(DISTINCT customer_id) AS ids FROM {settings.output_table}"
    result = run_query(open_catalog(settings), sql).to_pylist()
    assert result[0]["n"] == result[0]["ids"] == len(expected_latest(settings))
    # query() picks DuckDB for the local backend and says so; DuckDB has no query id.
    answered = query(settings, sql)
    assert answered.table.to_pylist() == result
    assert answered.engine == "duckdb" and answered.seconds > 0
    assert answered.query_id is None and answered.output_location is None


# Bad input: a clear error, and the table untouched. ------------------------------------------


def test_unknown_feature_group(make) -> None:
    settings = make()
    Pipeline(settings).run()
    before = table_snapshot(settings)
    bad = make(
        athena_output_table=settings.athena_output_table,
        feature_group_name="mlops_poc_churn_classification_featur",
    )
    with pytest.raises(
        FeatureGroupError, match="Did you mean 'mlops_poc_churn_classification_feature'"
    ):
        Pipeline(bad).run()
    assert table_snapshot(settings) == before
    record("data", "an unknown feature group", outcome="error with did-you-mean; table untouched")


def test_no_approved_model(make) -> None:
    settings = make(model_package_group="nobody-trained-this")
    with pytest.raises(NoApprovedModelError, match="has no versions"):
        Pipeline(settings).run()
    assert table_snapshot(settings) is None
    runs = list(settings.runs_path.iterdir())
    record = RunRecord.load(runs[0])
    assert record.status == "failed" and record.failed_step == "BatchInference"
    assert record.error["type"] == "NoApprovedModelError"


def test_nothing_to_score_commits_nothing(make) -> None:
    settings = make(customer_id_start=900000, customer_id_end=900010)
    with pytest.raises(NothingToScoreError, match="nothing to score"):
        Pipeline(settings).run()
    assert table_snapshot(settings) is None
    record = RunRecord.load(next(settings.runs_path.iterdir()))
    assert record.status == "nothing_to_score"
    assert record.steps["Publish"].status == "skipped"


def test_missing_column_is_named(make, shared_dir) -> None:
    from batchscore.feature_store import open_feature_store
    from batchscore.registry import open_registry
    from batchscore.training import train_model

    # A model trained on a feature group with an extra column, scored on one without it.
    settings = make(feature_group_name="with_extra", model_package_group="extra-model")
    store = open_feature_store(settings)
    from batchscore import demo

    data = demo.generate_churn_data(300, seed=1).records
    store.create_feature_group(
        "with_extra", {**demo.FEATURES, "loyalty_points": "Integral"}, exist_ok=True
    )
    store.ingest(
        "with_extra",
        data.append_column("loyalty_points", __import__("pyarrow").array(np.arange(data.num_rows))),
    )
    registry = open_registry(settings)
    version = train_model(settings, store, registry, id_start=1, id_end=300).version
    registry.set_status("extra-model", version.version, "Approved")
    scoring = make(model_package_group="extra-model")
    with pytest.raises(SchemaMismatchError) as err:
        Pipeline(scoring).run()
    assert "needs column 'loyalty_points'" in str(err.value)
    assert "mlops_poc_churn_classification_feature" in str(err.value)
    assert table_snapshot(scoring) is None
    record(
        "data",
        "a column the model needs is missing",
        outcome="SchemaMismatchError naming the column and the feature group; table untouched",
    )


def test_resume_continues_at_the_failed_step(make) -> None:
    from batchscore.errors import PublishError

    settings = make()
    blocker = block_publish(settings, dt.datetime.now(dt.UTC).date())
    with pytest.raises(PublishError):
        Pipeline(settings).run()
    record = RunRecord.load(next(settings.runs_path.iterdir()))
    assert record.status == "failed" and record.failed_step == "Publish"
    assert record.steps["BatchInference"].status == "succeeded"
    assert table_snapshot(settings) is None
    scored_at = record.steps["BatchInference"].ended

    blocker.unlink()
    resumed = Pipeline(settings).resume(record.run_id)
    assert resumed.status == "succeeded"
    assert resumed.steps["BatchInference"].ended == scored_at  # not scored again
    assert len(table_rows(settings)) == resumed.steps["BatchInference"].rows
    with pytest.raises(Exception, match="already succeeded"):
        Pipeline(settings).resume(record.run_id)


def test_query_reads_only_the_catalogs_tables(settings) -> None:
    from batchscore.errors import QueryError

    Pipeline(settings).run()
    catalog = open_catalog(settings)
    for sql in (
        "SELECT * FROM read_csv('/etc/passwd')",
        f"SELECT * FROM {settings.output_table}, read_text('/etc/hostname')",
        "COPY (SELECT 1) TO '/tmp/batchscore-escape.csv'",
        "ATTACH '/tmp/other.duckdb' AS other",
    ):
        with pytest.raises(QueryError):
            run_query(catalog, sql)
    assert not Path("/tmp/batchscore-escape.csv").exists()
    record(
        "security",
        "batchscore query reading other files or writing (read_csv, COPY, ATTACH)",
        outcome="refused: only the catalog tables' own files can be opened",
    )


def test_a_future_logical_date_is_warned_about(make, caplog) -> None:
    import logging

    settings = make(customer_id_end=4050)
    with caplog.at_level(logging.WARNING, logger="batchscore"):
        Pipeline(settings).run(date=dt.date(2099, 6, 1))
    assert any("2099-06-01 is in the future" in r.getMessage() for r in caplog.records)
