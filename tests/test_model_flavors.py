"""Models batchscore did not train: XGBoost, LightGBM, CatBoost and ONNX, registered by plain
``mlflow.<flavor>.log_model`` calls, loaded natively (never through pickle).

Each model is trained here on a small frame with a categorical column (``plan``) where the
library takes one, registered in MLflow on SQLite, then loaded by batchscore's registry from
rows as batchscore reads them (Arrow, ``plan`` as strings). Its probabilities must equal the
library's own ``predict_proba`` on the same rows (≤ 1e-9) and what MLflow's own pyfunc loader
predicts in-process (``mlflow.pyfunc.load_model(...).predict``: probabilities for LightGBM
Boosters and ONNX, class labels for the XGBoost and CatBoost sklearn wrappers, compared with
batchscore's predicted class). One flavour also goes through ``mlflow models predict``.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from batchscore.errors import ModelLoadError
from batchscore.registry.base import APPROVAL_TAG
from batchscore.registry.mlflow import MlflowRegistry

PLANS = ["basic", "plus", "pro"]


def frame_and_labels(classes: int = 2, rows: int = 300) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(11)
    frame = pd.DataFrame(
        {
            "tenure": rng.uniform(0, 60, rows),
            "calls": rng.integers(0, 9, rows).astype("float64"),
            "plan": pd.Categorical(rng.choice(PLANS, rows), categories=PLANS),
        }
    )
    score = frame.calls / 3 - frame.tenure / 20 + (frame.plan == "basic") * 1.5
    score = score + rng.normal(0, 0.5, rows)
    if classes == 2:
        return frame, (score > 0).astype(int).to_numpy()
    return frame, np.digitize(score, np.quantile(score, [1 / 3, 2 / 3])).astype(int)


def arrow_rows(frame: pd.DataFrame) -> pa.Table:
    """The rows as batchscore's feature store hands them over: the category as strings."""
    plain = frame.copy()
    if "plan" in plain:
        plain["plan"] = plain["plan"].astype(str)
    return pa.Table.from_pandas(plain, preserve_index=False)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> MlflowRegistry:
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("flavors")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    return MlflowRegistry(
        tracking_uri=uri,
        artifact_location=(root / "mlartifacts").as_uri(),
        cache_dir=root / "ws" / "models",
        client=MlflowClient(tracking_uri=uri, registry_uri=uri),
    )


def register(registry: MlflowRegistry, group: str, log) -> tuple[str, object]:
    """Run ``log(name=…, registered_model_name=group)`` — a plain mlflow.<flavor>.log_model
    call — in a run of its own; return the model URI and batchscore's loaded model."""
    import mlflow

    mlflow.set_tracking_uri(registry.tracking_uri)
    mlflow.set_registry_uri(registry.tracking_uri)
    mlflow.set_experiment(f"external-{group}")
    with mlflow.start_run():
        info = log(name="model", registered_model_name=group)
    version = registry.list_versions(group)[0]
    registry.client.set_model_version_tag(group, str(version.version), APPROVAL_TAG, "Approved")
    return info.model_uri, registry.load(registry.resolve(group))


def batchscore_proba(loaded, table: pa.Table) -> np.ndarray:
    return np.asarray(loaded.estimator.predict_proba(loaded.frame(table)))


def check_ranking(loaded, table: pa.Table, expected: np.ndarray) -> None:
    """LoadedModel.predict: the positive class' probability (binary) or the best one."""
    predicted, probability = loaded.predict(table)
    assert np.array_equal(predicted, expected.argmax(axis=1))
    want = expected[:, 1] if expected.shape[1] == 2 else expected.max(axis=1)
    np.testing.assert_allclose(probability, want, rtol=0, atol=1e-9)


@pytest.mark.parametrize("classes", [2, 3])
def test_xgboost_classifier_with_a_categorical_column(registry, classes: int) -> None:
    import mlflow.xgboost
    import xgboost
    from mlflow.models import infer_signature

    frame, y = frame_and_labels(classes)
    model = xgboost.XGBClassifier(
        n_estimators=20, max_depth=3, enable_categorical=True, tree_method="hist"
    ).fit(frame, y)
    uri, loaded = register(
        registry,
        f"xgb-{classes}",
        lambda **kw: mlflow.xgboost.log_model(
            model, signature=infer_signature(frame), pip_requirements=["xgboost"], **kw
        ),
    )
    table = arrow_rows(frame)
    expected = model.predict_proba(frame)
    np.testing.assert_allclose(batchscore_proba(loaded, table), expected, rtol=0, atol=1e-9)
    check_ranking(loaded, table, expected)
    assert loaded.profile["category_vocabularies"] == {"plan": PLANS}
    assert loaded.profile["profile_source"] == "model (xgboost categories)"
    # MLflow's own loader of the flavour gives the same probabilities. (Its pyfunc cannot
    # score this model: the signature says string, and XGBoost refuses strings.)
    mlflow_says = mlflow.xgboost.load_model(uri).predict_proba(frame)
    np.testing.assert_allclose(batchscore_proba(loaded, table), mlflow_says, rtol=0, atol=1e-9)
    with pytest.raises(Exception, match=r"(?i)categor|dtype"):
        mlflow.pyfunc.load_model(uri).predict(frame.assign(plan=frame.plan.astype(str)))


