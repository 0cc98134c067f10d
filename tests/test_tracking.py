"""MLflow tracking of every batch run (issue 15, item 7): each run is one MLflow run in the
experiment named after the pipeline, read back here with plain ``MlflowClient`` calls from
real SQLite stores under tmp paths, after real pipeline runs."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
import uuid
from pathlib import Path

import pytest
from mlflow import MlflowClient

from batchscore.config import Settings, load_settings
from batchscore.errors import BatchScoreError, ConfigError, PublishError
from batchscore.hooks import default_hooks
from batchscore.monitoring.tracking import ARTIFACT_FILES, RUN_ID_TAG, tracking_uri
from batchscore.pipeline import Pipeline
from batchscore.records import RunRecord
from batchscore.runs import RunHistory
from tests.helpers import block_publish, make_settings, overrides_of

# A model group read from ${VAR}: a secret, by the config's rules, wherever it goes.
SECRET_GROUP = "missing-model-9f3e7a"


def experiment_runs(settings: Settings, uri: str | None = None) -> list:
    """Every MLflow run in the experiment named after the pipeline ([] when there is none)."""
    client = MlflowClient(uri or settings.tracking_uri)
    experiment = client.get_experiment_by_name(settings.pipeline_name)
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id])


def unique_pipeline() -> str:
    return f"tracking-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def tracked(
    shared_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Settings, RunRecord]:
    """One succeeded run of a pipeline of its own, tracked in the registry's own store (the
    default once tracking is on; the tests' settings turn it off unless asked)."""
    folder = tmp_path_factory.mktemp("tracked")
    name = unique_pipeline()
    settings = make_settings(shared_dir, folder / "ws", pipeline_name=name, tracking=True)
    with pytest.MonkeyPatch.context() as monkeypatch:  # _isolate is per test: not yet applied
        for name in [n for n in os.environ if n.startswith("BATCHSCORE_")]:
            monkeypatch.delenv(name)
        record = Pipeline(settings).run()
    assert record.status == "succeeded"
    return settings, record


def test_a_run_is_one_mlflow_run_with_params_metrics_and_tags(tracked) -> None:
    settings, tracked = tracked
    (run,) = experiment_runs(settings)  # in the registry's store: registry.tracking_uri
    assert run.info.status == "FINISHED"
    assert run.info.run_name == tracked.run_id
    assert run.data.params == {
        "batchscore_run_id": tracked.run_id,
        "model_name": "classification-model-group",
        "model_version": str(tracked.model_version),
        "feature_group": tracked.feature_group,
        "feature_snapshot_id": str(tracked.feature_snapshot_id),
        "id_range": "4000-5000",
        "logical_date": tracked.logical_date,
        "as_of": tracked.as_of,
        "engine": "local",
        "write_mode": "replace",
        "output_table": tracked.output_table,
        "config_fingerprint": tracked.config_fingerprint,
    }
    source, scored = tracked.outputs("DataSource"), tracked.outputs("BatchInference")
    metrics = run.data.metrics
    assert metrics["rows_read"] == source["rows"]
    assert metrics["duplicate_versions_skipped"] == source["duplicate_versions_skipped"] > 0
    assert metrics["deleted_records_skipped"] == source["deleted_records_skipped"] > 0
    assert metrics["rows_scored"] == scored["rows"] == metrics["rows_published"]
    evaluation = json.loads((Path(tracked.run_dir) / "evaluation.json").read_text())
    for name in ("accuracy", "precision", "recall", "f1", "roc_auc"):
        assert metrics[name] == pytest.approx(evaluation[name]), name
    assert metrics["labelled_rows"] == evaluation["rows"]
    for name, step in tracked.steps.items():
        assert metrics[f"step_seconds/{name}"] == pytest.approx(step.seconds), name
    tags = run.data.tags
    assert tags[RUN_ID_TAG] == tracked.run_id and tags["status"] == "succeeded"
    assert "failed_step" not in tags and "error" not in tags
    # Checks that have not run (no Validate step yet) leave no verdict or drift figures.
    if "Validate" in tracked.steps:
        assert tags["verdict"] == tracked.outputs("Validate")["verdict"]
    else:
        assert "verdict" not in tags and "max_psi" not in metrics


