"""The bad-input corpus: each case a clear error naming the offending thing and the fix, a
non-zero exit, and an untouched table — or, where the input is scoreable, scored and counted."""

from __future__ import annotations

import datetime as dt
import math
import os
import shutil
import sqlite3
from pathlib import Path

import pyarrow as pa
import pytest

from batchscore import demo
from batchscore.cli import main
from batchscore.errors import TransientStoreError
from batchscore.feature_store import open_feature_store
from batchscore.pipeline import Pipeline
from tests.helpers import (
    config_for,
    forkserver,
    log_external,
    numeric_training_frame,
    overrides_of,
    table_snapshot,
)
from tests.reliability import record

CONFIG_CASES = [
    (
        "config",
        "unknown key",
        ["--set", "customer_id_strat=1"],
        2,
        "Did you mean 'customer_id_start'?",
    ),
    (
        "config",
        "wrong type",
        ["--set", "batch_size=lots"],
        2,
        "batch_size: must be a whole number such as 100000",
    ),
    ("config", "start > end", ["--set", "customer_id_start=6000"], 2, "greater than"),
    (
        "config",
        "negative id",
        ["--set", "customer_id_start=-5"],
        2,
        "customer_id_start: Input should be greater than or equal to 0",
    ),
    (
        "config",
        "non-integer id",
        ["--set", "customer_id_start=4000.5"],
        2,
        "customer_id_start: must be a whole number such as 100000 (got 4000.5)",
    ),
    (
        "config",
        "SQL in a database name",
        ["--set", "athena_database=ml_metrics; DROP TABLE x"],
        2,
        "athena_database 'ml_metrics; DROP TABLE x' is not a valid name",
    ),
    (
        "config",
        "path in a table name",
        ["--set", "athena_output_table=../../etc"],
        2,
        "athena_output_table '../../etc' is not a valid name",
    ),
    (
        "config",
        "path in a feature group name",
        ["--set", "feature_group_name=../../etc"],
        2,
        "feature_group_name '../../etc' is not a valid name",
    ),
    (
        "data",
        "an id range with no records",
        ["--set", "customer_id_start=900000", "--set", "customer_id_end=900001"],
        3,
        "nothing to score",
    ),
    ("model", "no versions", ["--set", "model_package_group=never-trained"], 1, "has no versions"),
]


def expect_refusal(capsys, args: list[str], code: int, message: str, published) -> None:
    """``batchscore *args`` exits ``code`` with ``message`` after "Error: ", and the published
    table is as it was."""
    capsys.readouterr()
    assert main(args) == code
    err = capsys.readouterr().err
    assert "Error: " in err and message in err.split("Error: ", 1)[1], err[-800:]
    assert table_snapshot(published.settings) == published.snapshot


@pytest.mark.parametrize(
    ("category", "case", "args", "code", "message"), CONFIG_CASES, ids=[c[1] for c in CONFIG_CASES]
)
def test_refused_with_a_clear_error(published, capsys, category, case, args, code, message):
    expect_refusal(capsys, ["-c", str(published.config), *args, "run"], code, message, published)
    record(category, case, outcome=f"exit {code}: “{message}”; table untouched")


