"""The compiled scoring path: tree ensembles compiled with treelite/tl2cgen, cached in the
workspace, checked against the model's own ``predict_proba`` on every run.

Models are trained here on the demo feature group and registered by plain MLflow calls in their
own flavour (``mlflow.sklearn.log_model`` with skops, ``mlflow.lightgbm.log_model`` of the
booster, ``mlflow.xgboost.log_model``), then scored by real ``Pipeline(settings).run()`` calls:
once with ``scoring: library`` (the reference) and once with ``auto``. A compiled library from
another model is put at a model's cache path to make parity fail for real.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchscore.errors import ModelError
from batchscore.pipeline import Pipeline
from batchscore.registry.base import APPROVAL_TAG
from tests.helpers import cli, config_for, make_settings

NUMERIC = ["tenure_months", "monthly_charges", "total_charges", "num_support_calls", "age",
           "num_products", "last_login_days", "satisfaction_score"]  # fmt: skip
CATEGORICAL = ["contract_type", "payment_method", "internet_service", "region"]
TOLERANCE = 1e-12


def training_rows(shared_dir: Path):
    from batchscore.feature_store import open_feature_store

    settings = make_settings(shared_dir, shared_dir / "ws")
    table = open_feature_store(settings).latest_records(settings.feature_group_name, 1, 4000)
    frame = table.to_table().to_pandas()
    return frame, frame.churn.to_numpy().astype(int)


def preprocessing(impute: bool):
    """A ColumnTransformer as people write one: impute numbers (for estimators that refuse
    missing values), encode categories."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import OrdinalEncoder

    missing = -1 if impute else np.nan
    return ColumnTransformer([
        ("numeric", SimpleImputer(strategy="median") if impute else "passthrough", NUMERIC),
        ("categorical", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=missing,
                                       encoded_missing_value=missing), CATEGORICAL),
    ])  # fmt: skip


def sklearn_model(kind: str, classes: int = 2):
    from sklearn.ensemble import (
        ExtraTreesClassifier,
        GradientBoostingClassifier,
        HistGradientBoostingClassifier,
        RandomForestClassifier,
    )
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline as SkPipeline

    estimator, impute = {
        "hgb": (HistGradientBoostingClassifier(max_iter=30, max_leaf_nodes=15), False),
        "gb": (GradientBoostingClassifier(n_estimators=20, max_depth=3), True),
        "rf": (RandomForestClassifier(n_estimators=20, max_depth=6, random_state=0), False),
        "et": (ExtraTreesClassifier(n_estimators=20, max_depth=6, random_state=0), True),
        "logistic": (LogisticRegression(max_iter=200), True),
    }[kind]
    return SkPipeline([("preprocess", preprocessing(impute)), ("classifier", estimator)])


def log_and_approve(settings, group: str, log) -> None:
    """``log(name=…, registered_model_name=group)`` in a run of its own; approve the version."""
    import mlflow

    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    mlflow.set_experiment(f"compiled-{group}")
    with mlflow.start_run():
        log(name="model", registered_model_name=group)
    client = mlflow.MlflowClient(settings.tracking_uri)
    newest = max(int(v.version) for v in client.search_model_versions(f"name='{group}'"))
    client.set_model_version_tag(group, str(newest), APPROVAL_TAG, "Approved")


