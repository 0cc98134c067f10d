"""Start-up (issue 16): what a run's process pays for before DataSource starts, and the start-up
figure every run records. Speed itself is shown by bench/ and docs/benchmarks.md, not here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from batchscore.records import RunRecord
from batchscore.registry import open_registry
from tests.helpers import config_for

# Not needed before the first step: the model (scikit-learn, skops) loads on its own thread,
# the registry lookup reads the SQLite store without MLflow, and MLflow tracking opens its
# store in a worker process. (pandas is not here: pyarrow.dataset, which pyiceberg's reads
# use, imports it.)
NOT_BEFORE_DATASOURCE = ("mlflow", "sklearn", "skops", "alembic", "scipy")

# Runs the pipeline in a fresh interpreter and prints the top-level packages the *main*
# thread imported by the time DataSource starts (imports on the model thread do not count:
# they overlap the read), then leaves at once.
SCRIPT = """
import json, os, sys, threading

seen = set()

class Spy:
    def find_spec(self, name, path=None, target=None):
        if threading.current_thread() is threading.main_thread():
            seen.add(name.partition(".")[0])
        return None

sys.meta_path.insert(0, Spy())
from batchscore.config import load_settings
from batchscore.pipeline import Pipeline
from batchscore.records import PipelineHooks

class AtFirstStep(PipelineHooks):
    def before_step(self, record, step):
        print("MAIN-THREAD-IMPORTS", json.dumps(sorted(seen)), flush=True)
        os._exit(0)

Pipeline(load_settings(sys.argv[1]), hooks=[AtFirstStep()]).run()
"""


def test_the_way_to_datasource_imports_no_model_or_mlflow_library(make, tmp_path) -> None:
    settings = make(customer_id_start=4000, customer_id_end=4100)
    # As on every day but the first: the model is in the workspace's cache (a download goes
    # through MLflow's artifact repositories).
    registry = open_registry(settings)
    registry.input_types(registry.resolve(settings.model_package_group))
    config = config_for(settings, tmp_path / "c.yaml")
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(config)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    imported = json.loads(result.stdout.split("MAIN-THREAD-IMPORTS ")[-1])
    assert "pyiceberg" in imported  # the spy sees the imports DataSource does need
    assert [name for name in NOT_BEFORE_DATASOURCE if name in imported] == []


def test_a_run_records_its_startup_seconds(make) -> None:
    from batchscore.pipeline import Pipeline

    settings = make(customer_id_start=4000, customer_id_end=4100)
    record = Pipeline(settings).run()
    saved = RunRecord.load(Path(record.run_dir))
    # In this process (pytest's) the first step starts long after the process did.
    assert isinstance(saved.startup_seconds, float) and saved.startup_seconds > 0
    from batchscore.runs import RunHistory

    shown = RunHistory.for_settings(settings, writable=False).get(record.run_id)
    assert shown.startup_seconds == saved.startup_seconds


def test_a_run_whose_tracking_worker_died_is_tracked_all_the_same(make) -> None:
    import uuid

    from mlflow import MlflowClient

    from batchscore.monitoring.tracking import MlflowTracker
    from batchscore.pipeline import Pipeline
    from batchscore.records import PipelineHooks

    settings = make(customer_id_start=4000, customer_id_end=4100,
                    pipeline_name=f"worker-{uuid.uuid4().hex[:8]}", tracking=True)  # fmt: skip
    pipeline = Pipeline(settings)
    (tracker,) = [h for h in pipeline.hooks if isinstance(h, MlflowTracker)]

    class KillWorker(PipelineHooks):
        def before_step(self, record, step):
            assert tracker.worker is not None, "the tracker starts a worker with the run"
            tracker.worker.process.kill()
            tracker.worker.process.wait()

    pipeline.hooks.append(KillWorker())
    record = pipeline.run()
    client = MlflowClient(settings.tracking_uri)
    experiment = client.get_experiment_by_name(settings.pipeline_name)
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.tags["batchscore.run_id"] == record.run_id
    assert run.info.status == "FINISHED" and run.data.metrics["rows_scored"] > 0


def test_the_mlmodel_file_is_read_as_mlflow_reads_it(make, tmp_path) -> None:
    import shutil

    import yaml
    from mlflow.models import Model

    from batchscore.registry.mlflow import _simple_mlmodel, declared_input_types

    registry = open_registry(make())
    folder = registry._download(registry.resolve(make().model_package_group))
    schema = Model.load(str(folder / "MLmodel")).get_input_schema()
    assert _simple_mlmodel(folder) is not None  # the demo's model: read without MLflow
    assert declared_input_types(folder) == {spec.name: spec.type.name for spec in schema.inputs}
    assert _simple_mlmodel(folder).skops == "model.skops"
    # A signature of tensors is MLflow's to read.
    tensors = tmp_path / "tensors"
    shutil.copytree(folder, tensors)
    document = yaml.safe_load((tensors / "MLmodel").read_text())
    document["signature"]["inputs"] = (
        '[{"type": "tensor", "tensor-spec": {"dtype": "float64", "shape": [-1, 12]}}]'
    )
    (tensors / "MLmodel").write_text(yaml.safe_dump(document))
    assert _simple_mlmodel(tensors) is None
