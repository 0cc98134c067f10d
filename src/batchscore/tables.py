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
import threading
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
from pyiceberg.expressions import And, BooleanExpression, EqualTo, In
from pyiceberg.table import Table
from pyiceberg.transforms import IdentityTransform

from batchscore.clock import utcnow
from batchscore.config import SQL_IDENTIFIER, WRITE_MODES, Settings, validate_identifier
from batchscore.errors import (
    BatchScoreError,
    CommitConflictError,
    ConfigError,
    PublishError,
    PublishRefusedError,
    QueryError,
    QueryRefusedError,
    TransientStoreError,
    is_busy_error,
)
from batchscore.faults import failpoint
from batchscore.records import LogicalRun, parse_id_range
from batchscore.workspace import (
    ensure_writable_workspace,
    readonly_sqlite_url,
    require_sqlite_file,
    require_workspace,
    sqlite_path,
)

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
    properties = settings.catalog_properties
    if not settings.catalog:  # the embedded default lives in the workspace
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
        catalog = load_catalog("batchscore", **properties)
        if writable:
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
    table = _predictions_table(catalog, identifier)
    location = _local_path(table.location())
    catalog.drop_table(identifier)
    if location is not None and location.exists():
        shutil.rmtree(location)


@dataclass(frozen=True)
class SnapshotInfo:
    """One commit of a table, as ``batchscore table snapshots`` lists it."""

    snapshot_id: int
    committed: dt.datetime
    operation: str
    run_id: str | None
    added_rows: int | None
    deleted_rows: int | None
    current: bool


def _predictions_table(catalog: Catalog, identifier: str) -> Table:
    namespace, _, name = identifier.partition(".")
    validate_identifier(namespace, "athena_database")
    validate_identifier(name, "athena_output_table")
    table = load_table(catalog, identifier)
    if table is None:
        raise ConfigError(f"table {identifier} does not exist: no run has published to it yet.")
    return table


def table_snapshots(catalog: Catalog, identifier: str) -> list[SnapshotInfo]:
    """The table's snapshots in the current history, newest first.

    Raises:
        ConfigError: no such table.
    """
    table = _predictions_table(catalog, identifier)
    current = table.current_snapshot()
    found = []
    for snapshot in table.snapshots():
        summary = snapshot.summary
        props = summary.additional_properties if summary is not None else {}

        def count(key: str, props: dict[str, str] = props) -> int | None:
            return int(props[key]) if key in props else None

        found.append(
            SnapshotInfo(
                snapshot_id=snapshot.snapshot_id,
                committed=dt.datetime.fromtimestamp(snapshot.timestamp_ms / 1000, dt.UTC).replace(
                    tzinfo=None
                ),
                operation=str(summary.operation.value) if summary is not None else "?",
                run_id=props.get(RUN_ID_PROPERTY),
                added_rows=count("added-records"),
                deleted_rows=count("deleted-records"),
                current=current is not None and snapshot.snapshot_id == current.snapshot_id,
            )
        )
    return sorted(found, key=lambda s: (s.committed, s.current), reverse=True)


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


def rollback_table(catalog: Catalog, identifier: str, snapshot_id: int) -> None:
    """Make ``snapshot_id`` current again, in one commit.

    Undoes the commits after it (e.g. a publish with the wrong write mode); their snapshots
    and files stay in the table's history, so rolling forward again works the same way.

    Raises:
        ConfigError: no such table, or no such snapshot in its history.
    """
    table = _predictions_table(catalog, identifier)
    try:
        table.manage_snapshots().set_current_snapshot(snapshot_id=snapshot_id).commit()
    except ValueError as exc:
        known = ", ".join(str(s.snapshot_id) for s in table_snapshots(catalog, identifier)[:5])
        raise ConfigError(
            f"cannot roll {identifier} back to snapshot {snapshot_id}: {exc}. Pick one of its "
            f"history ('batchscore table snapshots'; newest: {known or 'none'})."
        ) from exc


def partition_filter(logical_run: LogicalRun) -> BooleanExpression:
    """This pipeline's rows for the run's date (the ``inference_date`` partition)."""
    return And(
        EqualTo(PARTITION_COLUMN, logical_run.inference_date.isoformat()),
        EqualTo("pipeline_name", logical_run.pipeline_name),
    )


def run_filter(logical_run: LogicalRun, id_ranges: Sequence[str] = ()) -> BooleanExpression:
    """This pipeline's rows for the date whose id range is the run's (or in ``id_ranges``)."""
    ranges = {logical_run.id_range, *id_ranges}
    return And(partition_filter(logical_run), In("id_range", ranges))


@dataclass(frozen=True)
class PublishedRun:
    """An earlier run's rows in the table: its id range, run id and start time."""

    id_range: str
    run_id: str
    started: dt.datetime


