"""Validate: the checks on hand-made summaries (PSI values computed by hand), then real runs on
the shared demo feature group whose data is made to drift — a nulled feature, a shifted
distribution, a new category, stale event times, collapsed predictions — each giving its
verdict; warn publishes and mails, block fails with exit code 5 and mails the violations,
leaving the table untouched, and ``resume --accept`` publishes it."""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchscore import demo
from batchscore.config import ChecksSettings, Settings
from batchscore.errors import ValidationBlockedError
from batchscore.monitoring.checks import (
    EPSILON,
    category_psi,
    psi,
    run_checks,
    shares,
    verdict,
)
from batchscore.monitoring.summaries import (
    CategoricalSummary,
    FreshnessSummary,
    NumericSummary,
    PredictionSummary,
    RunSummary,
)
from batchscore.pipeline import Pipeline
from batchscore.records import RunRecord
from tests.helpers import cli, config_for, make_settings, table_rows, table_snapshot
from tests.servers import mail_text, smtp_server

AS_OF = dt.datetime(2026, 11, 27, 12, 0, 0)


# The statistic --------------------------------------------------------------------------------


def test_psi_matches_hand_computed_values() -> None:
    # (0.25-0.5)·ln(0.25/0.5) + (0.75-0.5)·ln(0.75/0.5)
    assert psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.274653, abs=1e-6)
    assert psi([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]) == 0.0
    # An empty reference bin counts with ε = 1e-4: 0.346574 + 0.4999·ln(5000) = 4.604319.
    assert EPSILON == 1e-4
    assert psi([1.0, 0.0], [0.5, 0.5]) == pytest.approx(4.604319, abs=1e-6)
    # A new category 'c': e = (0.5, 0.5, 0), a = (0.5, 0.3, 0.2):
    # 0 + (-0.2)·ln(0.6) + 0.1999·ln(2000) = 0.102165 + 1.519420
    assert category_psi({"a": 0.5, "b": 0.5}, {"a": 50, "b": 30, "c": 20}) == pytest.approx(
        1.621585, abs=1e-6
    )
    assert shares([1, 3]) == [0.25, 0.75] and shares([0, 0]) == [0.0, 0.0]
    with pytest.raises(ValueError, match="2 expected bins but 3 actual"):
        psi([0.5, 0.5], [0.2, 0.3, 0.5])


# The checks on hand-made summaries -------------------------------------------------------------

PROFILE = {
    "columns": ["charges", "plan"],
    "dtypes": {"charges": "double", "plan": "string"},
    "category_vocabularies": {"plan": ["basic", "pro"]},
    "statistics": {
        "charges": {
            "min": 0.0, "max": 4.0, "missing_fraction": 0.02,
            "bin_edges": [1.0, 2.0, 3.0], "bin_fractions": [0.25, 0.25, 0.25, 0.25],
        },
        "plan": {"frequencies": {"basic": 0.5, "pro": 0.5}, "missing_fraction": 0.0},
    },
    "prediction_reference": {
        "bin_edges": [0.5], "bin_fractions": [0.8, 0.2], "positive_rate": 0.2, "rows": 1000,
    },
}  # fmt: skip


def summary(
    *,
    charges: list[int] | None = None,
    nulls: int = 2,
    outside: int = 0,
    plan: dict[str, int] | None = None,
    scores: list[int] | None = None,
    newest: str = "2026-11-27T00:00:00",
    stale_rows: int = 0,
    charges_type: str = "double",
) -> RunSummary:
    """100 rows: ``charges`` counts in the profile's four bins (plus ``nulls``), ``plan``
    counts, prediction counts in the two score bins (the positives are the second)."""
    counts = charges or [25, 25, 24, 24]
    plans = plan or {"basic": 50, "pro": 50}
    scored = scores or [80, 20]
    return RunSummary(
        rows=100,
        columns={"customer_id": "string", "charges": charges_type, "plan": "string"},
        numeric={
            "charges": NumericSummary(
                rows=100, nulls=nulls, minimum=0.5, maximum=3.5, total=100.0,
                bin_edges=[1.0, 2.0, 3.0], bin_counts=counts, above_training_max=outside,
            )
        },
        categorical={
            "plan": CategoricalSummary(rows=100, nulls=100 - sum(plans.values()), counts=plans)
        },
        freshness=FreshnessSummary(
            rows=100, newest=newest, oldest="2026-01-01T00:00:00",
            stale_before="2026-10-28T12:00:00", stale_rows=stale_rows,
        ),
        predictions=PredictionSummary(
            rows=sum(scored), positives=scored[1], total_probability=30.0,
            bin_edges=[0.5], bin_counts=scored,
        ),
    )  # fmt: skip


