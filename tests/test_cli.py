"""The real CLI: `batchscore` as a subprocess for the quickstart, `main()` in-process elsewhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from batchscore.cli import main
from batchscore.tables import load_table, open_catalog
from tests.conftest import overrides_of
from tests.reliability import record

BIN = Path(sys.executable).parent / "batchscore"


def cli(
    *args: str, cwd: Path | None = None, env: dict | None = None
) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHSCORE_")}
    full_env["COLUMNS"] = "200"  # Rich wraps tables at 80 columns without a terminal
    full_env.update(env or {})
    return subprocess.run(
        [str(BIN), *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=300
    )


def config_for(settings, path: Path, **extra) -> Path:
    """A config file for ``settings`` (as made by the ``make`` fixture), plus ``extra``."""
    path.write_text(yaml.safe_dump(overrides_of(settings, **extra)))
    return path


def table_snapshot(settings):
    table = load_table(open_catalog(settings), settings.output_table)
    return (
        None
        if table is None or table.current_snapshot() is None
        else (table.current_snapshot().snapshot_id)
    )


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
    settings, tmp_path: Path, capsys, overrides, message, code
) -> None:
    config = config_for(settings, tmp_path / "c.yaml")
    assert main(["-q", "-c", str(config), "run"]) == 0
    before = table_snapshot(settings)
    args = ["-c", str(config)]
    for pair in overrides:
        args += ["--set", pair]
    capsys.readouterr()
    assert main([*args, "run"]) == code
    err = capsys.readouterr().err
    assert message in err.split("Error: ", 1)[1]
    assert table_snapshot(settings) == before


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
    assert main(["-c", str(config), "query", f"DROP TABLE {settings.output_table}"]) == 1
    assert "only SELECT queries are allowed" in capsys.readouterr().err
    assert main(["-c", str(config), "query", "SELECT 1; SELECT 2"]) == 1
    assert main(["-c", str(config), "query", "SELECT * FROM ml_metrics.nope"]) == 1
    assert "Tables in the catalog" in capsys.readouterr().err
    assert table_snapshot(settings) == before
    record(
        "security",
        "batchscore query with DROP TABLE / two statements",
        outcome="refused: only one SELECT; table untouched",
    )


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
    assert "PendingManualApproval" in out and "batchscore models approve 1" in out
    assert main(["-c", str(config), "models", "approve", "1"]) == 0
    assert "cli-models v1: Approved" in capsys.readouterr().out
    assert main(["-c", str(config), "models", "list"]) == 0
    assert "Approved" in capsys.readouterr().out
    assert main(["-c", str(config), "models", "reject", "1"]) == 0
    assert main(["-c", str(config), "run"]) == 1
    assert "no version with status 'Approved'" in capsys.readouterr().err
    assert main(["-c", str(config), "models", "approve", "7"]) == 1
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