def test_the_run_folders_files_are_its_artifacts(tracked, tmp_path) -> None:
    settings, tracked = tracked
    (run,) = experiment_runs(settings)
    client = MlflowClient(settings.tracking_uri)
    # Beside the registry's models, not in ./mlruns of whatever folder the run started in.
    assert run.info.artifact_uri.startswith(settings.artifact_location + "/pipelines/")
    run_dir = Path(tracked.run_dir)
    present = [name for name in ARTIFACT_FILES if (run_dir / name).is_file()]
    assert {"evaluation.json", "run.log"} <= set(present)
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id)) == sorted(present)
    for name in present:
        local = Path(client.download_artifacts(run.info.run_id, name, str(tmp_path)))
        if name == "run.log":  # the run goes on logging after it was uploaded (this line)
            assert run_dir.joinpath(name).read_bytes().startswith(local.read_bytes())
            assert b"Publish: done" in local.read_bytes()
        else:
            assert local.read_bytes() == run_dir.joinpath(name).read_bytes(), name


def test_a_failed_run_is_recorded_failed_and_its_resume_updates_that_run(make) -> None:
    settings = make(pipeline_name=unique_pipeline(), tracking=True)
    blocker = block_publish(settings, dt.datetime.now(dt.UTC).date())
    with pytest.raises(PublishError):
        Pipeline(settings).run()
    (failed,) = experiment_runs(settings)
    assert failed.info.status == "FAILED"
    assert failed.data.tags["status"] == "failed"
    assert failed.data.tags["failed_step"] == "Publish"
    assert failed.data.tags["error"].startswith("PublishError: ")
    assert failed.data.metrics["rows_scored"] > 0
    assert "rows_published" not in failed.data.metrics

    blocker.unlink()
    record = RunRecord.load(next(settings.runs_path.iterdir()))
    resumed = Pipeline(settings).resume(record.run_id)
    assert resumed.status == "succeeded"
    (run,) = experiment_runs(settings)  # the same MLflow run, not a second one
    assert run.info.run_id == failed.info.run_id
    assert run.info.status == "FINISHED"
    assert run.data.tags["status"] == "succeeded"
    assert "failed_step" not in run.data.tags and "error" not in run.data.tags
    assert run.data.metrics["rows_published"] == resumed.outputs("Publish")["rows"]
    assert run.data.metrics["rows_scored"] == failed.data.metrics["rows_scored"]
    assert run.data.params["batchscore_run_id"] == record.run_id


def test_a_secret_in_the_config_never_reaches_the_mlflow_run(make, tmp_path) -> None:
    base = make(pipeline_name=unique_pipeline(), tracking=True)
    uri = f"sqlite:///{tmp_path / 'tracking' / 'mlflow.db'}"  # a store of its own
    settings = load_settings(
        overrides=overrides_of(
            base,
            pipeline_name=base.pipeline_name,
            model_package_group="${MODEL_GROUP}",
            tracking={"uri": uri},
        ),
        env={"MODEL_GROUP": SECRET_GROUP},
    )
    with pytest.raises(BatchScoreError, match="no versions"):
        Pipeline(settings).run()
    (run,) = experiment_runs(settings, uri)
    assert run.info.status == "FAILED"
    assert run.data.tags["failed_step"] == "BatchInference"
    assert run.data.params["model_name"] == "***"
    assert "***" in run.data.tags["error"]
    recorded = json.dumps([run.data.params, run.data.tags, sorted(run.data.metrics)])
    assert SECRET_GROUP not in recorded
    client = MlflowClient(uri)
    for artifact in client.list_artifacts(run.info.run_id):
        local = client.download_artifacts(run.info.run_id, artifact.path, str(tmp_path / "a"))
        assert SECRET_GROUP not in Path(local).read_text(), artifact.path
    # Not in the registry's store: tracking.uri decides where runs go.
    assert experiment_runs(settings) == []


