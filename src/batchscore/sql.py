"""What both query engines share: the one-SELECT guard, SQL literals, table references, and
the typed result ``batchscore query`` returns.

A leaf module: it imports nothing of batchscore's but the errors, so the DuckDB query
(``batchscore.queries``) and Athena (``batchscore.athena``) both build on it without importing
each other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from batchscore.errors import QueryRefusedError

if TYPE_CHECKING:
    import pyarrow as pa

QueryEngine = Literal["duckdb", "athena"]

# ``namespace.table`` as a query names a table (unquoted identifiers only).
TABLE_REFERENCE = re.compile(r"\b([A-Za-z_][A-Za-z0-9_]*)\s*\.\s*([A-Za-z_][A-Za-z0-9_]*)\b")


@dataclass(frozen=True)
class QueryResult:
    """A finished query: its rows, which engine ran it, and what that engine reports.

    Attributes:
        table: the rows, typed (DuckDB's own types; Athena's from its column metadata).
        engine: ``"duckdb"`` (on this machine) or ``"athena"``.
        seconds: wall time from sending the query to holding its rows.
        query_id: Athena's query execution id (None for DuckDB).
        bytes_scanned: the data Athena scanned, what it bills by (None for DuckDB).
        output_location: the S3 URI of Athena's result CSV (None for DuckDB).
    """

    table: pa.Table
    engine: QueryEngine
    seconds: float
    query_id: str | None = None
    bytes_scanned: int | None = None
    output_location: str | None = None


def sql_string(text: str) -> str:
    """A SQL string literal (for DDL, where DuckDB takes no parameters)."""
    return "'" + text.replace("'", "''") + "'"


def table_references(sql: str) -> list[tuple[str, str]]:
    """The ``(namespace, table)`` pairs the SQL names as ``namespace.table``, once each, in
    order. Some may be columns (``t.col``): callers keep the pairs that are real tables."""
    found: list[tuple[str, str]] = []
    for pair in TABLE_REFERENCE.findall(sql):
        if pair not in found:
            found.append(pair)
    return found


def check_select(sql: str, dialect: str = "duckdb") -> None:
    """Refuse anything but one SELECT (or WITH … SELECT) statement.

    DuckDB's parser decides. For another engine's SQL (``dialect="athena"``: Trino syntax
    DuckDB may not parse) a statement DuckDB cannot parse is judged by its first keyword
    after comments; the engine itself then refuses more than one statement.

    Raises:
        QueryRefusedError: naming what was given instead.
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