def test_a_run_with_an_xgboost_model_counts_unseen_categories_from_its_own(make) -> None:
    """A model batchscore did not train has no training profile: the categories come from the
    booster, unseen ones are scored as missing and counted, and the run record says so."""
    import mlflow
    import mlflow.xgboost
    import xgboost
    from mlflow.models import infer_signature

    from batchscore.feature_store import open_feature_store
    from batchscore.pipeline import Pipeline

    settings = make(model_package_group="external-xgb")
    rows = (
        open_feature_store(settings)
        .latest_records(settings.feature_group_name, 1, 1000)
        .to_table()
        .to_pandas()
    )
    rows = rows[rows.contract_type != "two_year"]  # a category the model never sees
    frame = rows[["tenure_months", "num_support_calls", "contract_type"]].astype(
        {"tenure_months": "float64", "num_support_calls": "float64", "contract_type": "category"}
    )
    model = xgboost.XGBClassifier(n_estimators=10, enable_categorical=True).fit(
        frame, rows.churn.to_numpy()
    )
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    mlflow.set_experiment("external-xgb")
    with mlflow.start_run():
        mlflow.xgboost.log_model(
            model,
            name="model",
            signature=infer_signature(frame),
            registered_model_name="external-xgb",
            pip_requirements=["xgboost"],
        )
    mlflow.MlflowClient(settings.tracking_uri).set_model_version_tag(
        "external-xgb", "1", APPROVAL_TAG, "Approved"
    )
    record = Pipeline(settings).run()
    outputs = record.steps["BatchInference"].outputs
    assert outputs["category_vocabularies_from"] == "model (xgboost categories)"
    assert outputs["unseen_categories"]["contract_type"] > 0


@pytest.mark.parametrize("classes", [2, 3])
def test_lightgbm_booster_with_a_categorical_column(registry, classes: int) -> None:
    import lightgbm
    import mlflow.lightgbm

    frame, y = frame_and_labels(classes)
    model = lightgbm.LGBMClassifier(n_estimators=20, min_child_samples=5, verbose=-1).fit(frame, y)
    uri, loaded = register(
        registry,
        f"lgb-{classes}",
        lambda **kw: mlflow.lightgbm.log_model(
            model.booster_, input_example=frame.head(3), pip_requirements=["lightgbm"], **kw
        ),
    )
    table = arrow_rows(frame)
    expected = model.predict_proba(frame)
    np.testing.assert_allclose(batchscore_proba(loaded, table), expected, rtol=0, atol=1e-9)
    check_ranking(loaded, table, expected)
    assert loaded.profile["category_vocabularies"] == {"plan": PLANS}
    mlflow_says = np.asarray(mlflow.pyfunc.load_model(uri).predict(frame))
    ours = batchscore_proba(loaded, table)
    np.testing.assert_allclose(ours[:, 1] if classes == 2 else ours, mlflow_says, atol=1e-9)


def test_catboost_classifier_with_a_categorical_column(registry) -> None:
    import catboost
    import mlflow.catboost
    from mlflow.models import infer_signature

    frame, y = frame_and_labels(2)
    plain = frame.assign(plan=frame.plan.astype(str))
    model = catboost.CatBoostClassifier(
        iterations=30, depth=3, cat_features=["plan"], verbose=False, random_seed=0
    ).fit(plain, y)
    uri, loaded = register(
        registry,
        "catboost",
        lambda **kw: mlflow.catboost.log_model(
            model, signature=infer_signature(plain), pip_requirements=["catboost"], **kw
        ),
    )
    table = arrow_rows(frame)
    expected = model.predict_proba(plain)
    np.testing.assert_allclose(batchscore_proba(loaded, table), expected, rtol=0, atol=1e-9)
    check_ranking(loaded, table, expected)
    labels = np.asarray(mlflow.pyfunc.load_model(uri).predict(plain)).ravel()
    assert np.array_equal(labels.astype(int), loaded.predict(table)[0])


