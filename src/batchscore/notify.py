"""Failure (and optionally success) notifications through Apprise — the seed's SNS e-mail.

``notification_urls`` takes any Apprise URL: ``mailto://``, ``json://``, ``slack://``,
``sns://`` …. A notification that cannot be delivered is logged; it never hides the
pipeline's own error or changes its exit code.
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from batchscore.config import Settings
from batchscore.pipeline import PipelineHooks, RunRecord

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
    if settings.notification_email and not any(u.startswith("mailto") for u in urls):
        log.warning(
            "notification_email is set but no mailto:// URL says which SMTP server to use; "
            "add one to notification_urls, e.g. mailtos://user:${SMTP_PASSWORD}@smtp.example.com"
        )
    return urls


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
        f"Resume: batchscore resume {record.run_id}",
    ])  # fmt: skip
    return subject, settings.redact(body)


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
    ])  # fmt: skip
    return subject, settings.redact(body)


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


class Notifier(PipelineHooks):
    """Sends a message on failure (and on success when ``notify_on`` includes it)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.urls = notification_urls(settings)

    def on_pipeline_error(self, record: RunRecord, step: str, error: BaseException) -> None:
        if "failure" in self.settings.notify_on and self.urls:
            subject, body = failure_message(self.settings, record, step)
            send(self.urls, subject, body, failure=True, redact=self.settings.redact)

    def after_pipeline_run(self, record: RunRecord) -> None:
        if "success" in self.settings.notify_on and self.urls:
            subject, body = success_message(self.settings, record)
            send(self.urls, subject, body, failure=False, redact=self.settings.redact)
