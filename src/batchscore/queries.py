"""``batchscore query``: one read-only SELECT over the catalog's tables.

``query(settings, sql)`` picks the engine — DuckDB on this machine over the tables' own files
(``run_query``), or Amazon Athena for the aws backend (``batchscore.athena``) — and returns a
``QueryResult``: the rows plus what the engine reports about the query.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from batchscore.catalog import load_table, local_path, open_catalog
from batchscore.config import SQL_IDENTIFIER, validate_identifier
from batchscore.errors import ConfigError, QueryError
from batchscore.sql import QueryEngine, QueryResult, check_select, sql_string, table_references

if TYPE_CHECKING:
    import pyarrow as pa
    from pyiceberg.catalog import Catalog
    from pyiceberg.table import Table

    from batchscore.config import Settings

__all__ = ["QUERY_ENGINES", "QueryResult", "query", "query_engine", "run_query"]

QUERY_ENGINES: tuple[QueryEngine, ...] = ("duckdb", "athena")
QUERY_MEMORY_LIMIT = "2GB"


def query(
    settings: Settings,
    sql: str,
    parameters: Sequence[object] | None = None,
    via: str | None = None,
    timeout: float = 600.0,
) -> QueryResult:
    """``batchscore query``: one SELECT over the catalog's tables, with the engine's report.

    ``via="duckdb"`` reads the Iceberg tables with DuckDB on this machine (the default for the
    local backend); ``via="athena"`` sends the query to Amazon Athena, results kept in
    ``athena_query_results`` (the default for the aws backend).

    Args:
        settings: the catalog (DuckDB) or the Athena settings and backend.
        sql: one SELECT; tables named ``namespace.table`` (Athena: also bare, in
            ``athena_database``).
        parameters: values for the ``?`` placeholders, never pasted into the SQL.
        via: ``"duckdb"`` or ``"athena"``; None picks the backend's engine.
        timeout: seconds before the query is stopped.

    Returns:
        The rows as an Arrow table, the engine, the wall time and, from Athena, the query
        execution id, the bytes scanned and the result CSV's location.

    Raises:
        QueryError: the SQL is not one SELECT, or the engine rejects or fails it.
        ConfigError: ``via`` is neither engine.
        WorkspaceNotFoundError: no workspace (or catalog) where the settings point: reading
            never creates one.
    """
    if query_engine(settings, via) == "athena":
        from batchscore.athena import athena_query

        return athena_query(settings, sql, parameters, timeout=timeout)
    started = time.monotonic()
    table = run_query(open_catalog(settings, writable=False), sql, parameters, timeout=timeout)
    return QueryResult(table=table, engine="duckdb", seconds=time.monotonic() - started)


def query_engine(settings: Settings, via: str | None = None) -> QueryEngine:
    """``via`` checked, else the backend's engine: Athena for aws, DuckDB for local.

    Raises:
        ConfigError: ``via`` is neither engine.
    """
    via = via or ("athena" if settings.backend == "aws" else "duckdb")
    if via == "duckdb" or via == "athena":
        return via
    raise ConfigError(f"--via {via!r} must be {' or '.join(QUERY_ENGINES)}.")


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


def _referenced_tables(catalog: Catalog, sql: str) -> list[tuple[str, str]]:
    """``namespace.table`` pairs in the SQL that name tables of the catalog."""
    return [
        (namespace, name)
        for namespace, name in table_references(sql)
        if load_table(catalog, f"{namespace}.{name}") is not None
    ]


def _register_table(con: object, namespace: str, name: str, table: Table) -> list[str]:
    """Expose an Iceberg table's current snapshot to DuckDB as ``namespace.name``.

    Returns the data files the view reads (the only files the query may then open).
    """
    import duckdb

    assert isinstance(con, duckdb.DuckDBPyConnection)
    con.execute(f'CREATE SCHEMA IF NOT EXISTS "{namespace}"')
    tasks = list(table.scan().plan_files())
    local = [local_path(task.file.file_path) for task in tasks]
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
