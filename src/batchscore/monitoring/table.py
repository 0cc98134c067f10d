"""The monitoring table: one row per run × check × feature, so a trend is one SQL query away.

``<athena_database>.<athena_output_table>_monitoring`` is an Iceberg table in the predictions'
catalog (on AWS the Glue catalog, so Athena reads it), with :func:`monitoring_schema`'s
columns, partitioned by ``inference_date``. It is written by the run's
:class:`MonitoringRecorder` hook after Validate (from ``runs/<run_id>/checks.json``) and by
``batchscore evaluate --labels`` (realized metrics, ``check = 'late_labels'``).

Recording is idempotent per run and check: :func:`record_results` deletes the run's rows of the
checks it records and appends the new ones in one commit, so recording a run again (a resume, a
second ``evaluate``) replaces its rows and never doubles them.

Importing this module imports neither pyarrow nor pyiceberg (the hooks import it).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchscore.clock import utcnow
from batchscore.config import validate_identifier
from batchscore.errors import BatchScoreError, CommitConflictError, TransientStoreError
from batchscore.monitoring.results import MONITORING_SUFFIX, CheckResult, monitoring_schema
from batchscore.records import PipelineHooks, RunRecord, format_id_range

if TYPE_CHECKING:
    import pyarrow as pa
    from pyiceberg.catalog import Catalog
    from pyiceberg.table import Table

    from batchscore.config import Settings

log = logging.getLogger("batchscore")

PARTITION_COLUMN = "inference_date"
# Full column bounds for what a re-record deletes by, so a replaced run's file is dropped whole
# (pyiceberg's default truncate(16) cuts run ids short and forces a rewrite).
TABLE_PROPERTIES = {
    f"write.metadata.metrics.column.{column}": "full"
    for column in ("run_id", "check", "pipeline_name")
}
# Figures every run has, Validate or not (BatchInference's outputs), recorded as info rows.
RUN_CHECK = "run"
# The step whose checks.json the recorder reads, and the step whose outputs give the run's
# figures (the contract between the branches of issue 15).
VALIDATE_STEP = "Validate"
SCORING_STEP = "BatchInference"
CHECKS_FILE = "checks.json"
# A concurrent recorder committed first: reload and try again this many times.
COMMIT_ATTEMPTS = 5


def monitoring_table_name(settings: Settings) -> str:
    """``<athena_database>.<athena_output_table>_monitoring``."""
    return f"{settings.athena_database}.{settings.athena_output_table}{MONITORING_SUFFIX}"


@dataclass(frozen=True)
class MonitoredRun:
    """The run a monitoring row is about: the lineage columns every row of it carries."""

    run_id: str
    pipeline_name: str
    id_range: str
    model_name: str | None
    model_version: int | None
    inference_date: dt.date

    @classmethod
    def from_record(cls, record: RunRecord) -> MonitoredRun:
        return cls(
            run_id=record.run_id,
            pipeline_name=record.pipeline_name,
            id_range=format_id_range(record.id_start, record.id_end),
            model_name=record.model_name,
            model_version=record.model_version,
            inference_date=dt.date.fromisoformat(record.logical_date),
        )


# The table ----------------------------------------------------------------------------------


def ensure_monitoring_table(catalog: Catalog, identifier: str) -> Table:
    """The monitoring table ``identifier``, created (schema, partition spec and properties in
    one commit) when it does not exist.

    Raises:
        InvalidIdentifierError: a part of ``identifier`` is not a safe SQL name.
    """
    from pyiceberg.exceptions import TableAlreadyExistsError

    from batchscore.catalog import ensure_namespace, load_table
    from batchscore.sinks.iceberg import iceberg_schema, partition_spec

    namespace, _, name = identifier.partition(".")
    validate_identifier(namespace, "athena_database")
    validate_identifier(name, "monitoring table")
    table = load_table(catalog, identifier)
    if table is not None:
        return table
    ensure_namespace(catalog, namespace)
    try:
        return catalog.create_table(
            identifier,
            schema=iceberg_schema(monitoring_schema()),
            partition_spec=partition_spec(monitoring_schema()),
            properties=TABLE_PROPERTIES,
        )
    except TableAlreadyExistsError:  # another run created it first
        return catalog.load_table(identifier)


# Writing ------------------------------------------------------------------------------------


def results_table(
    run: MonitoredRun, results: Sequence[CheckResult], recorded_at: dt.datetime | None = None
) -> pa.Table:
    """The monitoring rows of ``results`` about ``run``, in the table's schema."""
    import pyarrow as pa

    when = recorded_at or utcnow()
    rows = [
        {
            "run_id": run.run_id,
            "pipeline_name": run.pipeline_name,
            "id_range": run.id_range,
            "model_name": run.model_name,
            "model_version": run.model_version,
            **{k: v for k, v in result.to_dict().items()},
            "value": _number(result.value),
            "threshold": _number(result.threshold),
            "recorded_at": when,
            "inference_date": run.inference_date,
        }
        for result in results
    ]
    return pa.Table.from_pylist(rows, schema=monitoring_schema())


