"""Model versions read straight from an MLflow SQLite store, without importing MLflow.

``import mlflow`` and an ``MlflowClient`` on SQLite cost 1.5–3 s of a run's start-up (MLflow's
own imports, SQLAlchemy's ORM, the store's schema checks) for what is two small SELECTs. The
local registry (``sqlite:///<workspace>/mlflow.db``) is therefore read here with ``sqlite3``,
with the queries MLflow's ``SqlAlchemyStore`` runs for ``search_model_versions("name = 'g'")``
and ``get_model_version``: the default workspace, internally deleted versions left out, the
same order and limit.

Only a store this module knows answers: a database whose schema revision (``alembic_version``)
is :data:`KNOWN_SCHEMA`, and no MLflow workspaces switched on. Anything else — no database
yet, another MLflow's schema, workspaces, a locked or broken file — returns None, and the
caller asks MLflow itself, so behaviour and errors stay MLflow's own. Writes always go through
MLflow.

Light on purpose: ``sqlite3`` and the standard library only.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

# The MLflow schema revision the queries below are written for (MLflow 3.17's head,
# ``mlflow.store.db.utils._get_latest_schema_revision()``; tests/test_registry_sqlite.py
# fails when the installed MLflow moves on, so this is looked at again then).
KNOWN_SCHEMA = "dc11669786a5"
# MLflow's ``STAGE_DELETED_INTERNAL``, ``DEFAULT_WORKSPACE_NAME`` and the client's default
# ``max_results`` of ``search_model_versions``.
DELETED_INTERNAL = "Deleted_Internal"
DEFAULT_WORKSPACE = "default"
SEARCH_MAX_RESULTS = 10000
# Environment variables that make MLflow's store workspace-aware: MLflow answers then.
WORKSPACE_VARIABLES = ("MLFLOW_ENABLE_WORKSPACES", "MLFLOW_WORKSPACE")

_COLUMNS = "name, version, creation_time, description, source, run_id"


@dataclass(frozen=True)
class StoredVersion:
    """A model version row as MLflow's ``ModelVersion`` entity exposes it."""

    name: str
    version: int
    creation_timestamp: int
    description: str | None
    source: str | None
    run_id: str | None
    tags: dict[str, str] = field(default_factory=dict)


@contextlib.contextmanager
def _connect(database: Path) -> Iterator[sqlite3.Connection]:
    # Read-only: this never creates the file nor takes a write lock.
    connection = sqlite3.connect(f"file:{quote(str(database))}?mode=ro", uri=True, timeout=10)
    try:
        yield connection
    finally:
        connection.close()


def _usable(connection: sqlite3.Connection) -> bool:
    """The store has the schema the queries are written for."""
    try:
        rows = connection.execute("SELECT version_num FROM alembic_version").fetchall()
    except sqlite3.Error:  # no table: MLflow has not created its schema yet
        return False
    return rows == [(KNOWN_SCHEMA,)]


def _tags(connection: sqlite3.Connection, name: str, version: int) -> dict[str, str]:
    rows = connection.execute(
        "SELECT key, value FROM model_version_tags WHERE workspace = ? AND name = ? "
        "AND version = ?",
        (DEFAULT_WORKSPACE, name, version),
    )
    return dict(rows.fetchall())


def _version(connection: sqlite3.Connection, row: tuple) -> StoredVersion:
    name, version, created, description, source, run_id = row
    return StoredVersion(name, int(version), created, description, source, run_id,
                         _tags(connection, name, int(version)))  # fmt: skip


def _answerable(database: Path | None) -> bool:
    if database is None or not database.is_file():
        return False
    return not any(os.environ.get(variable) for variable in WORKSPACE_VARIABLES)


def _select(database: Path | None, where: str, params: tuple) -> list[StoredVersion] | None:
    """The model versions ``where`` selects (with their tags); None when this store must be
    asked through MLflow: not one it knows, or locked, corrupt, or not what is expected —
    then MLflow says what is wrong."""
    if database is None or not _answerable(database):
        return None
    try:
        with _connect(database) as connection:
            if not _usable(connection):
                return None
            rows = connection.execute(
                f"SELECT {_COLUMNS} FROM model_versions WHERE workspace = ? AND {where}",
                (DEFAULT_WORKSPACE, *params),
            ).fetchall()
            return [_version(connection, row) for row in rows]
    except sqlite3.Error:
        return None


def search_versions(database: Path | None, name: str) -> list[StoredVersion] | None:
    """The versions of registered model ``name`` (``search_model_versions("name = '…'")``),
    or None when this store must be asked through MLflow."""
    return _select(
        database,
        "name = ? AND current_stage != ? "
        "ORDER BY last_updated_time DESC, name ASC, version DESC LIMIT ?",
        (name, DELETED_INTERNAL, SEARCH_MAX_RESULTS),
    )


def get_version(database: Path | None, name: str, version: int) -> StoredVersion | None:
    """Version ``version`` of ``name``; None when it does not exist *or* this store must be
    asked through MLflow (the caller then asks MLflow, which raises its own error)."""
    found = _select(
        database, "name = ? AND version = ? AND current_stage != ?",
        (name, version, DELETED_INTERNAL),
    )  # fmt: skip
    return found[0] if found is not None and len(found) == 1 else None
    assert database is not None
    try:
        with _connect(database) as connection:
            if not _usable(connection):
                return None
            rows = connection.execute(
                f"SELECT {_COLUMNS} FROM model_versions WHERE workspace = ? AND name = ? "
                "AND version = ? AND current_stage != ?",
                (DEFAULT_WORKSPACE, name, version, DELETED_INTERNAL),
            ).fetchall()
            return _version(connection, rows[0]) if len(rows) == 1 else None
    except sqlite3.Error:
        return None
