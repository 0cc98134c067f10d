"""The runner: the steps of ``batchscore.steps.STEPS``, in order, with run records and hooks.

Each run has a folder ``<workspace>/runs/<run_id>/`` holding its inputs, predictions,
evaluation, log and ``run.json`` — the record of every step's status, timings, row counts and
outputs. A failed run resumes at its failed step from those files, with the model version it
first resolved. Run history, notifications and the like attach through ``PipelineHooks``.

The runner never names a step: it walks the list it is given, calls each step's function with
the run's :class:`~batchscore.steps.context.RunContext`, and learns from the steps' attributes
which one reads the feature group and which one needs the model.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from batchscore.clock import seconds_since_process_start, utcnow
from batchscore.config import Settings
from batchscore.engines import open_engine
from batchscore.engines.base import Engine
from batchscore.errors import (
    BatchScoreError,
    ConfigError,
    NothingToScoreError,
    RunNotFoundError,
)
from batchscore.faults import failpoint
from batchscore.feature_store import FeatureStore
from batchscore.hooks import default_hooks
from batchscore.locks import run_lock
from batchscore.logs import run_log_handlers
from batchscore.mirror import RunMirror
from batchscore.progress import NO_PROGRESS, Progress
from batchscore.records import (
    BackfillDate,
    BackfillReport,
    PipelineHooks,
    RunRecord,
    StepRecord,
    check_config,
    check_run_id,
    format_id_range,
    new_run_id,
)
from batchscore.registry import ModelRegistry, ModelVersion
from batchscore.registry.base import check_columns
from batchscore.retries import with_retries
from batchscore.runs import RunHistory
from batchscore.steps import STEPS, Step, by_name, step_names
from batchscore.steps.context import Backends, ModelLoad, RunContext
from batchscore.workspace import ensure_writable_workspace

log = logging.getLogger("batchscore")

T = TypeVar("T")

_last_run: RunRecord | None = None


def last_run() -> RunRecord | None:
    """The run this process executed (or is executing) last: what an interrupted command
    points the user to."""
    return _last_run


def end_of_day(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time.max)


def current_user() -> str:
    """Who runs this process: ``$USER``, else the login name, else ``"unknown"``."""
    import getpass
    import os

    try:
        return os.environ.get("USER") or getpass.getuser()
    except Exception:  # no user name in the environment or the password database
        return "unknown"


def accept_blocked(record: RunRecord, by: str) -> None:
    """Record that ``by`` accepted ``record``'s blocked checks (in ``run.json`` and in its
    ``checks.json``), so Validate lets it through to Publish.

    Raises:
        ConfigError: the run was not blocked at Validate (the message says what to do).
    """
    import json

    blocked = record.error is not None and record.error.get("type") == "ValidationBlockedError"
    if not blocked:
        failed = (
            f"failed at {record.failed_step} ({(record.error or {}).get('type')})"
            if record.failed_step
            else f"is {record.status}"
        )
        raise ConfigError(
            f"--accept publishes a run that Validate blocked; run {record.run_id} {failed}. "
            f"Resume it without --accept: batchscore resume {record.run_id}"
        )
    record.accepted = {"by": by, "at": utcnow().isoformat(timespec="seconds")}
    record.save()
    path = Path(record.run_dir) / "checks.json"
    if path.exists():
        document = json.loads(path.read_text())
        document["accepted"] = record.accepted
        path.write_text(json.dumps(document, indent=1))
    log.warning(
        "run %s: blocked checks accepted by %s; Validate lets it through to Publish",
        record.run_id,
        by,
    )


def _first_unfinished(record: RunRecord) -> str:
    names = list(record.steps)
    return next((name for name in names if record.steps[name].status != "succeeded"), names[-1])


class Pipeline:
    """Runs and resumes the batch inference pipeline for one set of settings.

    Backends and the engine default to what the settings choose; pass them to share or
    substitute them. The steps report what they are doing to ``progress``
    (``batchscore.progress``): rows written by DataSource, rows scored of the snapshot's by
    BatchInference. Every run has the default hooks (``batchscore.hooks``), then ``hooks``.
    ``steps`` replaces the pipeline's list of steps (``batchscore.steps.STEPS``).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        feature_store: FeatureStore | None = None,
        registry: ModelRegistry | None = None,
        engine: Engine | None = None,
        hooks: Sequence[PipelineHooks] = (),
        progress: Progress = NO_PROGRESS,
        steps: Sequence[Step] = STEPS,
    ) -> None:
        self.settings = settings
        self.progress = progress
        self.steps = tuple(steps)
        self.backends = Backends(settings, feature_store=feature_store, registry=registry)
        self.engine = engine or open_engine(settings)
        ensure_writable_workspace(settings)
        self.history = RunHistory.for_settings(settings)
        self.hooks: list[PipelineHooks] = [*default_hooks(settings, self.history), *hooks]
        self.mirror = next((h for h in self.hooks if isinstance(h, RunMirror)), None)

    # Entry points -----------------------------------------------------------------------

    def run(
        self,
        *,
        date: dt.date | None = None,
        as_of: dt.datetime | None = None,
        run_id: str | None = None,
    ) -> RunRecord:
        """Start a new run. ``date`` is the logical date (default: today, UTC); features count
        as of ``as_of`` (default: the end of ``date`` when given, else now).

        Raises:
            BatchScoreError: a step failed; the run record says which and why.
        """
        s = self.settings
        now = utcnow()
        logical_date = date or now.date()
        as_of = as_of or (end_of_day(date) if date else now)
        run_id = check_run_id(run_id) if run_id else new_run_id(now)
        if logical_date > now.date():
            log.warning(
                "the logical date %s is in the future (today is %s, UTC): the run scores the "
                "features as they are now and publishes them under that date",
                logical_date,
                now.date(),
            )
        id_range = format_id_range(s.customer_id_start, s.customer_id_end)
        with run_lock(s, s.pipeline_name, logical_date.isoformat(), run_id, id_range):
            record = RunRecord.create(s, run_id, logical_date, as_of, now, step_names(self.steps))
            return self._execute(record)

    def run_step(
        self, step: str, run_id: str, *, date: dt.date | None = None, force: bool = False
    ) -> RunRecord:
        """Run one step of a run, for orchestrators that run each step as its own job (a
        SageMaker Processing job, an Airflow task). The first step starts the run ``run_id``
        (logical ``date``, default today) unless it exists; the later steps continue it and
        need the steps before them to have succeeded. Running a step that already succeeded
        again changes nothing, so an orchestrator's retry is safe. A continued run keeps its
        own table, model group and id range; a config that differs from the run's in what it
        reads, scores or publishes is refused unless ``force`` (then recorded).

        Raises:
            BatchScoreError: no such step, an earlier step has not succeeded, the config
                differs, or the step failed.
        """
        names = step_names(self.steps)
        by_name(step, self.steps)
        check_run_id(run_id)
        s = self.settings
        run_dir = self._fetch(run_id)
        if not (run_dir / "run.json").exists():
            if step != names[0]:
                raise RunNotFoundError(
                    f"no run {run_id!r} in {s.runs_path}: run step {self.steps[0].slug} first, "
                    "with the same --run-id."
                )
            now = utcnow()
            logical_date = date or now.date()
            as_of = end_of_day(date) if date else now
            id_range = format_id_range(s.customer_id_start, s.customer_id_end)
            with run_lock(s, s.pipeline_name, logical_date.isoformat(), run_id, id_range):
                if not (run_dir / "run.json").exists():
                    RunRecord.create(s, run_id, logical_date, as_of, now, names)
        record = RunRecord.load(run_dir)
        if record.steps[step].status == "succeeded":
            log.info("run %s: %s succeeded earlier; nothing to do", run_id, step)
            return record
        before = names[: names.index(step)]
        unfinished = [b for b in before if record.steps[b].status != "succeeded"]
        if unfinished:
            raise BatchScoreError(
                f"run {run_id}: {unfinished[0]} has not succeeded "
                f"({record.steps[unfinished[0]].status}); run it before {step}."
            )
        return self._continue(record, force, through=step)

    def backfill(self, start: dt.date, end: dt.date) -> BackfillReport:
        """One run per date from ``start`` to ``end`` (inclusive), each as of the end of its
        date and replacing only its own rows. A failed date is recorded and the next goes on.

        Returns:
            Every date's run (or the error that kept it from running), and the counts.

        Raises:
            ConfigError: the range is decreasing, or the write mode would replace every date.
        """
        if start > end:
            raise ConfigError(f"--from {start} is after --to {end}: give an increasing range.")
        if self.settings.write_mode == "overwrite":
            raise ConfigError(
                "write_mode 'overwrite' is refused in a backfill: it would replace every id "
                "range of the pipeline on each date. Backfill with write_mode 'replace' (each "
                "date replaces its own run's rows)."
            )
        report = BackfillReport(start, end)
        day = start
        while day <= end:
            before = _last_run
            try:
                report.dates.append(BackfillDate(day, self.run(date=day)))
            except BatchScoreError as exc:
                log.error("backfill %s: %s", day, exc)
                started = _last_run if _last_run is not before else None  # None: never started
                report.dates.append(BackfillDate(day, started, self.settings.redact(str(exc))))
            day += dt.timedelta(days=1)
        return report

    def resume(
        self, run_id: str, *, force: bool = False, accept: bool = False, by: str | None = None
    ) -> RunRecord:
        """Continue a failed run at its failed step, reusing what earlier steps wrote.

        The run keeps what its record says: its table, model group and version, id range,
        feature snapshot and write mode. A config that differs from the run's in what it
        reads, scores or publishes is refused, naming the keys, unless ``force`` (then
        recorded in the run).

        Args:
            run_id: The failed run.
            force: Continue even though the config differs (recorded in the run).
            accept: The run was blocked at Validate and a person looked: record who and
                when (in ``run.json`` and ``checks.json``), then publish it.
            by: Who accepts (default: ``$USER``, the login name).

        Raises:
            BatchScoreError: no such run, it already succeeded, the config differs, or a step
                failed again.
            ConfigError: ``accept`` for a run that was not blocked at Validate.
        """
        check_run_id(run_id)
        run_dir = self._fetch(run_id)
        if not (run_dir / "run.json").exists():
            raise RunNotFoundError(
                f"no run {run_id!r} in {self.settings.runs_path}. List runs with "
                "'batchscore runs list'."
            )
        record = RunRecord.load(run_dir)
        if record.status == "succeeded":
            raise BatchScoreError(f"run {run_id} already succeeded; there is nothing to resume.")
        if accept:
            return self._continue(record, force, accept_by=by or current_user())
        return self._continue(record, force)

    def _fetch(self, run_id: str) -> Path:
        """The run's folder, fetched from the S3 workspace first when there is one."""
        if self.mirror is not None:
            self.mirror.fetch(run_id, self.settings.runs_path)
        return self.settings.runs_path / run_id

    def _continue(
        self,
        record: RunRecord,
        force: bool,
        through: str | None = None,
        accept_by: str | None = None,
    ) -> RunRecord:
        """Run ``record``'s unfinished steps through ``through`` (default: all), holding its
        logical run's lock; ``accept_by`` accepts a run blocked at Validate first."""
        id_range = format_id_range(record.id_start, record.id_end)
        s = self.settings
        with run_lock(s, record.pipeline_name, record.logical_date, record.run_id, id_range):
            record = RunRecord.load(Path(record.run_dir))  # as it is now that we hold the lock
            check_config(record, self.settings, force=force)
            if accept_by is not None:
                accept_blocked(record, accept_by)
            record.status = "running"
            record.error = None
            record.failed_step = None
            record.ended = None
            record.save()
            return self._execute(record, through)

    # The runner -------------------------------------------------------------------------

    def _call_hooks(self, name: str, *args: Any) -> None:
        for hook in self.hooks:
            try:
                getattr(hook, name)(*args)
            except Exception:
                log.exception("hook %s.%s failed (the run goes on)", type(hook).__name__, name)

    def _execute(self, record: RunRecord, through: str | None = None) -> RunRecord:
        global _last_run
        _last_run = record
        handlers = run_log_handlers(record, self.settings.redact)
        for handler in handlers:  # on the root: libraries' warnings reach run.log too
            logging.getLogger().addHandler(handler)
        previous_level = log.level
        if log.getEffectiveLevel() > logging.INFO:
            log.setLevel(logging.INFO)
        try:
            with self.engine.session():
                return self._execute_steps(record, through or self.steps[-1].name)
        finally:
            for handler in handlers:
                logging.getLogger().removeHandler(handler)
                handler.close()
            log.setLevel(previous_level)

    def _execute_steps(self, record: RunRecord, through: str) -> RunRecord:
        self._call_hooks("before_pipeline_run", record)
        log.info(
            "run %s: %s, ids %s of %s as of %s",
            record.run_id,
            record.pipeline_name,
            format_id_range(record.id_start, record.id_end).replace("-", "–"),
            record.feature_group,
            record.as_of,
        )
        failpoint("run:started")
        if any(step.status == "succeeded" for step in record.steps.values()):
            log.info("resuming run %s at %s", record.run_id, _first_unfinished(record))
        ctx = RunContext(
            record, self.settings, self.backends, self.engine, self.steps[0].name,
            progress=self.progress,
        )  # fmt: skip
        names = step_names(self.steps)
        try:
            ctx.model = self._prepare(ctx)
            for step in self.steps[: names.index(through) + 1]:
                ctx.step = step.name
                if record.steps[step.name].status == "succeeded":
                    log.info("%s: done earlier, reusing its outputs", step.name)
                    continue
                self._run_step(ctx, step)
        except BaseException as exc:
            self._fail(record, ctx.step, exc)
            raise
        finally:
            if ctx.model is not None:
                ctx.model.close()
        if through != names[-1]:
            record.save()  # still running: the next step comes as its own job
            return record
        record.status = "succeeded"
        record.ended = utcnow().isoformat()
        record.save()
        self._call_hooks("after_pipeline_run", record)
        return record

    def _prepare(self, ctx: RunContext) -> ModelLoad | None:
        """Before the first step, while a step that needs the model is still to run: check the
        feature group (pinning its snapshot) and the model version, so a missing model or
        column fails at once, each error put on the step that needs the thing (``ctx.step``).
        The model itself (importing scikit-learn, unpacking the estimator: ~3 s) then loads on
        a background thread while the earlier steps run."""
        record = ctx.record
        needing = [s for s in self.steps if s.needs_model]
        pending = [s for s in needing if record.steps[s.name].status != "succeeded"]
        if not pending:
            return None
        scoring = pending[0]
        reading = next((s for s in self.steps if s.reads_features), None)
        group = None
        # The feature group is checked only while the first step using the model is to run
        # (a resume at Validate reads its summary, not the features).
        if reading is not None and scoring is needing[0]:
            ctx.step = reading.name
            store = self.backends.feature_store
            group = self._retry(ctx.step, lambda: store.describe(record.feature_group))
            if record.feature_snapshot_id is None:
                record.feature_snapshot_id = group.snapshot_id
                record.save()
        ctx.step = scoring.name
        version = self._retry(ctx.step, lambda: self._resolve_version(record))
        declared = self.backends.registry.input_types(version)
        if declared is not None and group is not None:
            columns = [group.record_identifier, group.event_time_feature, *group.features]
            check_columns(version, list(declared), columns, f"feature group {group.name!r}")
        return ModelLoad(self.backends.registry, version, self.settings)

    def _resolve_version(self, record: RunRecord) -> ModelVersion:
        """The run's model version: the one it first resolved, else the newest approved one."""
        s = self.settings
        registry = self.backends.registry
        group = record.model_package_group or record.model_name or s.model_package_group
        if record.model_version is not None:
            version = registry.get_version(group, record.model_version)
        else:
            version = registry.resolve(group, s.model_approval_status)
            record.model_name = version.group
            record.model_version = version.version
            record.save()
        log.info("model: %s v%d (%s)", version.group, version.version, version.status)
        return version

    def _run_step(self, ctx: RunContext, step: Step) -> None:
        record = ctx.record
        step_record = record.steps[step.name]
        step_record.status = "running"
        step_record.error = None
        started = time.perf_counter()
        step_record.started = utcnow().isoformat()
        if step is self.steps[0]:  # what a user waits for before any work starts
            record.startup_seconds = seconds_since_process_start()
        record.save()
        self._call_hooks("before_step", record, step.name)
        log.info("%s: started", step.name)
        failpoint(f"{step.name}:start")
        function = step.function()
        outputs = self._retry(step.name, lambda: function(ctx), step_record)
        failpoint(f"{step.name}:{step.end_failpoint}")
        seconds = time.perf_counter() - started
        step_record.status = "succeeded"
        step_record.ended = utcnow().isoformat()
        step_record.seconds = round(seconds, 3)
        step_record.rows = outputs.get("rows")
        if step_record.rows is not None and seconds > 0:
            step_record.rows_per_second = round(step_record.rows / seconds, 1)
        step_record.outputs = outputs
        record.save()
        log.info("%s: done in %.2fs (%s rows)", step.name, seconds, step_record.rows)
        self._call_hooks("after_step", record, step.name)

    def _retry(self, step: str, call: Callable[[], T], step_record: StepRecord | None = None) -> T:
        s = self.settings
        return with_retries(
            step, call, attempts=s.max_attempts, backoff_seconds=s.retry_backoff_seconds,
            step_record=step_record,
        )  # fmt: skip

    def _fail(self, record: RunRecord, step: str, exc: BaseException) -> None:
        nothing = isinstance(exc, NothingToScoreError)
        message = str(exc)
        if isinstance(exc, KeyboardInterrupt):  # Ctrl-C, or SIGTERM raised as one by the CLI
            message = (
                f"interrupted ({message or 'Ctrl-C'}); resume it: batchscore resume {record.run_id}"
            )
        error = {"type": type(exc).__name__, "message": self.settings.redact(message)}
        record.fail(step, error, nothing_to_score=nothing)
        if nothing:
            log.warning("%s: %s", step, error["message"])
        else:
            log.error("%s failed: %s: %s", step, *error.values())
        self._call_hooks("on_pipeline_error", record, step, exc)
