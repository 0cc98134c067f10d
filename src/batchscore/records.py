"""The run's vocabulary: run and step records, lifecycle hooks, run ids, the run's identity.

Everything that describes a run lives here, below the runner: run history, notifications,
the S3 mirror and the CLI read and extend these without importing the runner itself.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import secrets
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from batchscore.clock import utcnow
from batchscore.config import Settings, map_strings
from batchscore.durable import fsync_dir
from batchscore.errors import ConfigError

log = logging.getLogger("batchscore")

RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_run_id(run_id: str) -> str:
    """``run_id`` if it can name a run folder, else ConfigError (it becomes a path)."""
    if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id):
        raise ConfigError(
            f"run id {run_id!r} must be 1-128 letters, digits, '.', '_' or '-', starting "
            "with a letter or digit (it names the run's folder)."
        )
    return run_id


def new_run_id(now: dt.datetime | None = None) -> str:
    now = now or utcnow()
    return f"{now:%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"


@dataclass
class StepRecord:
    name: str
    status: str = "pending"  # pending | running | succeeded | failed | skipped | nothing_to_score
    started: str | None = None
    ended: str | None = None
    seconds: float | None = None
    rows: int | None = None
    rows_per_second: float | None = None
    attempts: int = 0
    outputs: dict[str, Any] = field(default_factory=dict)
    error: dict[str, str] | None = None


@dataclass
class RunRecord:
    """Everything known about one run; saved as ``run.json`` after every change."""

    run_id: str
    pipeline_name: str
    logical_date: str
    as_of: str
    id_start: int | None  # None: no lower bound (both None: every id)
    id_end: int | None
    feature_group: str
    output_table: str
    write_mode: str
    config_fingerprint: str
    run_dir: str
    log_path: str
    status: str = "running"  # running | succeeded | failed | nothing_to_score
    started: str = ""
    ended: str | None = None
    model_name: str | None = None
    model_version: int | None = None
    # The model group the run resolves its version in (older records: the config's).
    model_package_group: str | None = None
    feature_snapshot_id: int | None = None  # the feature group snapshot this run reads
    failed_step: str | None = None
    error: dict[str, str] | None = None
    steps: dict[str, StepRecord] = field(default_factory=dict)
    # The settings that decide what the run reads, scores and publishes (``run_identity``):
    # resume and step compare them with the current config.
    config: dict[str, Any] | None = None
    # Resumes that went ahead with a different config (``--force``): when and which keys.
    forced: list[dict[str, Any]] = field(default_factory=list)
    # A person accepted the run's blocked checks ('resume --accept'): {"by": user, "at": iso}.
    accepted: dict[str, str] | None = None
    # Wall seconds from the start of the process that ran the first step (DataSource) to that
    # step's start: interpreter, imports, config, backends, model lookup. None: unknown (no
    # /proc), or the first step ran before batchscore recorded it.
    startup_seconds: float | None = None

    @classmethod
    def create(
        cls,
        settings: Settings,
        run_id: str,
        logical_date: dt.date,
        as_of: dt.datetime,
        now: dt.datetime,
        steps: Sequence[str],
    ) -> RunRecord:
        """A new run of ``settings`` with a pending record per step, saved in its new folder.

        Raises:
            FileExistsError: the run's folder exists already.
        """
        run_dir = settings.runs_path / run_id
        run_dir.mkdir(parents=True, exist_ok=False)
        record = cls(
            run_id=run_id,
            pipeline_name=settings.pipeline_name,
            logical_date=logical_date.isoformat(),
            as_of=as_of.isoformat(),
            id_start=settings.customer_id_start,
            id_end=settings.customer_id_end,
            feature_group=settings.feature_group_name,
            output_table=settings.output_table,
            write_mode=settings.write_mode,
            config_fingerprint=config_fingerprint(settings),
            config=run_identity(settings),
            model_package_group=settings.model_package_group,
            run_dir=str(run_dir),
            log_path=str(run_dir / "run.log"),
            started=now.isoformat(),
            steps={name: StepRecord(name) for name in steps},
        )
        record.save()
        return record

    @property
    def path(self) -> Path:
        return Path(self.run_dir) / "run.json"

    def save(self) -> None:
        tmp = self.path.with_suffix(".json.tmp")
        with open(tmp, "w") as out:
            out.write(json.dumps(asdict(self), indent=2, default=str))
            out.flush()
            os.fsync(out.fileno())  # on disk before anything (a commit) refers to it
        os.replace(tmp, self.path)  # atomic: a reader never sees half a record
        fsync_dir(self.path.parent)

    @classmethod
    def load(cls, run_dir: Path) -> RunRecord:
        data = json.loads((run_dir / "run.json").read_text())
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}  # written by a newer batchscore
        data["steps"] = {name: StepRecord(**step) for name, step in data["steps"].items()}
        return cls(**data)

    def outputs(self, step: str) -> dict[str, Any]:
        return self.steps[step].outputs

    def fail(self, step: str, error: dict[str, str], *, nothing_to_score: bool = False) -> None:
        """Record that ``step`` failed with ``error`` (``type``, ``message``), or found nothing
        to score; the steps after it that had not started are skipped. Saves the record."""
        status = "nothing_to_score" if nothing_to_score else "failed"
        now = utcnow().isoformat()
        failed = self.steps[step]
        failed.status, failed.ended, failed.error = status, now, error
        names = list(self.steps)  # the run's own order
        for later in names[names.index(step) + 1 :]:
            if self.steps[later].status == "pending":
                self.steps[later].status = "skipped"
        self.status, self.failed_step, self.error, self.ended = status, step, error, now
        self.save()


class PipelineHooks:
    """Lifecycle hooks; override what you need. Exceptions in hooks are logged, not raised."""

    def before_pipeline_run(self, record: RunRecord) -> None: ...

    def before_step(self, record: RunRecord, step: str) -> None: ...

    def after_step(self, record: RunRecord, step: str) -> None: ...

    def on_pipeline_error(self, record: RunRecord, step: str, error: BaseException) -> None: ...

    def after_pipeline_run(self, record: RunRecord) -> None: ...


# Settings that change how a run is carried out but not what it reads, scores or publishes:
# a resume may differ in these. Every other key is part of the run's identity. ``checks``
# decide only whether a run publishes: a run blocked at Validate resumes with a loosened one.
OPERATIONAL_KEYS = frozenset({
    "project_name", "workspace", "local_workspace", "engine", "ray_address", "ray_actors",
    "ray_cpus_per_actor", "batch_size", "notification_urls", "notify_on", "max_attempts",
    "retry_backoff_seconds", "schedule_cron", "role_arn", "processing_instance_type",
    "athena_query_results", "athena_workgroup", "sns_topic_arn", "notification_email",
    "lock_lease_seconds", "tracking", "checks",
    # How, not what: every path gives the library's probabilities (checked to 1e-12 per run).
    "scoring",
    # A gate, not what is scored: raising it to publish a run that failed on it is a resume.
    "max_quarantine_fraction",
})  # fmt: skip


def run_identity(settings: Settings) -> dict[str, Any]:
    """The settings a run's result depends on, as configured (not the defaults derived from
    the workspace's local path, which differs between the machines an ``s3://`` workspace's
    steps run on), as plain data with secrets hidden."""
    data = settings.model_dump(mode="json")
    return {
        k: map_strings(v, settings.redact)
        for k, v in sorted(data.items())
        if k not in OPERATIONAL_KEYS
    }


def config_fingerprint(settings: Settings) -> str:
    data = run_identity(settings)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def changed_keys(before: dict[str, Any], after: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two settings dicts."""
    changed: list[str] = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            changed += changed_keys(old, new, f"{prefix}{key}.")
        elif old != new:
            changed.append(f"{prefix}{key}")
    return changed