def register(shared_dir: Path, kind: str, group: str, seed: int = 0) -> list[str]:
    """Train ``kind`` on the demo rows and register it in its own MLflow flavour; the skops
    types it needs trusted (none for LightGBM and XGBoost)."""
    from mlflow.models import infer_signature

    frame, y = training_rows(shared_dir)
    settings = make_settings(shared_dir, shared_dir / "ws")
    if kind in ("lgb", "xgb"):
        x = frame[NUMERIC].astype("float64")
        if kind == "lgb":
            import lightgbm
            import mlflow.lightgbm

            model = lightgbm.LGBMClassifier(n_estimators=30 + seed, verbose=-1).fit(x, y)
            log_and_approve(settings, group, lambda **kw: mlflow.lightgbm.log_model(
                model.booster_, signature=infer_signature(x), pip_requirements=["lightgbm"], **kw))  # fmt: skip
        else:
            import mlflow.xgboost
            import xgboost

            model = xgboost.XGBClassifier(n_estimators=20).fit(x, y)
            log_and_approve(settings, group, lambda **kw: mlflow.xgboost.log_model(
                model, signature=infer_signature(x), pip_requirements=["xgboost"], **kw))  # fmt: skip
        return []
    import mlflow.sklearn
    import skops.io

    x = frame[[*NUMERIC, *CATEGORICAL]].astype({c: "float64" for c in NUMERIC})
    model = sklearn_model(kind)
    if seed:
        model.set_params(classifier__random_state=seed)
    model.fit(x, y)
    trusted = skops.io.get_untrusted_types(data=skops.io.dumps(model))
    log_and_approve(settings, group, lambda **kw: mlflow.sklearn.log_model(
        model, serialization_format="skops", signature=infer_signature(x),
        skops_trusted_types=trusted, pip_requirements=["scikit-learn"], **kw))  # fmt: skip
    return trusted


def predictions(record) -> pa.Table:
    files = sorted((Path(record.run_dir) / "predictions").glob("*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files]).sort_by("customer_id")


def assert_same_predictions(got: pa.Table, expected: pa.Table) -> None:
    assert got.column("customer_id").equals(expected.column("customer_id"))
    assert got.column("prediction").equals(expected.column("prediction"))
    diff = np.abs(
        got.column("prediction_probability").to_numpy()
        - expected.column("prediction_probability").to_numpy()
    )
    assert diff.max() <= TOLERANCE, diff.max()


def scoring_of(record) -> dict:
    return record.outputs("BatchInference")["scoring"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One workspace for the module: its compiled cache is shared by the runs."""
    return tmp_path_factory.mktemp("compiled-ws")


TRUSTED: set[str] = set()  # skops types of the models registered here (registry.trusted_types)


@pytest.fixture(scope="module")
def groups(shared_dir: Path) -> dict[str, str]:
    names = {}
    for kind in ("hgb", "gb", "rf", "et", "lgb", "xgb", "logistic"):
        names[kind] = f"compiled-{kind}"
        TRUSTED.update(register(shared_dir, kind, names[kind]))
    return names


def settings_for(shared_dir: Path, workspace: Path, group: str, **overrides):
    settings = make_settings(shared_dir, workspace)
    registry = {"tracking_uri": settings.tracking_uri,
                "artifact_location": settings.artifact_location, "trusted_types": sorted(TRUSTED)}  # fmt: skip
    return make_settings(
        shared_dir, workspace, model_package_group=group, registry=registry, **overrides
    )


def run(shared_dir: Path, workspace: Path, group: str, **overrides):
    return Pipeline(settings_for(shared_dir, workspace, group, **overrides)).run()


@pytest.mark.parametrize("kind", ["hgb", "gb", "rf", "et", "lgb"])
def test_a_tree_ensemble_scores_compiled_as_its_library(shared_dir, workspace, groups, kind):
    library = run(shared_dir, workspace, groups[kind], scoring="library", batch_size=400)
    compiled = run(shared_dir, workspace, groups[kind], scoring="auto", batch_size=400)
    assert library.status == compiled.status == "succeeded"
    assert scoring_of(library)["path"] == "library"
    assert scoring_of(library)["compiled_library"] is None
    facts = scoring_of(compiled)
    assert facts["path"] == "compiled", facts["reason"]
    assert facts["cache"] in ("hit", "miss") and Path(facts["compiled_library"]).is_file()
    # Every batch checked: ~1000 rows in batches of 400, all of them sampled.
    assert facts["parity"]["rows_checked"] == compiled.outputs("BatchInference")["rows"]
    assert facts["parity"]["max_abs_diff"] <= TOLERANCE
    assert_same_predictions(predictions(compiled), predictions(library))
    assert compiled.outputs("BatchInference")["evaluation"] == library.outputs(
        "BatchInference"
    )["evaluation"]
