"""Plain helpers the test modules share: settings on the shared stores, the real CLI, what the
predictions table holds, an independent reference for the latest records, models registered
the way a user would, runs in fresh processes. Fixtures live in ``conftest.py``.

No test module imports another test module; what two of them need lives here.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing as mp
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from batchscore.config import Settings, load_settings
from batchscore.registry.base import APPROVAL_TAG
from tests.reference import reference_latest

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

# Settings ----------------------------------------------------------------------------------


def make_settings(shared: Path, workspace: Path, **overrides: object) -> Settings:
    """Settings that use the shared catalog and registry, with a private workspace."""
    values: dict[str, object] = {
        "workspace": str(workspace),
        "catalog": {
            "type": "sql",
            "uri": f"sqlite:///{shared / 'catalog.db'}",
            "warehouse": (shared / "warehouse").as_uri(),
        },
        "registry": {
            "tracking_uri": f"sqlite:///{shared / 'mlflow.db'}",
            "artifact_location": (shared / "mlartifacts").as_uri(),
        },
        "athena_output_table": f"predictions_{uuid.uuid4().hex[:10]}",
        # Off but where a test asks for it (tests/test_tracking.py): each tracked run starts an
        # MLflow worker process, seconds of CPU that hundreds of runs here do not need.
        "tracking": False,
        # The model's own predict_proba but where a test asks for the compiled path
        # (tests/test_compiled.py, the demo): each fresh workspace would compile the model.
        "scoring": "library",
    }
    values.update(overrides)
    return load_settings(path=None, overrides=values, env={})


def overrides_of(settings: Settings, **extra: object) -> dict[str, object]:
    """The overrides that rebuild ``settings`` (as made by ``make``) in another process."""
    return {
        "workspace": settings.workspace,
        "catalog": settings.catalog,
        "registry": {
            "tracking_uri": settings.tracking_uri,
            "artifact_location": settings.artifact_location,
        },
        "athena_output_table": settings.athena_output_table,
        "tracking": settings.tracking.model_dump(exclude_none=True),
        "scoring": settings.scoring,
        **extra,
    }


# The proof of concept's own configs/pipeline_config.yaml, verbatim.
SEED_CONFIG = """\
# Project settings
project_name: classification-model-batch-inference
region: us-west-2
bucket: mlbucket-sagemaker
prefix: mlops/batch_inference
pipeline_name: classification-model-batch-inference-pipeline
model_package_group: classification-model-group  # Source of the trained model

# IAM Role - should have SageMaker, S3, Feature Store, Athena, Glue permissions
role_arn: arn:aws:iam::ACCOUNT_ID:role/ML-Role-Pipelines

# Instance types (processing only for batch inference)
processing_instance_type: ml.m5.xlarge

# Feature Store settings (replaces Athena input table)
feature_group_name: mlops_poc_churn_classification_feature
customer_id_start: 4000  # Inference data: customer_id 4000-5000
customer_id_end: 5000
athena_query_results: s3://mlbucket-sagemaker/athena-query-results/

# Athena settings (for output table only)
athena_database: ml_metrics
athena_output_table: mlops_poc_daily_inference

# Failure notification settings
sns_topic_arn: arn:aws:sns:us-west-2:ACCOUNT_ID:ml-model-pipeline-failures
notification_email: your-email@example.com

