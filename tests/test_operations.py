"""Operating the pipeline unattended: history, logs, resume, notifications, schedules,
backfills, the run lock and clean-up — through the real CLI where a user would use it."""

from __future__ import annotations

import datetime as dt
import json
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest

from batchscore.errors import RunLockedError
from batchscore.locks import run_lock
from batchscore.pipeline import Pipeline, PipelineHooks, RunRecord
from batchscore.runs import RunHistory
from batchscore.scheduler import Scheduler, schedule_unit, systemd_on_calendar
from batchscore.tables import load_table, open_catalog
from tests.reliability import record
from tests.servers import mail_text, smtp_server, webhook_server
from tests.test_cli import cli, config_for
from tests.test_pipeline import block_publish, expected_latest, table_rows


def test_failure_mail_resume_and_history_through_the_cli(settings, tmp_path: Path) -> None:
    with smtp_server() as (port, mails):
        url = f"mailto://127.0.0.1:{port}?from=batchscore@example.com&mode=insecure"
        config = config_for(
            settings,
            tmp_path / "c.yaml",
            notification_urls=[url],
            notification_email="oncall@example.com",
        )
        blocker = block_publish(settings, dt.datetime.now(dt.UTC).date())
        failed = cli("-c", str(config), "run")
        assert failed.returncode == 1
        assert "Error: committing 1 prediction file(s)" in failed.stderr, failed.stderr[-1500:]
        assert len(mails) == 1
    mail = mails[0]
    assert mail["Subject"] == (
        "[batchscore] classification-model-batch-inference-pipeline failed at Publish"
    )
    assert mail["To"] == "oncall@example.com"
    history = RunHistory.for_settings(settings)
    run = history.list_runs()[0]
    body = mail_text(mail)
    for text in (
        run["run_id"],
        "Step: Publish",
        "Error: PublishError",
        run["log_path"],
        f"batchscore resume {run['run_id']}",
    ):
        assert text in body

    listed = cli("-c", str(config), "runs", "list", "--status", "failed")
    assert run["run_id"] in listed.stdout and "Publish" in listed.stdout
    shown = cli("-c", str(config), "runs", "show", run["run_id"])
    assert "PublishError" in shown.stdout and "succeeded" in shown.stdout  # earlier steps
    logs = cli("-c", str(config), "runs", "logs", run["run_id"])
    assert "BatchInference: done" in logs.stdout and "Publish failed" in logs.stdout

    scored_at = RunRecord.load(Path(run["run_dir"])).steps["BatchInference"].ended
    blocker.unlink()
    resumed = cli("-c", str(config), "resume", run["run_id"])
    assert resumed.returncode == 0, resumed.stderr
    record = RunRecord.load(Path(run["run_dir"]))
    assert record.status == "succeeded"
    assert record.steps["BatchInference"].ended == scored_at  # not scored again
    rows = table_rows(settings)
    assert len(rows) == len(expected_latest(settings)) and rows.customer_id.is_unique
    assert history.get(run["run_id"])["status"] == "succeeded"
    json_log = cli("-c", str(config), "runs", "logs", run["run_id"], "--json")
    entries = [json.loads(line) for line in json_log.stdout.splitlines()]
    assert {e["run_id"] for e in entries} == {run["run_id"]}
    assert any("resuming run" in e["message"] for e in entries)


def test_webhook_success_and_undeliverable_notifications(make, tmp_path: Path) -> None:
    with webhook_server() as (port, posts):
        settings = make(
            notification_urls=[f"json://127.0.0.1:{port}/hook"], notify_on=["failure", "success"]
        )
        record = Pipeline(settings).run()
        assert len(posts) == 1 and posts[0]["type"] == "success"
        assert posts[0]["title"].endswith("succeeded") and record.run_id in posts[0]["message"]
    # Nothing listens on this port: the run's own error and exit code stand.
    dead = make(
        notification_urls=[f"json://127.0.0.1:{port}/hook"], model_package_group="no-such-model"
    )
    config = config_for(
        dead,
        tmp_path / "dead.yaml",
        model_package_group="no-such-model",
        notification_urls=[f"json://127.0.0.1:{port}/hook"],
    )
    result = cli("-c", str(config), "run")
    assert result.returncode == 1
    assert "Error: model package group 'no-such-model' has no versions" in result.stderr
    assert "could not be delivered" in result.stderr


