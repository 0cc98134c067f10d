"""The run report (``batchscore report``, monitoring/report.py): one self-contained HTML file.

One workspace with three real runs of the pipeline (DataSource → BatchInference → Validate →
Publish) is shared by the module. For drift, the third run's ``summary.json`` and
``checks.json`` are made again by the real ``SummaryPlan.summarize`` on its own batches,
shifted and poisoned on purpose, and the real checks against the model's profile. The report
opens in headless Chromium (Debian's package, driven by Playwright) with no console
error and no request leaving the file, and a screenshot lands in ``build/``.
"""

from __future__ import annotations

import datetime as dt
import json
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

from batchscore.config import ChecksSettings, Settings
from batchscore.monitoring.checks import run_checks
from batchscore.monitoring.files import CHECKS_FILE, REPORT_FILE
from batchscore.monitoring.report import write_report
from batchscore.monitoring.summaries import SUMMARY_FILE, RunSummary, SummaryPlan
from batchscore.monitoring.svg import line_chart, nice_ticks
from batchscore.pipeline import Pipeline
from batchscore.records import PipelineHooks, RunRecord
from batchscore.registry import open_registry
from batchscore.steps.validate import write_checks
from tests.helpers import cli, config_for, make_settings
from tests.servers import webhook_server

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


def _drifted(table: pa.Table) -> pa.Table:
    """The run's own rows, as if upstream had changed: charges up 60% and a fifth of the
    regions a value nobody has seen (one that is markup)."""
    charges = pc.multiply(table.column("monthly_charges").cast(pa.float64()), 1.6)
    regions = table.column("region").to_pylist()
    regions = [EVIL if i % 5 == 0 else r for i, r in enumerate(regions)]
    table = table.set_column(
        table.schema.get_field_index("monthly_charges"), "monthly_charges", charges
    )
    return table.set_column(table.schema.get_field_index("region"), "region", pa.array(regions))


def _summarize(run_dir: Path, plan: SummaryPlan) -> RunSummary:
    """The run's summary as BatchInference makes it, batch by batch, of its drifted rows and
    of probabilities pushed towards churn."""
    features, scores = _drifted(_features(run_dir)), _probabilities(run_dir)
    summary = RunSummary()
    for batch in features.to_batches(max_chunksize=700):
        summary.merge(plan.summarize(batch))
    probabilities = np.clip(scores.column("prediction_probability").to_numpy() * 1.5, 0, 1)
    empty = pa.RecordBatch.from_pydict({})
    summary.merge(plan.summarize(empty, probabilities, (probabilities >= 0.5).astype(int)))
    return summary


@pytest.fixture(scope="module")
def drifted(runs: Runs) -> str:
    """The third run's summary and checks made again as if upstream had changed: the real
    SummaryPlan on its own (shifted, poisoned) batches, the real checks against the model's
    training profile and the second run (PSI set to block), checks.json as Validate writes
    it. Returns the run id."""
    settings = runs.settings
    second, third = (_run_dir(settings, r) for r in runs.run_ids[1:])
    record = RunRecord.load(third)
    registry = open_registry(settings, writable=False)
    profile = registry.describe_version(record.model_name, record.model_version).profile
    assert profile and profile["statistics"]["monthly_charges"]["bin_edges"]
    columns = list(profile["columns"])
    plan = SummaryPlan.from_profile(profile, columns)
    summary = _summarize(third, plan)
    summary.save(third / SUMMARY_FILE)
    report = run_checks(
        summary, profile, RunSummary.load(second / SUMMARY_FILE),
        ChecksSettings.model_validate({"psi": "block"}),
        dt.datetime.fromisoformat(record.as_of), input_columns=columns,
        previous_run_id=runs.run_ids[1],
    )  # fmt: skip
    assert report.verdict == "block"
    write_checks(third / CHECKS_FILE, report, None)
    return runs.run_ids[2]


