"""Queries through Amazon Athena, for the aws backend (``batchscore query`` there).

Athena writes each query's result as CSV under ``athena_query_results`` (the seed's key;
default ``s3://bucket/prefix/athena-query-results/``) in the ``athena_workgroup``; batchscore
waits for the query, then pages through ``GetQueryResults`` and types each column from
Athena's own column metadata. Only one SELECT is sent, as with the embedded DuckDB query.
Values belong in ``parameters`` (Athena's ``?`` execution parameters), never in the SQL.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from batchscore.aws import client
from batchscore.catalog import catalog_properties
from batchscore.errors import QueryError
from batchscore.sql import QueryResult, check_select, sql_string

if TYPE_CHECKING:
    from batchscore.config import Settings

DONE = ("SUCCEEDED", "FAILED", "CANCELLED")

# Athena (Trino) column types → Arrow. Anything else (arrays, maps, rows, json, varbinary,
# timestamps with a zone) stays the string Athena sends.
_TYPES: dict[str, pa.DataType] = {
    "boolean": pa.bool_(),
    "tinyint": pa.int8(),
    "smallint": pa.int16(),
    "integer": pa.int32(),
    "int": pa.int32(),
    "bigint": pa.int64(),
    "real": pa.float32(),
    "float": pa.float32(),
    "double": pa.float64(),
    "date": pa.date32(),
    "timestamp": pa.timestamp("ms"),
    "varchar": pa.string(),
    "char": pa.string(),
    "string": pa.string(),
}


def output_location(settings: Settings) -> str:
    """Where results go: ``athena_query_results``, else ``<s3_prefix>/athena-query-results/``."""
    location = settings.athena_query_results or f"{settings.s3_prefix}/athena-query-results/"
    if not location.startswith("s3://"):
        raise QueryError(
            f"athena_query_results {location!r} is not an S3 location: use "
            "s3://bucket/path/ (Athena writes each query's result there)."
        )
    return location if location.endswith("/") else location + "/"


def athena_query(
    settings: Settings,
    sql: str,
    parameters: Sequence[object] | None = None,
    *,
    timeout: float = 600.0,
    poll: float = 0.2,
) -> QueryResult:
    """Run one SELECT through Athena and return its rows with Athena's report of the query.

    The query runs in ``athena_database`` (so ``mlops_poc_daily_inference`` alone names the
    predictions table) and ``athena_workgroup``; its result CSV stays in
    ``athena_query_results``. A query still running after ``timeout`` seconds is stopped.

    Returns:
        The rows as an Arrow table, with the query execution id, the bytes Athena scanned
        and the S3 location of its result CSV.

    Raises:
        QueryError: the SQL is not one SELECT; the catalog is not Glue; Athena failed or
            cancelled the query (with Athena's reason); or it did not finish in time.
    """
    started = time.monotonic()
    check_select(sql, dialect="athena")
    catalog_type = catalog_properties(settings).get("type")
    if catalog_type != "glue":
        raise QueryError(
            f"Athena reads tables in the Glue catalog, but this config's catalog is "
            f"{catalog_type!r}: use backend: aws (or catalog: {{type: glue, …}}), or query "
            "with --via duckdb."
        )
    athena = client("athena", settings)
    request: dict[str, Any] = {
        "QueryString": sql,
        "QueryExecutionContext": {"Database": settings.athena_database},
        "ResultConfiguration": {"OutputLocation": output_location(settings)},
    }
    if settings.athena_workgroup:
        request["WorkGroup"] = settings.athena_workgroup
    if parameters:
        request["ExecutionParameters"] = [_parameter(value) for value in parameters]
    query_id = athena.start_query_execution(**request)["QueryExecutionId"]

    execution = _wait(athena, query_id, timeout, poll)
    state = execution["Status"]["State"]
    if state != "SUCCEEDED":
        reason = (
            execution["Status"].get("AthenaError", {}).get("ErrorMessage")
            or execution["Status"].get("StateChangeReason")
            or "no reason given"
        )
        raise QueryError(f"Athena query {query_id} {state.lower()}: {reason}")
    table = _fetch(athena, query_id)
    return QueryResult(
        table=table,
        engine="athena",
        seconds=time.monotonic() - started,
        query_id=query_id,
        bytes_scanned=execution.get("Statistics", {}).get("DataScannedInBytes"),
        output_location=execution.get("ResultConfiguration", {}).get("OutputLocation"),
    )


def _parameter(value: object) -> str:
    """An Athena execution parameter: a SQL literal (strings quoted, quotes doubled)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return sql_string(str(value))


def _wait(athena: Any, query_id: str, timeout: float, poll: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        execution = athena.get_query_execution(QueryExecutionId=query_id)["QueryExecution"]
        if execution["Status"]["State"] in DONE:
            return execution
        if time.monotonic() > deadline:
            athena.stop_query_execution(QueryExecutionId=query_id)
            raise QueryError(
                f"Athena query {query_id} still {execution['Status']['State'].lower()} after "
                f"{timeout:.0f} s; it was stopped. Narrow the query or raise --timeout."
            )
        time.sleep(poll)
        poll = min(poll * 1.5, 2.0)


def _fetch(athena: Any, query_id: str) -> pa.Table:
    """Page through the result; the first row of a SELECT's result repeats the column names."""
    columns: list[dict[str, Any]] | None = None
    values: list[list[str | None]] = []
    first = True
    for page in athena.get_paginator("get_query_results").paginate(QueryExecutionId=query_id):
        result = page["ResultSet"]
        if columns is None:
            columns = result.get("ResultSetMetadata", {}).get("ColumnInfo", [])
            values = [[] for _ in columns]
        for row in result.get("Rows", []):
            cells = [cell.get("VarCharValue") for cell in row["Data"]]
            if first and cells == [c["Name"] for c in columns]:
                first = False
                continue
            first = False
            for column, cell in zip(values, cells, strict=True):
                column.append(cell)
    return pa.table({c["Name"]: _typed(c, v) for c, v in zip(columns or [], values, strict=True)})


def _typed(column: dict[str, Any], values: list[str | None]) -> pa.Array:
    strings = pa.array(values, pa.string())
    kind = column.get("Type", "varchar").lower()
    if kind == "decimal":
        target: pa.DataType = pa.decimal128(column.get("Precision", 38), column.get("Scale", 0))
    else:
        target = _TYPES.get(kind, pa.string())
    try:
        return strings.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return strings  # a value Arrow cannot read as that type: keep Athena's text
