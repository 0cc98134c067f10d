"""Shared fixtures: real SQLite catalogs and MLflow stores under tmp paths, nothing mocked.
(Plain helpers, constants and the CLI runner are in ``tests/helpers.py``.)

Training and logging a model costs seconds, so one session-wide "shared" catalog and registry
holds the demo feature group and an approved model; each test gets its own workspace (runs
folder) and its own output table inside them, so tests never see each other's results.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from batchscore import demo
from batchscore.config import Settings, load_settings
from batchscore.feature_store import open_feature_store
from batchscore.registry import open_registry
from batchscore.training import train_model
from tests.helpers import config_for, make_settings, overrides_of  # noqa: F401 - also imported from here

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"


@pytest.fixture(autouse=True)
def _isolate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep the user's config and BATCHSCORE_* variables out of every test."""
    for name in list(os.environ):
        if name.startswith("BATCHSCORE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A catalog with the demo feature group and a registry with one approved model."""
    shared = tmp_path_factory.mktemp("shared")
    settings = make_settings(shared, shared / "ws")
    store = open_feature_store(settings)
    data = demo.generate_churn_data(5000, seed=42)
    store.create_feature_group(settings.feature_group_name, demo.FEATURES)
    store.ingest(settings.feature_group_name, data.records)
    store.delete_records(settings.feature_group_name, data.deleted_ids, event_time=demo.DELETE_TIME)
    store.delete_records(
        settings.feature_group_name, data.stale_delete_ids, event_time=demo.STALE_DELETE_TIME
    )
    registry = open_registry(settings)
    result = train_model(settings, store, registry, id_start=1, id_end=4000)
    registry.set_status(settings.model_package_group, result.version.version, "Approved")
    return shared


@pytest.fixture
def settings(shared_dir: Path, tmp_path: Path) -> Settings:
    return make_settings(shared_dir, tmp_path / "ws")


@pytest.fixture
def make(shared_dir: Path, tmp_path: Path):
    """Build settings on the shared stores with overrides: make(customer_id_end=4100)."""

    def build(**overrides: object) -> Settings:
        workspace = Path(str(overrides.pop("workspace", tmp_path / "ws")))
        return make_settings(shared_dir, workspace, **overrides)

    return build


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """moto's server on 127.0.0.1, one for the whole session (each test resets it: ``aws``)."""
    from tests.aws_fixtures import moto_server

    with moto_server() as url:
        yield url


@pytest.fixture
def aws(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Credentials and endpoints for moto, and a clean moto state (with the seed's bucket)."""
    from tests.aws_fixtures import aws_environment, reset_moto

    for name, value in aws_environment(moto_url).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    reset_moto(moto_url)
    return moto_url


@dataclass(frozen=True)
class PublishedTable:
    """An output table one run has published, for tests that only read it or must leave it
    untouched (refused inputs): ``snapshot`` is its snapshot id after that run."""

    settings: Settings
    config: Path  # a config file for ``settings``
    snapshot: int
    run_id: str


@pytest.fixture(scope="module")
def published(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> PublishedTable:
    """One published run per test module, shared by its tests; a test must not change it (the
    refused-input tests assert it stays as it is)."""
    from batchscore.pipeline import Pipeline

    folder = tmp_path_factory.mktemp("published")
    settings = make_settings(shared_dir, folder / "ws")
    with pytest.MonkeyPatch.context() as monkeypatch:  # _isolate is per test: not yet applied
        for name in [n for n in os.environ if n.startswith("BATCHSCORE_")]:
            monkeypatch.delenv(name)
        run = Pipeline(settings).run()
    assert run.status == "succeeded"
    snapshot = run.steps["Publish"].outputs["snapshot_id"]
    return PublishedTable(settings, config_for(settings, folder / "c.yaml"), snapshot, run.run_id)


@pytest.fixture
def empty_settings(tmp_path: Path) -> Settings:
    """Settings on a brand-new, empty workspace (its own catalog and registry)."""
    return load_settings(path=None, overrides={"workspace": str(tmp_path / "ws")}, env={})


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    from tests import reliability

    reliability.write()