def _copy_run(settings: Settings, run_id: str, new_id: str) -> Path:
    """A copy of a run's folder under another id (not in the history)."""
    copy = settings.runs_path / new_id
    shutil.copytree(_run_dir(settings, run_id), copy)
    (copy / REPORT_FILE).unlink(missing_ok=True)
    record = json.loads((copy / "run.json").read_text())
    record.update(run_id=new_id, run_dir=str(copy))
    (copy / "run.json").write_text(json.dumps(record))
    return copy


# The hook: a run without Validate ----------------------------------------------------------


def test_the_hook_writes_the_report_after_validate(runs: Runs) -> None:
    run_id = runs.run_ids[0]
    run_dir = _run_dir(runs.settings, run_id)
    path = run_dir / REPORT_FILE
    record = RunRecord.load(run_dir)
    assert record.steps["Validate"].outputs["report_path"] == str(path)
    html = path.read_text()
    checks = json.loads((run_dir / CHECKS_FILE).read_text())
    assert f'<section class="banner {checks["verdict"]}">' in html
    assert html.count("<tr><td>") >= len(checks["results"]) > 5
    assert "Trends over the last 1 run" in html  # nothing before it
    assert "no earlier run of this pipeline to compare with" in html
    # Written again at the end: the report shows the run's final status.
    assert "run succeeded" in html
    # The notification names it.
    bodies = [n["message"] for n in runs.notifications if run_id in n["message"]]
    assert bodies and f"Report: {path}" in bodies[-1]
    # runs show prints its path.
    shown = cli("-c", str(runs.config), "runs", "show", run_id)
    assert shown.returncode == 0, shown.stderr
    assert any(line.split() == ["report", str(path)] for line in shown.stdout.splitlines()), (
        shown.stdout
    )


def test_an_old_run_without_validate_gets_a_report_saying_what_is_missing(
    runs: Runs, tmp_path: Path
) -> None:
    copy = _copy_run(runs.settings, runs.run_ids[0], "before-validate")
    (copy / CHECKS_FILE).unlink()
    (copy / SUMMARY_FILE).unlink()
    record = json.loads((copy / "run.json").read_text())
    del record["steps"]["Validate"]
    (copy / "run.json").write_text(json.dumps(record))
    html = write_report(runs.settings, "before-validate", output=tmp_path / "r.html").read_text()
    assert "No checks" in html and "Not in this report" in html
    assert "This run has no Validate step" in html
    assert "wrote no summary.json (a batchscore before streamed summaries)" in html
    assert 'Predictions</h2><p class="note">Not available' in html


def test_checks_turned_off_are_named_as_the_reason(runs: Runs) -> None:
    settings = runs.settings.model_copy(
        update={
            "notification_urls": [],
            "checks": ChecksSettings.model_validate({"enabled": False}),
        }
    )
    run = Pipeline(settings).run(date=dt.date(2026, 11, 21))
    html = Path(run.steps["Validate"].outputs["report_path"]).read_text()
    assert '<section class="banner none">' in html
    assert "Checks are turned off for this run (checks.enabled: false), so none ran." in html


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
    assert run.steps["Validate"].outputs["report_path"] is None
    assert f"run {run.run_id}: the report could not be written" in caplog.text


# The full report ---------------------------------------------------------------------------


def test_the_report_shows_verdicts_drift_predictions_and_trends(runs: Runs, drifted: str) -> None:
    settings, second = runs.settings, runs.run_ids[1]
    path = write_report(settings, drifted)
    assert path == _run_dir(settings, drifted) / REPORT_FILE
    html = path.read_text()
    checks = json.loads((_run_dir(settings, drifted) / CHECKS_FILE).read_text())
    # The verdict banner and a table row per check result.
    assert '<section class="banner block">' in html
    assert "Blocked: " in html and "not published" in html
    assert html.count("<tr><td>") >= len(checks["results"])
    for result in checks["results"]:
        assert f"<td>{result['check']}</td>" in html
    # PSI bars, one per feature with a PSI, and the thresholds as lines.
    psi = {r["feature"] for r in checks["results"] if r["statistic"] == "psi" and r["feature"]}
    assert {"monthly_charges", "region"} <= psi
    for column in psi:
        assert f"<title>{column}: " in html  # the bar's tooltip
    assert "psi threshold 0.25" in html
    # The drifting features drawn against their reference: monthly_charges on its deciles,
    # region as category shares.
    assert "<h3>monthly_charges</h3>" in html and "<h3>region</h3>" in html
    assert "monthly_charges (reference quantile bins)" in html
    assert "region (category)" in html
    # Predictions against training validation and the previous run.
    assert "training validation" in html and f"previous run {second}" in html
    # Trends: the three runs up to this one (later runs are left out).
    assert "Trends over the last 3 runs" in html
    assert "2026-11-24" in html and "2026-11-26" in html
    # Self-contained: no script, nothing fetched.
    assert "<script" not in html
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in html