def checks(**config: object) -> ChecksSettings:
    return ChecksSettings.model_validate(config)


def by_key(report) -> dict[tuple[str, str | None, str], object]:
    return {(r.check, r.feature, r.reference): r for r in report.results}


def test_a_run_like_training_and_like_the_previous_run_passes() -> None:
    report = run_checks(summary(), PROFILE, summary(), checks(), AS_OF, previous_run_id="r0")
    assert report.verdict == "pass", report.violations
    results = by_key(report)
    assert results["psi", "charges", "training"].value == pytest.approx(
        psi([0.25] * 4, shares([25, 25, 24, 24])), abs=1e-6
    )
    assert results["volume", None, "previous_run"].value == 0.0
    assert report.reference["previous_run_id"] == "r0"
    assert report.reference["training"]["features"]["charges"]["bin_fractions"] == [0.25] * 4
    # Freshness ages are unset by default: the age is recorded, not judged.
    age = next(r for r in report.results if r.statistic == "newest_event_age_seconds")
    assert (age.status, age.value) == ("info", 12 * 3600.0)


def test_a_shifted_distribution_blocks_with_its_hand_computed_psi() -> None:
    shifted = summary(charges=[0, 0, 49, 49])
    report = run_checks(shifted, PROFILE, None, checks(psi="block"), AS_OF)
    result = by_key(report)["psi", "charges", "training"]
    # Two emptied bins: 2·(1e-4 - 0.25)·ln(1e-4/0.25) = 3.910457; two doubled: 2·0.25·ln 2.
    assert result.value == pytest.approx(3.910457 + 0.346574, abs=1e-5)
    assert (result.status, result.threshold) == ("block", 0.25)
    assert report.verdict == "block"
    assert "psi charges: psi 4.257 > 0.25 vs training (block)" in report.violations


def test_null_rate_against_training_and_the_previous_run() -> None:
    report = run_checks(summary(nulls=40), PROFILE, summary(nulls=10), checks(), AS_OF)
    results = by_key(report)
    assert results["null_rate", "charges", "training"].value == pytest.approx(0.38)
    assert results["null_rate", "charges", "previous_run"].value == pytest.approx(0.30)
    assert results["null_rate", "charges", "training"].status == "warn"
    assert report.verdict == "warn"


def test_a_new_category_is_unseen_and_moves_the_category_psi() -> None:
    report = run_checks(summary(plan={"basic": 50, "pro": 30, "gold": 20}), PROFILE, None,
                        checks(), AS_OF)  # fmt: skip
    results = by_key(report)
    unseen = results["unseen_categories", "plan", "training"]
    assert unseen.value == pytest.approx(0.2) and unseen.status == "warn"
    assert "'gold'" in unseen.detail
    assert results["category_psi", "plan", "training"].value == pytest.approx(1.621585, abs=1e-5)


def test_range_freshness_volume_and_predictions() -> None:
    stale = summary(newest="2026-11-20T12:00:00", stale_rows=60, outside=5)
    config = checks(freshness={"max_age": "36h", "max_feature_age": "30d"})
    previous = summary()
    previous.rows = 400  # the previous run scored four times as many
    report = run_checks(stale, PROFILE, previous, config, AS_OF)
    results = {(r.check, r.statistic, r.reference): r for r in report.results}
    assert results["range", "out_of_range_share", "training"].value == pytest.approx(
        5 / 98, abs=1e-6
    )
    age = results["freshness", "newest_event_age_seconds", ""]
    assert (age.value, age.threshold, age.status) == (7 * 86_400.0, 36 * 3600.0, "warn")
    assert results["freshness", "stale_share", ""].value == pytest.approx(0.6)
    assert results["volume", "row_drop", "previous_run"].value == pytest.approx(0.75)

    collapsed = summary(scores=[0, 100])  # every score above 0.5
    report = run_checks(collapsed, PROFILE, summary(), checks(), AS_OF)
    results = {(r.check, r.reference): r for r in report.results}
    # e = (0.8, 0.2), a = (ε, 1): (1e-4-0.8)·ln(1e-4/0.8) + 0.8·ln(5)
    expected = (EPSILON - 0.8) * math.log(EPSILON / 0.8) + 0.8 * math.log(5)
    assert results["prediction_psi", "training"].value == pytest.approx(expected, abs=1e-5)
    assert results["prediction_psi", "previous_run"].value == pytest.approx(expected, abs=1e-5)
    assert results["positive_rate", "training"].value == pytest.approx(0.8)
    assert report.verdict == "warn"