def _number(value: object) -> float | None:
    """A finite float, else None (NaN has no place in a trend)."""
    if value is None or isinstance(value, bool):
        return None if value is None else float(value)
    number = float(value)  # type: ignore[arg-type]
    return number if number == number and abs(number) != float("inf") else None


def record_results(
    settings: Settings,
    run: MonitoredRun | RunRecord,
    results: Sequence[CheckResult],
) -> int:
    """Record ``results`` about ``run`` in the monitoring table, replacing the run's earlier
    rows of the same checks (recording a run twice never doubles its rows).

    Args:
        settings: The catalog and the table's name (``monitoring_table_name``).
        run: The run (a run record, or its lineage as :class:`MonitoredRun`).
        results: The rows to record; their ``check`` values are the families replaced.

    Returns:
        The number of rows written.

    Raises:
        CommitConflictError: other writers kept committing first.
        BatchScoreError: the catalog cannot be opened or written.
    """
    lineage = run if isinstance(run, MonitoredRun) else MonitoredRun.from_record(run)
    return record_many(settings, [(lineage, list(results))])


def record_many(
    settings: Settings, batches: Iterable[tuple[MonitoredRun, Sequence[CheckResult]]]
) -> int:
    """:func:`record_results` for several runs in one commit (``evaluate`` records every run
    it evaluated at once).

    Returns:
        The number of rows written.
    """
    import pyarrow as pa
    from pyiceberg.exceptions import CommitFailedException, ValidationException

    from batchscore.catalog import open_catalog

    batches = [(run, list(results)) for run, results in batches if results]
    if not batches:
        return 0
    now = utcnow()
    rows = pa.concat_tables([results_table(run, results, now) for run, results in batches])
    replaced = _replaced_rows(batches)
    identifier = monitoring_table_name(settings)
    catalog = open_catalog(settings)
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        table = ensure_monitoring_table(catalog, identifier)
        try:
            # One transaction: a reader sees the old rows or the new ones, never neither.
            with warnings.catch_warnings(), table.transaction() as tx:
                warnings.filterwarnings("ignore", message="Delete operation did not match")
                tx.overwrite(rows, overwrite_filter=replaced)
            return rows.num_rows
        except (CommitFailedException, ValidationException) as exc:
            if attempt == COMMIT_ATTEMPTS:
                raise CommitConflictError(
                    f"other writers kept committing to {identifier} first: {exc}. Nothing was "
                    "recorded; record again."
                ) from exc
        except Exception as exc:
            from batchscore.errors import is_busy_error

            if is_busy_error(exc) and attempt < COMMIT_ATTEMPTS:
                continue
            if is_busy_error(exc):
                raise TransientStoreError(f"the catalog was locked: {exc}") from exc
            raise BatchScoreError(
                f"recording {rows.num_rows} monitoring row(s) in {identifier} failed: "
                f"{type(exc).__name__}: {settings.redact(str(exc))}"
            ) from exc
    raise AssertionError("unreachable")  # pragma: no cover