def check_config(record: RunRecord, settings: Settings, *, force: bool) -> None:
    """Refuse to continue ``record`` with settings that differ in what the run reads,
    scores or publishes; with ``force``, go on and note it in the record.

    Raises:
        ConfigError: the settings differ (the error names the keys) and not ``force``.
    """
    if record.config is None:
        log.warning(
            "run %s was recorded without its configuration (an earlier batchscore); the "
            "current config is not compared with it",
            record.run_id,
        )
        return
    current = run_identity(settings)
    changed = changed_keys(record.config, current)
    if record.model_version is None:  # no model resolved yet: the current group decides
        model_keys = ("model_package_group", "model_approval_status")
        changed = [key for key in changed if key not in model_keys]
        record.model_package_group = settings.model_package_group
        record.config.update({key: current[key] for key in model_keys})
        record.save()
    if not changed:
        return
    if not force:
        raise ConfigError(
            f"run {record.run_id} was started with a different configuration: "
            f"{', '.join(changed)} changed since. Restore those settings to continue it, "
            "start a new run, or continue anyway with --force (the run keeps its own "
            "table, model group and id range; the override is recorded)."
        )
    log.warning("run %s: continuing with changed settings (--force): %s",
                record.run_id, ", ".join(changed))  # fmt: skip
    record.forced.append({"at": utcnow().isoformat(), "keys": changed})
    record.save()


