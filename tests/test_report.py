"""The run report (``batchscore report``, monitoring/report.py): one self-contained HTML file.

One workspace with three real runs of the pipeline is shared by the module. Validate's files
are built the way its contract says: ``summary.json`` by the real ``SummaryPlan.summarize`` on
the runs' own feature and prediction batches (the newest run's batches shifted and poisoned on
purpose), ``checks.json`` from hand-built ``CheckResult``s with the reference they used. The
report opens in headless Chromium (Debian's package, driven by Playwright) with no console
error and no request leaving the file, and a screenshot lands in ``build/``.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from batchscore.config import Settings
from batchscore.monitoring.report import REPORT_FILE, write_report
from batchscore.monitoring.results import CheckResult
from batchscore.monitoring.summaries import (
    SUMMARY_FILE,
    RunSummary,
    SummaryPlan,
    histogram,
    quantile_edges,
)
from batchscore.pipeline import Pipeline
from batchscore.records import PipelineHooks, RunRecord
from tests.helpers import cli, config_for, make_settings
from tests.servers import webhook_server

NUMERIC = ["tenure_months", "monthly_charges", "total_charges", "num_support_calls", "age",
           "num_products", "last_login_days", "satisfaction_score"]  # fmt: skip
CATEGORICAL = ["contract_type", "payment_method", "internet_service", "region"]
# A category value that would run if the report let data become markup.
EVIL = "<script>document.title='owned';console.error('injected')</script>"
CHROMIUM = Path("/usr/bin/chromium")
BUILD = Path(__file__).resolve().parents[1] / "build"


@dataclass(frozen=True)
class Runs:
    settings: Settings
    config: Path
    run_ids: list[str]  # oldest first
    notifications: list[dict]


@pytest.fixture(scope="module")
def runs(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    """Three runs of one pipeline on consecutive dates, notifying a local webhook."""
    folder = tmp_path_factory.mktemp("report")
    with webhook_server() as (port, received), pytest.MonkeyPatch.context() as monkeypatch:
        for name in [n for n in os.environ if n.startswith("BATCHSCORE_")]:
            monkeypatch.delenv(name)
        settings = make_settings(
            shared_dir, folder / "ws", customer_id_start=1, customer_id_end=3000,
            notification_urls=[f"json://127.0.0.1:{port}/"], notify_on=["failure", "success"],
        )  # fmt: skip
        pipeline = Pipeline(settings)
        ids = [pipeline.run(date=dt.date(2026, 11, day)).run_id for day in (24, 25, 26)]
        yield Runs(settings, config_for(settings, folder / "c.yaml"), ids, received)


def _run_dir(settings: Settings, run_id: str) -> Path:
    return settings.runs_path / run_id


def _features(run_dir: Path) -> pa.Table:
    record = json.loads((run_dir / "run.json").read_text())
    files = record["steps"]["DataSource"]["outputs"]["files"]
    return pa.concat_tables([pq.read_table(f) for f in files])


def _probabilities(run_dir: Path) -> pa.Table:
    record = json.loads((run_dir / "run.json").read_text())
    files = record["steps"]["BatchInference"]["outputs"]["files"]
    return pa.concat_tables([pq.read_table(f) for f in files])


def _profile(features: pa.Table, scores: pa.Table) -> dict[str, Any]:
    """A training profile in the form branch ``summaries`` adds to the model's, from a run's
    own rows (deciles, shares of non-null values, category frequencies, prediction bins)."""
    statistics: dict[str, Any] = {}
    for column in NUMERIC:
        values = features.column(column).cast(pa.float64()).to_numpy(zero_copy_only=False)
        finite = values[np.isfinite(values)]
        edges = quantile_edges(finite)
        counts = histogram(finite, edges)
        statistics[column] = {
            "bin_edges": edges,
            "bin_fractions": [c / len(finite) for c in counts],
            "min": float(finite.min()),
            "max": float(finite.max()),
            "missing_fraction": 1 - len(finite) / len(values),
        }
    for column in CATEGORICAL:
        counts = pc.value_counts(features.column(column).drop_null())
        total = sum(counts.field("counts").to_pylist())
        statistics[column] = {
            "frequencies": {
                str(v): n / total
                for v, n in zip(
                    counts.field("values").to_pylist(),
                    counts.field("counts").to_pylist(),
                    strict=True,
                )
            }
        }
    probabilities = scores.column("prediction_probability").to_numpy()
    edges = quantile_edges(probabilities)
    return {
        "statistics": statistics,
        "categorical_features": CATEGORICAL,
        "category_vocabularies": {c: list(statistics[c]["frequencies"]) for c in CATEGORICAL},
        "prediction_reference": {
            "bin_edges": edges,
            "bin_fractions": [c / len(probabilities) for c in histogram(probabilities, edges)],
            "positive_rate": float(np.mean(probabilities >= 0.5)),
            "rows": len(probabilities),
        },
    }


def _drifted(table: pa.Table) -> pa.Table:
    """The run's own rows, as if upstream had changed: charges up 60%, a fifth of the regions
    a value nobody has seen (one that is markup), satisfaction scores probabilities shifted."""
    charges = pc.multiply(table.column("monthly_charges").cast(pa.float64()), 1.6)
    regions = table.column("region").to_pylist()
    regions = [EVIL if i % 5 == 0 else r for i, r in enumerate(regions)]
    table = table.set_column(table.schema.get_field_index("monthly_charges"), "monthly_charges",
                             charges)  # fmt: skip
    return table.set_column(table.schema.get_field_index("region"), "region", pa.array(regions))


def _summarize(run_dir: Path, plan: SummaryPlan, *, drift: bool = False) -> RunSummary:
    features, scores = _features(run_dir), _probabilities(run_dir)
    if drift:
        features = _drifted(features)
    summary = RunSummary()
    for batch in features.to_batches(max_chunksize=700):  # as BatchInference streams them
        summary.merge(plan.summarize(batch))
    probabilities = scores.column("prediction_probability").to_numpy()
    if drift:  # the model grows more certain of churn
        probabilities = np.clip(probabilities * 1.5, 0, 1)
    empty = pa.RecordBatch.from_pydict({})
    summary.merge(plan.summarize(empty, probabilities, (probabilities >= 0.5).astype(int)))
    return summary


def _psi(expected: list[float], actual: list[float]) -> float:
    eps = 1e-4
    pairs = zip(expected, actual, strict=True)
    return float(sum((a - e) * math.log((a + eps) / (e + eps)) for e, a in pairs))


def _checks(summary: RunSummary, profile: dict[str, Any], previous: str | None) -> dict:
    """checks.json as Validate writes it (the contract): PSI of every feature against the
    profile, unseen categories, prediction PSI, volume; the verdict is the worst status."""
    stats = profile["statistics"]
    results: list[CheckResult] = [
        CheckResult("contract", None, "missing_columns", "training", 0, None, "pass", "block",
                    "every required column is present with a castable type"),
        CheckResult("volume", None, "row_drop", "previous_run", 0.0, 0.5, "pass", "warn",
                    "rows scored as many as the previous run"),
    ]  # fmt: skip
    for column in NUMERIC:
        numeric = summary.numeric[column]
        now = [c / sum(numeric.bin_counts) for c in numeric.bin_counts]
        value = _psi(stats[column]["bin_fractions"], now)
        status = "block" if value > 0.25 else "pass"
        detail = f"PSI {value:.3f} against the training deciles"
        results.append(
            CheckResult("psi", column, "psi", "training", value, 0.25, status, "block", detail)
        )
    for column in CATEGORICAL:
        counts = summary.categorical[column].counts
        reference = stats[column]["frequencies"]
        values = sorted(set(counts) | set(reference))
        total = sum(counts.values())
        value = _psi([reference.get(v, 0.0) for v in values],
                     [counts.get(v, 0) / total for v in values])  # fmt: skip
        status = "warn" if value > 0.2 else "pass"
        results.append(CheckResult("category_psi", column, "psi", "training", value, 0.2, status,
                                   "warn", f"category shares moved, PSI {value:.3f}"))  # fmt: skip
        unseen = summary.categorical[column].unseen / summary.categorical[column].rows
        results.append(CheckResult(
            "unseen_categories", column, "unseen_share", "training", unseen, 0.05,
            "warn" if unseen > 0.05 else "pass", "warn",
            f"{unseen:.1%} of {column} values were never seen in training, e.g. {EVIL}",
        ))  # fmt: skip
    predictions = summary.predictions
    assert predictions is not None
    reference = profile["prediction_reference"]["bin_fractions"]
    value = _psi(reference, [c / predictions.rows for c in predictions.bin_counts])
    results.append(CheckResult("prediction_psi", None, "psi", "training", value, 0.25,
                               "warn" if value > 0.25 else "pass", "warn",
                               "probabilities against the training validation scores"))  # fmt: skip
    statuses = {r.status for r in results}
    verdict = "block" if "block" in statuses else "warn" if "warn" in statuses else "pass"
    return {
        "verdict": verdict,
        "reference": {
            "features": {c: stats[c] for c in [*NUMERIC, *CATEGORICAL]},
            "prediction": profile["prediction_reference"],
            "previous_run_id": previous,
        },
        "results": [r.to_dict() for r in results],
        "accepted": None,
    }


@pytest.fixture(scope="module")
def checked(runs: Runs) -> Runs:
    """The second and third runs given summary.json and checks.json (the first stays as a
    run made before Validate: the reference's source); the third drifted and is blocked."""
    first, second, third = (_run_dir(runs.settings, r) for r in runs.run_ids)
    profile = _profile(_features(first), _probabilities(first))
    plan = SummaryPlan.from_profile(profile, [*NUMERIC, *CATEGORICAL])
    for run_dir, previous, drift in ((second, None, False), (third, runs.run_ids[1], True)):
        summary = _summarize(run_dir, plan, drift=drift)
        summary.save(run_dir / SUMMARY_FILE)
        (run_dir / "checks.json").write_text(json.dumps(_checks(summary, profile, previous)))
    return runs


# The hook: a run without Validate ----------------------------------------------------------


def test_a_run_without_checks_gets_a_report_saying_what_is_missing(runs: Runs) -> None:
    run_id = runs.run_ids[0]
    run_dir = _run_dir(runs.settings, run_id)
    path = run_dir / REPORT_FILE
    html = path.read_text()
    record = RunRecord.load(run_dir)
    # The hook wrote it at the end (no Validate in this run) and recorded it.
    assert record.steps["Publish"].outputs["report_path"] == str(path)
    assert "No checks" in html
    assert "this run has no Validate step" in html
    assert "wrote no summary.json" in html  # the distributions say why they are empty
    assert run_id in html and "Trends over the last 1 run" in html
    # The notification names the report.
    bodies = [n["message"] for n in runs.notifications if run_id in n["message"]]
    assert bodies and f"Report: {path}" in bodies[0]
    # runs show prints its path.
    shown = cli("-c", str(runs.config), "runs", "show", run_id)
    assert shown.returncode == 0, shown.stderr
    assert any(line.split() == ["report", str(path)] for line in shown.stdout.splitlines()), (
        shown.stdout
    )


def test_checks_turned_off_are_named_as_the_reason(runs: Runs, tmp_path: Path) -> None:
    run_dir = _run_dir(runs.settings, runs.run_ids[0])
    copy = runs.settings.runs_path / "checks-off"
    shutil.copytree(run_dir, copy)
    record = json.loads((copy / "run.json").read_text())
    record.update(run_id="checks-off", run_dir=str(copy))
    record["config"]["checks"] = {"enabled": False}
    (copy / "run.json").write_text(json.dumps(record))
    html = write_report(runs.settings, "checks-off", output=tmp_path / "r.html").read_text()
    assert "checks are turned off for this run (checks.enabled: false)" in html


class _ReportFolderTaken(PipelineHooks):
    """Puts a folder where the report goes, so writing it fails."""

    def before_pipeline_run(self, record: RunRecord) -> None:
        (Path(record.run_dir) / REPORT_FILE).mkdir(exist_ok=True)


def test_a_report_that_cannot_be_written_never_fails_the_run(
    runs: Runs, caplog: pytest.LogCaptureFixture
) -> None:
    settings = runs.settings.model_copy(update={"notification_urls": []})
    run = Pipeline(settings, hooks=[_ReportFolderTaken()]).run(date=dt.date(2026, 11, 20))
    assert run.status == "succeeded"
    assert "report_path" not in run.steps["Publish"].outputs
    assert f"run {run.run_id}: the report could not be written" in caplog.text


# The full report ---------------------------------------------------------------------------


def test_the_report_shows_verdicts_drift_predictions_and_trends(checked: Runs) -> None:
    settings, (_, second, third) = checked.settings, checked.run_ids
    path = write_report(settings, third)
    assert path == _run_dir(settings, third) / REPORT_FILE
    html = path.read_text()
    checks = json.loads((_run_dir(settings, third) / "checks.json").read_text())
    # The verdict banner and a table row per check result.
    assert '<section class="banner block">' in html
    assert "Blocked: " in html and "not published" in html
    assert html.count("<tr><td>") >= len(checks["results"])
    for result in checks["results"]:
        assert f"<td>{result['check']}</td>" in html
    # PSI bars: one per feature, and the two thresholds as lines.
    assert "PSI per feature" in html
    for column in [*NUMERIC, *CATEGORICAL]:
        assert f"{column}: " in html  # the bar's tooltip
    assert "psi threshold 0.25" in html and "category_psi threshold 0.2" in html
    # The drifting features drawn against their reference: monthly_charges on its deciles,
    # region as category shares with the unseen value escaped.
    assert "<h3>monthly_charges</h3>" in html and "<h3>region</h3>" in html
    assert "monthly_charges (reference quantile bins)" in html
    assert "region (category)" in html
    # Predictions against training validation and the previous run.
    assert "training validation" in html and f"previous run {second}" in html
    # Trends: three runs, the first from the history only (no files of its own but rows).
    assert "Trends over the last 3 runs" in html
    assert "2026-11-24" in html and "2026-11-26" in html
    # Self-contained: no script, nothing fetched.
    assert "<script" not in html
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in html


def test_data_never_becomes_markup(checked: Runs) -> None:
    html = write_report(checked.settings, checked.run_ids[2]).read_text()
    assert EVIL not in html
    assert "&lt;script&gt;document.title=&#x27;owned&#x27;" in html


def test_a_run_without_summary_says_why_its_distributions_are_missing(
    checked: Runs, tmp_path: Path
) -> None:
    source = _run_dir(checked.settings, checked.run_ids[2])
    copy = checked.settings.runs_path / "no-summary"
    shutil.copytree(source, copy)
    (copy / SUMMARY_FILE).unlink()
    record = json.loads((copy / "run.json").read_text())
    record.update(run_id="no-summary", run_dir=str(copy))
    (copy / "run.json").write_text(json.dumps(record))
    html = write_report(checked.settings, "no-summary", output=tmp_path / "r.html").read_text()
    assert "Not in this report" in html
    assert "monthly_charges" in html
    assert "drifted, but their distributions are not available" in html
    assert 'Predictions</h2><p class="note">Not available: this run&#x27;s BatchInference' in html


def test_report_command(checked: Runs, tmp_path: Path) -> None:
    out = tmp_path / "elsewhere" / "r.html"
    result = cli("-c", str(checked.config), "report", checked.run_ids[2], "--output", str(out),
                 "--runs", "2")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"report: {out}"
    assert "Trends over the last 2 runs" in out.read_text()
    missing = cli("-c", str(checked.config), "report", "no-such-run")
    assert missing.returncode != 0
    assert "no run 'no-such-run'" in missing.stderr and "batchscore runs list" in missing.stderr
    zero = cli("-c", str(checked.config), "report", checked.run_ids[2], "--runs", "0")
    assert zero.returncode != 0 and "--runs 0 must be at least 1" in zero.stderr


# In a real browser -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium, driven by Playwright (no browser download)."""
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: 'make test' installs it (apt-get chromium)")
        pytest.skip(f"{CHROMIUM} is missing: run 'make test' or apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"]
        )
        yield browser
        browser.close()


