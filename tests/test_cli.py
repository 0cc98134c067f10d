"""The real CLI: `batchscore` as a subprocess for the quickstart, `main()` in-process elsewhere."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from batchscore.catalog import open_catalog
from batchscore.cli import main
from tests.helpers import BIN, cli, config_for, table_snapshot
from tests.reliability import record


def test_quickstart_twice_from_nothing_and_another_reader_agrees(tmp_path: Path) -> None:
    first = cli("quickstart", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "ml_metrics.mlops_poc_daily_inference" in first.stdout
    assert "created now" in first.stdout and "trained now" in first.stdout
    assert "batchscore query" in first.stdout
    count = cli(
        "query",
        "SELECT count(*) AS n FROM ml_metrics.mlops_poc_daily_inference",
        "--format",
        "json",
        cwd=tmp_path,
    )
    n = json.loads(count.stdout)[0]["n"]
    assert 950 < n <= 1001

    second = cli("quickstart", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "existing" in second.stdout
    again = cli(
        "query",
        "SELECT count(*) AS n, count(DISTINCT customer_id) AS ids "
        "FROM ml_metrics.mlops_poc_daily_inference",
        "--format",
        "json",
        cwd=tmp_path,
    )
    assert json.loads(again.stdout)[0] == {"n": n, "ids": n}

    # Another Iceberg reader, in its own process, straight from the catalog: the same rows.
    reader = subprocess.run(
        [
            sys.executable,
            "-c",
            (
                "from pyiceberg.catalog.sql import SqlCatalog\n"
                "c = SqlCatalog('batchscore', uri='sqlite:///.batchscore/catalog.db')\n"
                "t = c.load_table('ml_metrics.mlops_poc_daily_inference').scan().to_arrow()\n"
                "print(t.num_rows, len(set(t.column('customer_id').to_pylist())))\n"
            ),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert reader.stdout.split() == [str(n), str(n)], reader.stderr


def test_config_typo_is_a_clear_error(tmp_path: Path) -> None:
    result = cli("--set", "customer_id_strat=4000", "run", cwd=tmp_path)
    assert result.returncode == 2
    assert "Error: unknown config key 'customer_id_strat'" in result.stderr
    assert "Did you mean 'customer_id_start'?" in result.stderr
    assert not (tmp_path / ".batchscore").exists()


def test_start_after_end_via_cli(settings, tmp_path: Path, capsys) -> None:
    config = config_for(settings, tmp_path / "c.yaml")
    code = main(["-c", str(config), "--set", "customer_id_start=6000", "run"])
    assert code == 2
    assert (
        "customer_id_start (6000) is greater than customer_id_end (5000)" in capsys.readouterr().err
    )


@pytest.mark.parametrize(
    ("overrides", "message", "code"),
    [
        (["feature_group_name=churn_features"], "feature group 'churn_features' does not exist", 1),
        (
            ["model_package_group=empty-group"],
            "model package group 'empty-group' has no versions",
            1,
        ),
        (["customer_id_start=800000", "customer_id_end=800001"], "nothing to score", 3),
        (["athena_database=ml_metrics; DROP TABLE x"], "athena_database", 2),
    ],
)
def test_bad_input_exits_non_zero_and_leaves_the_table(
    published, capsys, overrides, message, code
) -> None:
    args = ["-c", str(published.config)]
    for pair in overrides:
        args += ["--set", pair]
    capsys.readouterr()
    assert main([*args, "run"]) == code
    err = capsys.readouterr().err
    assert message in err.split("Error: ", 1)[1]
    assert table_snapshot(published.settings) == published.snapshot


def test_run_prints_a_summary(settings, tmp_path: Path, capsys) -> None:
    config = config_for(settings, tmp_path / "c.yaml")
    assert main(["-c", str(config), "run"]) == 0
    out = capsys.readouterr().out
    for text in (
        "DataSource",
        "BatchInference",
        "Publish",
        "rows scored",
        "classification-model-group v1",
        "ROC AUC",
        settings.output_table,
    ):
        assert text in out


def test_query_formats_and_read_only(settings, tmp_path: Path, capsys) -> None:
    config = config_for(settings, tmp_path / "c.yaml")
    main(["-q", "-c", str(config), "run"])
    capsys.readouterr()
    sql = f"SELECT prediction, count(*) AS n FROM {settings.output_table} GROUP BY 1 ORDER BY 1"
    assert main(["-c", str(config), "query", sql, "--format", "csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == '"prediction","n"' and len(lines) == 3
    assert main(["-c", str(config), "query", sql, "--format", "json"]) == 0
    assert {row["prediction"] for row in json.loads(capsys.readouterr().out)} == {0, 1}
    assert main(["-c", str(config), "query", sql]) == 0
    assert "2 row(s)" in capsys.readouterr().out
    before = table_snapshot(settings)
    assert main(["-c", str(config), "query", f"DROP TABLE {settings.output_table}"]) == 2
    assert "only SELECT queries are allowed" in capsys.readouterr().err
    assert main(["-c", str(config), "query", "SELECT 1; SELECT 2"]) == 2
    assert main(["-c", str(config), "query", "SELECT * FROM ml_metrics.nope"]) == 1
    assert "Tables in the catalog" in capsys.readouterr().err
    assert table_snapshot(settings) == before
    record(
        "security",
        "batchscore query with DROP TABLE / two statements",
        outcome="refused: only one SELECT; table untouched",
    )


def test_query_prints_values_and_names_as_they_are(empty_settings, capsys) -> None:
    ws = ["--set", f"workspace={empty_settings.workspace}"]
    open_catalog(empty_settings)  # an empty catalog: a query needs an existing workspace
    sql = "SELECT '[not set]' AS a, '[red]x[/red]' AS b, 'a [/] b' AS c, 1 AS \"[bold]n[/bold]\""
    assert main([*ws, "query", sql]) == 0
    out = capsys.readouterr().out
    for shown in ("[not set]", "[red]x[/red]", "a [/] b", "[bold]n[/bold]"):
        assert shown in out, out


def test_features_commands(empty_settings, tmp_path: Path, capsys) -> None:
    schema = tmp_path / "schema.yaml"
    schema.write_text("customer_id: String\nevent_time: String\nspend: Fractional\nplan: String\n")
    records = tmp_path / "records.csv"
    records.write_text(
        "customer_id,event_time,spend,plan\nCUST_000001,2026-01-01,10.5,gold\n"
        "CUST_000002,2026-01-01,3,silver\n"
    )
    ws = ["--set", f"workspace={empty_settings.workspace}", "--set", "feature_group_name=shop"]
    assert main([*ws, "features", "create", "--schema", str(schema)]) == 0
    assert main([*ws, "features", "ingest", str(records)]) == 0
    assert main([*ws, "features", "delete", "CUST_000002"]) == 0
    assert main([*ws, "features", "describe"]) == 0
    out = capsys.readouterr().out
    assert "ingested 2 record(s) into shop" in out
    assert "deleted 1 record(s) from shop" in out
    assert "spend" in out and "Fractional" in out and "total_rows" in out
    assert main([*ws, "features", "create", "--sample", str(records), "--name", "shop2"]) == 0
    assert main([*ws, "features", "list"]) == 0
    assert capsys.readouterr().out.split()[-2:] == ["shop", "shop2"]
    assert main([*ws, "features", "ingest", str(tmp_path / "missing.csv")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_train_and_models_commands(make, tmp_path: Path, capsys) -> None:
    settings = make(model_package_group="cli-models")
    config = config_for(settings, tmp_path / "c.yaml", model_package_group="cli-models")
    assert main(["-c", str(config), "train", "--from", "1", "--to", "500"]) == 0
    out = capsys.readouterr().out
    assert "PendingManualApproval" in out
    assert "batchscore models approve 1 --group cli-models" in out
    assert main(["-c", str(config), "models", "approve", "1"]) == 0
    out = capsys.readouterr().out
    assert "'cli-models' v1: PendingManualApproval → Approved" in out
    assert "the config's model_package_group" in out
    assert main(["-c", str(config), "models", "list"]) == 0
    assert "Approved" in capsys.readouterr().out
    assert main(["-c", str(config), "models", "reject", "1"]) == 0
    assert main(["-c", str(config), "run"]) == 1
    assert "no version with status 'Approved'" in capsys.readouterr().err
    assert main(["-c", str(config), "models", "approve", "7"]) == 2
    assert "has no version 7" in capsys.readouterr().err


def test_config_show_hides_secrets(tmp_path: Path, capsys, monkeypatch) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("notification_email: ${ALERT_MAIL}\nregion: us-west-2\n")
    monkeypatch.setenv("ALERT_MAIL", "oncall-secret@example.com")
    assert main(["-c", str(config), "config", "show"]) == 0
    out = capsys.readouterr().out
    assert "oncall-secret" not in out and "notification_email: '***'" in out
    assert "unused by the local backend: region, notification_email" in out


def test_unexpected_usage_errors() -> None:
    assert main(["run", "--date", "yesterday"]) == 2
    assert main(["no-such-command"]) == 2


def test_the_approve_hint_approves_in_the_group_it_trained(make, tmp_path: Path, capsys) -> None:
    from batchscore.registry import open_registry

    settings = make(model_package_group="hint-default")
    config = config_for(settings, tmp_path / "c.yaml", model_package_group="hint-default")
    registry = open_registry(settings)
    assert main(["-c", str(config), "train", "--from", "1", "--to", "300"]) == 0
    registry.set_status("hint-default", 1, "Rejected")
    capsys.readouterr()
    assert (
        main(["-c", str(config), "--set", "model_package_group=hint-other", "train",
              "--from", "1", "--to", "300"])
        == 0
    )  # fmt: skip
    hint = capsys.readouterr().out.split("Approve it with: ")[1].split()
    assert hint[:3] == ["batchscore", "models", "approve"]
    assert main(["-c", str(config), *hint[1:]]) == 0  # exactly what was printed
    assert registry.get_version("hint-other", 1).status == "Approved"
    assert registry.get_version("hint-default", 1).status == "Rejected"  # untouched


@pytest.mark.parametrize(("signum", "code", "name"), [(2, 130, "Ctrl-C"), (15, 143, "SIGTERM")])
def test_an_interrupted_run_exits_non_zero_and_says_how_to_resume(
    make, tmp_path: Path, signum: int, code: int, name: str
) -> None:
    import signal
    import time

    from batchscore.records import RunRecord

    settings = make(customer_id_end=4100)
    config = config_for(settings, tmp_path / "c.yaml", customer_id_end=4100)
    barrier = tmp_path / "barrier"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHSCORE_")}
    # Held inside BatchInference (a barrier nobody else reaches) until the signal comes.
    env["BATCHSCORE_FAILPOINT"] = f"BatchInference:start=barrier:{barrier}:2"
    env["COLUMNS"] = "400"  # log lines unwrapped: the commands in them are compared whole
    proc = subprocess.Popen(
        [str(BIN), "-c", str(config), "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # As from a terminal: a suite started in the background (`make test &`) has SIGINT
        # ignored, and an ignored SIGINT is inherited — the run would rightly not stop.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while not list(barrier.glob("*.arrived")) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.Signals(signum))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert f"Interrupted ({name})." in err
    # The command shown carries the run's config: pasted as it is, it resumes the run. So
    # does the step's error line logged before it (no plain `batchscore resume` anywhere).
    shown = err.split("continue it with: ")[-1].splitlines()[0].strip()
    assert shown.startswith(f"batchscore -c {config} resume "), err
    assert "batchscore resume " not in err and err.count(shown) == 2, err
    run_id = shown.split()[-1]
    record = RunRecord.load(settings.runs_path / run_id)
    assert record.status == "failed" and record.failed_step == "BatchInference"
    assert record.error["type"] in ("KeyboardInterrupt", "Terminated")
    assert "interrupted" in record.error["message"]
    resumed = cli(*shlex.split(shown)[1:])
    assert resumed.returncode == 0, resumed.stderr


def test_quiet_is_quiet_during_a_run(make, tmp_path: Path) -> None:
    settings = make(customer_id_end=4050)
    config = config_for(settings, tmp_path / "c.yaml", customer_id_end=4050)
    result = cli("-q", "-c", str(config), "run")
    assert result.returncode == 0, result.stderr
    assert "DataSource: started" not in result.stderr and "INFO" not in result.stderr
    run_log = next(settings.runs_path.glob("*/run.log")).read_text()
    assert "DataSource: started" in run_log  # the run's own log keeps every line


def test_tool_variables_are_not_settings_but_typos_are_caught(tmp_path: Path) -> None:
    ws = ["--set", f"workspace={tmp_path / 'ws'}"]
    for variable in ("BATCHSCORE_FAILPOINT", "BATCHSCORE_SOAK", "BATCHSCORE_KILL_REPEATS",
                     "BATCHSCORE_PROGRESS_INTERVAL"):  # fmt: skip
        shown = cli(*ws, "config", "show", env={variable: "x"})
        assert shown.returncode == 0, shown.stderr
    typo = cli(*ws, "config", "show", env={"BATCHSCORE_BATCH_SIZ": "5"})
    assert typo.returncode == 2
    assert "BATCHSCORE_BATCH_SIZ names no setting" in typo.stderr
    assert "Did you mean 'batch_size'?" in typo.stderr


# Issue 12: output a newcomer can read, errors that say what to do -------------------------


def test_runs_tables_fit_80_columns_and_print_json_and_csv(settings, tmp_path: Path) -> None:
    import csv
    import io

    config = config_for(settings, tmp_path / "c.yaml", customer_id_end=4100)
    assert main(["-q", "-c", str(config), "run"]) == 0
    run_id = json.loads(cli("-c", str(config), "runs", "list", "--format", "json").stdout)[0][
        "run_id"
    ]
    for columns in ("80", "200"):
        listed = cli("-c", str(config), "runs", "list", env={"COLUMNS": columns})
        assert listed.returncode == 0, listed.stderr
        row = next(line for line in listed.stdout.splitlines() if run_id in line)
        assert "succeeded" in row and "2026-" in row and "…" not in row, listed.stdout
        assert max(len(line) for line in listed.stdout.splitlines()) <= int(columns)
        shown = cli("-c", str(config), "runs", "show", run_id, env={"COLUMNS": columns})
        assert shown.returncode == 0, shown.stderr
        assert "…" not in shown.stdout, shown.stdout  # paths fold, never cut
        assert "unseen categories" in shown.stdout and "non-finite values" in shown.stdout
    assert "model" in listed.stdout and "pipeline" in listed.stdout  # all of it at 200

    as_csv = cli("-c", str(config), "runs", "list", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [(r["run_id"], r["status"], r["rows"]) for r in rows] == [
        (run_id, "succeeded", str(json.loads(cli("-c", str(config), "runs", "show", run_id,
                                                  "-f", "json").stdout)["rows"]))
    ]  # fmt: skip
    shown = json.loads(cli("-c", str(config), "runs", "show", run_id, "--format", "json").stdout)
    assert shown["status"] == "succeeded" and shown["unseen_categories"] == {}
    assert [s["step"] for s in shown["steps"]] == [
        "DataSource", "BatchInference", "Validate", "Publish",
    ]  # fmt: skip
    assert shown["verdict"] == "pass" and shown["violations"] == []
    assert shown["evaluation"]["rows"] > 0 and shown["table_snapshot"] == table_snapshot(settings)
    flat = list(csv.DictReader(io.StringIO(cli("-c", str(config), "runs", "show", run_id,
                                               "--format", "csv").stdout)))  # fmt: skip
    assert len(flat) == 1 and flat[0]["steps.Publish.status"] == "succeeded"
    bad = cli("-c", str(config), "runs", "list", "--format", "yaml")
    assert bad.returncode == 2 and "Error: --format 'yaml' must be table, json or csv" in bad.stderr


def test_models_show_list_formats_and_status_history(make, tmp_path: Path, capsys) -> None:
    import csv
    import io

    settings = make(model_package_group="show-models")
    config = config_for(settings, tmp_path / "c.yaml", model_package_group="show-models")
    assert main(["-q", "-c", str(config), "train", "--from", "1", "--to", "400"]) == 0
    assert main(["-q", "-c", str(config), "models", "approve", "1"]) == 0
    capsys.readouterr()
    assert main(["-c", str(config), "models", "show", "1", "--format", "json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["status"] == "Approved"
    assert [c["status"] for c in shown["status_history"]] == ["PendingManualApproval", "Approved"]
    assert shown["input_types"]["contract_type"] == "string"
    assert shown["input_types"]["tenure_months"] == "double"
    assert 0 < shown["metrics"]["validation_roc_auc"] <= 1
    assert shown["training"]["id_range"] == [1, 400]
    assert main(["-c", str(config), "models", "show", "1"]) == 0
    out = capsys.readouterr().out
    for text in ("signature", "contract_type", "month-to-month", "PendingManualApproval (",
                 "→ Approved", "validation_roc_auc", "trained on"):  # fmt: skip
        assert text in out, out
    assert main(["-c", str(config), "models", "list", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["version"], r["status"]) for r in rows] == [("1", "Approved")]
    assert main(["-c", str(config), "models", "list", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["group"] == "show-models"
    assert main(["-c", str(config), "features", "list", "--format", "json"]) == 0
    names = [g["name"] for g in json.loads(capsys.readouterr().out)]
    assert settings.feature_group_name in names
    assert main(["-c", str(config), "features", "list", "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "name"
    # An unknown version is a usage error (exit 2) naming the versions there are.
    assert main(["-c", str(config), "models", "show", "7"]) == 2
    assert "has no version 7 (versions: v1)" in capsys.readouterr().err


def test_table_list_shows_the_catalogs_tables(settings, tmp_path: Path, capsys) -> None:
    config = config_for(settings, tmp_path / "c.yaml", customer_id_end=4050)
    assert main(["-q", "-c", str(config), "run"]) == 0
    capsys.readouterr()
    assert main(["-c", str(config), "table", "list", "--format", "json"]) == 0
    tables = {t["table"]: t for t in json.loads(capsys.readouterr().out)}
    mine = tables[settings.output_table]
    assert mine["snapshot_id"] == table_snapshot(settings) and mine["rows"] > 0
    assert mine["last_run_id"] and mine["last_commit"]
    assert f"feature_store.{settings.feature_group_name}" in tables
    listed = cli("-c", str(config), "table", "list", env={"COLUMNS": "80"})
    assert listed.returncode == 0, listed.stderr
    assert settings.output_table in listed.stdout and f"{mine['rows']:,}" in listed.stdout


def test_flags_show_as_flags_in_help() -> None:
    for args in (["--help"], ["train", "--help"], ["runs", "logs", "--help"]):
        shown = cli(*args)
        assert shown.returncode == 0, shown.stderr
        assert "<bool>" not in shown.stdout, shown.stdout
    assert "--debug " in cli("--help").stdout
    assert "<int>" in cli("runs", "list", "--help").stdout  # a value still shows its type


def test_declining_table_drop_exits_1_and_keeps_the_table(
    settings, tmp_path: Path, capsys, monkeypatch
) -> None:
    import io

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    config = config_for(settings, tmp_path / "c.yaml", customer_id_end=4050)
    assert main(["-q", "-c", str(config), "run"]) == 0
    before = table_snapshot(settings)
    monkeypatch.setattr(sys, "stdin", Terminal("n\n"))
    assert main(["-c", str(config), "table", "drop"]) == 1
    assert "was not dropped" in capsys.readouterr().err
    assert table_snapshot(settings) == before


def test_refused_query_and_unknown_version_are_usage_errors(settings, tmp_path, capsys) -> None:
    config = config_for(settings, tmp_path / "c.yaml")
    assert main(["-c", str(config), "query", "DELETE FROM ml_metrics.x"]) == 2
    assert "only SELECT queries are allowed" in capsys.readouterr().err
    assert main(["-c", str(config), "query", "SELECT 1; SELECT 2"]) == 2
    assert main(["-c", str(config), "query", "SELECT * FROM ml_metrics.nope"]) == 1  # engine
    assert main(["-c", str(config), "models", "approve", "7"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3 and all(line.startswith("Error: ") for line in lines)
    assert "has no version 7" in lines[-1]


def test_sagemaker_registry_without_region_names_the_key(
    settings, tmp_path: Path, capsys, monkeypatch
) -> None:
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    config = config_for(settings, tmp_path / "c.yaml")
    assert main(["-c", str(config), "train", "--registry", "sagemaker"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "Error" in line]
    assert len(errors) == 1 and "AWS_DEFAULT_REGION" in errors[0]
    assert errors[0].startswith("Error: AWS sagemaker needs a region: set region in the config")


def test_a_model_that_cannot_take_nan_names_the_columns_and_how_to_resume(
    make, tmp_path: Path, capsys
) -> None:
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    from batchscore import demo
    from batchscore.registry import open_registry

    settings = make(model_package_group="no-imputer", customer_id_end=4300)

    frame = demo.generate_churn_data(400, seed=3).records.to_pandas()
    columns = ["tenure_months", "monthly_charges", "last_login_days"]  # the last two miss some
    known = frame.dropna(subset=[*columns, "churn"])
    estimator = LogisticRegression().fit(known[columns], known["churn"].astype(int))
    registry = open_registry(settings)
    version = registry.register_sklearn(
        "no-imputer", estimator, pd.DataFrame(known[columns]), profile={}
    )
    registry.set_status("no-imputer", version.version, "Approved")
    config = config_for(
        settings, tmp_path / "c.yaml", model_package_group="no-imputer", customer_id_end=4300
    )
    assert main(["-q", "-c", str(config), "run"]) == 1
    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if line.startswith("Error: "))
    assert "cannot take missing values" in line and "Impute in the model's pipeline" in line
    assert "'monthly_charges' (" in line and "'last_login_days' (" in line
    assert "tenure_months" not in line  # it has no missing value
    run_id = line.split(f"Resume it: batchscore -c {config} resume ")[1].split()[0]
    assert (settings.runs_path / run_id / "run.json").exists()


def test_a_damaged_feature_file_is_one_error_line_without_sql(make, tmp_path: Path) -> None:
    import uuid

    from batchscore import demo
    from batchscore.catalog import open_catalog
    from batchscore.feature_store import open_feature_store

    group = f"damaged_{uuid.uuid4().hex[:8]}"
    ids = {"customer_id_start": 1, "customer_id_end": 200}
    settings = make(feature_group_name=group, **ids)
    store = open_feature_store(settings)
    store.create_feature_group(group, demo.FEATURES)
    store.ingest(group, demo.generate_churn_data(200, seed=5).records)
    table = open_catalog(settings).load_table(f"feature_store.{group}")
    data_file = next(iter(table.scan().plan_files())).file.file_path.removeprefix("file://")
    Path(data_file).write_bytes(b"PAR1" + b"x" * 64 + b"PAR1")
    config = config_for(settings, tmp_path / "c.yaml", feature_group_name=group, **ids)
    failed = cli("-q", "-c", str(config), "run")
    assert failed.returncode == 1, failed.stderr
    errors = [line for line in failed.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, failed.stderr
    assert f"reading feature group '{group}' failed:" in errors[0]
    assert Path(data_file).name in errors[0]  # the damaged file, named
    assert "LINE " not in failed.stderr and "read_parquet" not in failed.stderr
    assert f"Resume it: batchscore -c {config} resume " in errors[0]


HEAVY_MODULES = ("pandas", "pyarrow", "pyiceberg", "mlflow", "sklearn", "duckdb", "boto3",
                 "batchscore.pipeline")  # fmt: skip


def imports_after(*commands: list[str]) -> list[str]:
    """The heavy modules imported once ``main`` ran each command, in a fresh interpreter."""
    code = (
        "import sys\n"
        "from batchscore.cli import main\n"
        f"for args in {list(commands)!r}:\n"
        "    assert main(args) == 0, args\n"
        "import batchscore\n"
        f"print('HEAVY', [m for m in {HEAVY_MODULES!r} if m in sys.modules])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.split("HEAVY ")[-1].replace("'", '"'))


def test_help_imports_nothing_heavy() -> None:
    """`batchscore --help` (and `import batchscore`) must not pay for pandas, pyarrow,
    pyiceberg, MLflow or scikit-learn: 1.45 s -> 0.45 s when this held (docs/benchmarks.md)."""
    assert imports_after(["--help"]) == []


def test_runs_list_and_show_import_nothing_heavy(published) -> None:
    """Reading the run history needs neither the runner nor the data libraries: `runs list`
    1.3 s -> 0.4 s when this held (docs/benchmarks.md)."""
    config, run_id = ["-c", str(published.config)], published.run_id
    commands = [[*config, *command, "-f", fmt] for fmt in ("table", "json", "csv")
                for command in (["runs", "list"], ["runs", "show", run_id])]  # fmt: skip
    assert imports_after(*commands) == []


def test_the_history_returns_a_run_as_a_typed_record(published) -> None:
    from batchscore.errors import RunNotFoundError
    from batchscore.runs import RunDetails, RunHistory

    history = RunHistory.for_settings(published.settings, writable=False)
    run = history.get(published.run_id)
    assert isinstance(run, RunDetails)
    assert (run.run_id, run.status, run.note) == (published.run_id, "succeeded", None)
    assert run.table_snapshot == published.snapshot
    assert run.output_table == published.settings.output_table
    assert [s.step for s in run.steps] == ["DataSource", "BatchInference", "Validate", "Publish"]
    assert all(s.status == "succeeded" and s.attempts == 1 and s.error is None for s in run.steps)
    assert run.rows == run.steps[1].rows > 0 and run.evaluation["rows"] == run.rows
    assert run.prediction_files and all(Path(f).is_file() for f in run.prediction_files)
    assert run.model == f"{published.settings.model_package_group} v1"
    with pytest.raises(RunNotFoundError, match="List runs with 'batchscore runs list'"):
        history.get("no-such-run")


def test_the_commands_shown_after_quickstart_run_from_where_the_user_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hints name a command the user's shell can run: the plain name when PATH finds this
    batchscore, else the path it was started by, relative only when it lies below the folder."""
    from batchscore.cli import invoked_as

    exe = tmp_path / "venv" / "bin" / "batchscore"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    elsewhere = tmp_path / "project"
    elsewhere.mkdir()
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.chdir(elsewhere)
    assert invoked_as(str(exe)) == str(exe)  # not '.venv/bin/batchscore': that is not here
    monkeypatch.chdir(tmp_path)
    assert invoked_as("venv/bin/batchscore") == "venv/bin/batchscore"
    monkeypatch.setenv("PATH", f"{exe.parent}:/usr/bin:/bin")
    assert invoked_as(str(exe)) == "batchscore"


def test_a_global_option_after_the_command_says_where_it_goes(published) -> None:
    result = cli("-c", str(published.config), "runs", "list", "-q")
    assert result.returncode == 2
    assert "-q is a global option: put it before the command: batchscore -q runs list" in (
        result.stderr
    )
    result = cli("-c", str(published.config), "runs", "list", "--status", "faild")
    assert result.returncode == 2
    assert "--status 'faild' is not a run status" in result.stderr
    assert "Did you mean 'failed'?" in result.stderr
