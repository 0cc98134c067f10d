"""Failure (and optionally success) notifications through Apprise — the seed's SNS e-mail.

``notification_urls`` takes any Apprise URL: ``mailto://``, ``json://``, ``slack://`` ….
With the aws backend, ``sns_topic_arn`` receives the same message through boto3 (the seed's
SNS topic, whose e-mail subscription is ``notification_email``). A notification that cannot
be delivered is logged; it never hides the pipeline's own error or changes its exit code.
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from batchscore.config import Settings
from batchscore.errors import ValidationBlockedError
from batchscore.monitoring.files import REPORT_FILE
from batchscore.records import PipelineHooks, RunRecord

log = logging.getLogger("batchscore")


def notification_urls(settings: Settings) -> list[str]:
    """The configured URLs; the seed's ``notification_email`` fills in ``to=`` of mailto URLs."""
    urls = []
    for url in settings.notification_urls:
        parts = urlsplit(url)
        if parts.scheme in ("mailto", "mailtos") and settings.notification_email:
            query = parse_qs(parts.query)
            if "to" not in query:
                query["to"] = [settings.notification_email]
                url = urlunsplit(parts._replace(query=urlencode(query, doseq=True)))
        urls.append(url)
    sns = settings.backend == "aws" and settings.sns_topic_arn
    if settings.notification_email and not sns and not any(u.startswith("mailto") for u in urls):
        log.warning(
            "notification_email is set but no mailto:// URL says which SMTP server to use; "
            "add one to notification_urls, e.g. mailtos://user:${SMTP_PASSWORD}@smtp.example.com"
        )
    return urls


def violation_lines(violations: list[str], limit: int = 20) -> list[str]:
    """The violations as a message lists them (at most ``limit``; checks.json has all)."""
    lines = [f"  - {v}" for v in violations[:limit]]
    if len(violations) > limit:
        lines.append(f"  … and {len(violations) - limit} more (see checks.json)")
    return lines


def blocked_message(
    settings: Settings, record: RunRecord, step: str, violations: list[str]
) -> tuple[str, str]:
    """The failure message of a run Validate blocked: the violations and how to accept."""
    subject = f"[batchscore] {record.pipeline_name} blocked at {step}: nothing published"
    body = "\n".join([
        f"Pipeline: {record.pipeline_name}",
        f"Run: {record.run_id} (logical date {record.logical_date}, ids "
        f"{record.id_start}-{record.id_end})",
        f"Step: {step} blocked publishing; the table {record.output_table} is untouched.",
        f"Violations ({len(violations)}):",
        *violation_lines(violations),
        f"Checks: {Path(record.run_dir) / 'checks.json'}",
        *_report_line(record),
        f"Log: {record.log_path}",
        f"After a person looked: batchscore resume {record.run_id} --accept",
        "Or loosen the check under checks: and resume: batchscore resume "
        f"{record.run_id}",
    ])  # fmt: skip
    return settings.redact(subject), settings.redact(body)


def warned_message(settings: Settings, record: RunRecord, validated: dict) -> tuple[str, str]:
    """The message of a run published although checks warned (or a person accepted a
    block)."""
    scored = record.steps["BatchInference"]
    violations = list(validated.get("violations") or [])
    subject = f"[batchscore] {record.pipeline_name} published with warnings"
    accepted = record.accepted
    body = "\n".join([
        f"Pipeline: {record.pipeline_name}",
        f"Run: {record.run_id} (logical date {record.logical_date})",
        f"Rows scored: {scored.rows}",
        f"Model: {record.model_name} v{record.model_version}",
        f"Table: {record.output_table}",
        f"Checks: {validated.get('verdict')}"
        + (f", accepted by {accepted.get('by')} at {accepted.get('at')}" if accepted else ""),
        f"Violations ({len(violations)}):",
        *violation_lines(violations),
        f"Details: {validated.get('checks_path')}",
        *([f"Report: {validated['report_path']}"] if validated.get("report_path") else []),
        f"Log: {record.log_path}",
    ])  # fmt: skip
    return settings.redact(subject), settings.redact(body)


