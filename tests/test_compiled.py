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
import shutil
import sys
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
            booster = model.booster_
            log_and_approve(settings, group, lambda **kw: mlflow.lightgbm.log_model(
                booster, signature=infer_signature(x), pip_requirements=["lightgbm"],
                **kw))  # fmt: skip
        else:
            import mlflow.xgboost
            import xgboost

            model = xgboost.XGBClassifier(n_estimators=20).fit(x, y)
            log_and_approve(settings, group, lambda **kw: mlflow.xgboost.log_model(
                model, signature=infer_signature(x), pip_requirements=["xgboost"],
                **kw))  # fmt: skip
        return []
    import mlflow.sklearn
    import skops.io

    x = frame[[*NUMERIC, *CATEGORICAL]].astype({c: "float64" for c in NUMERIC})
    model = sklearn_model(kind)
    if seed:  # another model: more trees
        model.set_params(classifier__max_iter=30 + seed) if kind == "hgb" else model.set_params(
            classifier__n_estimators=20 + seed
        )
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
    registry = {
        "tracking_uri": settings.tracking_uri,
        "artifact_location": settings.artifact_location,
        "trusted_types": sorted(TRUSTED),
    }
    overrides = {"scoring": "auto", **overrides}  # the default (the tests' settings: library)
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
    assert (
        compiled.outputs("BatchInference")["evaluation"]
        == library.outputs("BatchInference")["evaluation"]
    )


def library_dir(record) -> Path:
    return Path(scoring_of(record)["compiled_library"]).parent


def test_the_cache_compiles_once_per_model_version(shared_dir, groups, tmp_path):
    """scoring: library never compiles; then one compile, a hit, and a new version compiles."""
    workspace = tmp_path / "ws"
    group = "compiled-cache"
    TRUSTED.update(register(shared_dir, "hgb", group))
    library = run(shared_dir, workspace, group, scoring="library")
    assert scoring_of(library)["reason"] == "scoring: library in the config"
    assert not (workspace / "models" / "compiled").exists()

    first = run(shared_dir, workspace, group)
    second = run(shared_dir, workspace, group)
    assert (scoring_of(first)["cache"], scoring_of(second)["cache"]) == ("miss", "hit")
    assert library_dir(first) == library_dir(second)
    assert scoring_of(second)["compile_seconds"] == scoring_of(first)["compile_seconds"] > 0
    assert_same_predictions(predictions(second), predictions(library))

    TRUSTED.update(register(shared_dir, "hgb", group, seed=1))  # another model: version 2
    third = run(shared_dir, workspace, group)
    assert third.model_version == 2
    assert scoring_of(third)["cache"] == "miss"
    assert library_dir(third) != library_dir(first)
    assert sorted(p.name for p in (workspace / "models" / "compiled").iterdir()
                  if not p.name.startswith(".")) == sorted([library_dir(first).name,
                                                           library_dir(third).name])  # fmt: skip


def test_a_library_generated_with_other_code_generation_is_not_reused(
    shared_dir, groups, tmp_path, monkeypatch
):
    """The code generation parameters are part of the key: a library generated without
    quantized thresholds (as before they were used) is compiled again, not loaded."""
    from batchscore.scoring import compiled

    workspace = tmp_path / "ws"
    monkeypatch.setattr(compiled, "CODEGEN_PARAMS", {})
    plain = run(shared_dir, workspace, groups["hgb"])
    monkeypatch.undo()
    quantized = run(shared_dir, workspace, groups["hgb"])
    assert (scoring_of(plain)["cache"], scoring_of(quantized)["cache"]) == ("miss", "miss")
    assert library_dir(plain) != library_dir(quantized)
    meta = json.loads((library_dir(quantized) / "meta.json").read_text())
    assert json.loads(meta["key"]["codegen"]) == {"quantize": 1}
    assert_same_predictions(predictions(quantized), predictions(plain))


def put_other_library(into: Path, other: Path) -> None:
    """Replace a cache entry's library with another model's (and its meta, so it verifies)."""
    for name in ("model.so", "meta.json"):
        shutil.copyfile(other / name, into / name)


def test_a_library_that_differs_falls_back_to_the_library_for_every_row(
    shared_dir, groups, tmp_path, caplog
):
    workspace = tmp_path / "ws"
    reference = run(shared_dir, workspace, groups["hgb"], scoring="library", batch_size=300)
    compiled = run(shared_dir, workspace, groups["hgb"], batch_size=300)
    other = run(shared_dir, workspace, groups["gb"], batch_size=300)  # same 12 features
    assert scoring_of(compiled)["path"] == scoring_of(other)["path"] == "compiled"
    put_other_library(library_dir(compiled), library_dir(other))

    caplog.clear()
    fell_back = run(shared_dir, workspace, groups["hgb"], batch_size=300)
    assert fell_back.status == "succeeded"
    facts = scoring_of(fell_back)
    assert facts["path"] == "library" and facts["cache"] == "hit"
    assert facts["fallback"].startswith("the compiled trees' probabilities differ")
    assert facts["parity"]["max_abs_diff"] > TOLERANCE
    assert "rescoring every row with the library" in caplog.text
    assert_same_predictions(predictions(fell_back), predictions(reference))
    assert (
        fell_back.outputs("BatchInference")["rows"] == reference.outputs("BatchInference")["rows"]
    )

    # scoring: compiled refuses to fall back: the run fails naming the model and the fix.
    with pytest.raises(ModelError) as failed:
        run(shared_dir, workspace, groups["hgb"], scoring="compiled", batch_size=300)
    message = str(failed.value)
    assert (
        "'compiled-hgb' v1" in message
        and "differ from the model's own predict_proba by up to" in message
    )
    assert "Set 'scoring: library' in the config" in message