def test_yaml_syntax_error_and_missing_file(published, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("customer_id_start: 4000\ncustomer_id_end: [5000\nwrite_mode: replace\n")
    expect_refusal(capsys, ["-c", str(bad), "run"], 2, "is not valid YAML at line", published)
    record("config", "YAML syntax error", outcome="exit 2: names the line; table untouched")
    expect_refusal(
        capsys, ["-c", str(tmp_path / "nope.yaml"), "run"], 2, "does not exist", published
    )
    record("config", "missing config file", outcome="exit 2: names the file; table untouched")


def test_string_in_a_numeric_column_and_null_ids_are_refused_at_ingest(make, tmp_path, capsys):
    settings = make(feature_group_name="ingest_checks")
    store = open_feature_store(settings)
    store.create_feature_group("ingest_checks", demo.FEATURES)
    bad = tmp_path / "bad.csv"
    bad.write_text("customer_id,event_time,tenure_months\nCUST_000001,2026-01-01,twelve\n")
    config = config_for(settings, tmp_path / "c.yaml", feature_group_name="ingest_checks")
    ingest = ["-c", str(config), "features", "ingest", str(bad), "--allow-missing-columns"]
    assert main(ingest) == 1
    assert "column 'tenure_months' does not fit" in capsys.readouterr().err
    nulls = pa.table(
        {"customer_id": [None], "event_time": ["2026-01-01"]},
        schema=pa.schema([("customer_id", pa.string()), ("event_time", pa.string())]),
    )
    from batchscore.errors import FeatureGroupError

    with pytest.raises(FeatureGroupError, match="have no 'customer_id'"):
        store.ingest("ingest_checks", nulls, allow_missing_columns=True)
    assert store.describe("ingest_checks").total_rows == 0
    record(
        "data",
        "a string in a numeric column",
        outcome="ingest refused naming the column; nothing written",
    )
    record("data", "a null record identifier", outcome="ingest refused; nothing written")


def test_odd_but_scoreable_data_is_scored_and_counted(make) -> None:
    """NaN, ±inf, unseen categories, tied versions and malformed ids: scored or skipped, counted."""
    settings = make(feature_group_name="oddities")
    store = open_feature_store(settings)
    store.create_feature_group("oddities", demo.FEATURES)
    base = demo.generate_churn_data(40, seed=3).records.slice(0, 30).to_pylist()
    rows = []
    for i, row in enumerate(base):
        row = dict(row, customer_id=f"CUST_{4000 + i:06d}")
        if i < 3:
            row["monthly_charges"] = [math.inf, -math.inf, math.nan][i]
        if i == 3:
            row["contract_type"] = "quarterly"  # never seen in training
        rows.append(row)
    tie = dict(rows[5], tenure_months=99)  # same id, same event time, same ingest
    odd_ids = [dict(rows[6], customer_id="CUST_ABC"), dict(rows[7], customer_id="4000X")]
    from batchscore.errors import FeatureGroupError

    with pytest.raises(FeatureGroupError, match="appear more than once"):
        store.ingest("oddities", pa.Table.from_pylist([*rows, tie, *odd_ids]))
    store.ingest("oddities", pa.Table.from_pylist([*rows, *odd_ids]))
    # The same tie written around batchscore's ingest (another writer): the read still copes.
    table = store.iceberg_table("oddities")
    stamped = table.scan().to_arrow().filter(pa.compute.equal(pa.compute.field("customer_id"),
                                                               rows[5]["customer_id"]))  # fmt: skip
    table.append(stamped.set_column(stamped.schema.get_field_index("tenure_months"),
                                    "tenure_months", pa.array([99], pa.int64())))  # fmt: skip
    record_ = Pipeline(settings).run()
    assert record_.steps["DataSource"].outputs["unmatched_ids"] == 2
    outputs = record_.steps["BatchInference"].outputs
    assert record_.status == "succeeded"
    assert outputs["rows"] == 30  # one row per id; malformed ids never in range
    assert outputs["non_finite_values"] == {"monthly_charges": 2}
    assert outputs["unseen_categories"] == {"contract_type": 1}
    import pyarrow.parquet as pq

    scored = pa.concat_tables(pq.read_table(f) for f in outputs["files"]).to_pandas()
    assert scored.customer_id.is_unique and len(scored) == 30
    assert not {"CUST_ABC", "4000X"} & set(scored.customer_id)
    assert scored.prediction_probability.between(0, 1).all()  # ±inf and NaN rows scored too
    record(
        "data",
        "NaN and ±inf in a feature",
        outcome="scored (a probability for every row); ±inf counted in the run record "
        "(non_finite_values)",
    )
    record(
        "data",
        "unseen categories",
        outcome="scored; counted in the run record (unseen_categories)",
    )
    record(
        "data",
        "duplicate versions with the same event time",
        outcome="refused in one ingest file; written by another writer, exactly one row per id",
    )
    record(
        "data",
        "malformed ids (CUST_ABC, 4000X)",
        outcome="never in any id range; not scored; counted in the run record (unmatched_ids)",
    )


def test_missing_model_artifact(make, capsys, tmp_path) -> None:
    from sklearn.linear_model import LogisticRegression

    from batchscore.registry import open_registry

    settings = make(model_package_group="lost-artifact")
    frame, y = numeric_training_frame(settings)
    log_external(settings, "lost-artifact", LogisticRegression().fit(frame, y), frame, "Approved")
    version = open_registry(settings).resolve("lost-artifact")
    import mlflow

    client = mlflow.MlflowClient(settings.tracking_uri)
    uri = client.get_model_version_download_uri("lost-artifact", str(version.version))
    shutil.rmtree(uri.removeprefix("file://"))  # the artifact store lost the model's files
    config = config_for(settings, tmp_path / "c.yaml", model_package_group="lost-artifact")
    assert main(["-c", str(config), "run"]) == 1
    assert "cannot download model 'lost-artifact' v1" in capsys.readouterr().err
    assert table_snapshot(settings) is None
    record(
        "model", "a missing artifact", outcome="exit 1: names the model version; table untouched"
    )


def test_signature_that_does_not_match_the_features(make, published) -> None:
    from sklearn.linear_model import LogisticRegression

    from batchscore.errors import SchemaMismatchError

    # The same logical run published earlier with the good model: its rows must stay.
    settings = make(
        model_package_group="wrong-types",
        athena_output_table=published.settings.athena_output_table,
    )
    before = published.snapshot
    frame, y = numeric_training_frame(settings)
    frame = frame.rename(columns={"age": "contract_type"})  # a string feature, as a number
    log_external(settings, "wrong-types", LogisticRegression().fit(frame, y), frame, "Approved")
    with pytest.raises(SchemaMismatchError, match="column 'contract_type' must be numeric"):
        Pipeline(settings).run()
    assert table_snapshot(settings) == before
    record(
        "model",
        "a signature that does not match the features",
        outcome="SchemaMismatchError naming the column; table untouched",
    )


def test_catalog_locked_missing_or_corrupt(make, published, tmp_path: Path, capsys) -> None:
    base, before = published.settings, published.snapshot
    db = base.catalog["uri"].removeprefix("sqlite:///")

    # Locked for longer than every retry; a run that would replace the published rows.
    locked = make(
        athena_output_table=base.athena_output_table,
        catalog={**base.catalog, "uri": f"sqlite:///{db}?timeout=0.2"},
        max_attempts=2,
        retry_backoff_seconds=0.1,
    )
    holder = sqlite3.connect(db, timeout=0, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        # The run's shared lock lives in the catalog database: it cannot even start.
        with pytest.raises(TransientStoreError, match="stayed locked through 8 tries") as err:
            Pipeline(locked).run(run_id="locked-throughout")
    finally:
        holder.rollback()
        holder.close()
    assert "\n" not in str(err.value) and "nothing was started" in str(err.value)
    assert table_snapshot(base) == before
    assert not (locked.runs_path / "locked-throughout").exists()  # no half-started run
    record(
        "infrastructure",
        "a catalog database locked for longer than every retry",
        outcome="the run's lock (kept in the catalog) retried 8 times, then one clear "
        "'locked' error before anything starts; table untouched",
    )

    missing = config_for(
        base,
        tmp_path / "missing.yaml",
        catalog={"type": "sql", "uri": f"sqlite:///{tmp_path}/no/such/dir/c.db"},
    )
    assert main(["-c", str(missing), "run"]) == 2
    err = capsys.readouterr().err
    assert "cannot open the Iceberg catalog" in err and "no/such/dir/c.db" in err
    record(
        "infrastructure",
        "a missing catalog database",
        outcome="exit 2: 'cannot open the Iceberg catalog', names the settings",
    )

    corrupt_db = tmp_path / "corrupt.db"
    corrupt_db.write_bytes(b"this is not a database" * 100)
    corrupt = config_for(
        base, tmp_path / "corrupt.yaml", catalog={"type": "sql", "uri": f"sqlite:///{corrupt_db}"}
    )
    assert main(["-c", str(corrupt), "run"]) == 2
    err = capsys.readouterr().err
    assert "not a database" in err and "corrupt.db" in err
    record(
        "infrastructure",
        "a corrupt catalog database",
        outcome="exit 2: 'file is not a database', names the settings",
    )


def test_catalog_locked_for_a_moment_is_retried(make) -> None:
    """A real SQLite lock (BEGIN EXCLUSIVE from another connection) taken as Publish starts and
    released when the pipeline says it is retrying: the retry commits and the run succeeds."""
    import logging

    from batchscore.records import PipelineHooks

    base = make()
    db = base.catalog["uri"].removeprefix("sqlite:///")
    locked = make(
        catalog={**base.catalog, "uri": f"sqlite:///{db}?timeout=0.2"},
        max_attempts=5,
        retry_backoff_seconds=0.1,
    )
    holder = sqlite3.connect(db, timeout=5, check_same_thread=False)

    class LockAtPublish(PipelineHooks):
        def before_step(self, record, step):
            if step == "Publish":
                holder.execute("BEGIN EXCLUSIVE")

    class ReleaseOnRetry(logging.Handler):
        def emit(self, log_record):
            if "retrying" in log_record.getMessage() and holder.in_transaction:
                holder.rollback()

    release = ReleaseOnRetry()
    logging.getLogger("batchscore").addHandler(release)
    try:
        run = Pipeline(locked, hooks=[LockAtPublish()]).run()
    finally:
        logging.getLogger("batchscore").removeHandler(release)
        if holder.in_transaction:
            holder.rollback()
        holder.close()
    assert run.status == "succeeded"
    assert run.steps["Publish"].attempts > 1
    assert table_snapshot(locked) == run.steps["Publish"].outputs["snapshot_id"]
    record(
        "infrastructure",
        "a catalog database locked for a moment",
        outcome=f"Publish retried ({run.steps['Publish'].attempts} attempts), then committed; "
        "run succeeded",
    )


def test_workspace_not_writable(make, tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    settings = make(workspace=str(blocker / "ws"))
    config = config_for(settings, tmp_path / "c.yaml")
    assert main(["-c", str(config), "run"]) == 1
    err = capsys.readouterr().err
    assert "is not writable" in err and "set 'workspace' to a folder" in err
    assert "a-file/ws" in err
    record(
        "infrastructure",
        "a workspace that is not writable",
        outcome="exit 1: names the workspace and the fix",
    )


def _run_with_file_size_limit(overrides: dict, limit: int) -> None:
    import resource
    import signal

    from batchscore.config import load_settings
    from batchscore.errors import BatchScoreError

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    try:
        Pipeline(load_settings(overrides=overrides, env={})).run(date=dt.date(2026, 8, 1))
    except BatchScoreError as exc:
        print(f"{type(exc).__name__}: {exc}", flush=True)
        os._exit(7 if type(exc).__name__ == "StorageError" else exc.exit_code)


def test_full_disk(make) -> None:
    """A size-limited process (RLIMIT_FSIZE): writing the snapshot fails like a full disk."""
    settings = make(customer_id_end=5000)
    Pipeline(settings).run(date=dt.date(2026, 8, 1))
    before = table_snapshot(settings)
    overrides = overrides_of(settings)
    # The run's lock is a row in the catalog database: empty its WAL first, so that small
    # write fits under the limit and the snapshot's files are what fills the "disk".
    catalog_db = sqlite3.connect(settings.catalog["uri"].removeprefix("sqlite:///"))
    catalog_db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    catalog_db.close()
    process = forkserver.Process(target=_run_with_file_size_limit, args=(overrides, 34_000))
    process.start()
    process.join(120)
    assert process.exitcode == 7  # StorageError
    assert table_snapshot(settings) == before
    from batchscore.runs import RunHistory

    failed = RunHistory.for_settings(settings).list_runs(status="failed")
    assert failed and failed[0]["error_type"] == "StorageError"
    assert failed[0]["error_message"].startswith(f"{failed[0]['failed_step']} could not write")
    assert Pipeline(settings).resume(failed[0]["run_id"]).status == "succeeded"
    record(
        "infrastructure",
        "a full disk (file size limit)",
        outcome="StorageError naming the "
        "step; table untouched; resume completed once space was back",
    )