def test_secrets_never_reach_logs_records_or_notifications(make, tmp_path, monkeypatch) -> None:
    import logging

    monkeypatch.setenv("HOOK_TOKEN", "tok-3f9a7c")

    class ChattyLibrary(PipelineHooks):
        """A library that logs the URL it calls, token and all, through its own logger
        (batchscore's logger is where redaction used to sit, so that proved nothing)."""

        def before_pipeline_run(self, record: RunRecord) -> None:
            logging.getLogger("urllib3").warning("POST http://127.0.0.1/tok-3f9a7c/hook")

    with webhook_server() as (port, posts):
        base = make(model_package_group="missing-model")
        config = config_for(
            base,
            tmp_path / "c.yaml",
            model_package_group="missing-model",
            notification_urls=[f"json://127.0.0.1:{port}/${{HOOK_TOKEN}}"],
        )
        from batchscore.config import load_settings

        settings = load_settings(config)
        assert "tok-3f9a7c" in settings.notification_urls[0]
        with pytest.raises(Exception, match="no versions"):
            Pipeline(settings, hooks=[ChattyLibrary()]).run()
        result = cli("--debug", "-c", str(config), "run")
        shown = cli("-c", str(config), "config", "show")
        assert len(posts) == 2  # delivered to the URL with the real token
    assert "tok-3f9a7c" not in json.dumps(posts)
    assert "tok-3f9a7c" not in result.stdout + result.stderr
    assert "tok-3f9a7c" not in shown.stdout and "json://127.0.0.1" in shown.stdout
    for run_dir in base.runs_path.iterdir():
        for path in run_dir.iterdir():
            if path.is_file():
                assert "tok-3f9a7c" not in path.read_text(), path
    assert any(
        "POST http://127.0.0.1/***/hook" in p.read_text()
        for p in base.runs_path.glob("*/run.jsonl")
    )
    assert b"tok-3f9a7c" not in (base.workspace_path / "runs.db").read_bytes()
    record(
        "security",
        "a ${VAR} secret in a notification URL, logged by a library",
        outcome="*** in console, run.log, run.jsonl, run.json, runs.db, notifications, config show",
    )


def test_three_day_backfill_leaves_three_partitions(make, tmp_path: Path) -> None:
    settings = make()
    config = config_for(settings, tmp_path / "c.yaml")
    result = cli("-c", str(config), "backfill", "--from", "2025-09-01", "--to", "2025-09-03")
    assert result.returncode == 0, result.stderr
    rows = table_rows(settings)
    assert sorted(set(rows.inference_date)) == [dt.date(2025, 9, d) for d in (1, 2, 3)]
    for day in (1, 2, 3):
        as_of = dt.datetime(2025, 9, day, 23, 59, 59, 999999)
        expected = expected_latest(settings, as_of=as_of)
        got = rows[rows.inference_date == dt.date(2025, 9, day)]
        assert sorted(got.customer_id) == sorted(expected.customer_id)
    # Again for the middle day: it replaces only its own rows.
    assert cli("-c", str(config), "run", "--date", "2025-09-02").returncode == 0
    again = table_rows(settings)
    assert len(again) == len(rows)
    assert again.groupby("inference_date").run_id.nunique().tolist() == [1, 1, 1]


def test_the_lock_refuses_a_second_run_and_names_the_holder(settings) -> None:
    today = dt.datetime.now(dt.UTC).date().isoformat()
    holder = "20990101T000000-abcdef"
    with (
        run_lock(settings, settings.pipeline_name, today, holder, "4000-5000"),
        pytest.raises(RunLockedError, match=f"run {holder}"),
    ):
        Pipeline(settings).run()
    assert Pipeline(settings).run().status == "succeeded"  # released


def test_locked_catalog_is_retried(make) -> None:
    """A publish that meets a locked catalog database is retried with backoff and lands."""
    base = make()
    db = base.catalog["uri"].removeprefix("sqlite:///")
    # A one-second busy timeout, so the lock below makes the first attempts fail.
    settings = make(
        catalog={**base.catalog, "uri": f"sqlite:///{db}?timeout=1"},
        max_attempts=6,
        retry_backoff_seconds=0.5,
    )

    class LockCatalogBeforePublish(PipelineHooks):
        def before_step(self, record: RunRecord, step: str) -> None:
            if step != "Publish":
                return
            con = sqlite3.connect(db, timeout=0, check_same_thread=False)
            con.execute("BEGIN EXCLUSIVE")
            threading.Timer(2.5, con.rollback).start()

    record = Pipeline(settings, hooks=[LockCatalogBeforePublish()]).run()
    assert record.status == "succeeded"
    assert record.steps["Publish"].attempts >= 2
    assert "retrying" in Path(record.log_path).read_text()


def test_scheduler_skips_overlapping_runs(make) -> None:
    class Slow(PipelineHooks):
        def before_step(self, record: RunRecord, step: str) -> None:
            if step == "DataSource":
                time.sleep(2.5)

    settings = make(customer_id_end=4050)
    scheduler = Scheduler(settings, "* * * * * *", max_runs=2, hooks=[Slow()])  # every second
    report = scheduler.run_forever()
    assert len(report.started) == 2 and not report.failed
    assert len(report.skipped) >= 1


