"""Publish (the seed's PublishToAthena): commit the predictions to the sink in one commit.

The commit carries the run id, so a resume whose last commit's fate is unknown looks for it
first (``find_commit``) and never publishes a run twice. Rows BatchInference could not score
go to the quarantine table first, in their own commit, once per run the same way.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchscore.records import LogicalRun, format_id_range

if TYPE_CHECKING:
    from batchscore.sinks import PredictionSink
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
    sink: PredictionSink,
    prediction_files: list[str],
    rows: int,
    *,
    run_id: str,
    logical_run: LogicalRun,
    write_mode: str,
    started: dt.datetime | None = None,
) -> PublishResult:
    """Commit ``prediction_files`` to the sink's target (created when missing), once per run.

    Args:
        sink: where the predictions go (``batchscore.sinks.open_sink``).
        prediction_files: Parquet files in ``PREDICTIONS_SCHEMA``, this run's rows.
        rows: how many rows the files hold (reported, not counted again).
        run_id: the run; a commit it made earlier means the publish is already done.
        logical_run: the pipeline, date and id range the rows belong to.
        write_mode: ``replace``, ``overwrite`` or ``append`` (see ``PredictionSink.commit``).
        started: when the run started: an older run never replaces a newer one's rows.

    Returns:
        The target, the commit's id and the rows; ``already_published`` when the run had
        committed before.

    Raises:
        CommitConflictError: another writer won the commit race (transient; retry).
        PublishRefusedError: the write mode would publish a customer twice or replace a newer
            run's rows; the target is unchanged.
        PublishError: the commit failed; the target is unchanged.
    """
    sink.ensure()
    earlier = sink.find_commit(run_id)
    if earlier is not None:
        return PublishResult(sink.identifier, earlier, rows, already_published=True)
    commit_id = sink.commit(
        [Path(p) for p in prediction_files],
        run_id=run_id,
        logical_run=logical_run,
        write_mode=write_mode,
        started=started,
    )
    return PublishResult(sink.identifier, commit_id, rows)


def run(ctx: RunContext) -> dict[str, Any]:
    """The Publish step of a run: BatchInference's predictions committed to the run's table
    with the run's write mode, once (a commit found from an earlier attempt is reported)."""
    record = ctx.record
    scored = record.outputs("BatchInference")
    quarantine = publish_quarantined(ctx, scored)
    result = publish(
        ctx.backends.sink(record.output_table),
        scored["files"],
        scored["rows"],
        run_id=record.run_id,
        logical_run=LogicalRun(
            pipeline_name=record.pipeline_name,
            inference_date=dt.date.fromisoformat(record.logical_date),
            id_range=format_id_range(record.id_start, record.id_end),
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
    return {**result.to_dict(), **quarantine}


def publish_quarantined(ctx: RunContext, scored: dict[str, Any]) -> dict[str, Any]:
    """BatchInference's quarantined rows committed to ``<output_table>_quarantine`` (before the
    predictions, once per run); nothing (no table made) when there are none."""
    from batchscore.monitoring.quarantine import quarantine_files

    files = quarantine_files(scored.get("quarantine_path"))
    if not scored.get("quarantined") or not files:
        return {"quarantined": 0}
    from batchscore.catalog import open_catalog
    from batchscore.sinks.quarantine import publish_quarantine, quarantine_table_name

    record = ctx.record
    table = quarantine_table_name(record.output_table)
    snapshot_id, earlier = publish_quarantine(
        open_catalog(ctx.settings),
        table,
        files,
        run_id=record.run_id,
        inference_date=dt.date.fromisoformat(record.logical_date),
    )
    log.info(
        "Publish: %d quarantined row(s) %s %s (snapshot %d)",
        scored["quarantined"], "were committed earlier to" if earlier else "committed to",
        table, snapshot_id,
    )  # fmt: skip
    return {
        "quarantined": scored["quarantined"],
        "quarantine_table": table,
        "quarantine_snapshot_id": snapshot_id,
    }
