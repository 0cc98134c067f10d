"""The monitoring table: a run's checks (from ``checks.json``, as Validate writes it) and its own
figures land there, one row per run × check × feature; recording again replaces, never doubles;
a failure to record never fails the run; trends read back in run order.

Validate itself is built on another branch: a test step writes ``checks.json`` in the contract's
form (``{"verdict", "reference", "results": [CheckResult.to_dict()], "accepted"}``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from pathlib import Path

import pytest

from batchscore.catalog import load_table, open_catalog
from batchscore.errors import BatchScoreError
from batchscore.monitoring.results import CheckResult, monitoring_schema
from batchscore.monitoring.table import (
    MonitoredRun,
    last_runs,
    metric_trend,
    monitoring_table_name,
    read_monitoring,
    record_results,
    run_figures,
)
from batchscore.pipeline import Pipeline
from batchscore.records import RunRecord
from batchscore.runs import RunHistory
from batchscore.steps import STEPS, Step
from batchscore.steps.context import RunContext
from tests.helpers import cli, config_for, make_settings

VERDICT = "BATCHSCORE_TEST_VERDICT"  # the verdict the test step writes: pass, warn or block
BROKEN = "BATCHSCORE_TEST_CHECKS_BROKEN"  # write a checks.json that is not the contract's

RESULTS = [
    CheckResult("psi", "tenure_months", "psi", "training", 0.31, 0.2, "warn", "warn",
                "PSI 0.31 above 0.2 against the training profile"),
    CheckResult("psi", "age", "psi", "training", 0.02, 0.2, "pass", "warn", ""),
    CheckResult("null_rate", "age", "null_share_change", "previous_run", 0.0, 0.05, "pass",
                "warn", ""),
    CheckResult("volume", None, "rows_change", "previous_run", None, 0.5, "skipped", "warn",
                "no previous run to compare with"),
]  # fmt: skip


def write_checks(ctx: RunContext) -> dict[str, object]:
    """A stand-in Validate: writes checks.json in the contract's form; ``block`` fails."""
    verdict = os.environ.get(VERDICT, "warn")
    results = [r.to_dict() for r in RESULTS]
    if verdict == "block":
        results[0] = {**results[0], "status": "block", "action": "block"}
    path = Path(ctx.record.run_dir) / "checks.json"
    data: dict[str, object] = {"verdict": verdict, "reference": {}, "results": results,
                               "accepted": None}  # fmt: skip
    if os.environ.get(BROKEN):
        data = {"verdict": verdict, "results": "not a list"}
    path.write_text(json.dumps(data))
    if verdict == "block":
        raise BatchScoreError("Validate blocked the run: tenure_months PSI 0.31 > 0.2")
    rows = ctx.record.outputs("BatchInference")["rows"]
    return {"rows": rows, "verdict": verdict, "checks_path": str(path)}


VALIDATE = Step(
    "Validate", "validate", "checks (test stand-in)", "tests.test_monitoring_table:write_checks"
)
# The pipeline's steps with the stand-in in Validate's place, and without Validate.
WITH_VALIDATE = tuple(VALIDATE if step.name == "Validate" else step for step in STEPS)
if VALIDATE not in WITH_VALIDATE:  # a step list from before Validate
    WITH_VALIDATE = (*STEPS[:2], VALIDATE, *STEPS[2:])
WITHOUT_VALIDATE = tuple(step for step in STEPS if step.name != "Validate")


def rows_of(settings, run_id: str) -> list[dict]:
    return sorted(
        read_monitoring(settings, run_ids=[run_id]).to_pylist(),
        key=lambda r: (r["check"], r["feature"] or "", r["statistic"]),
    )


