"""The run report: one self-contained HTML file a person opens to see whether a run's checks
passed and why — ``runs/<run_id>/report.html``.

It holds the verdict of every check, the run's facts and timings, PSI per feature against the
thresholds, each drifting feature's distribution against its reference, the prediction
distribution against the training validation scores and the previous run, and the trend of the
key figures over the pipeline's last runs. Charts are inline SVG (:mod:`.svg`), styles are
inline CSS, and there is no script: the file opens offline, from a mail attachment or an
MLflow artifact, and nothing from the data (a feature name, a category value) is ever markup.

Everything is read from run folders — ``run.json``, ``summary.json``, ``checks.json``,
``evaluation.json`` — and the run history (``runs.db``), so the report needs neither the
monitoring table nor the model. A file a run did not write (an older batchscore, checks turned
off, a step that never ran) leaves its sections saying what is missing and why.

:class:`ReportHook` writes the report after Validate (and once more at the end of the run, so
it shows the final status), or at the end of a run without Validate.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchscore.monitoring.files import CHECKS_FILE, EVALUATION_FILE, REPORT_FILE
from batchscore.monitoring.svg import (
    STATUS_COLOURS,
    esc,
    fmt_number,
    grouped_bar_chart,
    hbar_chart,
    line_chart,
)
from batchscore.records import PipelineHooks, RunRecord

if TYPE_CHECKING:
    from batchscore.config import Settings
    from batchscore.monitoring.summaries import RunSummary

log = logging.getLogger("batchscore")

SUMMARY_FILE = "summary.json"  # as monitoring.summaries names it (not imported: numpy)
VALIDATE_STEP = "Validate"
# Why a run has no checks when Validate ran with them turned off (its checks.json says so).
CHECKS_OFF = "checks are turned off for this run (checks.enabled: false), so none ran"
DEFAULT_TREND_RUNS = 20
# Drifting features drawn one by one; more are listed by name.
MAX_FEATURE_PLOTS = 12
# Categories drawn per categorical feature; the rest are added up in one bar.
MAX_CATEGORY_BARS = 12
SEVERITY = {"block": 0, "warn": 1, "skipped": 2, "info": 3, "pass": 4}
REFERENCE_COLOUR = "#94a3b8"
PREVIOUS_COLOUR = "#a78bfa"
NOW_COLOUR = "#2563eb"


@dataclass(frozen=True)
class TrendPoint:
    """One run's key figures, for the trend charts (None: not known for that run)."""

    run_id: str
    logical_date: str
    status: str
    rows: int | None = None
    positive_rate: float | None = None
    mean_probability: float | None = None
    max_psi: float | None = None
    f1: float | None = None
    roc_auc: float | None = None


@dataclass
class RunFiles:
    """What the report reads of one run folder. A file that is absent or unreadable is None,
    and ``missing`` says why, for a person."""

    run_dir: Path
    record: dict[str, Any]
    summary: RunSummary | None = None
    checks: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None
    missing: dict[str, str] = field(default_factory=dict)

    @classmethod
    def read(cls, run_dir: Path) -> RunFiles:
        """The files of ``run_dir`` (which must hold a ``run.json``)."""
        from batchscore.monitoring.summaries import RunSummary

        record = json.loads((run_dir / "run.json").read_text())
        files = cls(run_dir, record)
        summary = _read_json(run_dir / SUMMARY_FILE, files.missing)
        if summary is not None:
            try:
                files.summary = RunSummary.from_dict(summary)
            except (TypeError, ValueError, AttributeError) as exc:
                files.missing[SUMMARY_FILE] = f"{SUMMARY_FILE} could not be read: {exc}"
        files.checks = _read_json(run_dir / CHECKS_FILE, files.missing)
        if files.checks is not None and files.checks.get("disabled"):  # Validate ran, off
            files.checks = None
            files.missing[CHECKS_FILE] = CHECKS_OFF
        files.evaluation = _read_json(run_dir / EVALUATION_FILE, files.missing)
        checks_off = files.missing.get(CHECKS_FILE) == CHECKS_OFF
        if files.missing.get(SUMMARY_FILE) == "absent":
            files.missing[SUMMARY_FILE] = _why_no_summary(record, checks_off)
        if files.missing.get(CHECKS_FILE) == "absent":
            files.missing[CHECKS_FILE] = _why_no_checks(record, files.missing[CHECKS_FILE])
        if EVALUATION_FILE in files.missing and files.missing[EVALUATION_FILE] == "absent":
            files.missing[EVALUATION_FILE] = (
                "no labels were scored with this run (the feature group has no target column), "
                "and no late labels were recorded"
            )
        return files

    @property
    def results(self) -> list[dict[str, Any]]:
        """The check results, most severe first (the file's order within a status)."""
        results = [r for r in (self.checks or {}).get("results") or [] if isinstance(r, dict)]
        return sorted(results, key=lambda r: SEVERITY.get(str(r.get("status")), 5))

    @property
    def reference(self) -> dict[str, Any]:
        reference = (self.checks or {}).get("reference")
        return reference if isinstance(reference, dict) else {}

    @property
    def accepted(self) -> dict[str, Any] | None:
        """Who accepted the run's blocked checks, and when (``resume --accept``)."""
        for accepted in ((self.checks or {}).get("accepted"), self.record.get("accepted")):
            if isinstance(accepted, dict):
                return accepted
        return None

    def step_outputs(self, step: str) -> dict[str, Any]:
        return ((self.record.get("steps") or {}).get(step) or {}).get("outputs") or {}