def test_onnx_pipeline_with_one_input_per_column(registry) -> None:
    import mlflow.onnx
    import onnxruntime
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    frame, y = frame_and_labels(3)
    plain = frame.assign(plan=frame.plan.astype(str))
    pipeline = make_pipeline(
        ColumnTransformer(
            [("num", StandardScaler(), ["tenure", "calls"]), ("cat", OneHotEncoder(), ["plan"])]
        ),
        LogisticRegression(max_iter=500),
    ).fit(plain, y)
    onnx_model = convert_sklearn(
        pipeline,
        initial_types=[
            ("tenure", FloatTensorType([None, 1])),
            ("calls", FloatTensorType([None, 1])),
            ("plan", StringTensorType([None, 1])),
        ],
        options={"zipmap": False},
    )
    uri, loaded = register(
        registry,
        "onnx",
        lambda **kw: mlflow.onnx.log_model(onnx_model, pip_requirements=["onnxruntime"], **kw),
    )
    table = arrow_rows(frame)
    session = onnxruntime.InferenceSession(
        onnx_model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    feeds = {
        "tenure": plain[["tenure"]].to_numpy(np.float32),
        "calls": plain[["calls"]].to_numpy(np.float32),
        "plan": plain[["plan"]].to_numpy(object),
    }
    expected = np.asarray(session.run(["probabilities"], feeds)[0], dtype=np.float64)
    ours = batchscore_proba(loaded, table)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-9)
    check_ranking(loaded, table, expected)
    # float32 inside the graph: close to scikit-learn's own float64 probabilities.
    np.testing.assert_allclose(ours, pipeline.predict_proba(plain), atol=1e-5)
    mlflow_says = mlflow.pyfunc.load_model(uri).predict(feeds)["probabilities"]
    np.testing.assert_allclose(ours, np.asarray(mlflow_says, dtype=np.float64), atol=1e-9)


def test_mlflow_models_predict_gives_the_same_probabilities(registry, tmp_path: Path) -> None:
    """The CLI a user would check with, once (it starts a process: ~5 s)."""
    import lightgbm
    import mlflow.lightgbm

    frame, y = frame_and_labels(2, rows=60)
    frame = frame.drop(columns="plan")
    model = lightgbm.LGBMClassifier(n_estimators=10, min_child_samples=5, verbose=-1).fit(frame, y)
    uri, loaded = register(
        registry,
        "lgb-cli",
        lambda **kw: mlflow.lightgbm.log_model(
            model.booster_, input_example=frame.head(3), pip_requirements=["lightgbm"], **kw
        ),
    )
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps({"dataframe_split": frame.to_dict(orient="split")}))
    out = tmp_path / "out.json"
    env_bin = Path(sys.executable).parent
    subprocess.run(
        [
            *(str(env_bin / "mlflow"), "models", "predict", "-m", uri, "-i", str(rows)),
            *("-t", "json", "-o", str(out), "--env-manager", "local"),
        ],
        check=True,
        capture_output=True,
        env={"MLFLOW_TRACKING_URI": registry.tracking_uri, "PATH": str(env_bin)},
        timeout=120,
    )
    mlflow_says = np.asarray(json.loads(out.read_text())["predictions"], dtype=np.float64)
    ours = batchscore_proba(loaded, arrow_rows(frame))[:, 1]
    np.testing.assert_allclose(ours, mlflow_says, rtol=0, atol=1e-9)


