"""Prediction sinks: the interface in ``base``, the schema in ``schema``, implementations beside
them, chosen by name from ``SINKS``.

Adding a sink is one module implementing ``PredictionSink`` plus one entry in ``SINKS``; the
implementation is imported only when it is opened.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from batchscore.loaders import Loader, load_implementation
from batchscore.sinks.base import PredictionSink, SnapshotInfo

if TYPE_CHECKING:
    from batchscore.config import Settings

__all__ = ["DEFAULT_SINK", "SINKS", "PredictionSink", "SnapshotInfo", "open_sink"]

# sink name -> "module:class" of its implementation, imported on first use
SINKS: dict[str, Loader] = {
    "iceberg": Loader("batchscore.sinks.iceberg:IcebergSink"),
}
DEFAULT_SINK = "iceberg"


def open_sink(
    settings: Settings,
    *,
    writable: bool = True,
    table: str | None = None,
    kind: str = DEFAULT_SINK,
) -> PredictionSink:
    """The sink for the predictions table (``settings.output_table``, or ``table``).

    Args:
        settings: the store settings.
        writable: False to only read (``snapshots``): see ``open_catalog``.
        table: ``database.table`` to use instead of the settings' output table (a resumed
            run publishes to the table its record names).
        kind: a name in ``SINKS``.

    Raises:
        ConfigError: ``kind`` is not a known sink, or its store cannot be opened.
        WorkspaceNotFoundError: reading, and no workspace where the settings point.
        StorageError: writing, and the workspace is not writable.
    """
    implementation: type[PredictionSink] = load_implementation(SINKS, kind, kind="sink", key="sink")
    return implementation.from_settings(settings, table or settings.output_table, writable=writable)
