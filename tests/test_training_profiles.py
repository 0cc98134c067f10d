"""Models batchscore did not train: their profile (category vocabularies, feature statistics)
is computed at first use from their training data — ``registry.training_data``, else the
dataset their MLflow run logged — cached in the workspace, and named in the run record.

Models are logged by plain ``mlflow.<flavor>.log_model`` calls (no batchscore profile) into
the shared MLflow store, each under a group of its own, and scored by real pipeline runs.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchscore.registry.base import APPROVAL_TAG

FEATURES = ["tenure_months", "num_support_calls", "contract_type"]


def training_rows(settings) -> pd.DataFrame:
    """The first 1000 ids' latest records, without the category ``two_year`` (so scoring
    all ids meets an unseen category)."""
    from batchscore.feature_store import open_feature_store

    rows = (
        open_feature_store(settings)
        .latest_records(settings.feature_group_name, 1, 1000)
        .to_table()
        .to_pandas()
    )
    rows = rows[rows.contract_type != "two_year"]
    return rows[[*FEATURES, "churn"]].astype(
        {"tenure_months": "float64", "num_support_calls": "float64"}
    )


def write_parquet(rows: pd.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(rows, preserve_index=False), path)
    return path


def with_training_data(make, group: str, data: Path | str | None):
    settings = make(model_package_group=group)
    if data is None:
        return settings
    registry = {**settings.registry.model_dump(exclude_none=True), "training_data": str(data)}
    return make(model_package_group=group, registry=registry)


def log_and_approve(settings, group: str, log_model, dataset: Path | None = None) -> None:
    """One MLflow run: ``log_model(registered_model_name=group)`` (and ``mlflow.log_input``
    of ``dataset`` when given); version 1 approved."""
    import mlflow

    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    mlflow.set_experiment(group)
    with mlflow.start_run():
        if dataset is not None:
            frame = pd.read_parquet(dataset)
            logged = mlflow.data.from_pandas(frame, source=str(dataset), name="train")
            mlflow.log_input(logged, context="training")
        log_model(group)
    mlflow.MlflowClient(settings.tracking_uri).set_model_version_tag(
        group, "1", APPROVAL_TAG, "Approved"
    )


def xgboost_logger(rows: pd.DataFrame):
    import mlflow.xgboost
    import xgboost
    from mlflow.models import infer_signature

    frame = rows[FEATURES].astype({"contract_type": "category"})
    model = xgboost.XGBClassifier(n_estimators=10, enable_categorical=True)
    model.fit(frame, rows.churn.to_numpy())
    return lambda group: mlflow.xgboost.log_model(
        model,
        name="model",
        signature=infer_signature(frame),
        registered_model_name=group,
        pip_requirements=["xgboost"],
    )


def sklearn_logger(rows: pd.DataFrame):
    """A scikit-learn pipeline (ordinal-encoded category) logged with skops and no profile:
    it has no categories batchscore reads, so they come from the training data."""
    import mlflow.sklearn
    from mlflow.models import infer_signature

    from batchscore.registry.base import TRUSTED_SKOPS_TYPES
    from batchscore.training import build_pipeline

    frame = rows[FEATURES]
    model = build_pipeline(FEATURES[:2], FEATURES[2:]).fit(frame, rows.churn.to_numpy())
    return lambda group: mlflow.sklearn.log_model(
        model,
        name="model",
        signature=infer_signature(frame),
        registered_model_name=group,
        serialization_format="skops",
        skops_trusted_types=list(TRUSTED_SKOPS_TYPES),
        pip_requirements=["scikit-learn", "skops"],
    )


def scoring_outputs(settings) -> dict:
    from batchscore.pipeline import Pipeline

    return Pipeline(settings).run().steps["BatchInference"].outputs


def cached_profiles(settings) -> list[Path]:
    return sorted((settings.workspace_path / "profiles").glob("*.json"))


def shown_source(settings, tmp_path: Path, capsys) -> str:
    """``batchscore models show 1 --format json``'s profile_source (the real CLI, in-process)."""
    from batchscore.cli import main
    from tests.helpers import config_for

    registry = settings.registry.model_dump(exclude_none=True)
    config = config_for(
        settings,
        tmp_path / "show.yaml",
        model_package_group=settings.model_package_group,
        registry=registry,
    )
    capsys.readouterr()
    assert main(["-c", str(config), "models", "show", "1", "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)["profile_source"]


def test_an_xgboost_model_gets_its_feature_statistics_from_the_configured_training_data(
    make, tmp_path: Path, capsys
) -> None:
    group = f"byo-xgb-{uuid.uuid4().hex[:6]}"
    probe = make(model_package_group=group)
    rows = training_rows(probe)
    data = write_parquet(rows, tmp_path / "lake" / "train.parquet")
    settings = with_training_data(make, group, data)
    log_and_approve(settings, group, xgboost_logger(rows))
    assert shown_source(settings, tmp_path, capsys) == (
        f"model (xgboost categories); computed at first use from {data} (not yet)"
    )

    first = scoring_outputs(settings)
    assert shown_source(settings, tmp_path, capsys) == first["category_vocabularies_from"]
    [cached] = cached_profiles(settings)
    profile = json.loads(cached.read_text())
    # The booster's categories stay; the data adds the statistics, and the record says so.
    assert first["category_vocabularies_from"].startswith(
        f"model (xgboost categories); other columns and feature statistics from the profile "
        f"computed at first use from {data} ("
    )
    assert profile["training_data"] == str(data)
    assert profile["rows"] == len(rows)
    assert profile["statistics"]["tenure_months"]["mean"] == pytest.approx(
        rows.tenure_months.mean()
    )
    assert set(profile["statistics"]["contract_type"]["frequencies"]) == set(
        rows.contract_type.unique()
    )
    assert first["unseen_categories"]["contract_type"] > 0

    # A second run reuses the cache: what the file says (marked here) is what the run says.
    profile["profile_source"] = "the cached profile"
    cached.write_text(json.dumps(profile))
    before = cached.stat().st_mtime_ns
    second = scoring_outputs(settings)
    assert second["category_vocabularies_from"].endswith("from the the cached profile")
    assert cached.stat().st_mtime_ns == before

    # Another data source is another cache entry.
    other = write_parquet(rows.head(100), tmp_path / "lake" / "sample.parquet")
    third = scoring_outputs(with_training_data(make, group, other))
    assert f"computed at first use from {other} (" in third["category_vocabularies_from"]
    assert len(cached_profiles(settings)) == 2


def test_the_dataset_the_run_logged_gives_the_vocabularies_without_config(
    make, tmp_path: Path
) -> None:
    group = f"byo-skl-{uuid.uuid4().hex[:6]}"
    settings = make(model_package_group=group)
    rows = training_rows(settings)
    data = write_parquet(rows, tmp_path / "logged" / "train.parquet")
    log_and_approve(settings, group, sklearn_logger(rows), dataset=data)

    outputs = scoring_outputs(settings)
    assert outputs["category_vocabularies_from"].startswith(
        f"profile computed at first use from {data} ("
    )
    # two_year is not in the training data: counted as unseen against its vocabulary.
    assert outputs["unseen_categories"]["contract_type"] > 0
    [cached] = cached_profiles(settings)
    assert json.loads(cached.read_text())["category_vocabularies"] == {
        "contract_type": sorted(rows.contract_type.unique())
    }


def test_no_training_data_found_says_which_key_to_set(make) -> None:
    group = f"byo-none-{uuid.uuid4().hex[:6]}"
    settings = make(model_package_group=group)
    log_and_approve(settings, group, sklearn_logger(training_rows(settings)))

    outputs = scoring_outputs(settings)
    assert outputs["category_vocabularies_from"].startswith("none: ")
    assert "set registry.training_data" in outputs["category_vocabularies_from"]
    assert "unseen_categories" not in outputs or not outputs["unseen_categories"]
    assert cached_profiles(settings) == []
