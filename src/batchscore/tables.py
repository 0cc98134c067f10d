"""Deprecated: ``batchscore.tables`` was split. Import from the new homes instead:

- ``batchscore.catalog``: ``open_catalog``, ``load_table``, ``ensure_namespace``,
  ``list_tables``, ``TableInfo``, ``catalog_properties``;
- ``batchscore.sinks``: ``open_sink`` and the ``PredictionSink`` interface;
  ``batchscore.sinks.schema``: ``PREDICTIONS_SCHEMA``; ``batchscore.sinks.iceberg``: the
  Iceberg publish (``IcebergSink``, ``ensure_predictions_table``, ``publish_predictions``, …);
- ``batchscore.queries``: ``query`` (now a ``QueryResult``), ``run_query``, ``query_engine``;
- ``batchscore.sql``: ``check_select``, ``sql_string``.

The old names still resolve here, with a DeprecationWarning; nothing imports this module.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

_MOVED = {
    **dict.fromkeys(
        ("open_catalog", "load_table", "ensure_namespace", "list_tables", "TableInfo"),
        "batchscore.catalog",
    ),
    **dict.fromkeys(("PREDICTIONS_SCHEMA", "PARTITION_COLUMN"), "batchscore.sinks.schema"),
    **dict.fromkeys(
        (
            "TABLE_PROPERTIES",
            "ensure_predictions_table",
            "drop_table",
            "table_snapshots",
            "rollback_table",
            "partition_filter",
            "run_filter",
            "published_runs",
            "rows_to_replace",
            "find_run_commit",
            "publish_predictions",
        ),
        "batchscore.sinks.iceberg",
    ),
    "SnapshotInfo": "batchscore.sinks.base",
    **dict.fromkeys(("run_query", "query", "query_engine"), "batchscore.queries"),
    **dict.fromkeys(("check_select", "sql_string"), "batchscore.sql"),
}


def __getattr__(name: str) -> Any:
    module = _MOVED.get(name)
    if module is None:
        raise AttributeError(f"module 'batchscore.tables' has no attribute {name!r}")
    warnings.warn(
        f"batchscore.tables.{name} moved to {module}.{name}", DeprecationWarning, stacklevel=2
    )
    return getattr(importlib.import_module(module), name)
