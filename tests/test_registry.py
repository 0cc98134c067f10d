"""The MLflow registry: safe loading, models registered by others, training profiles.

What every registry must do (versions, approval, resolution, loading) is in
tests/test_registry_behaviour.py.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest

from batchscore.errors import ModelLoadError, NoApprovedModelError
from batchscore.pipeline import Pipeline
from batchscore.registry import open_registry
from tests.helpers import log_external, numeric_training_frame
from tests.reliability import record


def test_train_registers_pending_versions_with_their_training_profile(make) -> None:
    """Approval and resolution are the registry contract: tests/test_registry_behaviour.py."""
    from batchscore.feature_store import open_feature_store
    from batchscore.training import train_model

    settings = make(model_package_group="status-test")
    registry = open_registry(settings)
    store = open_feature_store(settings)
    v1 = train_model(settings, store, registry, id_start=1, id_end=600).version
    assert v1.status == "PendingManualApproval"
    profile = registry.load(registry.get_version("status-test", v1.version)).profile
    assert profile["category_vocabularies"]["contract_type"] == [
        "month-to-month",
        "one_year",
        "two_year",
    ]
    assert set(profile["statistics"]["tenure_months"]) >= {"mean", "std", "missing_fraction"}


def test_only_rejected_versions(make) -> None:
    from sklearn.linear_model import LogisticRegression

    from tests.helpers import table_snapshot as snapshot

    settings = make(model_package_group="rejected-only")
    # The same logical run published earlier with an approved model: its rows must stay.
    Pipeline(make(athena_output_table=settings.athena_output_table)).run()
    before = snapshot(settings)
    assert before is not None
    frame, y = numeric_training_frame(settings)
    log_external(settings, "rejected-only", LogisticRegression().fit(frame, y), frame, "Rejected")
    with pytest.raises(NoApprovedModelError, match=r"versions: v1 Rejected"):
        Pipeline(settings).run()
    assert snapshot(settings) == before
    record(
        "model",
        "only Rejected versions",
        outcome="NoApprovedModelError listing the versions; table untouched",
    )


def test_a_model_registered_by_other_means_scores(make) -> None:
    from sklearn.linear_model import LogisticRegression

    settings = make(model_package_group="external-logreg")
    frame, y = numeric_training_frame(settings)
    estimator = LogisticRegression(max_iter=500).fit(frame, y)
    log_external(settings, "external-logreg", estimator, frame, "Approved")
    record = Pipeline(settings).run()
    assert record.status == "succeeded"
    assert record.model_name == "external-logreg"
    # It takes four numeric columns; the others are ignored, not an error.
    ignored = record.steps["BatchInference"].outputs["ignored_columns"]
    assert "contract_type" in ignored


def test_pickle_models_are_refused(make) -> None:
    from sklearn.linear_model import LogisticRegression

    settings = make(model_package_group="pickled")
    frame, y = numeric_training_frame(settings)
    log_external(
        settings,
        "pickled",
        LogisticRegression().fit(frame, y),
        frame,
        "Approved",
        serialization_format="cloudpickle",
    )
    with pytest.raises(ModelLoadError, match=r"saved with 'cloudpickle'.*skops"):
        Pipeline(settings).run()
    record("security", "a pickle/cloudpickle model", outcome="refused: never loaded through pickle")


def test_no_approved_model_suggests_only_a_version_that_loads(make) -> None:
    from sklearn.linear_model import LogisticRegression

    settings = make(model_package_group="hints")
    frame, y = numeric_training_frame(settings)
    model = LogisticRegression().fit(frame, y)
    log_external(settings, "hints", model, frame, "PendingManualApproval")  # v1: loads
    log_external(
        settings, "hints", model, frame, "PendingManualApproval", serialization_format="cloudpickle"
    )  # v2: newest, never loads
    registry = open_registry(settings)
    with pytest.raises(NoApprovedModelError) as error:
        registry.resolve("hints")
    assert "Approve one: batchscore models approve 1 --group hints." in str(error.value)

    registry.set_status("hints", 1, "Rejected")
    with pytest.raises(NoApprovedModelError) as error:
        registry.resolve("hints")
    message = str(error.value)
    assert "None of them can be loaded (v2:" in message and "cloudpickle" in message
    assert "approve 2" not in message


def test_a_model_without_predict_proba_is_refused(make) -> None:
    import mlflow
    import mlflow.sklearn
    from sklearn.svm import LinearSVC

    settings = make(model_package_group="no-proba")
    frame, y = numeric_training_frame(settings)
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    with mlflow.start_run():
        mlflow.sklearn.log_model(
            LinearSVC().fit(frame, y),
            name="m",
            registered_model_name="no-proba",
            pip_requirements=["scikit-learn"],
        )
    registry = open_registry(settings)
    registry.set_status("no-proba", 1, "Approved")
    with pytest.raises(ModelLoadError, match=r"\(LinearSVC\) has no predict_proba"):
        Pipeline(settings).run()
    record("model", "a model without predict_proba", outcome="ModelLoadError naming the class")


def test_corrupt_artifact(make, tmp_path) -> None:
    from sklearn.linear_model import LogisticRegression

    settings = make(model_package_group="corrupt")
    frame, y = numeric_training_frame(settings)
    log_external(settings, "corrupt", LogisticRegression().fit(frame, y), frame, "Approved")
    registry = open_registry(settings)
    version = registry.resolve("corrupt")
    # Corrupt in the artifact store itself (a corrupted cache copy is repaired instead:
    # tests/test_model_cache.py).
    uri = registry.client.get_model_version_download_uri("corrupt", str(version.version))
    (Path(uri.removeprefix("file://")) / "model.skops").write_bytes(b"not a zip file")
    with pytest.raises(ModelLoadError, match="missing or corrupt"):
        registry.load(version)
    record("model", "a corrupt artifact", outcome="ModelLoadError: missing or corrupt")


def test_untrusted_types_are_named(make) -> None:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    settings = make(model_package_group="untrusted")
    frame, y = numeric_training_frame(settings)
    clip = functools.partial(np.clip, a_min=0, a_max=None)
    estimator = make_pipeline(
        FunctionTransformer(clip), RandomForestClassifier(n_estimators=5)
    ).fit(frame, y)
    # The model file lists these as trusted; batchscore does not take a model's word for it.
    log_external(
        settings,
        "untrusted",
        estimator,
        frame,
        "Approved",
        skops_trusted_types=["functools.partial", "numpy.clip", "sklearn.tree._tree.Tree"],
    )
    with pytest.raises(
        ModelLoadError, match=r"does not trust: functools\.partial, numpy\.clip.*trusted_types"
    ):
        Pipeline(settings).run()
    trusted = make(
        model_package_group="untrusted",
        registry={
            "tracking_uri": settings.tracking_uri,
            "artifact_location": settings.artifact_location,
            "trusted_types": ["functools.partial", "numpy.clip"],
        },
    )
    assert Pipeline(trusted).run().status == "succeeded"

    record(
        "security",
        "skops types the model file itself marks trusted",
        outcome="refused until trusted in batchscore's config",
    )