def scoring_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "scoring: " in line and " — " in line]


def test_without_a_c_compiler_the_library_scores_said_in_one_line(shared_dir, groups, tmp_path):
    settings = settings_for(shared_dir, tmp_path / "ws", groups["hgb"])
    config = config_for(settings, tmp_path / "batchscore.yaml", model_package_group=groups["hgb"],
                        registry={"tracking_uri": settings.tracking_uri,
                                  "artifact_location": settings.artifact_location,
                                  "trusted_types": sorted(TRUSTED)})  # fmt: skip
    venv_bin = str(Path(sys.executable).parent)  # batchscore and python, no gcc, clang or cc
    done = cli("--config", str(config), "run", env={"PATH": venv_bin})
    assert done.returncode == 0, done.stderr
    lines = scoring_lines(done.stdout + done.stderr)
    assert len(lines) == 1, lines
    assert "scoring: library — no C compiler (gcc, clang or cc) on PATH" in lines[0]
    assert not (tmp_path / "ws" / "models" / "compiled").exists()

    listed = cli("--config", str(config), "runs", "list", "--format", "json")
    run_id = json.loads(listed.stdout)[0]["run_id"]
    shown = cli("--config", str(config), "runs", "show", run_id)
    assert shown.returncode == 0, shown.stderr
    assert "library — no C compiler" in shown.stdout


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("logistic", "LogisticRegression is not a tree ensemble batchscore compiles"),
        ("xgb", "XGBoost adds its trees in float32"),
    ],
)
def test_a_model_that_does_not_compile_scores_with_the_library(
    shared_dir, workspace, groups, kind, reason, caplog
):
    record = run(shared_dir, workspace, groups[kind])
    assert record.status == "succeeded"
    facts = scoring_of(record)
    assert facts["path"] == "library" and reason in facts["reason"]
    assert len(scoring_lines(caplog.text)) == 1
    with pytest.raises(ModelError, match=r"cannot be scored compiled: .*Set 'scoring: auto'"):
        run(shared_dir, workspace, groups[kind], scoring="compiled")


def loaded(estimator, frame, group: str):
    """A LoadedModel of a fitted estimator, as a registry hands it over."""
    import datetime as dt

    from batchscore.registry.base import LoadedModel, ModelVersion, check_classifier

    version = ModelVersion(group, 1, "Approved", dt.datetime(2026, 1, 1), "test")
    types = {c: "double" if c in NUMERIC else "string" for c in frame.columns}
    return LoadedModel(version, estimator, types, classes=check_classifier(estimator, version))


@pytest.mark.parametrize("kind", ["hgb", "gb", "rf", "et", "lgb"])
def test_multi_class_models_compile_to_the_same_probabilities(shared_dir, tmp_path, kind):
    """Three classes: the compiled probabilities of every class equal predict_proba's, and the
    predicted class and ranking probability (the best class') equal LoadedModel.predict's."""
    from batchscore.scoring.compiled import plan_scoring

    frame, _ = training_rows(shared_dir)
    y = np.digitize(frame.tenure_months.to_numpy(), [12, 36])  # three classes
    if kind == "lgb":
        import lightgbm

        x = frame[NUMERIC].astype("float64")
        booster = lightgbm.LGBMClassifier(n_estimators=20, verbose=-1).fit(x, y).booster_
        from batchscore.registry.flavors import LightGBMClassifier

        estimator = LightGBMClassifier(booster)
    else:
        x = frame[[*NUMERIC, *CATEGORICAL]].astype({c: "float64" for c in NUMERIC})
        estimator = sklearn_model(kind).fit(x, y)
    model = loaded(estimator, x, f"multi-{kind}")
    plan = plan_scoring("compiled", model, tmp_path)
    assert plan.path == "compiled", plan.reason
    batch = pa.Table.from_pandas(x, preserve_index=False).to_batches()[0]
    proba = plan.compiled.predict_proba(batch, model)
    expected = estimator.predict_proba(model.frame(batch))
    assert proba.shape == expected.shape == (len(x), 3)
    assert np.abs(proba - expected).max() <= TOLERANCE
    got_class, got = model.decide(proba)
    want_class, want = model.predict(batch)
    assert np.array_equal(got_class, want_class) and np.abs(got - want).max() <= TOLERANCE


