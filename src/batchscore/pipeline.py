"""The runner: DataSource → BatchInference → Publish, in order, with run records and hooks.

Each run has a folder ``<workspace>/runs/<run_id>/`` holding its inputs, predictions,
evaluation, log and ``run.json`` — the record of every step's status, timings, row counts and
outputs. A failed run resumes at its failed step from those files, with the model version it
first resolved. Run history, notifications and the like attach through ``PipelineHooks``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from batchscore.catalog import open_catalog
from batchscore.clock import utcnow
from batchscore.config import Settings
from batchscore.errors import (
    BatchScoreError,
    ConfigError,
    NothingToScoreError,
    RunNotFoundError,
    StorageError,
    is_busy_error,
)
from batchscore.faults import failpoint
from batchscore.feature_store import FeatureStore, open_feature_store
from batchscore.locks import run_lock
from batchscore.logs import run_log_handlers
from batchscore.progress import NO_PROGRESS, Progress, tracked
from batchscore.records import (
    STEPS,
    LogicalRun,
    PipelineHooks,
    RunRecord,
    StepRecord,
    changed_keys,
    check_run_id,
    config_fingerprint,
    new_run_id,
    run_identity,
)
from batchscore.registry import LoadedModel, ModelRegistry, ModelVersion, open_registry
from batchscore.registry.base import check_columns
from batchscore.sinks import open_sink
from batchscore.steps import batch_inference, data_source, publish
from batchscore.steps.batch_inference import Lineage
from batchscore.workspace import ensure_writable_workspace

log = logging.getLogger("batchscore")


_last_run: RunRecord | None = None


def last_run() -> RunRecord | None:
    """The run this process executed (or is executing) last: what an interrupted command
    points the user to."""
    return _last_run


def end_of_day(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time.max)


class ModelLoad:
    """A model version loading on a background thread; ``result()`` waits for it."""

    def __init__(self, registry: ModelRegistry, version: ModelVersion) -> None:
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="batchscore-model")
        self._future: Future[LoadedModel] = self._worker.submit(registry.load, version)

    def result(self) -> LoadedModel:
        return self._future.result()

    def ready(self) -> bool:
        return self._future.done()

    def close(self) -> None:
        self._worker.shutdown(wait=False)


def is_transient(exc: BaseException) -> bool:
    """Whether retrying can help: marked transient, or a store that was busy or locked."""
    if isinstance(exc, BatchScoreError):
        return exc.transient
    from pyiceberg.exceptions import CommitFailedException, ValidationException

    if isinstance(exc, CommitFailedException | ValidationException):
        return True
    return is_busy_error(exc)


def _first_unfinished(record: RunRecord) -> str:
    return next((s for s in STEPS if record.steps[s].status != "succeeded"), STEPS[-1])


class Pipeline:
    """Runs and resumes the batch inference pipeline for one set of settings.

    Backends default to what the settings choose; pass them to share or substitute them.
    The steps report what they are doing to ``progress`` (``batchscore.progress``): rows
    written by DataSource, rows scored of the snapshot's by BatchInference.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        feature_store: FeatureStore | None = None,
        registry: ModelRegistry | None = None,
        hooks: Sequence[PipelineHooks] = (),
        progress: Progress = NO_PROGRESS,
    ) -> None:
        self.settings = settings
        self.progress = progress
        self._feature_store = feature_store
        self._registry = registry
        self._catalog: Any = None
        self._engine_session: contextlib.ExitStack | None = None  # Ray, while a run needs it
        from batchscore.notify import Notifier
        from batchscore.runs import RunHistory, RunHistoryHook

        ensure_writable_workspace(settings)
        # Run history and notifications are always on; callers add their own hooks after them.
        self.history = RunHistory.for_settings(settings)
        self.hooks: list[PipelineHooks] = [RunHistoryHook(self.history), Notifier(settings)]
        self.mirror = None
        if settings.remote_workspace:  # s3:// workspace: keep every run folder in S3
            from batchscore.mirror import RunMirror

            self.mirror = RunMirror(settings)
            self.hooks.insert(0, self.mirror)
        self.hooks.extend(hooks)

    @property
    def feature_store(self) -> FeatureStore:
        if self._feature_store is None:
            self._feature_store = open_feature_store(self.settings)
        return self._feature_store

    @property
    def registry(self) -> ModelRegistry:
        if self._registry is None:
            self._registry = open_registry(self.settings)
        return self._registry

    @property
    def catalog(self) -> Any:
        if self._catalog is None:
            self._catalog = open_catalog(self.settings)
        return self._catalog

    def _ray(self) -> None:
        """Join (or start) Ray once per run, for the steps that run on it."""
        if self._engine_session is None:
            from batchscore.engines.ray import ray_session

            self._engine_session = contextlib.ExitStack()
            self._engine_session.enter_context(ray_session(self.settings))

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
        id_range = f"{s.customer_id_start}-{s.customer_id_end}"
        with run_lock(s, s.pipeline_name, logical_date.isoformat(), run_id, id_range):
            record = self._new_record(run_id, logical_date, as_of, now)
            return self._execute(record)

    def _new_record(
        self, run_id: str, logical_date: dt.date, as_of: dt.datetime, now: dt.datetime
    ) -> RunRecord:
        s = self.settings
        run_dir = s.runs_path / run_id
        run_dir.mkdir(parents=True, exist_ok=False)
        record = RunRecord(
            run_id=run_id,
            pipeline_name=s.pipeline_name,
            logical_date=logical_date.isoformat(),
            as_of=as_of.isoformat(),
            id_start=s.customer_id_start,
            id_end=s.customer_id_end,
            feature_group=s.feature_group_name,
            output_table=s.output_table,
            write_mode=s.write_mode,
            config_fingerprint=config_fingerprint(s),
            config=run_identity(s),
            model_package_group=s.model_package_group,
            run_dir=str(run_dir),
            log_path=str(run_dir / "run.log"),
            started=now.isoformat(),
            steps={name: StepRecord(name) for name in STEPS},
        )
        record.save()
        return record

    def run_step(
        self, step: str, run_id: str, *, date: dt.date | None = None, force: bool = False
    ) -> RunRecord:
        """Run one step of a run, for orchestrators that run each step as its own job (a
        SageMaker Processing job, an Airflow task). ``DataSource`` starts the run ``run_id``
        (logical ``date``, default today) unless it exists; the later steps continue it and
        need the steps before them to have succeeded. Running a step that already succeeded
        again changes nothing, so an orchestrator's retry is safe. A continued run keeps its
        own table, model group and id range; a config that differs from the run's in what it
        reads, scores or publishes is refused unless ``force`` (then recorded).

        Raises:
            BatchScoreError: an earlier step has not succeeded, the config differs, or the
                step failed.
        """
        if step not in STEPS:
            raise ConfigError(f"step {step!r} is not one of {', '.join(STEPS)}.")
        check_run_id(run_id)
        s = self.settings
        run_dir = s.runs_path / run_id
        if self.mirror is not None:
            self.mirror.fetch(run_id, s.runs_path)
        if not (run_dir / "run.json").exists():
            if step != "DataSource":
                raise RunNotFoundError(
                    f"no run {run_id!r} in {s.runs_path}: run step data-source first, with the "
                    "same --run-id."
                )
            now = utcnow()
            logical_date = date or now.date()
            as_of = end_of_day(date) if date else now
            id_range = f"{s.customer_id_start}-{s.customer_id_end}"
            with run_lock(s, s.pipeline_name, logical_date.isoformat(), run_id, id_range):
                if not (run_dir / "run.json").exists():
                    self._new_record(run_id, logical_date, as_of, now)
        record = RunRecord.load(run_dir)
        if record.steps[step].status == "succeeded":
            log.info("run %s: %s succeeded earlier; nothing to do", run_id, step)
            return record
        before = STEPS[: STEPS.index(step)]
        unfinished = [b for b in before if record.steps[b].status != "succeeded"]
        if unfinished:
            raise BatchScoreError(
                f"run {run_id}: {unfinished[0]} has not succeeded "
                f"({record.steps[unfinished[0]].status}); run it before {step}."
            )
        id_range = f"{record.id_start}-{record.id_end}"
        with run_lock(s, record.pipeline_name, record.logical_date, run_id, id_range):
            record = RunRecord.load(run_dir)
            self._check_config(record, force)
            record.status = "running"
            record.error = None
            record.failed_step = None
            record.save()
            return self._execute(record, through=step)

    def backfill(self, start: dt.date, end: dt.date) -> list[RunRecord]:
        """One run per date from ``start`` to ``end`` (inclusive), each as of the end of its
        date and replacing only its own rows. A failed date is recorded and the next goes on.
        """
        if start > end:
            raise ConfigError(f"--from {start} is after --to {end}: give an increasing range.")
        if self.settings.write_mode == "overwrite":
            raise ConfigError(
                "write_mode 'overwrite' is refused in a backfill: it would replace every id "
                "range of the pipeline on each date. Backfill with write_mode 'replace' (each "
                "date replaces its own run's rows)."
            )
        records: list[RunRecord] = []
        day = start
        while day <= end:
            try:
                records.append(self.run(date=day))
            except BatchScoreError as exc:
                log.error("backfill %s: %s", day, exc)
                latest = self.history.list_runs(pipeline=self.settings.pipeline_name, limit=1)
                if latest and latest[0]["logical_date"] == day.isoformat():
                    records.append(RunRecord.load(Path(latest[0]["run_dir"])))
            day += dt.timedelta(days=1)
        return records

    def resume(self, run_id: str, *, force: bool = False) -> RunRecord:
        """Continue a failed run at its failed step, reusing what earlier steps wrote.

        The run keeps what its record says: its table, model group and version, id range,
        feature snapshot and write mode. A config that differs from the run's in what it
        reads, scores or publishes is refused, naming the keys, unless ``force`` (then
        recorded in the run).

        Raises:
            BatchScoreError: no such run, it already succeeded, the config differs, or a step
                failed again.
        """
        check_run_id(run_id)
        run_dir = self.settings.runs_path / run_id
        if self.mirror is not None:
            self.mirror.fetch(run_id, self.settings.runs_path)
        if not (run_dir / "run.json").exists():
            raise RunNotFoundError(
                f"no run {run_id!r} in {self.settings.runs_path}. List runs with "
                "'batchscore runs list'."
            )
        record = RunRecord.load(run_dir)
        if record.status == "succeeded":
            raise BatchScoreError(f"run {run_id} already succeeded; there is nothing to resume.")
        id_range = f"{record.id_start}-{record.id_end}"
        with run_lock(self.settings, record.pipeline_name, record.logical_date, run_id, id_range):
            record = RunRecord.load(run_dir)  # as it is now that we hold the lock
            self._check_config(record, force)
            record.status = "running"
            record.error = None
            record.failed_step = None
            record.ended = None
            record.save()
            return self._execute(record)

    def _check_config(self, record: RunRecord, force: bool) -> None:
        """Refuse to continue ``record`` with settings that differ in what the run reads,
        scores or publishes; with ``force``, go on and note it in the record."""
        if record.config is None:
            log.warning(
                "run %s was recorded without its configuration (an earlier batchscore); the "
                "current config is not compared with it",
                record.run_id,
            )
            return
        current = run_identity(self.settings)
        changed = changed_keys(record.config, current)
        if record.model_version is None:  # no model resolved yet: the current group decides
            model_keys = ("model_package_group", "model_approval_status")
            changed = [key for key in changed if key not in model_keys]
            record.model_package_group = self.settings.model_package_group
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

    # The runner -------------------------------------------------------------------------

    def _call_hooks(self, name: str, *args: Any) -> None:
        for hook in self.hooks:
            try:
                getattr(hook, name)(*args)
            except Exception:
                log.exception("hook %s.%s failed (the run goes on)", type(hook).__name__, name)

    def _execute(self, record: RunRecord, through: str = STEPS[-1]) -> RunRecord:
        global _last_run
        _last_run = record
        handlers = run_log_handlers(record, self.settings.redact)
        for handler in handlers:  # on the root: libraries' warnings reach run.log too
            logging.getLogger().addHandler(handler)
        previous_level = log.level
        if log.getEffectiveLevel() > logging.INFO:
            log.setLevel(logging.INFO)
        try:
            return self._execute_steps(record, through)
        finally:
            if self._engine_session is not None:
                self._engine_session.close()
                self._engine_session = None
            for handler in handlers:
                logging.getLogger().removeHandler(handler)
                handler.close()
            log.setLevel(previous_level)

    def _execute_steps(self, record: RunRecord, through: str = STEPS[-1]) -> RunRecord:
        self._call_hooks("before_pipeline_run", record)
        log.info(
            "run %s: %s, ids %d–%d of %s as of %s",
            record.run_id,
            record.pipeline_name,
            record.id_start,
            record.id_end,
            record.feature_group,
            record.as_of,
        )
        failpoint("run:started")
        if any(step.status == "succeeded" for step in record.steps.values()):
            log.info("resuming run %s at %s", record.run_id, _first_unfinished(record))
        model: ModelLoad | None = None
        # Model and feature group are checked before DataSource, so a missing model or column
        # fails at once; each error is put on the step that needs the thing. The model itself
        # (importing scikit-learn, unpacking the estimator: ~3 s) loads on a background thread
        # while DataSource runs.
        step = "DataSource"
        try:
            if record.steps["BatchInference"].status != "succeeded":
                group = self._with_retries(
                    step, lambda: self.feature_store.describe(record.feature_group)
                )
                if record.feature_snapshot_id is None:
                    record.feature_snapshot_id = group.snapshot_id
                    record.save()
                step = "BatchInference"
                version = self._with_retries(step, lambda: self._resolve_version(record))
                declared = self.registry.input_types(version)
                if declared is not None:
                    columns = [group.record_identifier, group.event_time_feature, *group.features]
                    check_columns(version, list(declared), columns, f"feature group {group.name!r}")
                model = ModelLoad(self.registry, version)
            for step in STEPS[: STEPS.index(through) + 1]:
                if record.steps[step].status == "succeeded":
                    log.info("%s: done earlier, reusing its outputs", step)
                    continue
                self._run_step(record, step, model)
        except BaseException as exc:
            self._fail(record, step, exc)
            raise
        finally:
            if model is not None:
                model.close()
        if through != STEPS[-1]:
            record.save()  # still running: the next step comes as its own job
            return record
        record.status = "succeeded"
        record.ended = utcnow().isoformat()
        record.save()
        self._call_hooks("after_pipeline_run", record)
        return record

    def _resolve_version(self, record: RunRecord) -> ModelVersion:
        """The run's model version: the one it first resolved, else the newest approved one."""
        s = self.settings
        group = record.model_package_group or record.model_name or s.model_package_group
        if record.model_version is not None:
            version = self.registry.get_version(group, record.model_version)
        else:
            version = self.registry.resolve(group, s.model_approval_status)
            record.model_name = version.group
            record.model_version = version.version
            record.save()
        log.info("model: %s v%d (%s)", version.group, version.version, version.status)
        return version

    def _run_step(self, record: RunRecord, step: str, model: ModelLoad | None) -> None:
        step_record = record.steps[step]
        step_record.status = "running"
        step_record.error = None
        started = time.perf_counter()
        step_record.started = utcnow().isoformat()
        record.save()
        self._call_hooks("before_step", record, step)
        log.info("%s: started", step)
        failpoint(f"{step}:start")
        action: Callable[[RunRecord, ModelLoad | None], dict[str, Any]] = {
            "DataSource": self._data_source,
            "BatchInference": self._batch_inference,
            "Publish": self._publish,
        }[step]
        outputs = self._with_retries(step, lambda: action(record, model), step_record)
        failpoint(f"{step}:end" if step != "Publish" else "Publish:committed")
        seconds = time.perf_counter() - started
        step_record.status = "succeeded"
        step_record.ended = utcnow().isoformat()
        step_record.seconds = round(seconds, 3)
        step_record.rows = outputs.get("rows")
        if step_record.rows is not None and seconds > 0:
            step_record.rows_per_second = round(step_record.rows / seconds, 1)
        step_record.outputs = outputs
        record.save()
        log.info("%s: done in %.2fs (%s rows)", step, seconds, step_record.rows)
        self._call_hooks("after_step", record, step)

    def _with_retries(
        self, step: str, call: Callable[[], Any], step_record: StepRecord | None = None
    ) -> Any:
        """``call()``, retried with exponential backoff while its error is transient."""
        attempts = self.settings.max_attempts
        for attempt in range(1, attempts + 1):
            if step_record is not None:
                step_record.attempts += 1
            try:
                return call()
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT) or (
                    "No space left" in str(exc) or "File too large" in str(exc)
                ):
                    raise StorageError(
                        f"{step} could not write its files ({exc}): the disk is full or a file "
                        "size limit was reached. Free space, then resume the run; the table "
                        "is unchanged."
                    ) from exc
                raise
            except Exception as exc:
                if not is_transient(exc) or attempt == attempts:
                    raise
                delay = self.settings.retry_backoff_seconds * 2 ** (attempt - 1)
                log.warning(
                    "%s: %s; retrying in %.1fs (attempt %d of %d)",
                    step, exc, delay, attempt, attempts,
                )  # fmt: skip
                time.sleep(delay)
        raise AssertionError("unreachable")  # the loop returns or raises

    def _fail(self, record: RunRecord, step: str, exc: BaseException) -> None:
        step_record = record.steps[step]
        nothing = isinstance(exc, NothingToScoreError)
        step_record.status = "nothing_to_score" if nothing else "failed"
        step_record.ended = utcnow().isoformat()
        message = str(exc)
        if isinstance(exc, KeyboardInterrupt):  # Ctrl-C, or SIGTERM raised as one by the CLI
            message = (
                f"interrupted ({message or 'Ctrl-C'}); resume it: batchscore resume {record.run_id}"
            )
        step_record.error = {"type": type(exc).__name__, "message": self.settings.redact(message)}
        for later in STEPS[STEPS.index(step) + 1 :]:
            if record.steps[later].status == "pending":
                record.steps[later].status = "skipped"
        record.status = "nothing_to_score" if nothing else "failed"
        record.failed_step = step
        record.error = step_record.error
        record.ended = utcnow().isoformat()
        record.save()
        if nothing:
            log.warning("%s: %s", step, step_record.error["message"])
        else:
            log.error("%s failed: %s: %s", step, *step_record.error.values())
        self._call_hooks("on_pipeline_error", record, step, exc)

    # Steps ------------------------------------------------------------------------------

    def _data_source(self, record: RunRecord, model: ModelLoad | None) -> dict[str, Any]:
        args = (record.feature_group, record.id_start, record.id_end)
        output = Path(record.run_dir) / "input"
        as_of = dt.datetime.fromisoformat(record.as_of)
        # Resumed or retried, the step reads the snapshot the run first saw.
        snapshot_id = record.feature_snapshot_id
        if self.settings.engine == "ray":
            from batchscore.engines.ray import ray_data_source

            self._ray()
            result = ray_data_source(
                self.settings, self.feature_store, *args, output, as_of=as_of,
                snapshot_id=snapshot_id, progress=self.progress,
            )  # fmt: skip
        else:
            result = data_source(
                self.feature_store, *args, output, as_of=as_of, snapshot_id=snapshot_id,
                batch_size=self.settings.batch_size, progress=self.progress,
            )  # fmt: skip
        log.info(
            "DataSource: %d records (skipped %d older versions, %d deleted)",
            result.rows,
            result.duplicate_versions_skipped,
            result.deleted_records_skipped,
        )
        return result.to_dict()

    def _batch_inference(self, record: RunRecord, loading: ModelLoad | None) -> dict[str, Any]:
        assert loading is not None
        if loading.ready():
            model = loading.result()
        else:
            with tracked(self.progress, "BatchInference: loading the model"):
                model = loading.result()
        lineage = Lineage(
            run_id=record.run_id,
            pipeline_name=record.pipeline_name,
            id_range=f"{record.id_start}-{record.id_end}",
            inference_date=dt.date.fromisoformat(record.logical_date),
            timestamp=dt.datetime.fromisoformat(record.started),
        )
        files = record.outputs("DataSource")["files"]
        output = Path(record.run_dir) / "predictions"
        common: dict[str, Any] = {
            "record_identifier": self.settings.record_identifier,
            "lineage": lineage,
            "target_column": self.settings.target_column,
            "source_label": f"feature group {record.feature_group!r}",
        }
        if self.settings.engine == "ray":
            from batchscore.engines.ray import ray_batch_inference

            self._ray()
            result = ray_batch_inference(
                self.settings, files, model, output, progress=self.progress, **common
            )
        else:
            result = batch_inference(
                files, model, output, batch_size=self.settings.batch_size,
                progress=self.progress, **common,
            )  # fmt: skip
        if result.evaluation:
            e = result.evaluation
            log.info(
                "evaluation on %d labelled rows: accuracy %.3f, F1 %.3f, ROC AUC %s",
                e["rows"],
                e["accuracy"],
                e["f1"],
                f"{e['roc_auc']:.3f}" if e["roc_auc"] is not None else "n/a",
            )
        return result.to_dict()

    def _publish(self, record: RunRecord, model: ModelLoad | None) -> dict[str, Any]:
        scored = record.outputs("BatchInference")
        result = publish(
            open_sink(self.settings, table=record.output_table),
            scored["files"],
            scored["rows"],
            run_id=record.run_id,
            logical_run=LogicalRun(
                pipeline_name=record.pipeline_name,
                inference_date=dt.date.fromisoformat(record.logical_date),
                id_range=f"{record.id_start}-{record.id_end}",
            ),
            write_mode=record.write_mode,
            started=dt.datetime.fromisoformat(record.started),
        )
        if result.already_published:
            log.info(
                "Publish: run %s was committed earlier (snapshot %d)",
                record.run_id,
                result.snapshot_id,
            )
        return result.to_dict()