def test_tracking_off_records_no_experiment(make) -> None:
    settings = make(pipeline_name=unique_pipeline(), model_package_group="missing-model",
                    tracking=False)  # fmt: skip
    assert tracking_uri(settings) is None
    with pytest.raises(BatchScoreError, match="no versions"):
        Pipeline(settings).run()
    client = MlflowClient(settings.tracking_uri)  # the registry's store, where it would go
    assert client.get_experiment_by_name(settings.pipeline_name) is None


def test_an_unwritable_tracking_store_only_warns(make, tmp_path) -> None:
    in_the_way = tmp_path / "not-a-folder"
    in_the_way.write_text("a file where the store's folder would be")
    settings = make(pipeline_name=unique_pipeline(), model_package_group="missing-model",
                    tracking={"uri": f"sqlite:///{in_the_way / 'mlflow.db'}"})  # fmt: skip
    with pytest.raises(BatchScoreError, match="no versions"):  # the run's own error
        Pipeline(settings).run()
    record = RunRecord.load(next(settings.runs_path.iterdir()))
    assert record.status == "failed" and record.error["type"] == "NoApprovedModelError"
    log_text = Path(record.log_path).read_text()
    assert "MLflow tracking: run " + record.run_id + " was not recorded" in log_text
    assert "Traceback" not in log_text  # a warning, not the runner's "hook failed"


def test_the_sagemaker_registry_tracks_only_with_a_tracking_uri(tmp_path) -> None:
    aws = {"backend": "aws", "bucket": "b", "workspace": str(tmp_path / "ws")}
    settings = load_settings(overrides=aws, env={})
    assert tracking_uri(settings) is None
    history = RunHistory.for_settings(settings)
    assert "MlflowTracker" not in [type(h).__name__ for h in default_hooks(settings, history)]
    server = "http://127.0.0.1:5000"
    assert tracking_uri(load_settings(overrides={**aws, "tracking": {"uri": server}}, env={})) \
        == server  # fmt: skip
    with pytest.raises(ConfigError, match=r"tracking: true with the SageMaker registry needs"):
        load_settings(overrides={**aws, "tracking": True}, env={})


def test_the_tracking_worker_yields_the_cores_to_the_run(tmp_path) -> None:
    """The child that imports MLflow while the run works runs below the run's priority."""
    import os

    from batchscore.monitoring.tracking import WORKER_NICENESS, TrackingWorker

    worker = TrackingWorker.start(f"sqlite:///{tmp_path / 'mlflow.db'}", "niceness")
    assert worker is not None
    try:
        own = os.getpriority(os.PRIO_PROCESS, 0)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            child = os.getpriority(os.PRIO_PROCESS, worker.process.pid)
            if child != own:
                break
            time.sleep(0.05)
        assert child == min(own + WORKER_NICENESS, 19)
    finally:
        worker.close()


def test_the_tracking_worker_ends_as_soon_as_it_has_answered(tmp_path, monkeypatch) -> None:
    """The run waits for the worker's exit: once its answer is written it exits at once,
    without the interpreter's teardown (MLflow's and SQLAlchemy's: half a second). Seen from
    an exit handler the worker's interpreter registers at start-up, which must never run."""
    from batchscore.monitoring.tracking import TrackingWorker

    startup = tmp_path / "startup"
    startup.mkdir()
    ran = tmp_path / "teardown-ran"
    (startup / "sitecustomize.py").write_text(
        "import atexit, pathlib\n"
        f"atexit.register(pathlib.Path({str(ran)!r}).write_text, 'teardown')\n"
    )
    monkeypatch.syspath_prepend(str(startup))  # the worker's PYTHONPATH is this sys.path
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    worker = TrackingWorker.start(uri, "teardown")
    assert worker is not None
    reply = worker.write({"uri": uri})  # no experiment: the store's error, answered
    assert reply["error_type"] == "KeyError"
    assert worker.process.wait(timeout=30) == 0
    assert not ran.exists()