def test_missing_references_are_skipped_with_how_to_get_one() -> None:
    report = run_checks(summary(), {"columns": ["charges", "plan"]}, None, checks(), AS_OF)
    skipped = [r for r in report.results if r.status == "skipped"]
    details = " ".join(r.detail for r in skipped)
    assert "registry.training_data" in details and "batchscore train" in details
    assert "first run of this logical run" in details
    assert {r.check for r in skipped} >= {"psi", "category_psi", "range", "volume",
                                          "prediction_psi", "positive_rate"}  # fmt: skip
    assert report.verdict == "pass"


def test_off_is_not_computed_and_the_verdict_is_the_worst_status() -> None:
    shifted = summary(charges=[0, 0, 49, 49])
    report = run_checks(shifted, PROFILE, None, checks(psi="off"), AS_OF)
    assert not [r for r in report.results if r.check == "psi"]
    assert verdict([]) == "pass"
    statuses = {r.status for r in report.results}
    assert "block" not in statuses


def test_contract_a_numeric_column_arriving_as_unparseable_text_blocks() -> None:
    retyped = summary(charges_type="string", nulls=100, charges=[0, 0, 0, 0])
    retyped.numeric["charges"].minimum = retyped.numeric["charges"].maximum = None
    report = run_checks(retyped, PROFILE, None, checks(), AS_OF)
    contract = by_key(report)["contract", "charges", "training"]
    assert contract.status == "block" and "arrives as string" in contract.detail
    assert report.verdict == "block"
    # Nothing parses: a violation however loose the null-rate allowance is.
    loose = run_checks(retyped, PROFILE, None, checks(null_rate=1.0), AS_OF)
    assert by_key(loose)["contract", "charges", "training"].status == "block"

    parsing = summary(charges_type="string")  # text that parses as numbers: castable
    assert (
        by_key(run_checks(parsing, PROFILE, None, checks(), AS_OF))[
            "contract", "charges", "training"
        ].status
        == "pass"
    )


# Real runs on drifted data ------------------------------------------------------------------

# Id ranges of the drifted feature group, one drift each.
NULLED = (4000, 4199)  # satisfaction_score all null (3% in training)
SHIFTED = (4200, 4399)  # monthly_charges + 200 (training: 20 to 120)
NEW_CATEGORY = (4400, 4599)  # half the contract_type values are 'lifetime'
STALE = (4600, 4799)  # the demo group as it is: its newest event is months old
COLLAPSED = (4800, 4999)  # every customer looks like a churner: all scores near 1


def drifted_records() -> pa.Table:
    """The demo data with one drift per id range (every version of each customer)."""
    records = demo.generate_churn_data(5000, seed=42).records
    numbers = np.array([int(c.split("_")[1]) for c in records.column("customer_id").to_pylist()])

    def within(bounds: tuple[int, int]) -> np.ndarray:
        return (numbers >= bounds[0]) & (numbers <= bounds[1])

    columns = {name: records.column(name).to_numpy(zero_copy_only=False) for name in
               records.column_names}  # fmt: skip
    satisfaction = pa.array(columns["satisfaction_score"], pa.float64(), mask=within(NULLED))
    charges = np.where(
        within(SHIFTED), columns["monthly_charges"] + 200, columns["monthly_charges"]
    )
    rng = np.random.default_rng(7)
    contract = np.where(
        within(NEW_CATEGORY) & (rng.uniform(size=len(numbers)) < 0.5),
        "lifetime",
        columns["contract_type"],
    )
    collapse = within(COLLAPSED)
    replaced = {
        "satisfaction_score": satisfaction,
        "monthly_charges": pa.array(charges, pa.float64()),
        "contract_type": pa.array(np.where(collapse, "month-to-month", contract), pa.string()),
        "tenure_months": pa.array(np.where(collapse, 0, columns["tenure_months"]), pa.int64()),
        "num_support_calls": pa.array(
            np.where(collapse, 6, columns["num_support_calls"]), pa.int64()
        ),
    }
    for name, values in replaced.items():
        index = records.column_names.index(name)
        records = records.set_column(index, name, values)
    return records