def test_data_never_becomes_markup(runs: Runs, drifted: str) -> None:
    html = write_report(runs.settings, drifted).read_text()
    assert EVIL not in html
    assert "&lt;script&gt;document.title=&#x27;owned&#x27;" in html


def test_a_run_without_summary_says_why_its_distributions_are_missing(
    runs: Runs, drifted: str, tmp_path: Path
) -> None:
    copy = _copy_run(runs.settings, drifted, "no-summary")
    (copy / SUMMARY_FILE).unlink()
    html = write_report(runs.settings, "no-summary", output=tmp_path / "r.html").read_text()
    assert "Not in this report" in html
    assert "drifted, but their distributions are not available" in html
    assert 'Predictions</h2><p class="note">Not available: this run&#x27;s BatchInference' in html


def test_report_command(runs: Runs, drifted: str, tmp_path: Path) -> None:
    out = tmp_path / "elsewhere" / "r.html"
    result = cli("-c", str(runs.config), "report", drifted, "--output", str(out), "--runs", "2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"report: {out}"
    assert "Trends over the last 2 runs" in out.read_text()
    missing = cli("-c", str(runs.config), "report", "no-such-run")
    assert missing.returncode != 0
    assert "no run 'no-such-run'" in missing.stderr and "batchscore runs list" in missing.stderr
    zero = cli("-c", str(runs.config), "report", drifted, "--runs", "0")
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


def test_the_report_opens_in_chromium_without_errors(
    runs: Runs, drifted: str, browser: Any
) -> None:
    path = write_report(runs.settings, drifted)
    screenshot = BUILD / "report-screenshot.png"
    found = open_in_browser(browser, path, screenshot)
    assert found["errors"] == []
    assert found["requests"] == []  # offline: nothing but the file itself
    assert found["scripts"] == 0 and found["title"] == f"batchscore run {drifted}"
    assert found["svgs"] >= 10  # PSI, 3 drifting features, predictions, 6 trends
    assert screenshot.stat().st_size > 50_000
    print(f"report screenshot: {screenshot}")
    first = write_report(runs.settings, runs.run_ids[0])  # a run with no earlier one
    found = open_in_browser(browser, first, BUILD / "report-screenshot-first-run.png")
    assert found["errors"] == [] and found["requests"] == []


def test_the_browser_check_catches_a_script_error(browser: Any, tmp_path: Path) -> None:
    """The check above can fail: a page with a script error is caught."""
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><body><script>undefinedFunction()</script></body></html>")
    assert "undefinedFunction is not defined" in " ".join(open_in_browser(browser, page)["errors"])


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("low", "high"),
    [(0.75, 0.75 + 1e-16), (1e6, 1e6 + 1e-9), (-2.0, -2.0 + 4e-16), (0.0, 5e-324)],
)
def test_axis_ticks_of_a_range_floats_cannot_step_through(low: float, high: float) -> None:
    """Two runs whose mean probabilities differ in the 16th digit (the Ray and the local
    engine add in different orders) once made the trend chart's tick loop spin for ever."""
    ticks = nice_ticks(low, high, 4)
    assert 2 <= len(ticks) <= 12
    assert ticks[0] <= low and ticks[-1] >= high
    assert ticks == sorted(set(ticks))
    svg = line_chart(
        ["2025-06-01", "2025-06-02"], [low, high], title="mean probability", y_label="p"
    )
    assert svg.count("<line") >= 2
