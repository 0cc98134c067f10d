"""The ModelRegistry contract, one suite run against every implementation.

``mlflow``: MLflow on SQLite in a tmp folder. ``sagemaker``: SageMaker Model Registry on
moto's server, model archives in its S3. Each is built by its constructor with an injected
client (an ``MlflowClient``; boto3 clients), and once more through ``open_registry`` to show
the factory builds the same thing from settings. Registering costs a second or two, so each
implementation's world (two versions of one small model) is made once per module; the one
test that changes statuses sets them first.

Implementation-specific checks stay beside their implementation: models registered by other
means, pickles and untrusted types in tests/test_registry.py, archives in
tests/test_archives.py, the model cache in tests/test_model_cache.py, pickle-only packages in
tests/test_aws.py.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from batchscore.config import Settings, load_settings
from batchscore.errors import ConfigError, ModelError, NoApprovedModelError, UnknownVersionError
from batchscore.registry import ModelRegistry, ModelVersion, open_registry

GROUP = "behaviour-group"
PENDING, APPROVED, REJECTED = "PendingManualApproval", "Approved", "Rejected"
OTHER_REGION = "eu-central-1"  # not the seed's: where the injected SageMaker client points


@dataclass
class World:
    """A registry holding v1 and v2 of GROUP, and what they were made from."""

    registry: ModelRegistry
    settings: Settings  # what open_registry needs to reach the same registry
    estimator: object
    frame: pd.DataFrame
    v1: ModelVersion
    v2: ModelVersion


def training_frame() -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(7)
    frame = pd.DataFrame(
        {"tenure": rng.uniform(0, 60, 80), "calls": rng.integers(0, 9, 80).astype("int64")}
    )
    y = ((frame.calls > 4) | (frame.tenure < 6)).astype(int).to_numpy()
    return frame, y


def mlflow_registry(root: Path) -> tuple[ModelRegistry, Settings]:
    from mlflow.tracking import MlflowClient

    from batchscore.registry.mlflow import MlflowRegistry

    uri = f"sqlite:///{root / 'mlflow.db'}"
    artifacts = (root / "mlartifacts").as_uri()
    registry = MlflowRegistry(
        tracking_uri=uri,
        artifact_location=artifacts,
        cache_dir=root / "ws" / "models",
        client=MlflowClient(tracking_uri=uri, registry_uri=uri),
    )
    registry_keys = {"tracking_uri": uri, "artifact_location": artifacts}
    overrides = {"workspace": str(root / "ws"), "registry": registry_keys}
    return registry, load_settings(None, overrides=overrides, env={})


def sagemaker_registry(root: Path) -> tuple[ModelRegistry, Settings]:
    import boto3

    from batchscore.registry.sagemaker import SageMakerRegistry
    from tests.aws_fixtures import REGION, seed_settings

    # The clients injected, in another region than the settings name: the packages are there,
    # so every test shows the registry talks through the clients it was given.
    registry = SageMakerRegistry(
        seed_settings(root),
        cache_dir=root / "ws" / "models",
        sagemaker_client=boto3.client("sagemaker", region_name=OTHER_REGION),
        s3_client=boto3.client("s3", region_name=REGION),
    )
    return registry, seed_settings(root, region=OTHER_REGION)  # for open_registry


@pytest.fixture(scope="module", params=["mlflow", "sagemaker"])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    from sklearn.linear_model import LogisticRegression

    root = tmp_path_factory.mktemp(request.param)
    with pytest.MonkeyPatch.context() as env:
        if request.param == "sagemaker":  # moto for this module, clean, with the seed's bucket
            from tests.aws_fixtures import aws_environment, reset_moto

            moto_url = request.getfixturevalue("moto_url")
            for name, value in aws_environment(moto_url).items():
                env.setenv(name, value)
            env.delenv("AWS_PROFILE", raising=False)
            reset_moto(moto_url)
            registry, settings = sagemaker_registry(root)
        else:
            registry, settings = mlflow_registry(root)
        frame, y = training_frame()
        estimator = LogisticRegression(max_iter=500).fit(frame, y)
        profile = {"target_column": "churn", "rows": len(frame)}
        v1 = registry.register_sklearn(GROUP, estimator, frame.head(5), profile=profile)
        v2 = registry.register_sklearn(
            GROUP, estimator, frame.head(5), profile=profile, description="the second"
        )
        yield World(registry, settings, estimator, frame, v1, v2)


# Registering and listing --------------------------------------------------------------------


def test_registered_versions_start_pending_and_list_newest_first(world: World) -> None:
    assert (world.v1.group, world.v1.version, world.v1.status) == (GROUP, 1, PENDING)
    assert (world.v2.version, world.v2.status) == (2, PENDING)
    listed = world.registry.list_versions(GROUP)
    assert [v.version for v in listed] == [2, 1]
    assert [v.source for v in listed] == [world.v2.source, world.v1.source]


def test_get_version_is_the_listed_version(world: World) -> None:
    got = world.registry.get_version(GROUP, 1)
    assert (got.group, got.version, got.source) == (GROUP, 1, world.v1.source)
    assert got.created == world.v1.created


def test_an_unknown_group_has_no_versions(world: World) -> None:
    assert world.registry.list_versions("no-such-group") == []
    with pytest.raises(NoApprovedModelError, match="'no-such-group' has no versions"):
        world.registry.resolve("no-such-group")


def test_an_unknown_version_or_status_is_refused_naming_what_there_is(world: World) -> None:
    with pytest.raises(UnknownVersionError, match=r"has no version 99 \(versions: v2, v1\)"):
        world.registry.get_version(GROUP, 99)
    with pytest.raises(ModelError, match="has no version 99"):
        world.registry.set_status(GROUP, 99, APPROVED)
    with pytest.raises(ModelError, match="not one of PendingManualApproval, Approved, Rejected"):
        world.registry.set_status(GROUP, 1, "Approve")


# Approval -----------------------------------------------------------------------------------


def test_resolve_picks_the_newest_approved_version(world: World) -> None:
    registry = world.registry
    for version in (1, 2):
        registry.set_status(GROUP, version, PENDING)
    with pytest.raises(NoApprovedModelError, match="no version with status 'Approved'"):
        registry.resolve(GROUP)
    assert registry.set_status(GROUP, 1, APPROVED).status == APPROVED
    assert registry.resolve(GROUP).version == 1
    registry.set_status(GROUP, 2, APPROVED)
    assert registry.resolve(GROUP).version == 2
    assert registry.set_status(GROUP, 2, REJECTED).status == REJECTED
    assert registry.resolve(GROUP).version == 1
    assert registry.resolve(GROUP, status=REJECTED).version == 2
    assert [v.status for v in registry.list_versions(GROUP)] == [REJECTED, APPROVED]


# Loading ------------------------------------------------------------------------------------


def test_input_types_come_from_the_signature(world: World) -> None:
    assert world.registry.input_types(world.v1) == {"tenure": "double", "calls": "long"}
    details = world.registry.describe_version(GROUP, 1)
    assert details.input_types == {"tenure": "double", "calls": "long"}
    assert details.profile == {"target_column": "churn", "rows": 80}


def test_a_loaded_model_predicts_as_the_estimator_it_was_made_from(world: World) -> None:
    loaded = world.registry.load(world.registry.get_version(GROUP, 1))
    assert loaded.version.version == 1
    assert loaded.input_columns == ["tenure", "calls"]
    assert loaded.classes == [0, 1]
    assert loaded.profile == {"target_column": "churn", "rows": 80}
    batch = pa.Table.from_pandas(world.frame[["calls", "tenure"]], preserve_index=False)
    predicted, probability = loaded.predict(batch)  # columns matched by name, not position
    expected = world.estimator.predict_proba(world.frame)  # type: ignore[attr-defined]
    np.testing.assert_allclose(probability, expected[:, 1], rtol=1e-12)
    assert predicted.tolist() == expected.argmax(axis=1).tolist()


def test_the_factory_builds_the_same_registry_from_settings(world: World) -> None:
    opened = open_registry(world.settings)
    assert type(opened) is type(world.registry)
    assert [v.source for v in opened.list_versions(GROUP)] == [world.v2.source, world.v1.source]


# Choosing an implementation ----------------------------------------------------------------


def test_an_unknown_type_names_the_known_ones(empty_settings) -> None:
    from batchscore.config import RegistrySettings

    # model_copy skips validation: the factory's own check, behind the config's.
    settings = empty_settings.model_copy(
        update={"registry": RegistrySettings.model_construct(type="mlfow")}
    )
    with pytest.raises(ConfigError, match=r"Did you mean 'mlflow'\? Known types: mlflow, "):
        open_registry(settings)


def test_sagemaker_without_boto3_names_the_extra(
    empty_settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)  # import boto3 now fails, as uninstalled
    settings = empty_settings.model_copy(update={"backend": "aws"})
    with pytest.raises(
        ConfigError,
        match=r"model registry type 'sagemaker' needs boto3, which is not installed: "
        r"pip install 'batchscore\[aws\]'\.",
    ):
        open_registry(settings)