def published_runs(table: Table, logical_run: LogicalRun) -> list[PublishedRun]:
    """The runs whose rows the table holds for this pipeline and date.

    Read from the data files' column bounds (metadata only: prediction files hold one run
    each, and the lineage columns keep full bounds); a file whose bounds do not pin one run
    (written by something else) has those three columns read instead.
    """
    from pyiceberg.conversions import from_bytes

    schema = table.schema()
    fields = {name: schema.find_field(name) for name in ("id_range", "run_id", "timestamp")}
    found: dict[tuple[str, str], dt.datetime] = {}
    unclear = False
    for task in table.scan(row_filter=partition_filter(logical_run)).plan_files():
        data = task.file
        values: dict[str, object] = {}
        for name, spec in fields.items():
            low = (data.lower_bounds or {}).get(spec.field_id)
            high = (data.upper_bounds or {}).get(spec.field_id)
            if low is None or high is None:
                break
            low_value = from_bytes(spec.field_type, low)
            if name != "timestamp" and low_value != from_bytes(spec.field_type, high):
                break
            values[name] = low_value
        else:
            started = _EPOCH + dt.timedelta(microseconds=int(values["timestamp"]))
            key = (str(values["id_range"]), str(values["run_id"]))
            found[key] = min(found.get(key, started), started)
            continue
        unclear = True
    if unclear:  # read the lineage columns themselves, for this pipeline and date only
        rows = table.scan(
            row_filter=partition_filter(logical_run),
            selected_fields=("id_range", "run_id", "timestamp"),
        ).to_arrow()
        groups = rows.group_by(["id_range", "run_id"]).aggregate([("timestamp", "min")])
        for row in groups.to_pylist():
            found[(row["id_range"], row["run_id"])] = row["timestamp_min"]
    return [PublishedRun(ids, run, started) for (ids, run), started in sorted(found.items())]


_EPOCH = dt.datetime(1970, 1, 1)


def rows_to_replace(
    table: Table, logical_run: LogicalRun, *, run_id: str, started: dt.datetime, write_mode: str
) -> BooleanExpression | None:
    """The rows this run's commit removes, after checking it may remove them.

    ``replace``: earlier runs of the same id range, and of ranges inside this run's (a run
    for 4000–5000 re-scores every customer of an earlier 4000–4500). ``overwrite``: all of this
    pipeline's rows for the date. ``append``: none.

    Raises:
        PublishError: an earlier run's range overlaps this one without lying inside it (a
            customer would be published twice), or the rows to remove were published by a run
            that started after this one (an old run resumed late must not replace newer rows).
    """
    if write_mode == "append":
        return None
    start, end = logical_run.ids
    replaced: list[PublishedRun] = []
    for earlier in published_runs(table, logical_run):
        if earlier.run_id == run_id:
            continue
        first, last = parse_id_range(earlier.id_range)
        inside = start <= first and last <= end
        if write_mode == "replace" and not inside and first <= end and start <= last:
            raise PublishRefusedError(
                f"run {earlier.run_id} published ids {earlier.id_range} of pipeline "
                f"{logical_run.pipeline_name!r} for {logical_run.inference_date}; this run's ids "
                f"{logical_run.id_range} overlap them, so a customer would appear twice. Score "
                "the same range, one that covers it or one that does not overlap; or set "
                "write_mode: overwrite to replace all of this pipeline's rows for the date. "
                "The table is unchanged."
            )
        if write_mode == "overwrite" or inside:
            replaced.append(earlier)
    newer = [r for r in replaced if r.started > started]
    if newer:
        raise PublishRefusedError(
            f"run {newer[0].run_id} (started {newer[0].started.isoformat()}) published ids "
            f"{newer[0].id_range} for {logical_run.inference_date} after this run started "
            f"({started.isoformat()}): publishing now would replace newer predictions with older "
            "ones. Start a new run for the date instead. The table is unchanged."
        )
    if write_mode == "overwrite":
        return partition_filter(logical_run)
    return run_filter(logical_run, [r.id_range for r in replaced])


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
    started: dt.datetime | None = None,
) -> int:
    """Commit prediction files to the table in one Iceberg commit and return its snapshot id.

    The files already have the table's schema, so they are linked into the table's data folder
    and registered as they are, not rewritten. ``replace`` first drops the rows of earlier runs
    of the same logical run (and of id ranges inside this run's), ``overwrite`` drops this
    pipeline's rows for the run's date, ``append`` drops nothing (see ``rows_to_replace``); the
    drop and the add are one commit, so readers see the table before or after, never between.
    ``started`` (the run's start, default now) keeps an old run from replacing a newer one's.

    Raises:
        CommitConflictError: another writer committed first (transient: retry the publish).
        PublishError: any other failure, or a refusal of ``rows_to_replace``; the table is
            unchanged.
    """
    if write_mode not in WRITE_MODES:
        raise ConfigError(f"write_mode {write_mode!r} must be one of {', '.join(WRITE_MODES)}.")
    data_dir = (
        f"{table.location().rstrip('/')}/data/"
        f"{PARTITION_COLUMN}={logical_run.inference_date.isoformat()}"
    )
    properties = {RUN_ID_PROPERTY: run_id}
    uris: list[str] = []
    try:
        drop = rows_to_replace(
            table, logical_run, run_id=run_id, started=started or utcnow(), write_mode=write_mode
        )
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
                if drop is not None:
                    tx.delete(drop, snapshot_properties=properties)
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
            raise QueryRefusedError(f"the query does not parse: {exc}") from exc
        stripped = re.sub(r"--[^\n]*|/\*.*?\*/", " ", sql, flags=re.DOTALL).lstrip(" \t\n(")
        keyword = (stripped.split(None, 1) or [""])[0].upper()
        if keyword not in ("SELECT", "WITH"):
            raise QueryRefusedError(
                f"only SELECT queries are allowed (got {keyword or 'nothing'}); "
                "batchscore query never modifies a table."
            ) from None
        return
    if len(statements) != 1:
        raise QueryRefusedError(
            f"give exactly one SQL statement (got {len(statements)}); "
            "separate queries are run one at a time."
        )
    if statements[0].type != duckdb.StatementType.SELECT:
        raise QueryRefusedError(
            f"only SELECT queries are allowed (got {statements[0].type.name}); "
            "batchscore query never modifies a table."
        )