def test_rows_the_library_raises_on_are_quarantined_on_the_compiled_path(shared_dir, tmp_path):
    """A OneHotEncoder that refuses unseen categories in front of compiled trees: the batch with
    such rows is the library's, bisected; those rows are set aside, the rest scored exactly."""
    import datetime as dt

    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.pipeline import Pipeline as SkPipeline
    from sklearn.preprocessing import OneHotEncoder

    from batchscore.scoring.compiled import plan_scoring
    from batchscore.steps.batch_inference import Scorer
    from batchscore.steps.results import Lineage

    frame, y = training_rows(shared_dir)
    x = frame[["customer_id", *NUMERIC, "contract_type"]].astype({c: "float64" for c in NUMERIC})
    estimator = SkPipeline([
        ("encode", ColumnTransformer([("contract", OneHotEncoder(handle_unknown="error"),
                                       ["contract_type"]), ("numbers", "passthrough", NUMERIC)])),
        ("classify", HistGradientBoostingClassifier(max_iter=20)),
    ]).fit(x.drop(columns="customer_id"), y)  # fmt: skip
    model = loaded(estimator, x.drop(columns="customer_id"), "quarantine-compiled")
    plan = plan_scoring("auto", model, tmp_path)
    assert plan.path == "compiled", plan.reason
    lineage = Lineage("r1", "p", "1-4000", dt.date(2025, 3, 2), dt.datetime(2025, 3, 2))

    def scorer(compiled):
        return Scorer(model, record_identifier="customer_id", lineage=lineage,
                      target_column=None, compiled=compiled)  # fmt: skip

    clean = pa.Table.from_pandas(x.iloc[:1000], preserve_index=False).to_batches()[0]
    scored = scorer(plan.compiled)(clean)
    assert scored.quarantined is None and scored.parity.rows_checked == 1000
    assert scored.parity.deferred_rows == 0

    bad = [3, 500, 999]
    poisoned = x.iloc[:1000].copy()
    poisoned.iloc[bad, poisoned.columns.get_loc("contract_type")] = "weekly"
    batch = pa.Table.from_pandas(poisoned, preserve_index=False).to_batches()[0]
    compiled_scored = scorer(plan.compiled)(batch)
    library_scored = scorer(None)(batch)
    assert compiled_scored.quarantined.column("record_id").to_pylist() == [
        x.customer_id.iloc[i] for i in bad
    ]
    assert compiled_scored.parity.deferred_rows == 1000
    assert compiled_scored.predictions.equals(library_scored.predictions)


@pytest.fixture
def local_ray():
    """Ray on this machine for one test; the pipeline joins it instead of starting its own."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.mark.timeout(600)
def test_the_ray_engine_scores_compiled_as_the_local_engine(
    shared_dir, groups, tmp_path, local_ray
):
    """Actors get the library's bytes with the model, their parity checks reach the driver,
    and a failed check there rescores every row with the library too."""
    workspace = tmp_path / "ws"
    on_ray = {"engine": "ray", "ray_actors": 2, "batch_size": 300}
    local = run(shared_dir, workspace, groups["hgb"], batch_size=300)
    ray_run = run(shared_dir, workspace, groups["hgb"], **on_ray)
    assert ray_run.outputs("BatchInference")["engine"] == "ray"
    facts = scoring_of(ray_run)
    assert facts["path"] == "compiled" and facts["cache"] == "hit", facts["reason"]
    assert facts["parity"]["rows_checked"] == ray_run.outputs("BatchInference")["rows"]
    assert predictions(ray_run).select(["customer_id", "prediction", "prediction_probability"]
                                       ).equals(predictions(local).select(
        ["customer_id", "prediction", "prediction_probability"]))  # fmt: skip

    other = run(shared_dir, workspace, groups["gb"], batch_size=300)
    put_other_library(library_dir(local), library_dir(other))
    fell_back = run(shared_dir, workspace, groups["hgb"], **on_ray)
    assert scoring_of(fell_back)["path"] == "library" and scoring_of(fell_back)["fallback"]
    assert_same_predictions(predictions(fell_back), predictions(local))


def test_the_model_is_compiled_on_its_loading_thread_while_datasource_reads(
    shared_dir, workspace, groups
):
    """The loading thread that loads the model then compiles it (or loads its library from
    the cache), so BatchInference finds the plan made; ``scoring: library`` makes one too."""
    from batchscore.registry import open_registry
    from batchscore.steps.context import ModelLoad

    for mode, path in (("auto", "compiled"), ("library", "library")):
        settings = settings_for(shared_dir, workspace, groups["hgb"], scoring=mode)
        registry = open_registry(settings)
        load = ModelLoad(registry, registry.resolve(groups["hgb"]), settings)
        try:
            plan = load.scoring()
        finally:
            load.close()
        assert plan is not None and plan.path == path, mode
    # Without the settings (a caller that only wants the model), no plan is made.
    load = ModelLoad(registry, registry.resolve(groups["hgb"]))
    assert load.scoring() is None and load.result().version.group == groups["hgb"]
    load.close()