def _read_json(path: Path, missing: dict[str, str]) -> dict[str, Any] | None:
    if not path.is_file():
        missing[path.name] = "absent"
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        missing[path.name] = f"{path.name} could not be read: {exc}"
        return None
    if not isinstance(data, dict):
        missing[path.name] = f"{path.name} does not hold a JSON object"
        return None
    return data


def _step_status(record: dict[str, Any], step: str) -> str | None:
    entry = (record.get("steps") or {}).get(step)
    return entry.get("status") if isinstance(entry, dict) else None


def _why_no_summary(record: dict[str, Any], checks_off: bool) -> str:
    if checks_off:  # BatchInference summarises only for the checks
        return (
            "checks are turned off for this run (checks.enabled: false), so nothing was summarised"
        )
    status = _step_status(record, "BatchInference")
    if status != "succeeded":
        return (
            f"BatchInference has not finished (it is {status or 'not part of this run'}), so "
            "nothing was summarised yet"
        )
    return (
        "this run's BatchInference wrote no summary.json (a batchscore before streamed "
        "summaries): feature and prediction distributions are not known for it"
    )


def _why_no_checks(record: dict[str, Any], found: str) -> str:
    if found != "absent":
        return found
    status = _step_status(record, VALIDATE_STEP)
    if status is None:
        return (
            "this run has no Validate step (it was made by a batchscore without checks), so "
            "no check ran; runs made now are checked before they publish"
        )
    if status == "failed":
        error = (record.get("steps") or {}).get(VALIDATE_STEP, {}).get("error") or {}
        return f"Validate failed before it wrote its checks: {error.get('message', 'see run.log')}"
    if status != "succeeded":
        return f"Validate has not run yet (it is {status})"
    return "Validate wrote no checks.json into the run folder"


# Reading the reference (checks.json "reference") -------------------------------------------


def _feature_reference(reference: dict[str, Any], feature: str) -> dict[str, Any] | None:
    """The reference Validate used for ``feature``: ``bin_fractions`` (numeric) or
    ``frequencies`` (categorical), under ``features``, ``training`` or ``statistics``."""
    for key in ("training", "features", "statistics"):
        block = reference.get(key)
        if not isinstance(block, dict):
            continue
        for inner in ("features", "statistics"):  # {"training": {"features": {...}}}
            if isinstance(block.get(inner), dict):
                block = block[inner]
                break
        entry = block.get(feature)
        if isinstance(entry, dict):
            return entry
    return None


def _prediction_reference(reference: dict[str, Any]) -> dict[str, Any] | None:
    for key in ("prediction", "predictions", "prediction_reference"):
        entry = reference.get(key)
        if isinstance(entry, dict) and entry.get("bin_fractions") is not None:
            return entry
    training = reference.get("training")
    if isinstance(training, dict) and isinstance(training.get("prediction_reference"), dict):
        return training["prediction_reference"]
    return None


def _previous_run_id(reference: dict[str, Any]) -> str | None:
    previous = reference.get("previous_run_id", reference.get("previous_run"))
    if isinstance(previous, dict):
        previous = previous.get("run_id")
    return previous if isinstance(previous, str) and previous else None


# Figures ------------------------------------------------------------------------------------


def _shares(counts: list[int] | list[float]) -> list[float]:
    total = sum(counts)
    return [c / total for c in counts] if total else [0.0 for _ in counts]


def _bin_labels(edges: list[float]) -> list[str]:
    if not edges:
        return ["all values"]
    labels = [f"≤ {fmt_number(edges[0])}"]
    labels += [f"{fmt_number(a)} – {fmt_number(b)}" for a, b in itertools.pairwise(edges)]
    return [*labels, f"> {fmt_number(edges[-1])}"]


def _max_feature_psi(results: list[dict[str, Any]]) -> float | None:
    values = [
        float(r["value"])
        for r in results
        if r.get("statistic") == "psi" and r.get("feature") and _is_number(r.get("value"))
    ]
    return max(values, default=None)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _label_metric(results: list[dict[str, Any]], *names: str) -> float | None:
    for r in results:
        late = r.get("check") == "late_labels" and r.get("statistic") in names
        if late and _is_number(r.get("value")):
            return float(r["value"])
    return None


