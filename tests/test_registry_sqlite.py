"""The MLflow SQLite store read without MLflow (registry/mlflow_sqlite.py) answers exactly what
MLflow's own client answers, and hands over to MLflow whenever it cannot be sure."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from mlflow import MlflowClient

from batchscore.registry import mlflow_sqlite
from batchscore.registry.mlflow import MlflowRegistry


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite store made by plain MLflow calls: two groups, tagged versions, one deleted."""
    database = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    # registry_uri too: an earlier test's mlflow.set_registry_uri would otherwise win.
    uri = f"sqlite:///{database}"
    client = MlflowClient(uri, registry_uri=uri)
    for group in ("churn", "churn-2"):
        client.create_registered_model(group)
        for n in range(3):
            client.create_model_version(
                group, f"file:///models/{group}/{n}", run_id=None,
                tags={"approval_status": ["Approved", "Rejected", "PendingManualApproval"][n],
                      "note": f"{group} {n}"},
                description="" if n else f"first of {group}",
            )  # fmt: skip
    client.set_model_version_tag("churn", "1", "approval_status", "Rejected")  # updated later
    client.delete_model_version("churn", "2")
    return database


def as_mlflow(mv) -> tuple:
    return (mv.name, int(mv.version), mv.creation_timestamp, mv.description, mv.source,
            mv.run_id, dict(mv.tags or {}))  # fmt: skip


def test_the_queries_are_written_for_the_installed_mlflows_schema() -> None:
    """Fails when MLflow's schema moves on: check the queries against the new schema, then
    update KNOWN_SCHEMA (until then every read goes through MLflow: slower, still right)."""
    from mlflow.store.db.utils import _get_latest_schema_revision

    assert _get_latest_schema_revision() == mlflow_sqlite.KNOWN_SCHEMA


def test_versions_are_read_as_mlflow_reads_them(store: Path) -> None:
    client = MlflowClient(f"sqlite:///{store}", registry_uri=f"sqlite:///{store}")
    for group in ("churn", "churn-2", "absent"):
        ours = mlflow_sqlite.search_versions(store, group)
        theirs = client.search_model_versions(f"name = '{group}'")
        assert ours is not None
        assert [as_mlflow(v) for v in ours] == [as_mlflow(v) for v in theirs]
    for version in (1, 3):
        ours = mlflow_sqlite.get_version(store, "churn", version)
        assert as_mlflow(ours) == as_mlflow(client.get_model_version("churn", str(version)))
    assert [v.version for v in mlflow_sqlite.search_versions(store, "churn")] == [3, 1]
    assert mlflow_sqlite.get_version(store, "churn", 2) is None  # deleted: MLflow's error


def test_the_registry_gives_the_same_versions_either_way(store: Path, tmp_path: Path) -> None:
    uri = f"sqlite:///{store}"
    direct = MlflowRegistry(uri, "file:///x", tmp_path / "models", writable=False)
    through_mlflow = MlflowRegistry(uri, "file:///x", tmp_path / "models", writable=False,
                                    client=MlflowClient(uri, registry_uri=uri))  # fmt: skip
    assert direct.database == store and through_mlflow.database is None
    for group in ("churn", "churn-2"):
        assert direct.list_versions(group) == through_mlflow.list_versions(group)
    assert direct.resolve("churn-2") == through_mlflow.resolve("churn-2")
    assert direct.resolve("churn-2").version == 1
    assert direct.get_version("churn-2", 2) == through_mlflow.get_version("churn-2", 2)
    assert direct.status_history(direct.get_version("churn", 1)) is None
    assert direct._client is None  # all of it answered without MLflow


def test_it_hands_over_to_mlflow_when_unsure(store: Path, tmp_path: Path, monkeypatch) -> None:
    assert mlflow_sqlite.search_versions(tmp_path / "none.db", "churn") is None
    assert mlflow_sqlite.search_versions(None, "churn") is None
    other = tmp_path / "other.db"
    other.write_bytes(store.read_bytes())
    with sqlite3.connect(other) as connection:
        connection.execute("UPDATE alembic_version SET version_num = 'an0ther0ne'")
    assert mlflow_sqlite.search_versions(other, "churn") is None
    assert mlflow_sqlite.get_version(other, "churn", 1) is None
    not_a_store = tmp_path / "empty.db"
    sqlite3.connect(not_a_store).close()
    assert mlflow_sqlite.search_versions(not_a_store, "churn") is None
    monkeypatch.setenv("MLFLOW_ENABLE_WORKSPACES", "true")
    assert mlflow_sqlite.search_versions(store, "churn") is None