@dataclass
class Scenarios:
    """Every run of this module, made once: their records, the errors, the mails, the CLI."""

    mails: list = field(default_factory=list)
    runs: dict[str, RunRecord] = field(default_factory=dict)
    settings: dict[str, Settings] = field(default_factory=dict)
    blocked: object = None  # the CLI run that Validate blocked
    snapshot_before_block: int | None = None
    snapshot_after_block: int | None = None
    rows_before_block: int = 0
    accepted: object = None  # the CLI resume --accept
    shown_blocked: str = ""
    shown_accepted: str = ""
    config: Path | None = None


def mails_about(scenarios: Scenarios, run_id: str) -> list:
    return [m for m in scenarios.mails if run_id in mail_text(m)]


@pytest.fixture(scope="module")
def scenarios(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Scenarios:
    import os

    from batchscore.feature_store import open_feature_store

    folder = tmp_path_factory.mktemp("validate")
    group = f"drifted_{uuid.uuid4().hex[:8]}"
    out = Scenarios()
    with pytest.MonkeyPatch.context() as monkeypatch, smtp_server() as (port, mails):
        for name in [n for n in os.environ if n.startswith("BATCHSCORE_")]:
            monkeypatch.delenv(name)
        monkeypatch.setenv("USER", "tester")
        mailto = f"mailto://127.0.0.1:{port}?from=batchscore@example.com&to=oncall@example.com&mode=insecure"

        def settings_for(name: str, ids: tuple[int, int], **overrides: object) -> Settings:
            values = {
                "customer_id_start": ids[0], "customer_id_end": ids[1],
                "notification_urls": [mailto], **overrides,
            }  # fmt: skip
            made = make_settings(shared_dir, folder / "ws", **values)
            out.settings[name] = made
            return made

        base = settings_for("base", NULLED)
        store = open_feature_store(base)
        store.create_feature_group(group, demo.FEATURES)
        store.ingest(group, drifted_records())

        for name, ids, checks_config in (
            ("nulled", NULLED, {}),
            ("disabled", NULLED, {"enabled": False}),
            ("new_category", NEW_CATEGORY, {}),
            ("stale", STALE, {"freshness": {"max_age": "30d", "max_feature_age": "400d"}}),
        ):
            drifted = {"feature_group_name": group} if name != "stale" else {}
            settings = settings_for(name, ids, checks=checks_config, **drifted)
            out.runs[name] = Pipeline(settings).run()

        # Collapsed predictions: a normal run, then the same pipeline, ids and table drifted.
        normal = settings_for("collapsed_before", COLLAPSED)
        out.runs["collapsed_before"] = Pipeline(normal).run()
        collapsed = settings_for("collapsed", COLLAPSED, feature_group_name=group,
                                 athena_output_table=normal.athena_output_table)  # fmt: skip
        out.runs["collapsed"] = Pipeline(collapsed).run()

        # Shifted distribution, blocking: published normally first, then blocked (CLI).
        block = {"psi": "block", "range": "block"}
        first = settings_for("shifted_before", SHIFTED, checks=block)
        out.runs["shifted_before"] = Pipeline(first).run()
        shifted = settings_for("shifted", SHIFTED, checks=block, feature_group_name=group,
                               athena_output_table=first.athena_output_table)  # fmt: skip
        out.snapshot_before_block = table_snapshot(shifted)
        out.rows_before_block = len(table_rows(shifted))
        out.config = config_for(
            shifted, folder / "shifted.yaml", feature_group_name=group, checks=block,
            customer_id_start=SHIFTED[0], customer_id_end=SHIFTED[1],
            notification_urls=[mailto],
        )  # fmt: skip
        out.blocked = cli("-c", str(out.config), "run")
        out.snapshot_after_block = table_snapshot(shifted)
        run_id = json.loads(cli("-c", str(out.config), "runs", "list", "-f", "json").stdout)[0][
            "run_id"
        ]
        out.runs["shifted"] = RunRecord.load(shifted.runs_path / run_id)
        out.shown_blocked = cli("-c", str(out.config), "runs", "show", run_id).stdout
        out.accepted = cli("-c", str(out.config), "resume", run_id, "--accept", "--by", "alice")
        out.runs["shifted_accepted"] = RunRecord.load(shifted.runs_path / run_id)
        out.shown_accepted = cli("-c", str(out.config), "runs", "show", run_id).stdout
        out.mails = list(mails)
    return out


def checks_of(record: RunRecord) -> dict:
    return json.loads((Path(record.run_dir) / "checks.json").read_text())


def violated(record: RunRecord) -> dict[tuple[str, str | None, str], str]:
    return {
        (r["check"], r["feature"], r["reference"]): r["status"]
        for r in checks_of(record)["results"]
        if r["status"] in ("warn", "block")
    }


def test_a_feature_nulled_upstream_warns_publishes_and_mails(scenarios: Scenarios) -> None:
    run = scenarios.runs["nulled"]
    assert run.status == "succeeded" and run.steps["Validate"].outputs["verdict"] == "warn"
    assert violated(run) == {("null_rate", "satisfaction_score", "training"): "warn"}
    rows = table_rows(scenarios.settings["nulled"])
    assert len(rows) == run.steps["BatchInference"].rows  # published
    [mail] = mails_about(scenarios, run.run_id)  # notify_on is only failure: sent anyway
    assert mail["Subject"].endswith("published with warnings")
    assert "null_rate satisfaction_score: null_share_change 0.9679 > 0.1 vs training (warn)" in (
        mail_text(mail)
    )


def test_checks_disabled_record_so_and_pass(scenarios: Scenarios) -> None:
    run = scenarios.runs["disabled"]  # the nulled feature again, with checks.enabled: false
    assert run.status == "succeeded"
    outputs = run.steps["Validate"].outputs
    assert (outputs["verdict"], outputs["note"], outputs["violations"]) == (
        "pass", "checks disabled", [],
    )  # fmt: skip
    assert checks_of(run)["disabled"] is True and checks_of(run)["results"] == []
    assert not mails_about(scenarios, run.run_id)


def test_a_new_category_warns(scenarios: Scenarios) -> None:
    run = scenarios.runs["new_category"]
    assert run.steps["Validate"].outputs["verdict"] == "warn"
    found = violated(run)
    assert found[("unseen_categories", "contract_type", "training")] == "warn"
    assert {check for check, _, _ in found} <= {"unseen_categories", "category_psi"}
    [mail] = mails_about(scenarios, run.run_id)
    assert "unseen_categories contract_type" in mail_text(mail)


def test_a_stale_feature_group_warns_on_its_newest_event(scenarios: Scenarios) -> None:
    run = scenarios.runs["stale"]
    outputs = run.steps["Validate"].outputs
    assert outputs["verdict"] == "warn" and run.status == "succeeded"
    assert violated(run) == {("freshness", None, ""): "warn"}
    summary = RunSummary.load(Path(run.run_dir) / "summary.json")
    newest = dt.datetime.fromisoformat(summary.freshness.newest)  # in the run's id range
    expected_age = (dt.datetime.fromisoformat(run.as_of) - newest).total_seconds()
    assert outputs["newest_event_age_seconds"] == pytest.approx(expected_age, abs=1)
    assert outputs["newest_event_age_seconds"] > 30 * 86_400
    # The customers whose latest record is older than max_feature_age, counted in the stream.
    snapshot = pq.read_table(run.steps["DataSource"].outputs["files"]).to_pandas()
    stale_before = dt.datetime.fromisoformat(run.as_of) - dt.timedelta(days=400)
    stale = (pd.to_datetime(snapshot["event_time"]) < stale_before).mean()
    [share] = [r for r in checks_of(run)["results"] if r["statistic"] == "stale_share"]
    assert share["value"] == pytest.approx(stale, abs=1e-6)
    assert share["status"] == ("warn" if stale > 0.5 else "pass")


def test_collapsed_predictions_warn_against_the_previous_run(scenarios: Scenarios) -> None:
    before, run = scenarios.runs["collapsed_before"], scenarios.runs["collapsed"]
    assert before.steps["Validate"].outputs["verdict"] == "pass"
    assert checks_of(run)["reference"]["previous_run_id"] == before.run_id
    found = violated(run)
    assert found[("prediction_psi", None, "previous_run")] == "warn"
    assert found[("positive_rate", None, "previous_run")] == "warn"
    assert run.status == "succeeded"


def test_a_shifted_distribution_blocks_until_a_person_accepts(scenarios: Scenarios) -> None:
    blocked = scenarios.blocked
    assert blocked.returncode == 5, blocked.stderr[-2000:]
    assert "Validate blocked publishing" in blocked.stderr
    assert "range monthly_charges: out_of_range_share 1 > 0.01 vs training (block)" in (
        blocked.stderr
    )
    run_id = scenarios.runs["shifted"].run_id
    config = blocked.args[blocked.args.index("-c") + 1]  # the shown command carries it
    assert f"batchscore -c {config} resume {run_id} --accept" in blocked.stderr
    # Nothing published: the table is as the run before left it.
    assert scenarios.snapshot_after_block == scenarios.snapshot_before_block is not None
    record = scenarios.runs["shifted"]
    assert (record.status, record.failed_step) == ("failed", "Validate")
    found = violated(record)  # every value moved past the training range and deciles
    assert found[("psi", "monthly_charges", "training")] == "block"
    assert found[("range", "monthly_charges", "training")] == "block"
    assert record.steps["Publish"].status == "skipped"
    assert record.error["type"] == "ValidationBlockedError"
    [mail] = [m for m in mails_about(scenarios, run_id) if "blocked" in m["Subject"]]
    body = mail_text(mail)
    assert "range monthly_charges: out_of_range_share 1 > 0.01 vs training (block)" in body
    assert f"batchscore resume {run_id} --accept" in body
    shown = scenarios.shown_blocked
    assert re.search(r"checks\s+block", shown) and "checks beyond threshold" in shown
    assert "range monthly_charges: out_of_range_share 1 > 0.01" in shown.split("beyond")[1]

    accepted = scenarios.accepted
    assert accepted.returncode == 0, accepted.stderr[-2000:]
    after = scenarios.runs["shifted_accepted"]
    assert after.status == "succeeded" and after.accepted["by"] == "alice"
    assert checks_of(after)["accepted"] == after.accepted
    assert after.steps["Validate"].outputs["verdict"] == "block"
    rows = table_rows(scenarios.settings["shifted"])
    assert set(rows.run_id) == {run_id} and len(rows) == after.steps["BatchInference"].rows
    assert "accepted" in scenarios.shown_accepted and "alice" in scenarios.shown_accepted
    published = [m for m in mails_about(scenarios, run_id) if "with warnings" in m["Subject"]]
    assert len(published) == 1 and "accepted by alice" in mail_text(published[0])


def test_accept_is_refused_for_a_run_not_blocked(scenarios: Scenarios) -> None:
    from batchscore.errors import ConfigError
    from batchscore.pipeline import accept_blocked

    nulled = scenarios.runs["nulled"]
    config = config_for(scenarios.settings["nulled"], Path(nulled.run_dir).parent.parent / "n.yaml")
    result = cli("-c", str(config), "resume", nulled.run_id, "--accept")
    assert result.returncode == 1 and "already succeeded" in result.stderr
    # A run that failed at Publish (as its record would say): nothing to accept.
    failed = RunRecord.load(Path(nulled.run_dir))
    failed.status, failed.failed_step = "failed", "Publish"
    failed.error = {"type": "PublishError", "message": "committing failed"}
    with pytest.raises(ConfigError, match=r"failed at Publish \(PublishError\)\. Resume it"):
        accept_blocked(failed, "alice")
    assert RunRecord.load(Path(nulled.run_dir)).accepted is None


def test_blocked_error_has_its_exit_code() -> None:
    assert ValidationBlockedError("x").exit_code == 5