def trend_point(files: RunFiles, rows: int | None = None) -> TrendPoint:
    """One run's key figures from its files (``rows``: the history's count, if known)."""
    record = files.record
    summary = files.summary
    predictions = summary.predictions if summary is not None else None
    results = files.results
    evaluation = files.evaluation or {}
    max_psi = _max_feature_psi(results)
    if max_psi is None and _is_number(files.step_outputs(VALIDATE_STEP).get("max_psi")):
        max_psi = float(files.step_outputs(VALIDATE_STEP)["max_psi"])
    if rows is None:
        rows = files.step_outputs("BatchInference").get("rows")
    f1 = evaluation.get("f1") if _is_number(evaluation.get("f1")) else None
    auc = evaluation.get("roc_auc") if _is_number(evaluation.get("roc_auc")) else None
    return TrendPoint(
        run_id=str(record.get("run_id")),
        logical_date=str(record.get("logical_date")),
        status=str(record.get("status")),
        rows=rows,
        positive_rate=predictions.positive_rate if predictions else None,
        mean_probability=(
            predictions.total_probability / predictions.rows
            if predictions and predictions.rows
            else None
        ),
        max_psi=max_psi,
        f1=f1 if f1 is not None else _label_metric(results, "f1"),
        roc_auc=auc if auc is not None else _label_metric(results, "roc_auc", "auc"),
    )


def _scored(row: dict[str, Any]) -> bool:
    """A run whose rows were scored: succeeded, or stopped by its checks."""
    return row.get("status") == "succeeded" or row.get("failed_step") in (VALIDATE_STEP, "Publish")


def trend_points(settings: Settings, files: RunFiles, limit: int) -> list[TrendPoint]:
    """The key figures of the pipeline's last ``limit`` scored runs up to this one, oldest
    first (this run last), from the run history and each run's folder."""
    from batchscore.runs import RunHistory

    record = files.record
    try:
        rows = RunHistory(settings.workspace_path / "runs.db", writable=False).list_runs(
            pipeline=record.get("pipeline_name"), limit=1_000_000
        )
    except Exception as exc:  # an unreadable history: the run itself still has a trend
        log.warning("run history unreadable for the report's trends: %s", exc)
        rows = []
    started = str(record.get("started") or "")
    chosen = [
        r
        for r in rows
        if r["run_id"] != record.get("run_id")
        and _scored(r)
        and str(r.get("started") or "") <= started
    ][: max(limit - 1, 0)]
    points: list[TrendPoint] = []
    for row in reversed(chosen):
        run_dir = Path(row.get("run_dir") or "")
        if (run_dir / "run.json").is_file():
            try:
                points.append(trend_point(RunFiles.read(run_dir), row.get("rows")))
                continue
            except (OSError, ValueError) as exc:
                log.warning("run %s left out of the trends: %s", row["run_id"], exc)
        points.append(  # folder removed by 'batchscore clean': the history still has rows
            TrendPoint(row["run_id"], str(row["logical_date"]), row["status"], row.get("rows"))
        )
    points.append(trend_point(files))
    return points


# Rendering ----------------------------------------------------------------------------------


def render_report(
    files: RunFiles,
    trend: list[TrendPoint],
    previous: RunSummary | None = None,
    previous_id: str | None = None,
    *,
    generated: dt.datetime | None = None,
) -> str:
    """The report as one HTML document.

    Args:
        files: The run's files.
        trend: Key figures of the pipeline's recent runs, oldest first, this run last.
        previous: The previous run's summary (its prediction distribution is drawn), if any.
        previous_id: That run's id.
        generated: When the report is made (default: now).

    Returns:
        The HTML text; every string from data is escaped.
    """
    from batchscore import __version__

    record = files.record
    generated = generated or dt.datetime.now(dt.UTC)
    sections = [
        _banner(files),
        _missing_section(files),
        _checks_section(files),
        _facts_section(files),
        _psi_section(files),
        _drift_section(files),
        _predictions_section(files, previous, previous_id),
        _trend_section(trend),
    ]
    title = f"batchscore run {record.get('run_id')}"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>"
        f'<header><p class="eyebrow">batchscore run report</p>'
        f"<h1>{esc(record.get('pipeline_name'))}</h1>"
        f'<p class="sub">run <code>{esc(record.get("run_id"))}</code> · logical date '
        f"{esc(record.get('logical_date'))} · ids "
        f"{esc(_id_range(record))}</p></header>"
        + "".join(s for s in sections if s)
        + f"<footer>Written by batchscore {esc(__version__)} at "
        f"{esc(generated.strftime('%Y-%m-%d %H:%M:%S UTC'))} from the run folder "
        f"<code>{esc(files.run_dir)}</code>.</footer></main></body></html>\n"
    )


def _id_range(record: dict[str, Any]) -> str:
    start, end = record.get("id_start"), record.get("id_end")
    if start is None and end is None:
        return "all"
    return f"{'*' if start is None else start}–{'*' if end is None else end}"


def _pill(status: str) -> str:
    colour = STATUS_COLOURS.get(status, "#6b7280")
    return f'<span class="pill" style="background:{colour}">{esc(status)}</span>'