def test_a_pyfunc_with_custom_code_is_refused_unless_trusted(registry) -> None:
    import mlflow.pyfunc

    class Doubler(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return np.clip(model_input["tenure"].to_numpy() / 60, 0, 1)

    frame, _ = frame_and_labels(2, rows=20)
    frame = frame.drop(columns="plan")
    from mlflow.models import infer_signature

    register_refused = pytest.raises(ModelLoadError, match=r"mlflow\.xgboost\.log_model")
    with register_refused:
        register(
            registry,
            "custom",
            lambda **kw: mlflow.pyfunc.log_model(
                python_model=Doubler(), signature=infer_signature(frame), pip_requirements=[], **kw
            ),
        )
    version = registry.resolve("custom")
    with pytest.raises(ModelLoadError, match="trust_pickle"):
        registry.load(version)
    trusting = MlflowRegistry(
        tracking_uri=registry.tracking_uri,
        artifact_location=registry.artifact_location,
        cache_dir=registry.cache_dir,
        client=registry.client,
        trust_pickle=True,
    )
    trusted = trusting.load(version)
    assert trusted.vocabulary_source.startswith("none: the model has no training profile")
    _, probability = trusted.predict(arrow_rows(frame))
    np.testing.assert_allclose(probability, np.clip(frame.tenure / 60, 0, 1), atol=1e-12)


def test_a_missing_library_names_the_extra(registry, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow.catboost

    frame, y = frame_and_labels(2, rows=40)
    frame = frame.drop(columns="plan")
    import catboost

    model = catboost.CatBoostClassifier(iterations=3, verbose=False).fit(frame, y)
    register(
        registry,
        "catboost-missing",
        lambda **kw: mlflow.catboost.log_model(model, pip_requirements=["catboost"], **kw),
    )
    monkeypatch.setitem(sys.modules, "catboost", None)  # import catboost now fails
    with pytest.raises(ModelLoadError, match=r"pip install 'batchscore\[catboost\]'"):
        registry.load(registry.resolve("catboost-missing"))


# SageMaker's built-in XGBoost: model.tar.gz holding xgboost-model, on moto -----------------


def put_xgboost_package(tmp_path: Path, settings, content: bytes, metadata: dict[str, str]) -> None:
    """A package as SageMaker's built-in XGBoost training job leaves it: ``xgboost-model`` at
    the top of ``model.tar.gz`` in S3, registered with plain boto3 calls."""
    import io
    import tarfile

    import boto3

    from tests.aws_fixtures import BUCKET, REGION

    model_file = tmp_path / "xgboost-model"
    model_file.write_bytes(content)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(model_file, arcname="xgboost-model")
    key = f"xgb-output/{len(list(tmp_path.iterdir()))}/model.tar.gz"
    boto3.client("s3", region_name=REGION).put_object(
        Bucket=BUCKET, Key=key, Body=buffer.getvalue()
    )
    sagemaker = boto3.client("sagemaker", region_name=REGION)
    group = settings.model_package_group
    with contextlib.suppress(sagemaker.exceptions.ClientError):  # it exists already
        sagemaker.create_model_package_group(ModelPackageGroupName=group)
    sagemaker.create_model_package(
        ModelPackageGroupName=group,
        ModelApprovalStatus="Approved",
        InferenceSpecification={
            "Containers": [{"Image": "xgboost:1.7-1", "ModelDataUrl": f"s3://{BUCKET}/{key}"}],
            "SupportedContentTypes": ["text/csv"],
            "SupportedResponseMIMETypes": ["text/csv"],
        },
        **({"CustomerMetadataProperties": metadata} if metadata else {}),
    )


@pytest.mark.parametrize("model_format", ["json", "ubj"])
def test_a_sagemaker_xgboost_model_file(aws: str, tmp_path: Path, model_format: str) -> None:
    import xgboost

    from batchscore.registry import open_registry
    from tests.aws_fixtures import seed_settings

    frame, y = frame_and_labels(3)
    frame = frame.drop(columns="plan")
    # As the built-in algorithm trains: CSV without a header, so the booster has no names.
    booster = xgboost.train(
        {"objective": "multi:softprob", "num_class": 3, "max_depth": 3},
        xgboost.DMatrix(frame.to_numpy(), label=y),
        num_boost_round=15,
    )
    assert booster.feature_names is None
    settings = seed_settings(tmp_path)
    content = bytes(booster.save_raw(raw_format=model_format))
    put_xgboost_package(tmp_path, settings, content, {"feature_names": "tenure, calls"})
    registry = open_registry(settings)
    loaded = registry.load(registry.resolve(settings.model_package_group))
    assert loaded.input_columns == ["tenure", "calls"]
    # Columns arrive in another order: matched by name, handed to the booster in training order.
    table = arrow_rows(frame[["calls", "tenure"]])
    expected = booster.predict(xgboost.DMatrix(frame.to_numpy())).astype(np.float64)
    np.testing.assert_allclose(batchscore_proba(loaded, table), expected, rtol=0, atol=1e-9)
    check_ranking(loaded, table, expected)


def test_a_sagemaker_xgboost_model_without_feature_names_is_refused(
    aws: str, tmp_path: Path
) -> None:
    import pickle

    import xgboost

    from batchscore.registry import open_registry
    from tests.aws_fixtures import seed_settings

    frame, y = frame_and_labels(2, rows=50)
    booster = xgboost.train(
        {"objective": "binary:logistic"},
        xgboost.DMatrix(frame[["tenure", "calls"]].to_numpy(), label=y),
        num_boost_round=3,
    )
    settings = seed_settings(tmp_path)
    registry = open_registry(settings)
    put_xgboost_package(tmp_path, settings, bytes(booster.save_raw("ubj")), {})
    with pytest.raises(ModelLoadError, match=r"customer-metadata-properties feature_names="):
        registry.load(registry.resolve(settings.model_package_group))
    # SageMaker XGBoost 1.0's pickled booster: refused, whatever it names.
    put_xgboost_package(
        tmp_path, settings, pickle.dumps(booster), {"feature_names": "tenure,calls"}
    )
    with pytest.raises(ModelLoadError, match="pickle"):
        registry.load(registry.resolve(settings.model_package_group))
