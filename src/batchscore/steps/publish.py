"""Publish (the seed's PublishToAthena): commit the predictions in one Iceberg commit.

The commit carries the run id in its snapshot summary, so a resume whose last commit's fate is
unknown looks there first and never publishes a run twice.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from pathlib import Path

from pyiceberg.catalog import Catalog

from batchscore.records import LogicalRun
from batchscore.tables import (
    ensure_predictions_table,
    find_run_commit,
    publish_predictions,
)


@dataclass(frozen=True)
class PublishResult:
    table: str
    snapshot_id: int
    rows: int
    already_published: bool = False

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def publish(
    catalog: Catalog,
    database: str,
    table_name: str,
    prediction_files: list[str],
    rows: int,
    *,
    run_id: str,
    logical_run: LogicalRun,
    write_mode: str,
    started: dt.datetime | None = None,
) -> PublishResult:
    """Commit ``prediction_files`` to ``database.table_name`` (created when missing).

    Raises:
        CommitConflictError: another writer won the commit race (transient; retry).
        PublishError: the commit failed; the table is unchanged.
    """
    table = ensure_predictions_table(catalog, database, table_name)
    identifier = f"{database}.{table_name}"
    earlier = find_run_commit(table, run_id)
    if earlier is not None:
        return PublishResult(identifier, earlier, rows, already_published=True)
    snapshot_id = publish_predictions(
        table,
        [Path(p) for p in prediction_files],
        run_id=run_id,
        logical_run=logical_run,
        write_mode=write_mode,
        started=started,
    )
    return PublishResult(identifier, snapshot_id, rows)