def _banner(files: RunFiles) -> str:
    record = files.record
    status = str(record.get("status"))
    rows = files.step_outputs("BatchInference").get("rows")
    model = (
        f"{record.get('model_name')} v{record.get('model_version')}"
        if record.get("model_name")
        else "no model resolved"
    )
    facts = f"run {status} · {fmt_number(rows)} rows scored · model {model}"
    checks = files.checks
    if checks is None:
        return (
            '<section class="banner none"><div class="verdict">No checks</div>'
            f"<p>{esc(_sentence(files.missing.get(CHECKS_FILE, 'checks.json is missing')))}</p>"
            f'<p class="facts">{esc(facts)}</p></section>'
        )
    verdict = str(checks.get("verdict") or "unknown")
    results = files.results
    violations = [r for r in results if r.get("status") in ("warn", "block")]
    accepted = files.accepted
    headline = {
        "pass": "All checks passed",
        "warn": f"Published with {len(violations)} warning{'s' * (len(violations) != 1)}",
        "block": f"Blocked: {len(violations)} violation{'s' * (len(violations) != 1)}, "
        "not published",
    }.get(verdict, f"Verdict: {verdict}")
    if verdict == "block" and accepted:
        headline = (
            f"Blocked, then accepted by {accepted.get('by')} at {accepted.get('at')} and published"
        )
    listed = "".join(
        f"<li>{_pill(str(r.get('status')))} {esc(_violation(r))}</li>" for r in violations[:8]
    )
    more = f"<li>… and {len(violations) - 8} more below</li>" if len(violations) > 8 else ""
    return (
        f'<section class="banner {esc(verdict)}"><div class="verdict">{esc(headline)}</div>'
        f'<p class="facts">{esc(facts)} · {len(results)} check results</p>'
        + (f"<ul>{listed}{more}</ul>" if listed else "")
        + "</section>"
    )


def _sentence(text: str) -> str:
    return f"{text[:1].upper()}{text[1:]}."


def _violation(result: dict[str, Any]) -> str:
    where = f" of {result['feature']}" if result.get("feature") else ""
    value, threshold = result.get("value"), result.get("threshold")
    figures = (
        f" = {fmt_number(value)} (threshold {fmt_number(threshold)})" if _is_number(value) else ""
    )
    return f"{result.get('check')}{where}: {result.get('statistic')}{figures}"


def _missing_section(files: RunFiles) -> str:
    items = [
        f"<li><code>{esc(name)}</code>: {esc(why)}</li>"
        for name, why in files.missing.items()
        if name != EVALUATION_FILE
    ]
    if not items:
        return ""
    return (
        '<section class="card missing"><h2>Not in this report</h2>'
        "<p>Some of the run's files are missing, so parts of this report are empty:</p>"
        f"<ul>{''.join(items)}</ul></section>"
    )


def _check_rows(results: list[dict[str, Any]]) -> str:
    return "".join(
        "<tr>"
        f"<td>{esc(r.get('check'))}</td><td>{esc(r.get('feature') or '–')}</td>"
        f"<td>{esc(r.get('statistic'))}</td><td>{esc(r.get('reference') or '–')}</td>"
        f'<td class="num">{esc(_figure(r.get("value")))}</td>'
        f'<td class="num">{esc(_figure(r.get("threshold")))}</td>'
        f"<td>{_pill(str(r.get('status')))}</td>"
        f'<td class="detail">{esc(r.get("detail") or "")}</td>'
        "</tr>"
        for r in results
    )


CHECKS_HEAD = (
    '<table class="checks"><colgroup><col style="width:13%"><col style="width:13%">'
    '<col style="width:13%"><col style="width:9%"><col style="width:7%"><col style="width:9%">'
    '<col style="width:8%"><col></colgroup>'
    "<thead><tr><th>check</th><th>feature</th><th>statistic</th><th>reference</th>"
    '<th class="num">value</th><th class="num">threshold</th><th>status</th>'
    "<th>detail</th></tr></thead>"
)


def _checks_section(files: RunFiles) -> str:
    if files.checks is None:
        return ""
    results = files.results
    if not results:
        return (
            '<section class="card"><h2>Checks</h2>'
            '<p class="note">No check results were recorded.</p></section>'
        )
    # Violations and skipped checks in view; the passing ones one click away (no script).
    shown = [r for r in results if r.get("status") not in ("pass", "info")]
    folded = [r for r in results if r.get("status") in ("pass", "info")]
    table = f"{CHECKS_HEAD}<tbody>{_check_rows(shown)}</tbody></table>" if shown else ""
    if folded:
        table += (
            f"<details{'' if shown else ' open'}><summary>{len(folded)} check result"
            f"{'s' * (len(folded) != 1)} passed or recorded for information</summary>"
            f"{CHECKS_HEAD}<tbody>{_check_rows(folded)}</tbody></table></details>"
        )
    return f'<section class="card"><h2>Checks</h2>{table}</section>'


def _text(value: Any) -> str | None:
    """An identifier as it is (no thousands separators), None kept."""
    return None if value is None else str(value)


def _figure(value: Any) -> str:
    if value is None:
        return "–"
    if _is_number(value):
        return fmt_number(value)
    return str(value)


