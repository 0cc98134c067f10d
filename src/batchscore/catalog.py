"""The Iceberg catalog: its properties, opening it, and what it holds.

Catalog settings are pyiceberg properties passed through untouched, so whatever works in
``.pyiceberg.yaml`` works here; ``catalog.name`` is the catalog's name, as ``load_catalog(name,
**properties)`` takes it, and pyiceberg's own configuration for that name (``.pyiceberg.yaml``
in ``PYICEBERG_HOME``, the home or the current directory, and ``PYICEBERG_CATALOG__<NAME>__*``
variables) is merged under the settings' properties, as pyiceberg merges it. Without catalog
settings, pyiceberg's default catalog (``default-catalog``, else ``default``) is used when its
configuration names one; otherwise each backend has its default: a SqlCatalog on SQLite in the
workspace (local), the Glue catalog with its warehouse in ``s3://bucket/prefix/warehouse``
(aws). The feature store, the Iceberg sink and the DuckDB
query all open the catalog here. Importing this module imports no pyiceberg.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from batchscore.errors import ConfigError, TransientStoreError, is_busy_error
from batchscore.workspace import (
    ensure_writable_workspace,
    readonly_sqlite_url,
    require_sqlite_file,
    require_workspace,
    sqlite_path,
)

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog
    from pyiceberg.table import Table

    from batchscore.config import Settings

# The snapshot-summary key under which a publish records the run that made the commit.
RUN_ID_PROPERTY = "batchscore.run_id"


# The name the catalog is opened under when the settings give none (pyiceberg needs one).
DEFAULT_CATALOG_NAME = "batchscore"


@dataclass(frozen=True)
class CatalogChoice:
    """Which catalog the settings select: its name, its properties, and where they came from."""

    name: str
    properties: dict[str, str]
    # "settings" (the catalog key, merged over pyiceberg's config for the name), "pyiceberg"
    # (.pyiceberg.yaml / PYICEBERG_CATALOG__* alone) or "default" (the backend's default).
    source: str

    @property
    def embedded(self) -> bool:
        """True for the backend's default, which lives with the workspace."""
        return self.source == "default"


def pyiceberg_config(name: str | None) -> tuple[str, dict[str, str]]:
    """pyiceberg's own configuration of catalog ``name`` (its default catalog when None), read
    now — ``.pyiceberg.yaml`` (in ``PYICEBERG_HOME``, ``~`` or the current directory) under
    ``PYICEBERG_CATALOG__<NAME>__<KEY>`` variables — as ``pyiceberg.utils.config.Config``
    reads it (``load_catalog`` reads it once, at import).

    Args:
        name: the catalog's name, or None for pyiceberg's default (``default-catalog``, else
            ``default``).

    Returns:
        The name and its properties ({} when pyiceberg's configuration has none for it).
    """
    from pyiceberg.utils.config import Config

    config = Config()
    chosen = name or config.get_default_catalog_name()
    found = config.get_catalog_config(chosen) or {}
    return chosen, {str(k): str(v) for k, v in found.items() if not isinstance(v, dict)}


def choose_catalog(settings: Settings) -> CatalogChoice:
    """The catalog the settings select, as pyiceberg would select it.

    ``catalog.name`` names it; the other ``catalog`` keys are its properties, merged over
    pyiceberg's own configuration for that name. Without any ``catalog`` key, pyiceberg's
    default catalog when its configuration has one, else the backend's default.

    Raises:
        ConfigError: ``catalog.name`` names a catalog with no properties anywhere; the aws
            backend without ``bucket``.
    """
    given = dict(settings.catalog)
    name = given.pop("name", None) or None
    if name is not None:
        name, configured = pyiceberg_config(name)
        properties = {**configured, **given}
        if not properties:
            raise ConfigError(
                f"catalog.name is {name!r}, but no properties of that catalog were found: "
                f"neither .pyiceberg.yaml (catalog: {name}: …) nor PYICEBERG_CATALOG__"
                f"{name.upper()}__* variables define it. Add them, or set its properties "
                "under 'catalog' (type, uri, warehouse …)."
            )
        return CatalogChoice(name, properties, "settings")
    if given:
        return CatalogChoice(DEFAULT_CATALOG_NAME, given, "settings")
    name, configured = pyiceberg_config(None)
    if configured:
        return CatalogChoice(name, configured, "pyiceberg")
    if settings.backend == "aws":
        from batchscore.aws import glue_catalog_properties

        return CatalogChoice(DEFAULT_CATALOG_NAME, glue_catalog_properties(settings), "default")
    ws = settings.workspace_path
    return CatalogChoice(
        DEFAULT_CATALOG_NAME,
        {
            "type": "sql",
            "uri": f"sqlite:///{ws / 'catalog.db'}",
            "warehouse": (ws / "warehouse").as_uri(),
        },
        "default",
    )


def catalog_properties(settings: Settings) -> dict[str, str]:
    """pyiceberg catalog properties in effect (:func:`choose_catalog`): the configured ones
    (over pyiceberg's configuration for ``catalog.name``), else pyiceberg's default catalog,
    else the backend's default — SQLite in the workspace (local), the Glue catalog with its
    warehouse in ``s3://bucket/prefix/warehouse`` (aws).

    Raises:
        ConfigError: ``catalog.name`` without properties anywhere; the aws backend without
            ``bucket``.
    """
    return choose_catalog(settings).properties