def open_in_browser(browser: Any, path: Path, screenshot: Path | None = None) -> dict[str, Any]:
    """Open ``path``; what went wrong on the page (console errors, uncaught exceptions,
    requests that are not the file itself), its title and how many scripts and SVGs it has."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    requests: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(path.as_uri(), wait_until="load")
    found = {
        "errors": errors,
        "requests": [u for u in requests if u != path.as_uri()],
        "title": page.title(),
        "scripts": page.locator("script").count(),
        "svgs": page.locator("svg").count(),
    }
    if screenshot is not None:
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(screenshot), full_page=True)
    page.close()
    return found


def test_the_report_opens_in_chromium_without_errors(checked: Runs, browser: Any) -> None:
    path = write_report(checked.settings, checked.run_ids[2])
    screenshot = BUILD / "report-screenshot.png"
    found = open_in_browser(browser, path, screenshot)
    assert found["errors"] == []
    assert found["requests"] == []  # offline: nothing but the file itself
    assert found["scripts"] == 0 and found["title"] == f"batchscore run {checked.run_ids[2]}"
    assert found["svgs"] >= 10  # PSI, 3 drifting features, predictions, 6 trends
    assert screenshot.stat().st_size > 50_000
    print(f"report screenshot: {screenshot}")
    old = write_report(checked.settings, checked.run_ids[0])  # the degraded report too
    found = open_in_browser(browser, old, BUILD / "report-screenshot-no-checks.png")
    assert found["errors"] == [] and found["requests"] == []


def test_the_browser_check_catches_a_script_error(browser: Any, tmp_path: Path) -> None:
    """The check above can fail: a page with a script error is caught."""
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><body><script>undefinedFunction()</script></body></html>")
    assert "undefinedFunction is not defined" in " ".join(open_in_browser(browser, page)["errors"])