def _facts_section(files: RunFiles) -> str:
    record = files.record
    data = files.step_outputs("DataSource")
    scored = files.step_outputs("BatchInference")
    published = files.step_outputs("Publish")
    accepted = files.accepted
    facts: list[tuple[str, Any]] = [
        ("pipeline", record.get("pipeline_name")),
        ("run id", record.get("run_id")),
        ("status", record.get("status")),
        ("logical date", record.get("logical_date")),
        ("features as of", record.get("as_of")),
        ("ids", f"{_id_range(record)} of {record.get('feature_group')}"),
        ("feature snapshot", _text(record.get("feature_snapshot_id"))),
        (
            "model",
            f"{record.get('model_name')} v{record.get('model_version')}"
            if record.get("model_name")
            else None,
        ),
        ("output table", f"{record.get('output_table')} ({record.get('write_mode')})"),
        ("table snapshot", _text(published.get("snapshot_id"))),
        ("rows read", data.get("rows")),
        ("rows scored", scored.get("rows")),
        (
            "skipped",
            f"{fmt_number(data.get('duplicate_versions_skipped'))} older versions, "
            f"{fmt_number(data.get('deleted_records_skipped'))} deleted records"
            if data
            else None,
        ),
        ("quarantined", scored.get("quarantined")),
        ("started", record.get("started")),
        ("ended", record.get("ended")),
    ]
    if isinstance(accepted, dict):
        facts.append(("accepted", f"by {accepted.get('by')} at {accepted.get('at')}"))
    if record.get("error"):
        error = record["error"]
        facts.append(("error", f"{record.get('failed_step')}: {error.get('type')}: "
                               f"{error.get('message')}"))  # fmt: skip
    rows = "".join(
        f"<tr><th>{esc(k)}</th><td>{esc(_figure(v))}</td></tr>" for k, v in facts if v is not None
    )
    steps = "".join(
        "<tr>"
        f"<td>{esc(name)}</td><td>{_pill_step(str(step.get('status')))}</td>"
        f'<td class="num">{esc(_figure(step.get("seconds")))}</td>'
        f'<td class="num">{esc(_figure(step.get("rows")))}</td>'
        f'<td class="num">{esc(_figure(step.get("rows_per_second")))}</td>'
        f'<td class="num">{esc(_figure(step.get("attempts")))}</td>'
        "</tr>"
        for name, step in (record.get("steps") or {}).items()
        if isinstance(step, dict)
    )
    return (
        '<section class="card"><h2>Run</h2><div class="two">'
        f'<table class="facts">{rows}</table>'
        '<table><thead><tr><th>step</th><th>status</th><th class="num">seconds</th>'
        '<th class="num">rows</th><th class="num">rows/s</th><th class="num">attempts</th>'
        f"</tr></thead><tbody>{steps}</tbody></table></div></section>"
    )


def _pill_step(status: str) -> str:
    key = {"succeeded": "pass", "failed": "block", "nothing_to_score": "warn"}.get(
        status, "skipped"
    )
    colour = STATUS_COLOURS[key]
    return f'<span class="pill" style="background:{colour}">{esc(status)}</span>'


def _unavailable(title: str, why: str) -> str:
    return f'<section class="card"><h2>{esc(title)}</h2><p class="note">{esc(why)}</p></section>'


def _psi_section(files: RunFiles) -> str:
    title = "PSI per feature"
    if files.checks is None:
        return _unavailable(title, f"Not available: {files.missing.get(CHECKS_FILE)}.")
    by_feature: dict[str, dict[str, Any]] = {}
    for r in files.results:
        feature = r.get("feature")
        if r.get("statistic") != "psi" or not feature or r.get("check") == "prediction_psi":
            continue
        seen = by_feature.get(feature)
        # One bar per feature: against training when there is such a result.
        better = seen is not None and seen.get("reference") != "training"
        if seen is None or (better and r.get("reference") == "training"):
            by_feature[str(feature)] = r
    if not by_feature:
        return _unavailable(title, "No PSI was computed for this run (no feature had reference "
                                   "bins, or the PSI checks are off).")  # fmt: skip
    ordered = sorted(
        by_feature.values(),
        key=lambda r: -(float(r["value"]) if _is_number(r.get("value")) else -1.0),
    )
    thresholds: dict[float, list[str]] = {}
    for r in ordered:
        if _is_number(r.get("threshold")):
            names = thresholds.setdefault(float(r["threshold"]), [])
            if r.get("check") not in names:
                names.append(str(r.get("check")))
    lines = [(value, f"{' / '.join(names)} threshold {fmt_number(value)}")
             for value, names in thresholds.items()]  # fmt: skip
    chart = hbar_chart(
        [
            (
                str(r["feature"]),
                float(r["value"]) if _is_number(r.get("value")) else None,
                str(r.get("status")),
            )
            for r in ordered
        ],
        lines,
        title="PSI per feature against the reference",
        x_label="population stability index (0 = same distribution as the reference)",
    )
    reference = {str(r.get("reference") or "") for r in ordered} - {""}
    return (
        f'<section class="card"><h2>{esc(title)}</h2>'
        f'<p class="note">Against {esc(", ".join(sorted(reference)) or "the reference")}. '
        "Bars are coloured by status; dashed lines are the configured thresholds. "
        "Below 0.1 is usually noise, above 0.25 a real shift.</p>"
        f'<div class="chart">{chart}</div></section>'
    )


def _drifting_features(files: RunFiles) -> list[str]:
    features: list[str] = []
    for r in files.results:  # most severe first
        feature = r.get("feature")
        if r.get("status") in ("warn", "block") and feature and feature not in features:
            features.append(str(feature))
    return features