QUERY_MEMORY_LIMIT = "2GB"


def run_query(
    catalog: Catalog,
    sql: str,
    parameters: Sequence[object] | None = None,
    *,
    timeout: float | None = 600.0,
    memory_limit: str = QUERY_MEMORY_LIMIT,
) -> pa.Table:
    """Run one read-only SQL statement over the catalog's tables with DuckDB.

    Tables are named ``namespace.table`` (e.g. ``ml_metrics.mlops_poc_daily_inference``).
    Only a single SELECT (or WITH … SELECT) is accepted, so a query cannot change anything.
    Values belong in ``parameters`` (``?`` placeholders), never pasted into the SQL. The
    query may read the tables' data files and nothing else; it spills to a private temporary
    folder of its own, uses at most ``memory_limit`` and is stopped after ``timeout`` seconds.

    Raises:
        QueryError: the SQL is not one SELECT, DuckDB rejects it, or it ran out of time.
    """
    import tempfile

    import duckdb

    check_select(sql)
    spill = tempfile.TemporaryDirectory(prefix="batchscore-query-")
    try:
        con = duckdb.connect(
            ":memory:", config={"memory_limit": memory_limit, "temp_directory": spill.name}
        )
    except duckdb.Error as exc:
        spill.cleanup()
        raise QueryError(f"cannot start the query engine: {exc}") from exc
    timer = threading.Timer(timeout, con.interrupt) if timeout else None
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
        if timer is not None:
            timer.start()
        try:
            return con.sql(sql, params=list(parameters or [])).to_arrow_table()
        except duckdb.InterruptException as exc:
            raise QueryError(
                f"the query was stopped after {timeout:g} s: give it more time with --timeout, "
                "or select less (a WHERE on inference_date reads one partition)."
            ) from exc
        except duckdb.Error as exc:
            tables = ", ".join(
                f"{ns}.{t}"
                for ns in [n[0] for n in catalog.list_namespaces()]
                for _, t in catalog.list_tables(ns)
            )
            raise QueryError(f"{exc}. Tables in the catalog: {tables or 'none'}.") from exc
    finally:
        if timer is not None:
            timer.cancel()
        con.close()
        spill.cleanup()


QUERY_ENGINES = ("duckdb", "athena")


def query(
    settings: Settings,
    sql: str,
    parameters: Sequence[object] | None = None,
    via: str | None = None,
    timeout: float = 600.0,
) -> pa.Table:
    """``batchscore query``: one SELECT over the catalog's tables, as an Arrow table.

    ``via="duckdb"`` reads the Iceberg tables with DuckDB on this machine (the default for the
    local backend); ``via="athena"`` sends the query to Amazon Athena, results kept in
    ``athena_query_results`` (the default for the aws backend).

    Raises:
        QueryError: the SQL is not one SELECT, or the engine rejects or fails it.
        ConfigError: ``via`` is neither engine.
        WorkspaceNotFoundError: no workspace (or catalog) where the settings point: reading
            never creates one.
    """
    if query_engine(settings, via) == "duckdb":
        return run_query(open_catalog(settings, writable=False), sql, parameters, timeout=timeout)
    from batchscore.athena import athena_query

    return athena_query(settings, sql, parameters, timeout=timeout).table


def query_engine(settings: Settings, via: str | None = None) -> str:
    """``via`` checked, else the backend's engine: Athena for aws, DuckDB for local."""
    via = via or ("athena" if settings.backend == "aws" else "duckdb")
    if via not in QUERY_ENGINES:
        raise ConfigError(f"--via {via!r} must be {' or '.join(QUERY_ENGINES)}.")
    return via