def _replaced_rows(batches: Sequence[tuple[MonitoredRun, Sequence[CheckResult]]]) -> Any:
    """Rows of each run (its date partition, its id) whose check is one being recorded."""
    from pyiceberg.expressions import And, EqualTo, In, Or

    filters = [
        And(
            EqualTo(PARTITION_COLUMN, run.inference_date.isoformat()),
            And(EqualTo("run_id", run.run_id), In("check", {r.check for r in results})),
        )
        for run, results in batches
    ]
    expression = filters[0]
    for more in filters[1:]:
        expression = Or(expression, more)
    return expression


# What a run has to record --------------------------------------------------------------------


def run_figures(record: RunRecord) -> list[CheckResult]:
    """The figures every run has, Validate or not, as info rows: rows scored and, when
    BatchInference reports them, rows quarantined."""
    step = record.steps.get(SCORING_STEP)
    outputs = step.outputs if step is not None else {}
    figures: list[CheckResult] = []
    if outputs.get("rows") is not None:
        figures.append(
            CheckResult(RUN_CHECK, None, "rows_scored", "", float(outputs["rows"]), None,
                        "info", "", f"{outputs['rows']} rows scored by {SCORING_STEP}")
        )  # fmt: skip
    if outputs.get("quarantined") is not None:
        figures.append(
            CheckResult(RUN_CHECK, None, "quarantined", "", float(outputs["quarantined"]), None,
                        "info", "", f"{outputs['quarantined']} rows quarantined "
                        "(not scorable; see the quarantine table)")
        )  # fmt: skip
    return figures


def checks_results(run_dir: Path) -> list[CheckResult]:
    """The results in the run's ``checks.json`` ([] when Validate wrote none).

    Raises:
        ValueError: the file is not the contract's JSON (``{"results": [...], ...}``).
    """
    path = run_dir / CHECKS_FILE
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise ValueError(f"{path} has no 'results' list")
    return [CheckResult.from_dict(item) for item in data["results"]]


class MonitoringRecorder(PipelineHooks):
    """Records a run in the monitoring table: Validate's results (from ``checks.json``) once
    Validate succeeded or blocked, with the run's own figures (rows scored, quarantined); a
    run without a Validate step records its figures once BatchInference succeeded.

    An observer: a failure to record logs a warning and never fails the run.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def after_step(self, record: RunRecord, step: str) -> None:
        if step == VALIDATE_STEP:
            self._record(record, with_checks=True)
        elif step == SCORING_STEP and VALIDATE_STEP not in record.steps:
            self._record(record, with_checks=False)

    def on_pipeline_error(self, record: RunRecord, step: str, error: BaseException) -> None:
        # A block verdict fails the run at Validate after checks.json was written.
        if step == VALIDATE_STEP and (Path(record.run_dir) / CHECKS_FILE).exists():
            self._record(record, with_checks=True)

    def _record(self, record: RunRecord, *, with_checks: bool) -> None:
        try:
            results = checks_results(Path(record.run_dir)) if with_checks else []
            written = record_results(self.settings, record, [*results, *run_figures(record)])
            log.info(
                "monitoring: %d row(s) recorded in %s",
                written,
                monitoring_table_name(self.settings),
            )
        except Exception as exc:
            log.warning(
                "monitoring: run %s not recorded in %s (the run goes on): %s: %s",
                record.run_id,
                monitoring_table_name(self.settings),
                type(exc).__name__,
                self.settings.redact(str(exc)),
            )


# Reading ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrendPoint:
    """One run's value of a statistic: a point of a trend."""

    run_id: str
    inference_date: dt.date
    recorded_at: dt.datetime
    model_version: int | None
    feature: str | None
    value: float | None
    threshold: float | None
    status: str


