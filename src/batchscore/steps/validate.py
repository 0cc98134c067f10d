"""Validate: the run's summary checked against its reference before anything is published.

Reads ``summary.json`` (what BatchInference summarised while it scored: no second pass over
the rows), compares it with the model's training profile and with the previous successful run
of the same pipeline and id range (:mod:`batchscore.monitoring.checks`), writes
``checks.json`` and logs the verdict. ``warn`` goes on to Publish (the notification says
"published with warnings"); ``block`` fails the run with :class:`ValidationBlockedError`, so
Publish does not run and the output table is untouched until a person accepts the run
(``batchscore resume RUN_ID --accept``) or loosens the check and resumes it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchscore.errors import ValidationBlockedError
from batchscore.monitoring.checks import CHECKS_FILE, CheckReport, run_checks
from batchscore.monitoring.results import CheckResult
from batchscore.monitoring.summaries import SUMMARY_FILE, RunSummary

if TYPE_CHECKING:
    from batchscore.records import RunRecord
    from batchscore.steps.context import RunContext

log = logging.getLogger("batchscore")

# Violations a message lists before saying how many more there are (checks.json has all).
SHOWN_VIOLATIONS = 20


def previous_summary(ctx: RunContext) -> tuple[RunSummary | None, str | None, str | None]:
    """The previous successful run's summary, its run id, and why there is no summary when
    there is a run (its folder cleaned, or it ran before summaries were recorded)."""
    from batchscore.runs import RunHistory

    history = RunHistory.for_settings(ctx.settings, writable=False)
    previous = history.previous_success(ctx.record)
    if previous is None:
        return None, None, None
    run_id = previous["run_id"]
    path = Path(previous["run_dir"]) / SUMMARY_FILE
    if not path.exists():
        why = (
            f"the previous run {run_id} has no {SUMMARY_FILE} (its folder was removed by "
            "'batchscore clean', or it ran before batchscore recorded summaries); the next "
            "run compares with this one"
        )
        return None, run_id, why
    return RunSummary.load(path), run_id, None


def check_run(ctx: RunContext) -> tuple[CheckReport, bool]:
    """The checks of the run in ``ctx``: its report, and whether a summary was found."""
    record = ctx.record
    settings = ctx.settings
    scored = record.outputs("BatchInference")
    summary_path = Path(scored.get("summary_path") or Path(record.run_dir) / SUMMARY_FILE)
    if not summary_path.exists():
        result = CheckResult(
            check="summary", feature=None, statistic="present", reference="", value=None,
            threshold=None, status="skipped", action="",
            detail=f"BatchInference wrote no {SUMMARY_FILE} (a run scored by an earlier "
            "batchscore): start a new run to check its data",
        )  # fmt: skip
        return CheckReport([result]), False
    summary = RunSummary.load(summary_path)
    model = ctx.loaded_model()
    profile = dict(model.profile or {})
    if not profile.get("dtypes"):  # a model without batchscore's profile: its signature's types
        profile["dtypes"] = {c: t for c, t in model.input_types.items() if t != "any"}
    previous, previous_id, previous_missing = previous_summary(ctx)
    report = run_checks(
        summary,
        profile,
        previous,
        settings.checks,
        dt.datetime.fromisoformat(record.as_of).replace(tzinfo=None),
        input_columns=model.input_columns,
        previous_run_id=previous_id,
        previous_missing=previous_missing,
    )
    report.reference["model"] = {"name": model.version.group, "version": model.version.version}
    return report, True


def write_checks(
    path: Path, report: CheckReport, accepted: dict[str, str] | None, **extra: Any
) -> Path:
    """``checks.json``: the verdict, the reference, every result and the acceptance."""
    document = {
        "verdict": report.verdict,
        "reference": report.reference,
        "results": [r.to_dict() for r in report.results],
        "accepted": accepted,
        **extra,
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(document, indent=1, default=str))
    tmp.replace(path)
    return path


def violations_text(violations: list[str]) -> str:
    """The violations as indented lines, at most ``SHOWN_VIOLATIONS`` of them."""
    lines = [f"  - {v}" for v in violations[:SHOWN_VIOLATIONS]]
    if len(violations) > SHOWN_VIOLATIONS:
        lines.append(f"  … and {len(violations) - SHOWN_VIOLATIONS} more (see checks.json)")
    return "\n".join(lines)


def blocked_message(record: RunRecord, violations: list[str], checks_path: Path) -> str:
    return (
        f"run {record.run_id}: Validate blocked publishing; {len(violations)} check(s) "
        f"failed:\n{violations_text(violations)}\nNothing was published (details: "
        f"{checks_path}). After a person looked: batchscore resume {record.run_id} --accept "
        "(or loosen the check under checks: and resume the run)."
    )


def run(ctx: RunContext) -> dict[str, Any]:
    """The Validate step of a run: its checks, ``checks.json``, and the verdict.

    Raises:
        ValidationBlockedError: a check whose action is ``block`` failed and nobody accepted
            the run yet.
    """
    record = ctx.record
    checks_path = Path(record.run_dir) / CHECKS_FILE
    rows = record.outputs("BatchInference").get("rows")
    if not ctx.settings.checks.enabled:
        write_checks(checks_path, CheckReport(), record.accepted, disabled=True)
        log.info("Validate: checks disabled (checks.enabled: false); nothing checked")
        return outputs(rows, "pass", checks_path, CheckReport(), note="checks disabled")
    report, summarised = check_run(ctx)
    verdict = report.verdict
    write_checks(checks_path, report, record.accepted)
    violations = report.violations
    counts = {s: sum(r.status == s for r in report.results) for s in ("pass", "warn", "block")}
    skipped = sum(r.status == "skipped" for r in report.results)
    log.info(
        "Validate: verdict %s (%d passed, %d warned, %d blocked, %d skipped)",
        verdict, counts["pass"], counts["warn"], counts["block"], skipped,
    )  # fmt: skip
    for line in violations:
        log.warning("Validate: %s", line)
    if not summarised:
        log.warning("Validate: %s", report.results[0].detail)
    if verdict == "block":
        if record.accepted is None:
            raise ValidationBlockedError(
                blocked_message(record, violations, checks_path),
                run_id=record.run_id,
                violations=violations,
            )
        log.warning(
            "Validate: blocked checks accepted by %s at %s; publishing",
            record.accepted.get("by"),
            record.accepted.get("at"),
        )
    return outputs(rows, verdict, checks_path, report)


def outputs(
    rows: int | None, verdict: str, checks_path: Path, report: CheckReport, **extra: Any
) -> dict[str, Any]:
    """The step's outputs (the run record's, the history's and the hooks' view of it)."""
    age = next((r.value for r in report.results if r.statistic == "newest_event_age_seconds"), None)
    return {
        "rows": rows,
        "verdict": verdict,
        "checks_path": str(checks_path),
        "violations": report.violations,
        "max_psi": report.max_psi,
        "newest_event_age_seconds": age,
        "report_path": None,  # the report hook (monitoring/report.py) fills it in
        **extra,
    }
