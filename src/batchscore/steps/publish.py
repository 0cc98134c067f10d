"""Publish (the seed's PublishToAthena): commit the predictions in one Iceberg commit.

The commit carries the run id in its snapshot summary, so a resume whose last commit's fate is
unknown looks there first and never publishes a run twice.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyiceberg.catalog import Catalog

from batchscore.records import LogicalRun
from batchscore.tables import (
    ensure_predictions_table,
    find_run_commit,
    publish_predictions,
)

if TYPE_CHECKING:
    from batchscore.steps.context import RunContext

log = logging.getLogger("batchscore")


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


def run(ctx: RunContext) -> dict[str, Any]:
    """The Publish step of a run: BatchInference's predictions committed to the run's table
    with the run's write mode, once (a commit found from an earlier attempt is reported)."""
    record = ctx.record
    scored = record.outputs("BatchInference")
    database, _, table_name = record.output_table.partition(".")
    result = publish(
        ctx.backends.catalog,
        database,
        table_name,
        scored["files"],
        scored["rows"],
        run_id=record.run_id,
        logical_run=LogicalRun(
            pipeline_name=record.pipeline_name,
            inference_date=dt.date.fromisoformat(record.logical_date),
            id_range=f"{record.id_start}-{record.id_end}",
        ),
        write_mode=record.write_mode,
        started=dt.datetime.fromisoformat(record.started),
    )
    if result.already_published:
        log.info(
            "Publish: run %s was committed earlier (snapshot %d)",
            record.run_id,
            result.snapshot_id,
        )
    return result.to_dict()
