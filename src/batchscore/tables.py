"""The Iceberg catalog, the predictions table, its atomic publish, and SQL through DuckDB.

Catalog settings are pyiceberg properties passed through untouched, so whatever works in
``.pyiceberg.yaml`` works here. The embedded default is a SqlCatalog on SQLite in the workspace.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.exceptions import (
    CommitFailedException,
    NamespaceAlreadyExistsError,
    NoSuchNamespaceError,
    NoSuchTableError,
    TableAlreadyExistsError,
    ValidationException,
)
from pyiceberg.expressions import AlwaysTrue, And, BooleanExpression, EqualTo
from pyiceberg.table import Table
from pyiceberg.transforms import IdentityTransform

from batchscore.config import SQL_IDENTIFIER, Settings, validate_identifier
from batchscore.errors import (
    BatchScoreError,
    CommitConflictError,
    ConfigError,
    PublishError,
    QueryError,
    TransientStoreError,
    is_busy_error,
)
from batchscore.faults import failpoint

# The predictions table: the seed's four columns, then lineage, then the partition column.
PREDICTIONS_SCHEMA = pa.schema(
    [
        pa.field("customer_id", pa.string()),
        pa.field("prediction", pa.int32()),
        pa.field("prediction_probability", pa.float64()),
        pa.field("timestamp", pa.timestamp("us")),
        pa.field("model_name", pa.string()),
        pa.field("model_version", pa.int32()),
        pa.field("run_id", pa.string()),
        pa.field("pipeline_name", pa.string()),
        pa.field("id_range", pa.string()),
        pa.field("inference_date", pa.date32()),
    ]
)
PARTITION_COLUMN = "inference_date"
# Full (untruncated) column bounds for the columns `replace` deletes by. pyiceberg's default,
# truncate(16), cuts "classification-model-batch-inference-pipeline" short, so it cannot prove
# that a whole file matches and rewrites it instead of dropping it: at 10M customers that read
# 10M rows back (2.6 s, +1.1 GiB peak) in a commit that needs only metadata.
TABLE_PROPERTIES = {
    f"write.metadata.metrics.column.{column}": "full"
    for column in ("pipeline_name", "id_range", "run_id")
}
RUN_ID_PROPERTY = "batchscore.run_id"


def open_catalog(settings: Settings) -> Catalog:
    """Open the configured Iceberg catalog (a SQLite SqlCatalog in the workspace by default).

    Raises:
        ConfigError: the catalog cannot be opened with the given properties.
    """
    properties = settings.catalog_properties
    if not settings.catalog:
        settings.workspace_path.mkdir(parents=True, exist_ok=True)
    try:
        catalog = load_catalog("batchscore", **properties)
        _use_wal(properties.get("uri", ""))
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
    if not uri.startswith("sqlite:///"):
        return
    import sqlite3

    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    con = sqlite3.connect(path, timeout=30)
    try:
        if con.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            con.execute("PRAGMA journal_mode=WAL")
    finally:
        con.close()


def ensure_namespace(catalog: Catalog, namespace: str) -> None:
    with contextlib.suppress(NamespaceAlreadyExistsError):
        catalog.create_namespace(namespace)


def load_table(catalog: Catalog, identifier: str) -> Table | None:
    """The table, or None when it (or its namespace) does not exist."""
    try:
        return catalog.load_table(identifier)
    except (NoSuchTableError, NoSuchNamespaceError):
        return None


def ensure_predictions_table(catalog: Catalog, database: str, table_name: str) -> Table:
    """Create ``database.table_name`` with the predictions schema, partitioned by date."""
    validate_identifier(database, "athena_database")
    validate_identifier(table_name, "athena_output_table")
    identifier = f"{database}.{table_name}"
    table = load_table(catalog, identifier)
    if table is not None:
        missing = {k: v for k, v in TABLE_PROPERTIES.items() if table.properties.get(k) != v}
        if missing:  # a table made by an earlier version: files added from now on get them
            with table.transaction() as tx:
                tx.set_properties(missing)
            table = catalog.load_table(identifier)
        return table
    ensure_namespace(catalog, database)
    try:
        # Schema, partition spec and properties in one commit: a concurrent writer never
        # sees the table half made (unpartitioned, or without the full-bounds properties).
        return catalog.create_table(
            identifier,
            schema=_iceberg_schema(),
            partition_spec=_partition_spec(),
            properties=TABLE_PROPERTIES,
        )
    except TableAlreadyExistsError:  # another process created it first
        return catalog.load_table(identifier)


def _iceberg_schema() -> Any:
    """PREDICTIONS_SCHEMA as an Iceberg schema, field ids 1..n in column order."""
    from pyiceberg.io.pyarrow import pyarrow_to_schema
    from pyiceberg.schema import Schema

    with_ids = pa.schema(
        [
            f.with_metadata({b"PARQUET:field_id": str(i).encode()})
            for i, f in enumerate(PREDICTIONS_SCHEMA, start=1)
        ]
    )
    converted = pyarrow_to_schema(with_ids)
    return Schema(*converted.fields, schema_id=0)


def _partition_spec() -> Any:
    from pyiceberg.partitioning import PartitionField, PartitionSpec

    source = PREDICTIONS_SCHEMA.get_field_index(PARTITION_COLUMN) + 1
    return PartitionSpec(
        PartitionField(
            source_id=source, field_id=1000, transform=IdentityTransform(), name=PARTITION_COLUMN
        )
    )


def drop_table(catalog: Catalog, identifier: str) -> None:
    """Drop a table and delete its files.

    Raises:
        ConfigError: no such table.
    """
    namespace, _, name = identifier.partition(".")
    validate_identifier(namespace, "athena_database")
    validate_identifier(name, "athena_output_table")
    table = load_table(catalog, identifier)
    if table is None:
        raise ConfigError(f"table {identifier} does not exist; there is nothing to drop.")
    location = _local_path(table.location())
    catalog.drop_table(identifier)
    if location is not None and location.exists():
        shutil.rmtree(location)


@dataclass(frozen=True)
class LogicalRun:
    """What makes two runs "the same run" for write mode ``replace``."""

    pipeline_name: str
    inference_date: dt.date
    id_range: str

    def filter(self) -> BooleanExpression:
        return And(
            EqualTo(PARTITION_COLUMN, self.inference_date.isoformat()),
            And(
                EqualTo("pipeline_name", self.pipeline_name),
                EqualTo("id_range", self.id_range),
            ),
        )


def find_run_commit(table: Table, run_id: str) -> int | None:
    """The snapshot id of a commit made by ``run_id``, or None: a resume looks here first."""
    for snapshot in table.snapshots():
        summary = snapshot.summary
        if summary is not None and summary.additional_properties.get(RUN_ID_PROPERTY) == run_id:
            return snapshot.snapshot_id
    return None


def _local_path(uri: str) -> Path | None:
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return Path(parsed.path if parsed.scheme else uri)
    return None


def _place_file(source: Path, target_dir_uri: str, name: str, io: Any) -> str:
    """Put a finished Parquet file into the table's data folder: a hard link where possible,
    else a copy through the table's own FileIO (S3 with the catalog's endpoint and region)."""
    target_dir = _local_path(target_dir_uri)
    if target_dir is None:
        uri = f"{target_dir_uri.rstrip('/')}/{name}"
        with open(source, "rb") as data, io.new_output(uri).create(overwrite=True) as out:
            shutil.copyfileobj(data, out, 8 << 20)
        return uri
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / name
    if target.exists():
        target.unlink()
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
    return f"file://{target}"  # not as_uri(): pyiceberg does not unquote '%3D' back to '='.


def publish_predictions(
    table: Table,
    files: Sequence[Path],
    *,
    run_id: str,
    logical_run: LogicalRun,
    write_mode: str,
) -> int:
    """Commit prediction files to the table in one Iceberg commit and return its snapshot id.

    The files already have the table's schema, so they are linked into the table's data folder
    and registered as they are, not rewritten. ``replace`` first drops the rows of earlier runs
    of the same logical run, ``overwrite`` drops every row, ``append`` drops nothing; the drop
    and the add are one commit, so readers see the table before or after, never between.

    Raises:
        CommitConflictError: another writer committed first (transient: retry the publish).
        PublishError: any other failure; the table is unchanged.
    """
    if write_mode not in ("replace", "append", "overwrite"):
        raise ConfigError(f"write_mode {write_mode!r} must be one of replace, append, overwrite.")
    data_dir = (
        f"{table.location().rstrip('/')}/data/"
        f"{PARTITION_COLUMN}={logical_run.inference_date.isoformat()}"
    )
    properties = {RUN_ID_PROPERTY: run_id}
    uris: list[str] = []
    try:
        # Placed files are invisible until the commit names them; a failed commit leaves
        # them as unreferenced files, which no reader sees.
        uris = [
            _place_file(path, data_dir, f"{run_id}-{i:05d}.parquet", table.io)
            for i, path in enumerate(files)
        ]
        failpoint("Publish:files-placed")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Delete operation did not match any records")
            with table.transaction() as tx:
                if write_mode == "replace":
                    tx.delete(logical_run.filter(), snapshot_properties=properties)
                elif write_mode == "overwrite":
                    tx.delete(AlwaysTrue(), snapshot_properties=properties)
                if uris:
                    tx.add_files(uris, snapshot_properties=properties)
    except (CommitFailedException, ValidationException) as exc:
        raise CommitConflictError(
            f"another writer committed to {'.'.join(table.name())} first: {exc}. "
            "The table is unchanged; the publish is retried."
        ) from exc
    except BatchScoreError:
        raise
    except Exception as exc:
        if is_busy_error(exc):
            raise TransientStoreError(
                f"the catalog database was locked while committing to "
                f"{'.'.join(table.name())}: {exc}. The table is unchanged; the publish is retried."
            ) from exc
        raise PublishError(
            f"committing {len(files)} prediction file(s) to {'.'.join(table.name())} failed: "
            f"{type(exc).__name__}: {exc}. The table is unchanged."
        ) from exc
    snapshot = table.current_snapshot()
    assert snapshot is not None
    return snapshot.snapshot_id


# SQL --------------------------------------------------------------------------------------

_TABLE_REFERENCE = re.compile(r"\b([A-Za-z_][A-Za-z0-9_]*)\s*\.\s*([A-Za-z_][A-Za-z0-9_]*)\b")


def _referenced_tables(catalog: Catalog, sql: str) -> list[tuple[str, str]]:
    """``namespace.table`` pairs in the SQL that name tables of the catalog."""
    found: list[tuple[str, str]] = []
    for namespace, name in _TABLE_REFERENCE.findall(sql):
        pair = (namespace, name)
        if pair in found:
            continue
        if load_table(catalog, f"{namespace}.{name}") is not None:
            found.append(pair)
    return found


def sql_string(text: str) -> str:
    """A SQL string literal (for DDL, where DuckDB takes no parameters)."""
    return "'" + text.replace("'", "''") + "'"


def _register_table(con: object, namespace: str, name: str, table: Table) -> list[str]:
    """Expose an Iceberg table's current snapshot to DuckDB as ``namespace.name``.

    Returns the data files the view reads (the only files the query may then open).
    """
    import duckdb

    assert isinstance(con, duckdb.DuckDBPyConnection)
    con.execute(f'CREATE SCHEMA IF NOT EXISTS "{namespace}"')
    tasks = list(table.scan().plan_files())
    local = [_local_path(task.file.file_path) for task in tasks]
    view = f'"{namespace}"."{name}"'
    if tasks and all(p is not None for p in local) and not any(t.delete_files for t in tasks):
        file_list = ", ".join(sql_string(str(p)) for p in local)
        con.execute(
            f"CREATE VIEW {view} AS SELECT * FROM read_parquet([{file_list}], union_by_name = true)"
        )
        return [str(p) for p in local]
    arrow = table.scan().to_arrow() if tasks else table.schema().as_arrow().empty_table()
    temp = f"__batchscore_{namespace}_{name}"
    con.register(temp, arrow)
    con.execute(f'CREATE VIEW {view} AS SELECT * FROM "{temp}"')
    return []


def check_select(sql: str, dialect: str = "duckdb") -> None:
    """Refuse anything but one SELECT (or WITH … SELECT) statement.

    DuckDB's parser decides. For another engine's SQL (``dialect="athena"``: Trino syntax
    DuckDB may not parse) a statement DuckDB cannot parse is judged by its first keyword
    after comments; the engine itself then refuses more than one statement.

    Raises:
        QueryError: naming what was given instead.
    """
    import duckdb

    try:
        statements = duckdb.connect(":memory:").extract_statements(sql)
    except duckdb.Error as exc:
        if dialect == "duckdb":
            raise QueryError(f"the query does not parse: {exc}") from exc
        stripped = re.sub(r"--[^\n]*|/\*.*?\*/", " ", sql, flags=re.DOTALL).lstrip(" \t\n(")
        keyword = (stripped.split(None, 1) or [""])[0].upper()
        if keyword not in ("SELECT", "WITH"):
            raise QueryError(
                f"only SELECT queries are allowed (got {keyword or 'nothing'}); "
                "batchscore query never modifies a table."
            ) from None
        return
    if len(statements) != 1:
        raise QueryError(
            f"give exactly one SQL statement (got {len(statements)}); "
            "separate queries are run one at a time."
        )
    if statements[0].type != duckdb.StatementType.SELECT:
        raise QueryError(
            f"only SELECT queries are allowed (got {statements[0].type.name}); "
            "batchscore query never modifies a table."
        )


def run_query(catalog: Catalog, sql: str, parameters: Sequence[object] | None = None) -> pa.Table:
    """Run one read-only SQL statement over the catalog's tables with DuckDB.

    Tables are named ``namespace.table`` (e.g. ``ml_metrics.mlops_poc_daily_inference``).
    Only a single SELECT (or WITH … SELECT) is accepted, so a query cannot change anything.
    Values belong in ``parameters`` (``?`` placeholders), never pasted into the SQL.

    Raises:
        QueryError: the SQL is not one SELECT, or DuckDB rejects it.
    """
    import duckdb

    check_select(sql)
    con = duckdb.connect(":memory:")
    try:
        readable: list[str] = []
        for namespace, name in _referenced_tables(catalog, sql):
            validate_identifier(namespace, "namespace", SQL_IDENTIFIER)
            validate_identifier(name, "table", SQL_IDENTIFIER)
            table = catalog.load_table(f"{namespace}.{name}")
            readable += _register_table(con, namespace, name, table)
        # From here on the query can open the tables' own data files and nothing else.
        con.execute("SET allowed_paths = $paths", {"paths": readable})
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        try:
            return con.sql(sql, params=list(parameters or [])).to_arrow_table()
        except duckdb.Error as exc:
            tables = ", ".join(
                f"{ns}.{t}"
                for ns in [n[0] for n in catalog.list_namespaces()]
                for _, t in catalog.list_tables(ns)
            )
            raise QueryError(f"{exc}. Tables in the catalog: {tables or 'none'}.") from exc
    finally:
        con.close()


QUERY_ENGINES = ("duckdb", "athena")


def query(
    settings: Settings,
    sql: str,
    parameters: Sequence[object] | None = None,
    via: str | None = None,
) -> pa.Table:
    """``batchscore query``: one SELECT over the catalog's tables, as an Arrow table.

    ``via="duckdb"`` reads the Iceberg tables with DuckDB on this machine (the default for the
    local backend); ``via="athena"`` sends the query to Amazon Athena, results kept in
    ``athena_query_results`` (the default for the aws backend).

    Raises:
        QueryError: the SQL is not one SELECT, or the engine rejects or fails it.
        ConfigError: ``via`` is neither engine.
    """
    if query_engine(settings, via) == "duckdb":
        return run_query(open_catalog(settings), sql, parameters)
    from batchscore.athena import athena_query

    return athena_query(settings, sql, parameters).table


def query_engine(settings: Settings, via: str | None = None) -> str:
    """``via`` checked, else the backend's engine: Athena for aws, DuckDB for local."""
    via = via or ("athena" if settings.backend == "aws" else "duckdb")
    if via not in QUERY_ENGINES:
        raise ConfigError(f"--via {via!r} must be {' or '.join(QUERY_ENGINES)}.")
    return via