@dataclass(frozen=True)
class LogicalRun:
    """What makes two runs "the same run" for write mode ``replace``: pipeline, date, ids."""

    pipeline_name: str
    inference_date: dt.date
    id_range: str

    @property
    def ids(self) -> tuple[int, int]:
        return parse_id_range(self.id_range)


# What an id range text says when the config sets no bound: every live record.
EVERY_ID = "all"
# The bounds an open end stands for when ranges are compared (ids are 0 to 18 digits).
_LOWEST, _HIGHEST = 0, 10**18 - 1


def format_id_range(id_start: int | None, id_end: int | None) -> str:
    """The id range as runs, locks and the predictions' ``id_range`` column name it.

    Args:
        id_start: the smallest id number scored, or None (no lower bound).
        id_end: the largest, or None (no upper bound).

    Returns:
        ``"4000-5000"``; an open bound is ``*`` (``"4000-*"``); both open: ``"all"``.
    """
    if id_start is None and id_end is None:
        return EVERY_ID
    return f"{'*' if id_start is None else id_start}-{'*' if id_end is None else id_end}"


def parse_id_range(text: str) -> tuple[int, int]:
    """``"4000-5000"`` -> ``(4000, 5000)``; an open bound (``*``) or ``"all"`` -> the lowest or
    highest id number, so ``all`` covers (and, with ``replace``, replaces) every range."""
    if text == EVERY_ID:
        return _LOWEST, _HIGHEST
    start, _, end = text.partition("-")
    return (
        _LOWEST if start == "*" else int(start),
        _HIGHEST if end == "*" else int(end),
    )


@dataclass(frozen=True)
class BackfillDate:
    """One date of a backfill: its run, or why none ran."""

    date: dt.date
    run: RunRecord | None  # None: refused before a run was recorded (e.g. the date was locked)
    error: str | None = None  # the error that stopped the date, if one did

    @property
    def status(self) -> str:
        return self.run.status if self.run is not None else "failed"

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"


@dataclass(frozen=True)
class BackfillReport:
    """What ``Pipeline.backfill`` did: every date asked for, in order, with its outcome."""

    start: dt.date
    end: dt.date
    dates: list[BackfillDate] = field(default_factory=list)

    @property
    def asked(self) -> int:
        return (self.end - self.start).days + 1

    @property
    def succeeded(self) -> int:
        return sum(date.succeeded for date in self.dates)

    @property
    def failed(self) -> int:
        """Dates that did not succeed (a date never reached counts too)."""
        return self.asked - self.succeeded

    @property
    def runs(self) -> list[RunRecord]:
        return [date.run for date in self.dates if date.run is not None]