# Deployment settings (model source)
model_approval_status: Approved  # Latest approved model will be used for inference
"""


# The real CLI ------------------------------------------------------------------------------

BIN = Path(sys.executable).parent / "batchscore"


def cli(
    *args: str, cwd: Path | None = None, env: dict | None = None
) -> subprocess.CompletedProcess:
    """``batchscore *args`` as a subprocess, without the caller's BATCHSCORE_* variables."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHSCORE_")}
    full_env["COLUMNS"] = "200"  # Rich wraps tables at 80 columns without a terminal
    full_env.update(env or {})
    return subprocess.run(
        [str(BIN), *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=300
    )


def config_for(settings: Settings, path: Path, **extra: object) -> Path:
    """A config file for ``settings`` (as made by the ``make`` fixture), plus ``extra``."""
    path.write_text(yaml.safe_dump(overrides_of(settings, **extra)))
    return path


# The predictions table ---------------------------------------------------------------------


def table_snapshot(settings: Settings) -> int | None:
    """The output table's current snapshot id; None when there is no table or no commit."""
    from batchscore.catalog import load_table, open_catalog

    table = load_table(open_catalog(settings), settings.output_table)
    if table is None:
        return None
    current = table.current_snapshot()
    return current.snapshot_id if current else None


def table_rows(settings: Settings) -> pd.DataFrame:
    """Every row of the output table (empty when there is no table)."""
    import pandas as pd

    from batchscore.catalog import load_table, open_catalog

    table = load_table(open_catalog(settings), settings.output_table)
    return table.scan().to_arrow().to_pandas() if table is not None else pd.DataFrame()


def block_publish(settings: Settings, day: dt.date) -> Path:
    """A file where the partition's data folder must go: Publish fails until it is removed."""
    from batchscore.catalog import open_catalog
    from batchscore.sinks.iceberg import ensure_predictions_table

    table = ensure_predictions_table(
        open_catalog(settings), settings.athena_database, settings.athena_output_table
    )
    blocker = Path(table.location().removeprefix("file://")) / "data" / f"inference_date={day}"
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("in the way")
    return blocker


def expected_latest(settings: Settings, start=4000, end=5000, as_of=None) -> pd.DataFrame:
    """The pandas reference's latest records of the feature group, read around batchscore."""
    from batchscore.feature_store import open_feature_store

    raw = open_feature_store(settings).iceberg_table(settings.feature_group_name).scan().to_arrow()
    return reference_latest(raw.to_pandas(), start, end, as_of)


# Models ------------------------------------------------------------------------------------


def log_external(settings: Settings, group: str, estimator, frame: pd.DataFrame, status: str, **kw):
    """Register a model the way a user would without batchscore: plain MLflow calls."""
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature

    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    experiment = mlflow.set_experiment(f"external-{group}")
    with mlflow.start_run(experiment_id=experiment.experiment_id):
        mlflow.sklearn.log_model(
            estimator,
            name="model",
            signature=infer_signature(frame, estimator.predict_proba(frame)),
            registered_model_name=group,
            pip_requirements=["scikit-learn"],
            **kw,
        )
    client = mlflow.MlflowClient(settings.tracking_uri)
    version = max(int(v.version) for v in client.search_model_versions(f"name = '{group}'"))
    client.set_model_version_tag(group, str(version), APPROVAL_TAG, status)
    return version


def numeric_training_frame(settings: Settings) -> tuple[pd.DataFrame, np.ndarray]:
    """Four numeric features and the churn label of ids 1-1000, for small test models."""
    from batchscore.feature_store import open_feature_store

    table = (
        open_feature_store(settings)
        .latest_records(settings.feature_group_name, 1, 1000)
        .to_table()
        .to_pandas()
    )
    columns = ["tenure_months", "num_support_calls", "age", "num_products"]
    return table[columns].astype("float64"), table["churn"].to_numpy()


# Progress ----------------------------------------------------------------------------------


class RecordingProgress:
    """Our Progress interface, keeping every call in order."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def start(self, task: str, total: int | None = None, unit: str | None = None) -> None:
        self.calls.append(("start", task, total, unit))

    def advance(self, task: str, n: int) -> None:
        self.calls.append(("advance", task, n))

    def done(self, task: str) -> None:
        self.calls.append(("done", task))

    def of(self, task: str) -> list[tuple]:
        return [c for c in self.calls if c[1] == task]


# Runs in fresh processes -------------------------------------------------------------------

# The logical date of the runs start_run_process starts.
PROCESS_RUN_DATE = dt.date(2026, 6, 30)

# A forkserver with batchscore and its libraries imported already: each process it starts is
# a fresh, real process (killable, its own locks) that starts in milliseconds.
forkserver = mp.get_context("forkserver")
forkserver.set_forkserver_preload(
    [
        "batchscore.pipeline",
        "batchscore.registry.mlflow",
        "batchscore.runs",
        "batchscore.notify",
        "mlflow.tracking",
        "sklearn.ensemble",
        "skops.io",
        "duckdb",
        "pyiceberg.catalog.sql",
    ]
)


def _run_in_child(overrides: dict[str, Any], failpoint: str, run_id: str, resume: bool) -> None:
    from batchscore.pipeline import Pipeline

    os.environ["BATCHSCORE_FAILPOINT"] = failpoint
    settings = load_settings(overrides=overrides, env={})
    pipeline = Pipeline(settings)
    if resume:
        pipeline.resume(run_id)
    else:
        pipeline.run(date=PROCESS_RUN_DATE, run_id=run_id)


def start_run_process(
    overrides: dict[str, Any], run_id: str, *, failpoint: str = "", resume: bool = False
) -> mp.process.BaseProcess:
    """Run (or resume) ``run_id`` for PROCESS_RUN_DATE in a forkserver process, with
    ``$BATCHSCORE_FAILPOINT`` set to ``failpoint``; the caller joins or kills it."""
    process = forkserver.Process(target=_run_in_child, args=(overrides, failpoint, run_id, resume))
    process.start()
    return process