def open_catalog(settings: Settings, *, writable: bool = True) -> Catalog:
    """Open the configured Iceberg catalog (a SQLite SqlCatalog in the workspace by default).

    Args:
        settings: the catalog settings (pyiceberg properties) or the workspace.
        writable: False to only read: the workspace must exist already, nothing is created
            or written, and a SQLite catalog is opened read-only (so a read-only workspace
            works). True (the default) creates the workspace if needed and checks it is
            writable.

    Raises:
        WorkspaceNotFoundError: reading, and no workspace or SQLite catalog file there.
        StorageError: writing, and the workspace is not writable.
        ConfigError: the catalog cannot be opened with the given properties.
    """
    from pyiceberg.catalog import load_catalog

    choice = choose_catalog(settings)
    properties = choice.properties
    if choice.embedded:  # the embedded default lives in the workspace
        if writable:
            ensure_writable_workspace(settings)
        else:
            require_workspace(settings)
    database = sqlite_path(properties.get("uri", ""))
    if not writable and database is not None:
        require_sqlite_file(
            database,
            "Iceberg catalog",
            "'batchscore quickstart' or 'batchscore features create' makes one",
        )
        # No WAL switch, no catalog tables created: a reader changes nothing.
        properties = {
            **properties,
            "uri": readonly_sqlite_url(database),
            "init_catalog_tables": "false",
        }
    try:
        catalog = load_catalog(choice.name, **properties)
        if writable:
            _use_wal(properties.get("uri", ""))
        if getattr(catalog, "engine", None) is not None:  # pyiceberg's SqlCatalog
            from batchscore.workspace import track_engine

            track_engine(catalog.engine)
        return catalog
    except Exception as exc:
        shown = settings.redact(str(exc))
        if is_busy_error(exc):
            raise TransientStoreError(f"the Iceberg catalog database is locked: {shown}") from exc
        raise ConfigError(
            f"cannot open the Iceberg catalog ({settings.redact(str(properties))}): {shown}. "
            "Check the 'catalog' settings; they are pyiceberg catalog properties."
        ) from exc


def _use_wal(uri: str) -> None:
    """Concurrent writers on a SQLite catalog need WAL mode (it persists in the file)."""
    path = sqlite_path(uri)
    if path is None:
        return
    import sqlite3

    con = sqlite3.connect(path, timeout=30)
    try:
        if con.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            con.execute("PRAGMA journal_mode=WAL")
    finally:
        con.close()


def ensure_namespace(catalog: Catalog, namespace: str) -> None:
    """Create ``namespace`` unless it exists (another process may create it at the same time)."""
    from pyiceberg.exceptions import NamespaceAlreadyExistsError

    with contextlib.suppress(NamespaceAlreadyExistsError):
        catalog.create_namespace(namespace)


def load_table(catalog: Catalog, identifier: str) -> Table | None:
    """The table, or None when it (or its namespace) does not exist."""
    from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError

    try:
        return catalog.load_table(identifier)
    except (NoSuchTableError, NoSuchNamespaceError):
        return None


def local_path(uri: str) -> Path | None:
    """The local path of a ``file://`` URI or a plain path; None for remote storage (S3)."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return Path(parsed.path if parsed.scheme else uri)
    return None


@dataclass(frozen=True)
class TableInfo:
    """One table of the catalog, as ``batchscore table list`` shows it."""

    identifier: str  # namespace.table
    rows: int | None  # the current snapshot's total-records
    snapshot_id: int | None  # None: never written to
    last_commit: dt.datetime | None  # UTC
    last_run_id: str | None  # the run that made the current snapshot, if a run did

    def to_dict(self) -> dict[str, object]:
        return {
            "table": self.identifier,
            "rows": self.rows,
            "snapshot_id": self.snapshot_id,
            "last_commit": self.last_commit.isoformat() if self.last_commit else None,
            "last_run_id": self.last_run_id,
        }


def list_tables(catalog: Catalog) -> list[TableInfo]:
    """Every table of every namespace in the catalog (feature groups and predictions), by name."""
    found = []
    for namespace in sorted(catalog.list_namespaces()):
        for identifier in sorted(catalog.list_tables(namespace)):
            name = ".".join(identifier)
            table = catalog.load_table(name)
            snapshot = table.current_snapshot()
            summary = snapshot.summary if snapshot is not None else None
            props = summary.additional_properties if summary is not None else {}
            found.append(
                TableInfo(
                    identifier=name,
                    rows=int(props["total-records"])
                    if "total-records" in props
                    else (0 if snapshot is None else None),
                    snapshot_id=snapshot.snapshot_id if snapshot is not None else None,
                    last_commit=dt.datetime.fromtimestamp(
                        snapshot.timestamp_ms / 1000, dt.UTC
                    ).replace(tzinfo=None)
                    if snapshot is not None
                    else None,
                    last_run_id=props.get(RUN_ID_PROPERTY),
                )
            )
    return found
