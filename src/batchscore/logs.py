"""Log output that never shows a secret: the run's log files and the console formatter.

Redaction happens in the formatter, after the whole record — message, exception text,
traceback, stack — has been turned into text, so nothing a library logs and nothing a
traceback carries gets past it. The handlers sit on the root logger: batchscore's own records
at every level its logger lets through, other libraries' (apprise, urllib3, …) from WARNING up.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from batchscore.records import RunRecord

OWN_LOGGER = "batchscore"


class RedactingFormatter(logging.Formatter):
    """Formats a record with ``inner`` (exception and stack included), then redacts the text."""

    def __init__(self, inner: logging.Formatter | None, redact: Callable[[str], str]) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        return self.redact(self.inner.format(record))


class JsonLinesFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, run id, message, and the exception's
    traceback when there is one — each text field redacted before it is encoded."""

    def __init__(self, run_id: str, redact: Callable[[str], str] = str) -> None:
        super().__init__()
        self.run_id = run_id
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "run_id": self.run_id,
            "message": self.redact(record.getMessage()),
        }
        if record.exc_info:
            entry["exception"] = self.redact(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exception"] = self.redact(record.exc_text)
        if record.stack_info:
            entry["stack"] = self.redact(self.formatStack(record.stack_info))
        return json.dumps(entry)


class OwnOrWarningFilter(logging.Filter):
    """Lets batchscore's records through, and other loggers' from WARNING up."""

    def filter(self, record: logging.LogRecord) -> bool:
        own = record.name == OWN_LOGGER or record.name.startswith(OWN_LOGGER + ".")
        return own or record.levelno >= logging.WARNING


def run_log_handlers(record: RunRecord, redact: Callable[[str], str]) -> list[logging.Handler]:
    """A human-readable ``run.log`` and a JSON-lines ``run.jsonl``, both redacted, for the
    root logger (see the module docstring)."""
    text = logging.FileHandler(record.log_path)
    text.setFormatter(
        RedactingFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%Y-%m-%dT%H:%M:%S"),
            redact,
        )
    )
    lines = logging.FileHandler(Path(record.log_path).with_suffix(".jsonl"))
    lines.setFormatter(JsonLinesFormatter(record.run_id, redact))
    for handler in (text, lines):
        handler.addFilter(OwnOrWarningFilter())
    return [text, lines]
