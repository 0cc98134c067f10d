"""What a run publishes is what its record says, and a customer appears once per pipeline and
date: resume and step keep the run's own table, model group and id range; replace never
leaves a customer twice; overwrite stays inside the run's date; an old run resumed late never
replaces a newer run's rows; the table can be rolled back to any snapshot."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest

from batchscore.catalog import load_table, open_catalog
from batchscore.errors import ConfigError, PublishError, PublishRefusedError
from batchscore.pipeline import Pipeline
from batchscore.queries import run_query
from batchscore.records import RunRecord
from batchscore.sinks.iceberg import table_snapshots
from tests.helpers import (
    block_publish,
    cli,
    config_for,
    expected_latest,
    table_rows,
    table_snapshot,
)
from tests.reliability import record

DAY = dt.date(2026, 5, 4)


def _customers_once(settings, day: dt.date = DAY) -> None:
    rows = table_rows(settings)
    rows = rows[(rows.inference_date == day) & (rows.pipeline_name == settings.pipeline_name)]
    assert rows.customer_id.is_unique, rows.customer_id[rows.customer_id.duplicated()].head()


# Resume and step follow the run record ---------------------------------------------------------


def test_resume_refuses_a_changed_config_and_force_keeps_the_runs_table(make) -> None:
    settings = make()
    blocker = block_publish(settings, DAY)
    with pytest.raises(PublishError):
        Pipeline(settings).run(date=DAY)
    run_id = RunRecord.load(next(settings.runs_path.iterdir())).run_id
    blocker.unlink()

    elsewhere = make(
        athena_output_table=settings.athena_output_table + "_other",
        customer_id_end=4500,
        batch_size=777,  # how the run is carried out: may differ
    )
    with pytest.raises(ConfigError) as refused:
        Pipeline(elsewhere).resume(run_id)
    message = str(refused.value)
    assert "athena_output_table" in message and "customer_id_end" in message
    assert "batch_size" not in message and "--force" in message
    assert (
        table_snapshot(settings) is None and table_snapshot(elsewhere) is None
    )  # nothing published

    resumed = Pipeline(elsewhere).resume(run_id, force=True)
    assert resumed.status == "succeeded"
    assert [f["keys"] for f in resumed.forced] == [["athena_output_table", "customer_id_end"]]
    # Published where the run's record says, with the run's own id range.
    assert load_table(open_catalog(elsewhere), elsewhere.output_table) is None
    rows = table_rows(settings)
    assert set(rows.id_range) == {"4000-5000"}
    assert sorted(rows.customer_id) == sorted(expected_latest(settings).customer_id)
    assert RunRecord.load(Path(resumed.run_dir)).forced == resumed.forced
    record(
        "integrity",
        "resume with another table and id range in the config",
        outcome="refused naming the keys; --force published to the run's own table, recorded",
    )


def test_a_run_that_failed_before_resolving_a_model_resumes_with_the_configs_group(make) -> None:
    from batchscore.errors import NoApprovedModelError

    wrong = make(customer_id_end=4100, model_package_group="churn-v2")
    with pytest.raises(NoApprovedModelError):
        Pipeline(wrong).run(date=DAY, run_id="wrong-group")
    right = make(customer_id_end=4100, athena_output_table=wrong.athena_output_table)
    resumed = Pipeline(right).resume("wrong-group")
    assert resumed.status == "succeeded" and not resumed.forced
    assert resumed.model_name == "classification-model-group"


def test_steps_score_with_the_runs_model_group(make) -> None:
    settings = make(customer_id_end=4200)
    Pipeline(settings).run_step("DataSource", "stepwise", date=DAY)
    other_group = make(
        customer_id_end=4200,
        model_package_group="no-such-group",
        athena_output_table=settings.athena_output_table,
    )
    with pytest.raises(ConfigError, match="model_package_group"):
        Pipeline(other_group).run_step("BatchInference", "stepwise")
    scored = Pipeline(other_group).run_step("BatchInference", "stepwise", force=True)
    assert scored.steps["BatchInference"].status == "succeeded"
    assert scored.model_name == "classification-model-group"
    assert Pipeline(settings).run_step("Validate", "stepwise").steps["Validate"].status == (
        "succeeded"
    )
    published = Pipeline(settings).run_step("Publish", "stepwise")
    assert published.status == "succeeded"
    assert len(table_rows(settings)) == len(expected_latest(settings, 4000, 4200))


def test_a_finished_step_run_again_changes_nothing(make) -> None:
    settings = make(customer_id_end=4100)
    done = Pipeline(settings).run(date=DAY, run_id="finished")
    again = Pipeline(settings).run_step("DataSource", "finished")
    assert again.status == "succeeded"
    assert RunRecord.load(Path(done.run_dir)).status == "succeeded"  # never back to running


def test_an_old_run_resumed_late_does_not_replace_a_newer_runs_rows(make) -> None:
    settings = make(customer_id_end=4300)
    blocker = block_publish(settings, DAY)
    with pytest.raises(PublishError):
        Pipeline(settings).run(date=DAY, run_id="older")
    blocker.unlink()
    newer = Pipeline(settings).run(date=DAY, run_id="newer")
    before = table_snapshot(settings)

    with pytest.raises(PublishError, match=r"run newer .* after this run started"):
        Pipeline(settings).resume("older")
    assert table_snapshot(settings) == before
    assert set(table_rows(settings).run_id) == {newer.run_id}
    assert RunRecord.load(settings.runs_path / "older").status == "failed"
    record(
        "integrity",
        "an older failed run resumed after a newer run of the same date published",
        outcome="refused naming the newer run; the newer rows stay",
    )


# Replace, overwrite, rollback ----------------------------------------------------------------


def test_replace_never_publishes_a_customer_twice(make, tmp_path: Path) -> None:
    narrow = make(customer_id_end=4500)
    Pipeline(narrow).run(date=DAY)
    first = table_snapshot(narrow)

    table = narrow.athena_output_table
    overlapping = make(customer_id_start=4400, customer_id_end=5000, athena_output_table=table)
    with pytest.raises(PublishRefusedError, match="overlap"):
        Pipeline(overlapping).run(date=DAY)
    assert table_snapshot(narrow) == first
    config = config_for(overlapping, tmp_path / "c.yaml", customer_id_start=4400)
    refused = cli("-c", str(config), "run", "--date", DAY.isoformat())
    assert refused.returncode == 1 and "overlap" in refused.stderr
    assert "Resume it" not in refused.stderr  # resuming would be refused again

    wide = make(customer_id_end=5000, athena_output_table=table)
    record_ = Pipeline(wide).run(date=DAY)
    rows = table_rows(wide)
    assert set(rows.run_id) == {record_.run_id}  # the 4000-4500 rows were replaced
    assert sorted(rows.customer_id) == sorted(expected_latest(wide, 4000, 5000).customer_id)
    _customers_once(wide)
    record(
        "integrity",
        "runs for 4000-4500, then 4400-5000, then 4000-5000 on one date",
        outcome="overlap refused naming the earlier run; the covering range replaced it; "
        "each customer once",
    )


def test_overwrite_is_refused_in_a_backfill(make) -> None:
    # What overwrite replaces (this pipeline's rows for the date, nothing else) is checked on
    # the sink alone: tests/test_sink.py::test_overwrite_replaces_only_this_pipelines_rows_…
    overwrite = make(customer_id_start=4050, customer_id_end=4150, write_mode="overwrite")
    with pytest.raises(ConfigError, match="backfill"):
        Pipeline(overwrite).backfill(DAY, DAY)
    assert not overwrite.runs_path.exists() or not any(overwrite.runs_path.iterdir())


def test_table_snapshots_and_rollback(make, tmp_path: Path) -> None:
    settings = make(customer_id_end=4100)
    config = config_for(settings, tmp_path / "c.yaml", customer_id_end=4100)
    Pipeline(settings).run(date=DAY)
    good = table_snapshot(settings)
    good_rows = len(table_rows(settings))
    wipe = make(
        customer_id_start=4000,
        customer_id_end=4010,
        write_mode="overwrite",
        athena_output_table=settings.athena_output_table,
    )
    Pipeline(wipe).run(date=DAY)
    assert len(table_rows(settings)) < good_rows

    listed = cli("-c", str(config), "table", "snapshots")
    assert listed.returncode == 0, listed.stderr
    assert str(good) in listed.stdout
    newest = table_snapshots(open_catalog(settings), settings.output_table)[0]
    assert newest.current and newest.snapshot_id != good

    rolled = cli("-c", str(config), "table", "rollback", "--to-snapshot", str(good))
    assert rolled.returncode == 0, rolled.stderr
    assert table_snapshot(settings) == good and len(table_rows(settings)) == good_rows

    unknown = cli("-c", str(config), "table", "rollback", "--to-snapshot", "12345")
    assert unknown.returncode == 2
    assert "snapshot 12345" in unknown.stderr and "table snapshots" in unknown.stderr


# Smaller holes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("athena_database", "ml_metrics\n"),
        ("athena_output_table", "predictions\n"),
        ("feature_group_name", "features\n"),
        ("pipeline_name", "nightly\n"),
        ("pipeline_name", "../../etc/cron.d/x"),
        ("pipeline_name", "nightly run"),
    ],
)
def test_names_with_a_trailing_newline_or_a_path_are_refused(empty_settings, key, value) -> None:
    from batchscore.config import load_settings

    with pytest.raises(ConfigError, match=key):
        load_settings(path=None, overrides={key: value}, env={})


def test_resume_validates_the_run_id(tmp_path: Path) -> None:
    result = cli("--set", f"workspace={tmp_path / 'ws'}", "resume", "../../etc")
    assert result.returncode == 2
    assert "Error: run id '../../etc' must be" in result.stderr


def test_quickstart_refuses_a_configured_catalog_and_registry(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        f"catalog:\n  type: sql\n  uri: sqlite:///{tmp_path}/prod-catalog.db\n"
        f"  warehouse: file://{tmp_path}/prod-warehouse\n"
        f"registry: sqlite:///{tmp_path}/prod-mlflow.db\n"
    )
    result = cli("-c", str(config), "quickstart", cwd=tmp_path)
    assert result.returncode == 2
    assert "prod-catalog.db" in result.stderr and "prod-mlflow.db" in result.stderr
    assert "--yes" in result.stderr
    assert not (tmp_path / "prod-catalog.db").exists()
    assert not (tmp_path / "prod-mlflow.db").exists()


def test_query_cannot_read_duckdbs_temp_folder_and_is_bounded(settings, tmp_path: Path) -> None:
    from batchscore.errors import QueryError

    catalog = open_catalog(settings)
    (tmp_path / ".tmp").mkdir()  # DuckDB's default spill folder, relative to the cwd
    (tmp_path / ".tmp" / "spill.csv").write_text("secret\nfrom another query\n")
    with pytest.raises(QueryError):
        run_query(catalog, "SELECT * FROM read_csv('.tmp/spill.csv')")
    limits = run_query(
        catalog, "SELECT current_setting('memory_limit') AS m, current_setting('temp_directory') t"
    ).to_pylist()[0]
    assert limits["m"] in ("1.8 GiB", "1.9 GiB", "2.0 GiB", "1.8GiB", "1.9GiB")
    assert "batchscore-query-" in limits["t"] and not os.path.exists(limits["t"])
    with pytest.raises(QueryError, match=r"stopped after 0\.5 s"):
        run_query(catalog, "SELECT count(*) FROM range(100000000000) a", timeout=0.5)


def test_run_record_and_prediction_files_are_fsynced_before_the_commit(make, monkeypatch) -> None:
    import time

    settings = make(customer_id_end=4100)
    synced: dict[str, float] = {}
    real_fsync = os.fsync

    def watching_fsync(fd: int) -> None:  # the real fsync, noting which file and when
        real_fsync(fd)
        synced.setdefault(os.readlink(f"/proc/self/fd/{fd}"), time.time())

    monkeypatch.setattr(os, "fsync", watching_fsync)
    done = Pipeline(settings).run(date=DAY)
    table = load_table(open_catalog(settings), settings.output_table)
    committed = table.current_snapshot().timestamp_ms / 1000
    needed = [str(Path(p).resolve()) for p in done.steps["BatchInference"].outputs["files"]]
    needed += [str(Path(p).resolve()) for p in done.steps["DataSource"].outputs["files"]]
    needed.append(str((Path(done.run_dir) / "run.json.tmp").resolve()))
    for path in needed:
        assert path in synced, path
        assert synced[path] <= committed, path
