"""MLflow tracking of every batch run: ``mlflow ui`` as the dashboard of batch scoring history.

Each batchscore run is one MLflow run in the experiment named after the pipeline, written
when the run ends — succeeded, failed, blocked or with nothing to score — through
``MlflowClient`` alone (no ``mlflow.start_run``, no autologging: one batch of params, metrics
and tags, then the artifacts). A resumed run updates the MLflow run its earlier attempt made,
found by the tag ``batchscore.run_id``. Nothing here fails the run: a store that cannot be
reached is a warning in the run's log.

Where: ``tracking.uri``, else the MLflow registry's store (``registry.tracking_uri``, by
default ``sqlite:///<workspace>/mlflow.db``); with the SageMaker registry and no
``tracking.uri`` there is no MLflow store and nothing is tracked. ``tracking: false`` turns
it off.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchscore.records import PipelineHooks, RunRecord, format_id_range
from batchscore.workspace import sqlite_path

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from batchscore.config import Settings

log = logging.getLogger("batchscore")

# The tag that ties an MLflow run to its batchscore run (a resume finds the run by it).
RUN_ID_TAG = "batchscore.run_id"
# The run folder's files recorded as artifacts, when present (all written redacted).
ARTIFACT_FILES = ("report.html", "checks.json", "summary.json", "evaluation.json", "run.log")
# batchscore's run status -> MLflow's.
MLFLOW_STATUS = {"succeeded": "FINISHED", "nothing_to_score": "FINISHED", "failed": "FAILED"}
# Evaluation figures (BatchInference's evaluation.json), logged under their own names.
EVALUATION_METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc")
# Tracking stores that are databases: MLflow gives their experiments no artifact root of its
# own (it would be ./mlruns in whatever folder the run started in).
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
# MLflow's limits: a tag value's length, and entities per log_batch call.
MAX_TAG_LENGTH = 5000
MAX_PARAMS_PER_BATCH = 100


def tracking_uri(settings: Settings) -> str | None:
    """The MLflow tracking URI the runs of ``settings`` are recorded in; None: not tracked.

    ``tracking.uri`` when set; else the MLflow registry's store; with the SageMaker registry
    (no MLflow store), None. ``tracking: false`` is None whatever the rest says.
    """
    if settings.tracking.enabled is False:
        return None
    if settings.tracking.uri:
        return settings.tracking.uri
    if settings.registry_type == "mlflow":
        return settings.tracking_uri
    return None


def experiment_artifact_location(settings: Settings, uri: str) -> str | None:
    """Where a new experiment keeps its runs' artifacts: beside the registry's models for a
    database store (``<artifact_location>/pipelines/<pipeline>``); a tracking server's own
    artifact root (None) otherwise."""
    scheme = uri.partition(":")[0].split("+")[0].lower()
    if scheme in DATABASE_SCHEMES:
        return f"{settings.artifact_location.rstrip('/')}/pipelines/{settings.pipeline_name}"
    return None


def _milliseconds(iso: str | None) -> int | None:
    if not iso:
        return None
    moment = dt.datetime.fromisoformat(iso)
    if moment.tzinfo is None:  # run records hold naive UTC times
        moment = moment.replace(tzinfo=dt.UTC)
    return int(moment.timestamp() * 1000)


def _step_seconds(record: RunRecord) -> Iterator[tuple[str, float]]:
    """Seconds per step that ran; a failed step's from its start and end times."""
    for name, step in record.steps.items():
        seconds = step.seconds
        if seconds is None and step.started and step.ended:
            started, ended = _milliseconds(step.started), _milliseconds(step.ended)
            seconds = (ended - started) / 1000 if started and ended else None
        if seconds is not None:
            yield name, float(seconds)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def run_params(record: RunRecord, settings: Settings) -> dict[str, str]:
    """What identifies the run: model, feature snapshot, ids, dates, engine, write mode."""
    params: dict[str, Any] = {
        "batchscore_run_id": record.run_id,
        "model_name": record.model_name or record.model_package_group,
        "model_version": record.model_version,
        "feature_group": record.feature_group,
        "feature_snapshot_id": record.feature_snapshot_id,
        "id_range": format_id_range(record.id_start, record.id_end),
        "logical_date": record.logical_date,
        "as_of": record.as_of,
        "engine": settings.engine,
        "write_mode": record.write_mode,
        "output_table": record.output_table,
        "config_fingerprint": record.config_fingerprint,
    }
    return {key: settings.redact(str(value)) for key, value in params.items() if value is not None}