@pytest.fixture(scope="module")
def validated(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """One run through the stand-in Validate (verdict warn), shared by the module."""
    folder = tmp_path_factory.mktemp("monitoring")
    settings = make_settings(shared_dir, folder / "ws", customer_id_start=4000,
                             customer_id_end=4200)  # fmt: skip
    record = Pipeline(settings, steps=WITH_VALIDATE).run(date=dt.date(2026, 3, 1))
    assert record.status == "succeeded"
    return settings, record, config_for(settings, folder / "c.yaml")


def test_validate_results_and_the_runs_figures_are_recorded(validated) -> None:
    settings, record, config = validated
    rows = rows_of(settings, record.run_id)

    expected = sorted(
        [r.to_dict() for r in RESULTS]
        + [
            CheckResult("run", None, "rows_scored", "", float(record.steps["BatchInference"].rows),
                        None, "info", "", f"{record.steps['BatchInference'].rows} rows scored "
                        "by BatchInference").to_dict(),
            CheckResult("run", None, "quarantined", "", 0.0, None, "info", "",
                        "0 rows quarantined (not scorable; see the quarantine table)").to_dict(),
        ],
        key=lambda r: (r["check"], r["feature"] or "", r["statistic"]),
    )  # fmt: skip
    assert [{k: r[k] for k in expected[0]} for r in rows] == expected
    for row in rows:  # every row carries the run's lineage and date
        assert (row["run_id"], row["pipeline_name"], row["id_range"]) == (
            record.run_id, record.pipeline_name, "4000-4200"
        )  # fmt: skip
        assert (row["model_name"], row["model_version"]) == (
            record.model_name,
            record.model_version,
        )
        assert row["inference_date"] == dt.date(2026, 3, 1)

    table = load_table(open_catalog(settings), monitoring_table_name(settings))
    assert table is not None
    assert [f.name for f in table.spec().fields] == ["inference_date"]
    assert table.schema().as_arrow().names == monitoring_schema().names

    name = monitoring_table_name(settings)
    shown = cli(
        "-c", str(config), "query", "--format", "json",
        f'SELECT "check", feature, value, status FROM {name} WHERE status = \'warn\'',
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == [
        {"check": "psi", "feature": "tenure_months", "value": 0.31, "status": "warn"}
    ]


def test_recording_a_run_again_replaces_its_rows_of_those_checks(validated) -> None:
    settings, record, _ = validated
    before = rows_of(settings, record.run_id)

    changed = CheckResult("psi", "tenure_months", "psi", "training", 0.05, 0.2, "pass", "warn", "")
    record_results(settings, record, [changed])
    record_results(settings, record, [changed])  # twice: still one row

    after = rows_of(settings, record.run_id)
    assert [r for r in after if r["check"] == "psi"] and all(
        r["check"] != "psi" or r["value"] == 0.05 for r in after
    )
    assert len([r for r in after if r["check"] == "psi"]) == 1  # age's psi row was replaced too
    others = [r for r in before if r["check"] != "psi"]
    assert [r for r in after if r["check"] != "psi"] == others  # other checks untouched

    record_results(settings, record, RESULTS[:2])  # restore for the other tests
    assert len(rows_of(settings, record.run_id)) == len(before)


def test_a_blocked_run_is_recorded_with_its_block_rows(make, monkeypatch) -> None:
    settings = make(customer_id_start=4000, customer_id_end=4100)
    monkeypatch.setenv(VERDICT, "block")
    with pytest.raises(BatchScoreError, match="blocked"):
        Pipeline(settings, steps=WITH_VALIDATE).run(date=dt.date(2026, 3, 2))
    run_id = RunHistory.for_settings(settings).list_runs(limit=1)[0]["run_id"]
    record = RunRecord.load(settings.runs_path / run_id)
    assert record.status == "failed" and record.failed_step == "Validate"

    rows = rows_of(settings, run_id)
    assert [(r["check"], r["feature"]) for r in rows if r["status"] == "block"] == [
        ("psi", "tenure_months")
    ]
    assert any(r["statistic"] == "rows_scored" for r in rows)


def test_a_failure_to_record_warns_and_never_fails_the_run(make, monkeypatch, caplog) -> None:
    settings = make(customer_id_start=4000, customer_id_end=4100)
    monkeypatch.setenv(BROKEN, "1")
    with caplog.at_level(logging.WARNING, logger="batchscore"):
        record = Pipeline(settings, steps=WITH_VALIDATE).run(date=dt.date(2026, 3, 3))

    assert record.status == "succeeded"
    warned = [r for r in caplog.records if "not recorded" in r.getMessage()]
    assert warned and warned[0].levelno == logging.WARNING
    assert "has no 'results' list" in warned[0].getMessage()
    assert read_monitoring(settings, run_ids=[record.run_id]).num_rows == 0


def test_a_run_without_validate_records_its_figures(make) -> None:
    settings = make(customer_id_start=4000, customer_id_end=4100)
    record = Pipeline(settings, steps=WITHOUT_VALIDATE).run(date=dt.date(2026, 3, 4))

    rows = rows_of(settings, record.run_id)
    assert [(r["check"], r["statistic"], r["value"], r["status"]) for r in rows] == [
        ("run", "quarantined", 0.0, "info"),
        ("run", "rows_scored", float(record.steps["BatchInference"].rows), "info"),
    ]
    # A run that set rows aside records how many.
    record.steps["BatchInference"].outputs["quarantined"] = 3
    record_results(settings, record, run_figures(record))
    assert {r["statistic"]: r["value"] for r in rows_of(settings, record.run_id)} == {
        "rows_scored": float(record.steps["BatchInference"].rows),
        "quarantined": 3.0,
    }


def test_the_real_validate_steps_results_are_recorded(make) -> None:
    settings = make(customer_id_start=4000, customer_id_end=4100)
    record = Pipeline(settings).run(date=dt.date(2026, 3, 5))  # batchscore's own steps
    assert "Validate" in record.steps and record.status == "succeeded"

    checks = json.loads((Path(record.run_dir) / "checks.json").read_text())
    assert checks["results"], "Validate recorded no check"
    recorded = read_monitoring(settings, run_ids=[record.run_id]).to_pylist()
    fields = list(CheckResult.__dataclass_fields__)
    key = lambda r: (r["check"], r["feature"] or "", r["statistic"])  # noqa: E731
    by_checks = sorted(
        ({k: r[k] for k in fields} for r in recorded if r["check"] != "run"), key=key
    )
    assert by_checks == sorted((CheckResult.from_dict(r).to_dict() for r in checks["results"]),
                               key=key)  # fmt: skip
    assert {r["statistic"] for r in recorded if r["check"] == "run"} == {
        "rows_scored",
        "quarantined",
    }


def test_trends_read_back_in_run_order(make) -> None:
    settings = make(athena_output_table="trend_reading")
    runs = [
        MonitoredRun(f"run-{day}", settings.pipeline_name, "all", "m", 1, dt.date(2026, 4, day))
        for day in (3, 1, 2)
    ]
    for run, value in zip(runs, (0.3, 0.1, 0.2), strict=True):
        record_results(settings, run, [
            CheckResult("psi", "age", "psi", "training", value, 0.2, "pass", "warn", ""),
            CheckResult("psi", "tenure_months", "psi", "training", value / 10, 0.2, "pass",
                        "warn", ""),
        ])  # fmt: skip
    other = MonitoredRun("other-pipeline", "another", "all", "m", 1, dt.date(2026, 4, 9))
    record_results(
        settings, other, [CheckResult("psi", "age", "psi", "", 9.0, None, "info", "", "")]
    )

    assert last_runs(settings, limit=2) == ["run-3", "run-2"]
    trend = metric_trend(settings, "psi", feature="age")
    assert [(p.run_id, p.value) for p in trend] == [("run-1", 0.1), ("run-2", 0.2), ("run-3", 0.3)]
    assert [p.run_id for p in metric_trend(settings, "psi", feature="age", last=2)] == [
        "run-2", "run-3"
    ]  # fmt: skip
    assert len(metric_trend(settings, "psi")) == 6  # both features
    assert metric_trend(settings, "psi", pipeline_name="another")[0].value == 9.0


def test_on_aws_the_table_is_an_iceberg_table_of_the_glue_catalog(aws: str, tmp_path: Path) -> None:
    """Athena reads Iceberg tables registered in Glue: the monitoring table is one."""
    import boto3

    from tests.aws_fixtures import BUCKET, REGION, seed_settings

    settings = seed_settings(tmp_path)
    run = MonitoredRun("run-1", settings.pipeline_name, "4000-5000", "m", 1, dt.date(2026, 6, 1))
    record_results(settings, run, RESULTS)

    glue = boto3.client("glue", region_name=REGION)
    described = glue.get_table(
        DatabaseName="ml_metrics", Name="mlops_poc_daily_inference_monitoring"
    )["Table"]
    assert described["Parameters"]["table_type"].upper() == "ICEBERG"
    assert described["Parameters"]["metadata_location"].startswith(
        f"s3://{BUCKET}/mlops/batch_inference/warehouse/"
    )
    assert read_monitoring(settings).num_rows == len(RESULTS)