@pytest.mark.timeout(200)
def test_schedule_every_minute_runs_twice(make, tmp_path: Path) -> None:
    settings = make(customer_id_end=4050)
    config = config_for(settings, tmp_path / "c.yaml", customer_id_end=4050)
    result = cli("-c", str(config), "schedule", "--cron", "* * * * *", "--max-runs", "2")
    assert result.returncode == 0, result.stderr
    assert "runs started: 2, failed: 0" in result.stdout
    runs = RunHistory.for_settings(settings).list_runs()
    assert [r["status"] for r in runs] == ["succeeded", "succeeded"]
    # Two runs on the same logical date: the second replaced the first's rows.
    assert len(table_rows(settings)) == len(expected_latest(settings, 4000, 4050))


def test_schedule_stops_cleanly_on_sigterm(settings, tmp_path: Path) -> None:
    from tests.test_cli import BIN

    config = config_for(settings, tmp_path / "c.yaml")
    process = subprocess.Popen(
        [str(BIN), "-c", str(config), "schedule", "--cron", "0 3 1 1 *"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(4)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "runs started: 0" in out and "schedule stopped" in err


def test_schedule_units(settings) -> None:
    crontab = schedule_unit("crontab", "0 2 * * *", settings, Path("configs/x.yaml"))
    assert (
        "0 2 * * * cd " in crontab and "--config" in crontab and crontab.rstrip().endswith("2>&1")
    )
    assert "OnCalendar=*-*-* 02:00:00 UTC" in schedule_unit("systemd", "0 2 * * *", settings, None)
    assert systemd_on_calendar("*/15 8-18 * * 1-5") == "Mon..Fri *-*-* 08..18:00/15:00 UTC"
    assert systemd_on_calendar("30 6 1 */3 0") == "Sun *-01/3-01 06:30:00 UTC"
    kube = schedule_unit("kubernetes", "0 2 * * *", settings, None)
    assert 'schedule: "0 2 * * *"' in kube and "concurrencyPolicy: Forbid" in kube
    from batchscore.errors import ConfigError

    with pytest.raises(ConfigError, match="not a cron expression"):
        schedule_unit("crontab", "every day", settings, None)


def test_clean_keeps_history_and_table_drop_asks(settings, tmp_path: Path) -> None:
    config = config_for(settings, tmp_path / "c.yaml")
    assert cli("-c", str(config), "run").returncode == 0
    run_id = RunHistory.for_settings(settings).list_runs()[0]["run_id"]
    kept = cli("-c", str(config), "clean", "--older-than", "30d")
    assert "removed 0 run folder(s)" in kept.stdout
    time.sleep(1.1)
    cleaned = cli("-c", str(config), "clean", "--older-than", "0m")
    assert "removed 1 run folder(s)" in cleaned.stdout
    assert not (settings.runs_path / run_id).exists()
    shown = cli("-c", str(config), "runs", "show", run_id)
    assert "removed by 'batchscore clean'" in shown.stdout
    assert len(table_rows(settings)) > 0  # the table does not depend on run folders

    refused = cli("-c", str(config), "table", "drop")
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert cli("-c", str(config), "table", "drop", "--yes").returncode == 0
    assert load_table(open_catalog(settings), settings.output_table) is None


def test_each_step_runs_alone_as_an_orchestrator_would(make, tmp_path: Path) -> None:
    from batchscore.cli import main

    settings = make(customer_id_start=4000, customer_id_end=4300)
    config = str(config_for(settings, tmp_path / "c.yaml"))
    run_id = "execution-0001"

    # Out of order: a later step names the step that must come first.
    assert main(["-c", config, "step", "batch-inference", "--run-id", run_id]) != 0
    assert (
        main(["-c", config, "step", "data-source", "--run-id", run_id, "--date", "2026-03-01"]) == 0
    )
    record = RunRecord.load(settings.runs_path / run_id)
    assert record.status == "running"
    assert [s.status for s in record.steps.values()] == ["succeeded", "pending", "pending"]
    assert main(["-c", config, "step", "publish", "--run-id", run_id]) != 0
    assert main(["-c", config, "step", "batch-inference", "--run-id", run_id]) == 0
    assert main(["-c", config, "step", "publish", "--run-id", run_id]) == 0
    record = RunRecord.load(settings.runs_path / run_id)
    assert record.status == "succeeded" and record.logical_date == "2026-03-01"
    rows = load_table(open_catalog(settings), settings.output_table).scan().to_arrow()
    assert rows.num_rows == record.steps["DataSource"].rows
    # An orchestrator's retry of a finished step changes nothing.
    snapshot = load_table(open_catalog(settings), settings.output_table).current_snapshot()
    assert main(["-c", config, "step", "publish", "--run-id", run_id]) == 0
    again = load_table(open_catalog(settings), settings.output_table).current_snapshot()
    assert again.snapshot_id == snapshot.snapshot_id
    assert main(["-c", config, "step", "publish", "--run-id", "../escape"]) != 0