def run_metrics(record: RunRecord) -> dict[str, float]:
    """Rows, skips, quarantine, evaluation, drift and freshness, and seconds per step."""
    steps = record.steps
    outputs = {name: step.outputs or {} for name, step in steps.items()}
    source = outputs.get("DataSource", {})
    scored = outputs.get("BatchInference", {})
    validated = outputs.get("Validate", {})
    metrics: dict[str, Any] = {
        "rows_read": source.get("rows"),
        "duplicate_versions_skipped": source.get("duplicate_versions_skipped"),
        "deleted_records_skipped": source.get("deleted_records_skipped"),
        "rows_scored": scored.get("rows"),
        "quarantined": scored.get("quarantined"),
        "rows_published": outputs.get("Publish", {}).get("rows"),
        "rows_per_second": steps["BatchInference"].rows_per_second
        if "BatchInference" in steps
        else None,
        "max_psi": validated.get("max_psi"),
        "newest_event_age_seconds": validated.get("newest_event_age_seconds"),
    }
    if metrics["max_psi"] is None:  # blocked at Validate: no outputs, but checks.json
        checks = _read_json(Path(record.run_dir) / "checks.json").get("results") or []
        psi = [r.get("value") for r in checks if r.get("check") in ("psi", "category_psi")]
        psi = [value for value in psi if isinstance(value, int | float)]
        metrics["max_psi"] = max(psi) if psi else None
    evaluation = scored.get("evaluation") or _read_json(Path(record.run_dir) / "evaluation.json")
    for name in EVALUATION_METRICS:
        metrics[name] = evaluation.get(name)
    metrics["labelled_rows"] = evaluation.get("rows")
    for name, seconds in _step_seconds(record):
        metrics[f"step_seconds/{name}"] = seconds
    return {
        key: float(value)
        for key, value in metrics.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


def run_tags(record: RunRecord, settings: Settings) -> dict[str, str]:
    """Status, verdict, failed step and the error (redacted), plus the batchscore run id."""
    tags: dict[str, Any] = {
        RUN_ID_TAG: record.run_id,
        "pipeline": record.pipeline_name,
        "status": record.status,
        "failed_step": record.failed_step,
        "mlflow.source.name": "batchscore",
        "mlflow.source.type": "JOB",
    }
    checks = _read_json(Path(record.run_dir) / "checks.json")
    validate = record.steps.get("Validate")
    verdict = checks.get("verdict") or (validate.outputs.get("verdict") if validate else None)
    tags["verdict"] = verdict if isinstance(verdict, str) else None
    accepted = checks.get("accepted")
    if isinstance(accepted, dict) and accepted.get("by"):
        tags["accepted_by"] = f"{accepted['by']} at {accepted.get('at')}"
    if record.error:
        text = f"{record.error.get('type', 'Error')}: {record.error.get('message', '')}"
        tags["error"] = text[:MAX_TAG_LENGTH]
    return {key: settings.redact(str(value)) for key, value in tags.items() if value is not None}


def _client(uri: str) -> MlflowClient:
    # As registry.mlflow._quiet_mlflow, without importing the registry (pyarrow, pandas):
    # the tracking worker process imports only this module and MLflow.
    for name in ("mlflow", "alembic", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from mlflow.tracking import MlflowClient

    database = sqlite_path(uri)
    if database is not None:  # a new store in a folder that does not exist yet
        database.parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri)


def _experiment_id(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    try:
        return str(client.create_experiment(name, artifact_location=artifact_location))
    except MlflowException:  # another run created it meanwhile
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return str(experiment.experiment_id)


def find_mlflow_run(client: MlflowClient, experiment_id: str, run_id: str) -> str | None:
    """The MLflow run id recording batchscore run ``run_id``, or None."""
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`{RUN_ID_TAG}` = '{run_id}'", max_results=1
    )
    return runs[0].info.run_id if runs else None


def tracking_job(settings: Settings, record: RunRecord) -> dict[str, Any]:
    """Everything :func:`write_job` writes for ``record``, worked out without MLflow (JSON-able,
    so the tracking worker process can write it): where, the run's params, metrics and tags,
    its artifact files, status and times.

    Raises:
        ValueError: tracking is off for ``settings``.
    """
    uri = tracking_uri(settings)
    if uri is None:
        raise ValueError("MLflow tracking is off for these settings (tracking_uri is None)")
    status = MLFLOW_STATUS.get(record.status, "FAILED")
    if record.error and record.error.get("type") == "KeyboardInterrupt":
        status = "KILLED"
    run_dir = Path(record.run_dir)
    return {
        "uri": uri,
        "experiment": settings.pipeline_name,
        "artifact_location": experiment_artifact_location(settings, uri),
        "run_id": record.run_id,
        "start_time": _milliseconds(record.started),
        "end_time": _milliseconds(record.ended),
        "params": run_params(record, settings),
        "metrics": run_metrics(record),
        "tags": run_tags(record, settings),
        "artifacts": [str(run_dir / n) for n in ARTIFACT_FILES if (run_dir / n).is_file()],
        "status": status,
    }


def write_job(client: MlflowClient, job: dict[str, Any]) -> str:
    """Write a :func:`tracking_job` through ``client``: the MLflow run of ``job["run_id"]``
    created, or the one an earlier attempt made updated. Returns the MLflow run id.

    Raises:
        MlflowException: the store refused a write.
    """
    from mlflow.entities import Metric, Param, RunTag

    experiment_id = _experiment_id(client, job["experiment"], job["artifact_location"])
    mlflow_run_id = find_mlflow_run(client, experiment_id, job["run_id"])
    if mlflow_run_id is None:
        mlflow_run_id = client.create_run(
            experiment_id, start_time=job["start_time"], run_name=job["run_id"],
            tags={RUN_ID_TAG: job["run_id"]},
        ).info.run_id  # fmt: skip
        logged_params: dict[str, str] = {}
    else:
        logged_params = client.get_run(mlflow_run_id).data.params
    # Params cannot change once logged (a --force resume may run on another engine): keep
    # the first attempt's and log only the new keys.
    params = {k: v for k, v in job["params"].items() if k not in logged_params}
    now = int(time.time() * 1000)
    metrics = [Metric(key, value, now, 0) for key, value in job["metrics"].items()]
    tags = job["tags"]
    param_items = [Param(key, value) for key, value in params.items()]
    client.log_batch(
        mlflow_run_id,
        metrics=metrics,
        params=param_items[:MAX_PARAMS_PER_BATCH],
        tags=[RunTag(key, value) for key, value in tags.items()],
    )
    stale = {"failed_step", "error"} - set(tags)  # a resumed run that went on to succeed
    for key in stale & set(client.get_run(mlflow_run_id).data.tags):
        client.delete_tag(mlflow_run_id, key)
    for path in job["artifacts"]:
        client.log_artifact(mlflow_run_id, path)
    client.set_terminated(mlflow_run_id, job["status"], end_time=job["end_time"] or now)
    return str(mlflow_run_id)


def record_run(settings: Settings, record: RunRecord, client: MlflowClient | None = None) -> str:
    """Record ``record`` as an MLflow run in the experiment named after its pipeline, creating
    the run or updating the one an earlier attempt of it made.

    Args:
        settings: the run's settings (which store, how secrets are hidden).
        record: the run, as it ended.
        client: the ``MlflowClient`` to write through (default: one for ``tracking_uri``).

    Returns:
        The MLflow run id.

    Raises:
        ValueError: tracking is off for ``settings``.
        MlflowException: the store refused a write (the hook turns it into a warning).
    """
    job = tracking_job(settings, record)
    return write_job(client or _client(job["uri"]), job)


# The worker's scheduling priority (os.nice): below the run's own.
WORKER_NICENESS = 10


class TrackingWorker:
    """A child process that imports MLflow and opens the tracking store while the run works,
    then writes the run's :func:`tracking_job` when it ends.

    ``import mlflow`` and opening its store cost 1.5–3 s of CPU; in the run's own process
    they would come after the last step (the tracker writes once, at the end) and hold the
    GIL. In a child they take the machine's other core while DataSource and the model load
    run. Any trouble with the child — it cannot start, it died, it answered nonsense — and the
    tracker writes in-process as before; the child exits when its input closes.
    """

    def __init__(self, process: Any) -> None:
        self.process = process

    @classmethod
    def start(cls, uri: str, experiment: str) -> TrackingWorker | None:
        """The worker for store ``uri``, warming up experiment ``experiment``; None when no
        child process can be started here."""
        import os
        import subprocess
        import sys

        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "batchscore.monitoring.tracking"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                env=env, text=True, close_fds=True,
            )  # fmt: skip
            # On stdin, not the command line: a tracking URI may hold a password, and any
            # local user can read a process' arguments.
            assert process.stdin is not None
            process.stdin.write(json.dumps({"uri": uri, "experiment": experiment}) + "\n")
            process.stdin.flush()
        except OSError as exc:
            log.debug("MLflow tracking: no worker process (%s); recording in-process", exc)
            return None
        return cls(process)

    def write(self, job: dict[str, Any]) -> dict[str, Any]:
        """Hand ``job`` to the worker and wait for its answer: ``{"mlflow_run_id", "warnings"}``
        or ``{"error_type", "error"}``.

        Raises:
            OSError: the worker is gone or gave no answer (write in-process instead).
        """
        try:
            answer, _ = self.process.communicate(json.dumps(job) + "\n")
            reply = json.loads(answer.strip().splitlines()[-1])
        except (OSError, ValueError, IndexError) as exc:
            raise OSError(f"the tracking worker gave no answer: {exc}") from exc
        if not isinstance(reply, dict):
            raise OSError(f"the tracking worker answered {reply!r}")
        return reply

    def close(self) -> None:
        """Stop the worker if it has not written (the run ended without a tracker call)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def _worker_main() -> int:
    """The tracking worker (``python -m batchscore.monitoring.tracking``): read the store's URI
    and the experiment from stdin's first line and open them, then write the one job of the
    second line; answer one JSON line on stdout."""
    import contextlib
    import os
    import signal
    import sys

    # Ctrl-C reaches the whole process group: the run records itself as KILLED through us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # MLflow's imports yield the cores to the run's steps; the job itself comes at the end,
    # when the run waits for it and the machine is idle.
    with contextlib.suppress(OSError):
        os.nice(WORKER_NICENESS)
    start = json.loads(sys.stdin.readline() or "{}")
    uri, experiment = start.get("uri"), start.get("experiment")

    warnings_seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, entry: logging.LogRecord) -> None:
            warnings_seen.append(f"{entry.name}: {entry.getMessage()}")

    logging.captureWarnings(True)
    logging.getLogger().addHandler(Collect(logging.WARNING))
    client = None
    try:  # warm up while the run works: MLflow's imports, the store, the experiment
        client = _client(uri)
        client.get_experiment_by_name(experiment)
    except Exception:  # the job below meets the same error and reports it
        pass
    line = sys.stdin.readline()
    if not line:
        return 0  # the run ended without recording (a step run alone); nothing to write
    try:
        job = json.loads(line)
        mlflow_run_id = write_job(client or _client(job["uri"]), job)
        reply: dict[str, Any] = {"mlflow_run_id": mlflow_run_id, "warnings": warnings_seen}
    except Exception as exc:  # the parent logs it as the in-process path did
        reply = {"error_type": type(exc).__name__, "error": str(exc)}
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()
    return 0


class MlflowTracker(PipelineHooks):
    """Records every run in MLflow when it ends (``record_run``, through a
    :class:`TrackingWorker` started with the run); never fails the run."""

    def __init__(self, settings: Settings, uri: str) -> None:
        self.settings = settings
        self.uri = uri
        self.worker: TrackingWorker | None = None

    def before_pipeline_run(self, record: RunRecord) -> None:
        self._close()
        self.worker = TrackingWorker.start(self.uri, self.settings.pipeline_name)

    def after_pipeline_run(self, record: RunRecord) -> None:
        self._record(record)

    def on_pipeline_error(self, record: RunRecord, step: str, error: BaseException) -> None:
        self._record(record)

    def _close(self) -> None:
        if self.worker is not None:
            self.worker.close()
            self.worker = None

    def _write(self, record: RunRecord) -> str:
        """The MLflow run id; written by the worker when there is one that answers."""
        job = tracking_job(self.settings, record)
        worker, self.worker = self.worker, None
        if worker is not None:
            try:
                reply = worker.write(job)
            except OSError as exc:
                log.debug("MLflow tracking: %s; recording in-process", exc)
            else:
                if "error_type" in reply:
                    raise TrackingError(f"{reply['error_type']}: {reply.get('error', '')}")
                for line in reply.get("warnings") or []:
                    log.warning("MLflow tracking: %s", self.settings.redact(str(line)))
                return str(reply["mlflow_run_id"])
            finally:
                worker.close()
        return write_job(_client(job["uri"]), job)

    def _record(self, record: RunRecord) -> None:
        started = time.perf_counter()
        try:
            mlflow_run_id = self._write(record)
        except Exception as exc:  # tracking is a record of the run, never a reason to fail it
            kind, text = type(exc).__name__, str(exc)
            if isinstance(exc, TrackingError):  # the worker's: its own type and message
                kind, _, text = text.partition(": ")
            log.warning(
                "MLflow tracking: run %s was not recorded in %s: %s: %s (the run is unaffected; "
                "check tracking.uri, or set tracking: false)",
                record.run_id,
                self.settings.redact(self.uri),
                kind,
                self.settings.redact(text.splitlines()[0] if text else ""),
            )
            return
        log.info(
            "MLflow tracking: run %s recorded as MLflow run %s in experiment %r (%.2fs)",
            record.run_id,
            mlflow_run_id,
            record.pipeline_name,
            time.perf_counter() - started,
        )


class TrackingError(Exception):
    """The tracking worker's store refused the run: ``"<its type>: <its message>"``."""


if __name__ == "__main__":
    import os
    import sys

    code = _worker_main()
    sys.stdout.flush()
    # The answer is out and the store's writes are committed: end here, without the
    # interpreter's teardown of MLflow and SQLAlchemy (half a second the run waited for).
    os._exit(code)