def _drift_section(files: RunFiles) -> str:
    title = "Drifting features"
    if files.checks is None:
        return _unavailable(title, f"Not available: {files.missing.get(CHECKS_FILE)}.")
    features = _drifting_features(files)
    if not features:
        return _unavailable(title, "No feature check went beyond its threshold.")
    if files.summary is None:
        return _unavailable(
            title,
            f"{', '.join(features)} drifted, but their distributions are not available: "
            f"{files.missing.get(SUMMARY_FILE)}.",
        )
    plots = []
    for feature in features[:MAX_FEATURE_PLOTS]:
        plots.append(_feature_plot(files, feature))
    rest = features[MAX_FEATURE_PLOTS:]
    more = f'<p class="note">Also drifting (not drawn): {esc(", ".join(rest))}.</p>' if rest else ""
    return (
        f'<section class="card"><h2>{esc(title)}</h2>'
        '<p class="note">Each feature beyond a threshold: its distribution in this run against '
        "the reference Validate compared it with (shares of the non-missing values).</p>"
        f"{''.join(plots)}{more}</section>"
    )


def _feature_plot(files: RunFiles, feature: str) -> str:
    summary = files.summary
    assert summary is not None
    reference = _feature_reference(files.reference, feature) or {}
    checks = ", ".join(
        _violation(r)
        for r in files.results
        if r.get("feature") == feature and r.get("status") in ("warn", "block")
    )
    heading = f'<h3>{esc(feature)}</h3><p class="note">{esc(checks)}</p>'
    if feature in summary.numeric:
        numeric = summary.numeric[feature]
        now = _shares(numeric.bin_counts) if numeric.bin_counts else []
        ref = reference.get("bin_fractions")
        edges = numeric.bin_edges or [float(e) for e in reference.get("bin_edges") or []]
        missing = (
            f"missing: {fmt_number(numeric.null_share, percent=True)} now"
            + (
                f", {fmt_number(reference['missing_fraction'], percent=True)} in the reference"
                if _is_number(reference.get("missing_fraction"))
                else ""
            )
            + (
                f" · range now {fmt_number(numeric.minimum)} to {fmt_number(numeric.maximum)}"
                if numeric.minimum is not None
                else ""
            )
        )
        if not edges or len(now) != len(edges) + 1:
            return heading + (
                f'<p class="note">No reference bins for {esc(feature)}: its distribution cannot '
                f"be compared bin by bin ({esc(missing)}).</p>"
            )
        series: list[tuple[str, list[float | None], str]] = []
        if isinstance(ref, list) and len(ref) == len(now):
            series.append(("reference", [float(v) for v in ref], REFERENCE_COLOUR))
        series.append(("this run", list(now), NOW_COLOUR))
        chart = grouped_bar_chart(
            _bin_labels(edges),
            series,
            title=f"{feature}: this run against the reference",
            x_label=f"{feature} (reference quantile bins)",
        )
        return heading + f'<div class="chart">{chart}</div><p class="note">{esc(missing)}</p>'
    if feature in summary.categorical:
        categorical = summary.categorical[feature]
        now_shares = dict(zip(categorical.counts, _shares(list(categorical.counts.values())),
                              strict=True))  # fmt: skip
        frequencies = reference.get("frequencies")
        ref_shares = (
            {str(k): float(v) for k, v in frequencies.items() if _is_number(v)}
            if isinstance(frequencies, dict)
            else {}
        )
        values = sorted(
            set(now_shares) | set(ref_shares),
            key=lambda v: -max(now_shares.get(v, 0.0), ref_shares.get(v, 0.0)),
        )
        shown, rest = values[:MAX_CATEGORY_BARS], values[MAX_CATEGORY_BARS:]
        labels = list(shown)
        now_bars: list[float | None] = [now_shares.get(v, 0.0) for v in shown]
        ref_bars: list[float | None] = [ref_shares.get(v, 0.0) for v in shown]
        if rest:
            labels.append(f"{len(rest)} other values")
            now_bars.append(sum(now_shares.get(v, 0.0) for v in rest))
            ref_bars.append(sum(ref_shares.get(v, 0.0) for v in rest))
        series = [("this run", now_bars, NOW_COLOUR)]
        if ref_shares:
            series.insert(0, ("reference", ref_bars, REFERENCE_COLOUR))
        unseen = [v for v in now_shares if ref_shares and v not in ref_shares]
        note = f"missing: {fmt_number(categorical.null_share, percent=True)} now"
        if unseen:
            note += f" · not in the reference: {', '.join(unseen[:10])}"
            note += f" and {len(unseen) - 10} more" if len(unseen) > 10 else ""
        chart = grouped_bar_chart(
            labels,
            series,
            title=f"{feature}: category shares, this run against the reference",
            x_label=f"{feature} (category)",
        )
        return heading + f'<div class="chart">{chart}</div><p class="note">{esc(note)}</p>'
    return heading + (
        f'<p class="note">{esc(feature)} is not in this run\'s summary (a missing or retyped '
        "column: see the contract check).</p>"
    )