def read_monitoring(
    settings: Settings,
    *,
    pipeline_name: str | None = None,
    run_ids: Sequence[str] | None = None,
    check: str | None = None,
    statistic: str | None = None,
    feature: str | None = None,
    date_from: dt.date | None = None,
    date_to: dt.date | None = None,
) -> pa.Table:
    """The monitoring rows matching every filter given (all rows without any), as Arrow.

    An empty table (with the schema) when the monitoring table does not exist yet.

    Raises:
        WorkspaceNotFoundError: no workspace or catalog where the settings point.
    """
    from pyiceberg.expressions import (
        AlwaysTrue,
        And,
        EqualTo,
        GreaterThanOrEqual,
        In,
        IsNull,
        LessThanOrEqual,
    )

    from batchscore.catalog import load_table, open_catalog

    table = load_table(open_catalog(settings, writable=False), monitoring_table_name(settings))
    if table is None:
        return monitoring_schema().empty_table()
    conditions: list[Any] = []
    for column, value in (("pipeline_name", pipeline_name), ("check", check),
                          ("statistic", statistic)):  # fmt: skip
        if value is not None:
            conditions.append(EqualTo(column, value))
    if feature is not None:
        conditions.append(IsNull("feature") if feature == "" else EqualTo("feature", feature))
    if run_ids is not None:
        conditions.append(In("run_id", set(run_ids)))
    if date_from is not None:
        conditions.append(GreaterThanOrEqual(PARTITION_COLUMN, date_from.isoformat()))
    if date_to is not None:
        conditions.append(LessThanOrEqual(PARTITION_COLUMN, date_to.isoformat()))
    expression: Any = AlwaysTrue()
    for condition in conditions:
        expression = And(expression, condition)
    return table.scan(row_filter=expression).to_arrow().cast(monitoring_schema())


def last_runs(settings: Settings, limit: int = 10, pipeline_name: str | None = None) -> list[str]:
    """The ids of the last ``limit`` runs with monitoring rows, newest first (by inference
    date, then when they were recorded); of ``pipeline_name`` (default: the settings')."""
    rows = read_monitoring(settings, pipeline_name=pipeline_name or settings.pipeline_name).select(
        ["run_id", "inference_date", "recorded_at"]
    )
    newest: dict[str, tuple[dt.date, dt.datetime]] = {}
    for row in rows.to_pylist():
        key = (row["inference_date"], row["recorded_at"])
        newest[row["run_id"]] = max(newest.get(row["run_id"], key), key)
    return sorted(newest, key=lambda run_id: newest[run_id], reverse=True)[:limit]


def metric_trend(
    settings: Settings,
    statistic: str,
    *,
    check: str | None = None,
    feature: str | None = None,
    last: int | None = None,
    pipeline_name: str | None = None,
) -> list[TrendPoint]:
    """A statistic over time: its value in each run, oldest first.

    Args:
        settings: The catalog and table; the pipeline by default.
        statistic: What was measured (``psi``, ``rows_scored``, ``accuracy`` …).
        check: Only this check's rows (``late_labels``, ``psi`` …).
        feature: Only this feature's rows; ``""`` for run-level rows (no feature).
        last: Only the last ``last`` runs (by inference date).
        pipeline_name: Default: the settings' pipeline.

    Returns:
        One point per run (and feature, when ``feature`` is None and the statistic is per
        feature), ordered by inference date then recording time.
    """
    pipeline = pipeline_name or settings.pipeline_name
    rows = read_monitoring(
        settings, pipeline_name=pipeline, check=check, statistic=statistic, feature=feature
    ).to_pylist()
    points = [
        TrendPoint(
            run_id=row["run_id"],
            inference_date=row["inference_date"],
            recorded_at=row["recorded_at"],
            model_version=row["model_version"],
            feature=row["feature"],
            value=row["value"],
            threshold=row["threshold"],
            status=row["status"],
        )
        for row in rows
    ]
    points.sort(key=lambda p: (p.inference_date, p.recorded_at, p.feature or ""))
    if last is not None:
        keep: list[str] = []
        for point in reversed(points):
            if point.run_id not in keep:
                keep.append(point.run_id)
        wanted = set(keep[:last])
        points = [p for p in points if p.run_id in wanted]
    return points