def failure_message(settings: Settings, record: RunRecord, step: str) -> tuple[str, str]:
    error = record.error or {"type": "Error", "message": ""}
    subject = f"[batchscore] {record.pipeline_name} failed at {step}"
    body = "\n".join([
        f"Pipeline: {record.pipeline_name}",
        f"Run: {record.run_id} (logical date {record.logical_date}, ids "
        f"{record.id_start}-{record.id_end})",
        f"Step: {step}",
        f"Error: {error['type']}: {error['message']}",
        f"Log: {record.log_path}",
        *_report_line(record),
        f"Resume: batchscore resume {record.run_id}",
    ])  # fmt: skip
    return settings.redact(subject), settings.redact(body)


def success_message(settings: Settings, record: RunRecord) -> tuple[str, str]:
    scored = record.steps["BatchInference"]
    subject = f"[batchscore] {record.pipeline_name} succeeded"
    body = "\n".join([
        f"Pipeline: {record.pipeline_name}",
        f"Run: {record.run_id} (logical date {record.logical_date})",
        f"Rows scored: {scored.rows}",
        f"Model: {record.model_name} v{record.model_version}",
        f"Table: {record.output_table}",
        f"Log: {record.log_path}",
        *_report_line(record),
    ])  # fmt: skip
    return settings.redact(subject), settings.redact(body)


def _report_line(record: RunRecord) -> list[str]:
    """The run report's path, once the report hook (which runs first) has written it."""
    path = Path(record.run_dir) / REPORT_FILE
    return [f"Report: {path}"] if path.is_file() else []


def send(urls: list[str], subject: str, body: str, *, failure: bool, redact=str) -> bool:
    """Deliver to every URL; log (redacted) what could not be delivered. True if all went."""
    import apprise

    sender = apprise.Apprise()
    for url in urls:
        if not sender.add(url):
            log.warning("notification URL %s is not a valid Apprise URL; skipped", redact(url))
    if not len(sender):
        return False
    kind = apprise.NotifyType.FAILURE if failure else apprise.NotifyType.SUCCESS
    try:
        delivered = bool(sender.notify(title=subject, body=body, notify_type=kind))
    except Exception as exc:  # never let a notification hide the run's own outcome
        log.warning("sending notifications failed: %s", redact(str(exc)))
        return False
    if not delivered:
        log.warning("a notification could not be delivered (subject %r)", subject)
    return delivered


def send_sns(settings: Settings, subject: str, body: str) -> bool:
    """Publish to ``sns_topic_arn``; log (redacted) when that fails. True if published."""
    from batchscore.aws import publish_sns

    try:
        publish_sns(settings, subject, body)
    except Exception as exc:  # never let a notification hide the run's own outcome
        log.warning(
            "publishing to SNS topic %s failed: %s",
            settings.sns_topic_arn,
            settings.redact(str(exc)),
        )
        return False
    return True


class Notifier(PipelineHooks):
    """Sends a message on failure (and on success when ``notify_on`` includes it)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.urls = notification_urls(settings)
        self.sns = settings.backend == "aws" and bool(settings.sns_topic_arn)

    def _deliver(self, subject: str, body: str, *, failure: bool) -> None:
        if self.urls:
            send(self.urls, subject, body, failure=failure, redact=self.settings.redact)
        if self.sns:
            send_sns(self.settings, subject, body)

    def on_pipeline_error(self, record: RunRecord, step: str, error: BaseException) -> None:
        if "failure" not in self.settings.notify_on:
            return
        if isinstance(error, ValidationBlockedError):
            message = blocked_message(self.settings, record, step, error.violations)
        else:
            message = failure_message(self.settings, record, step)
        self._deliver(*message, failure=True)

    def after_pipeline_run(self, record: RunRecord) -> None:
        validated = record.steps["Validate"].outputs if "Validate" in record.steps else {}
        # Published despite checks beyond their thresholds: worth a message even when
        # notify_on names only failures.
        if validated.get("violations") and self.settings.notify_on:
            self._deliver(*warned_message(self.settings, record, validated), failure=False)
        elif "success" in self.settings.notify_on:
            self._deliver(*success_message(self.settings, record), failure=False)