def _predictions_section(
    files: RunFiles, previous: RunSummary | None, previous_id: str | None
) -> str:
    title = "Predictions"
    summary = files.summary
    if summary is None or summary.predictions is None:
        why = files.missing.get(SUMMARY_FILE) or "the summary holds no predictions"
        return _unavailable(title, f"Not available: {why}.")
    predictions = summary.predictions
    edges = predictions.bin_edges
    now = _shares(predictions.bin_counts)
    series: list[tuple[str, list[float | None], str]] = []
    notes = []
    reference = _prediction_reference(files.reference)
    fractions = (reference or {}).get("bin_fractions")
    if isinstance(fractions, list) and len(fractions) == len(now):
        series.append(("training validation", [float(v) for v in fractions], REFERENCE_COLOUR))
        if _is_number((reference or {}).get("positive_rate")):
            notes.append(
                "positive rate in training validation "
                f"{fmt_number(reference['positive_rate'], percent=True)}"  # type: ignore[index]
            )
    else:
        why = "" if files.checks else f" ({files.missing.get(CHECKS_FILE)})"
        notes.append(f"no training validation scores to compare with{why}")
    prev = previous.predictions if previous is not None else None
    if prev is not None and prev.bin_edges == edges and prev.bin_counts:
        series.append((f"previous run {previous_id}", list(_shares(prev.bin_counts)),
                       PREVIOUS_COLOUR))  # fmt: skip
        if prev.positive_rate is not None:
            notes.append(f"previous run {fmt_number(prev.positive_rate, percent=True)}")
    elif previous_id is None:
        notes.append("no earlier run of this pipeline to compare with")
    else:
        notes.append(f"the previous run {previous_id} has no comparable prediction summary")
    series.append(("this run", list(now), NOW_COLOUR))
    rate = predictions.positive_rate
    mean = predictions.total_probability / predictions.rows if predictions.rows else None
    headline = (
        f"{fmt_number(predictions.rows)} predictions · positive rate "
        f"{fmt_number(rate, percent=True)} · mean probability {fmt_number(mean)}"
    )
    chart = grouped_bar_chart(
        _bin_labels(edges),
        series,
        title="Predicted probability: this run against its references",
        x_label="predicted probability of the positive class (bins)",
        y_label="share of predictions",
    )
    return (
        f'<section class="card"><h2>{esc(title)}</h2><p>{esc(headline)}</p>'
        f'<div class="chart">{chart}</div><p class="note">{esc("; ".join(notes))}.</p>'
        "</section>"
    )


def _trend_section(trend: list[TrendPoint]) -> str:
    labels = [p.logical_date for p in trend]
    # (title, values, y axis, as percent, from zero, colour)
    charts = [
        ("rows scored", [p.rows for p in trend], "rows", False, True, "#2563eb"),
        ("positive rate", [p.positive_rate for p in trend], "share positive", True, True,
         "#7c3aed"),
        ("max PSI of a feature", [p.max_psi for p in trend], "PSI", False, True, "#d97706"),
        ("mean probability", [p.mean_probability for p in trend], "probability", False, False,
         "#0e7490"),
        ("evaluation F1", [p.f1 for p in trend], "F1", False, False, "#15803d"),
        ("evaluation ROC AUC", [p.roc_auc for p in trend], "ROC AUC", False, False, "#15803d"),
    ]  # fmt: skip
    svgs = "".join(
        '<div class="chart">'
        + line_chart(
            labels,
            values,
            title=name,
            y_label=y_label,
            percent=percent,
            from_zero=from_zero,
            colour=colour,
        )
        + "</div>"
        for name, values, y_label, percent, from_zero, colour in charts
    )
    runs = len(trend)
    return (
        f'<section class="card"><h2>Trends over the last {runs} run{"s" * (runs != 1)}</h2>'
        '<p class="note">Scored runs of this pipeline, oldest first; the ringed point is this '
        "run. A gap is a run that did not record the figure.</p>"
        f'<div class="grid">{svgs}</div></section>'
    )


CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; background: #f3f4f6; color: #1f2937;
  font: 14px/1.45 system-ui, -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', sans-serif; }
main { max-width: 1120px; margin: 0 auto; padding: 24px; }
header h1 { margin: 0 0 4px; font-size: 24px; }
.eyebrow { margin: 0; text-transform: uppercase; letter-spacing: .08em; font-size: 12px;
  color: #6b7280; }
.sub { margin: 0 0 16px; color: #4b5563; }
code { font-family: ui-monospace, 'DejaVu Sans Mono', monospace; font-size: 13px; }
.banner { border-radius: 10px; padding: 16px 20px; margin-bottom: 16px; color: #fff; }
.banner .verdict { font-size: 22px; font-weight: 700; }
.banner p { margin: 4px 0 0; }
.banner ul { margin: 10px 0 0; padding-left: 0; list-style: none; }
.banner li { margin: 3px 0; }
.banner .pill { border: 1px solid rgba(255,255,255,.7); }
.banner.pass { background: #15803d; }
.banner.warn { background: #b45309; }
.banner.block { background: #b91c1c; }
.banner.none, .banner.unknown { background: #4b5563; }
.card { background: #fff; border-radius: 10px; padding: 16px 20px; margin-bottom: 16px;
  box-shadow: 0 1px 2px rgba(0,0,0,.06); overflow-x: auto; }
.card h2 { margin: 0 0 10px; font-size: 17px; }
.card h3 { margin: 18px 0 2px; font-size: 15px; }
.missing { border-left: 4px solid #9ca3af; }
.note { color: #4b5563; margin: 4px 0 8px; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid #e5e7eb;
  vertical-align: top; overflow-wrap: break-word; }
table.checks { table-layout: fixed; }
table.checks td { overflow-wrap: anywhere; }
details { margin-top: 10px; }
summary { cursor: pointer; color: #374151; font-weight: 600; padding: 4px 0; }
thead th { font-size: 12px; text-transform: uppercase; letter-spacing: .04em; color: #6b7280; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.facts th { width: 34%; color: #4b5563; font-weight: 500; }
.two { display: grid; grid-template-columns: minmax(0, 1fr) minmax(0, 1.2fr); gap: 24px;
  align-items: start; }
.pill { display: inline-block; white-space: nowrap; padding: 1px 8px; border-radius: 999px;
  color: #fff; font-size: 12px; font-weight: 600; }
.chart svg { max-width: 100%; height: auto; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(330px, 1fr)); gap: 8px; }
footer { color: #6b7280; font-size: 12px; margin-top: 8px; }
@media (max-width: 800px) { .two { grid-template-columns: 1fr; } }
"""


# Writing ------------------------------------------------------------------------------------


def _run_dir(settings: Settings, run_id: str) -> Path:
    from batchscore.errors import RunNotFoundError
    from batchscore.records import check_run_id

    check_run_id(run_id)
    run_dir = settings.runs_path / run_id
    if not (run_dir / "run.json").is_file() and settings.remote_workspace:
        from batchscore.mirror import RunMirror

        RunMirror(settings).fetch(run_id, settings.runs_path)
    if not (run_dir / "run.json").is_file():
        raise RunNotFoundError(
            f"no run {run_id!r} in {settings.runs_path} (or its folder was removed by "
            "'batchscore clean'). List runs with 'batchscore runs list'."
        )
    return run_dir


def _previous_summary(
    files: RunFiles, trend: list[TrendPoint], runs_path: Path
) -> tuple[RunSummary | None, str | None]:
    """The summary of the run Validate compared with, else of the last earlier scored run."""
    from batchscore.monitoring.summaries import RunSummary

    previous_id = _previous_run_id(files.reference)
    if previous_id is None and len(trend) > 1:
        previous_id = trend[-2].run_id
    if previous_id is None:
        return None, None
    path = runs_path / previous_id / SUMMARY_FILE
    try:
        return RunSummary.load(path), previous_id
    except (OSError, ValueError, TypeError) as exc:
        log.debug("no prediction summary of the previous run %s: %s", previous_id, exc)
        return None, previous_id


def write_report(
    settings: Settings,
    run_id: str,
    *,
    output: Path | None = None,
    trend_runs: int = DEFAULT_TREND_RUNS,
) -> Path:
    """Write the HTML report of run ``run_id``.

    Args:
        settings: Locate the workspace (its run folders and history).
        run_id: The run, as ``batchscore runs list`` shows it.
        output: Where to write (default: ``report.html`` in the run's folder).
        trend_runs: How many of the pipeline's scored runs, up to and including this one,
            the trend charts show.

    Returns:
        The report's path.

    Raises:
        ConfigError: the run id or ``trend_runs`` is not valid.
        RunNotFoundError: the workspace has no folder for the run.
        StorageError: the report cannot be written there.
    """
    from batchscore.errors import ConfigError, StorageError

    if trend_runs < 1:
        raise ConfigError(f"--runs {trend_runs} must be at least 1 (this run's own figures).")
    run_dir = _run_dir(settings, run_id)
    files = RunFiles.read(run_dir)
    trend = trend_points(settings, files, trend_runs)
    previous, previous_id = _previous_summary(files, trend, settings.runs_path)
    text = render_report(files, trend, previous, previous_id)
    path = Path(output) if output is not None else run_dir / REPORT_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)  # a reader (a browser, the mirror) never sees half a report
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StorageError(
            f"cannot write the report to {str(path)!r}: {exc}. Choose another --output or fix "
            "the folder's permissions."
        ) from exc
    return path


class ReportHook(PipelineHooks):
    """Writes the run report after Validate — also when Validate blocks the run, since that is
    when a person looks — and again at the end of the run (its final status); a run without
    Validate gets it at the end. The path goes into that step's outputs as ``report_path``, so
    the notification and ``runs show`` name it. A report that cannot be written is logged and
    never fails the run."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def after_step(self, record: RunRecord, step: str) -> None:
        if step == VALIDATE_STEP:
            self._write(record, step)

    def on_pipeline_error(self, record: RunRecord, step: str, error: BaseException) -> None:
        if step == VALIDATE_STEP:  # blocked (or broken): the report shows why
            self._write(record, step)

    def after_pipeline_run(self, record: RunRecord) -> None:
        step = VALIDATE_STEP if VALIDATE_STEP in record.steps else list(record.steps)[-1]
        self._write(record, step)

    def _write(self, record: RunRecord, step: str) -> None:
        try:
            path = write_report(self.settings, record.run_id)
        except Exception as exc:  # a report is never worth failing a run over
            log.warning("run %s: the report could not be written: %s", record.run_id, exc)
            return
        record.steps[step].outputs["report_path"] = str(path)
        record.save()
        log.info("report: %s", path)
