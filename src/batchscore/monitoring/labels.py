"""Late labels: outcomes that arrive weeks after the scoring, joined to what was published.

``batchscore evaluate --labels FILE|TABLE`` reads labels (a Parquet or CSV file, a folder of
Parquet files, or a ``namespace.table`` of the catalog) holding the record identifier and the
target column (``record_identifier``, ``target_column``), joins them to the published
predictions of the pipeline by customer — and by inference date when the labels say which
prediction each is for — and computes the realized accuracy, precision, recall, F1 and ROC AUC
of each run, recorded in the monitoring table (``check = 'late_labels'``).

The join runs in DuckDB over the predictions' own files, so the predictions are streamed, never
held whole in memory; only the labelled rows come back.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchscore.config import SQL_IDENTIFIER, validate_identifier
from batchscore.errors import ConfigError
from batchscore.monitoring.results import CheckResult
from batchscore.monitoring.table import MonitoredRun, record_many

if TYPE_CHECKING:
    import pyarrow as pa

    from batchscore.config import Settings

log = logging.getLogger("batchscore")

CHECK = "late_labels"
METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc")
# ``date_column`` values: find ``inference_date`` (refusing other date-like columns), or none.
AUTO, NO_DATE = "auto", None
DATE_COLUMN = "inference_date"
FILE_SUFFIXES = (".parquet", ".pq", ".csv")
_TABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class RunEvaluation:
    """One run's realized metrics on its labelled predictions."""

    run: MonitoredRun
    predictions: int  # the run's published rows in the window
    labelled: int  # of them, with a label
    metrics: dict[str, Any]  # classification_metrics(): accuracy … roc_auc, confusion matrix

    def results(self, source: str) -> list[CheckResult]:
        """The run's monitoring rows: one per metric, and the number of labelled rows."""
        detail = (
            f"realized on {self.labelled} of {self.predictions} predictions labelled in {source}"
        )
        rows = [
            CheckResult(CHECK, None, name, "labels", self.metrics.get(name), None, "info", "",
                        detail if self.metrics.get(name) is not None
                        else f"{name} is undefined: the labels hold one class only ({source})")
            for name in METRICS
        ]  # fmt: skip
        rows.append(
            CheckResult(CHECK, None, "labelled_rows", "labels", float(self.labelled), None,
                        "info", "", detail)
        )  # fmt: skip
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run.run_id,
            "inference_date": self.run.inference_date.isoformat(),
            "id_range": self.run.id_range,
            "model": self.run.model_name,
            "model_version": self.run.model_version,
            "predictions": self.predictions,
            "labelled": self.labelled,
            **{name: self.metrics.get(name) for name in METRICS},
        }


@dataclass(frozen=True)
class LabelsEvaluation:
    """What ``evaluate_labels`` did: every run evaluated, and what became of the labels."""

    source: str
    date_column: str | None  # the labels' column joined to inference_date; None: by id only
    labels: int  # labelled rows read
    unlabelled: int  # rows without a label value (skipped)
    unmatched: int  # labels that matched no published prediction in the window
    runs: list[RunEvaluation] = field(default_factory=list)
    recorded: int = 0  # monitoring rows written

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "date_column": self.date_column,
            "labels": self.labels,
            "unlabelled": self.unlabelled,
            "unmatched": self.unmatched,
            "recorded": self.recorded,
            "runs": [run.to_dict() for run in self.runs],
        }


def evaluate_labels(
    settings: Settings,
    labels: str | Path,
    date_from: dt.date | None = None,
    date_to: dt.date | None = None,
    *,
    id_column: str | None = None,
    label_column: str | None = None,
    date_column: str | None = AUTO,
    record: bool = True,
) -> LabelsEvaluation:
    """Join late labels to the published predictions and compute each run's realized metrics.

    A label with an inference date is for the prediction of that customer on that date; a
    label without one is the customer's outcome, applied to each of the customer's predictions
    between ``date_from`` and ``date_to``.

    Args:
        settings: The pipeline (its predictions table, ``record_identifier``,
            ``target_column``) and the catalog.
        labels: A ``.parquet``/``.pq``/``.csv`` file, a folder of Parquet files, or a table
            ``namespace.table`` of the catalog.
        date_from: The first inference date evaluated (default: no bound).
        date_to: The last inference date evaluated (default: no bound).
        id_column: The labels' customer column (default: ``record_identifier``).
        label_column: The labels' outcome column (default: ``target_column``).
        date_column: ``"auto"``: join on ``inference_date`` when the labels have it (other
            date-like columns are refused as unclear); a column name: join on it; None: by
            customer only.
        record: Record the metrics in the monitoring table (replacing a run's earlier
            ``late_labels`` rows).

    Returns:
        Each run's metrics, oldest first, and counts of the labels read, skipped and unmatched.

    Raises:
        ConfigError: the labels cannot be read, lack a column, or are unclear (duplicates
            that disagree, values that are not classes, unparseable dates); no predictions
            table; no label matched a prediction.
    """
    from batchscore.metrics import classification_metrics

    if date_from and date_to and date_from > date_to:
        raise ConfigError(f"--from {date_from} is after --to {date_to}: give an increasing range.")
    id_column = id_column or settings.record_identifier
    label_column = label_column or settings.target_column
    if not label_column:
        raise ConfigError(
            "target_column is not set: name the labels' outcome column with --label-column."
        )
    source = str(labels)
    raw = read_labels(settings, labels, id_column)
    frame, date_used, unlabelled = prepare_labels(
        raw, source, id_column=id_column, label_column=label_column, date_column=date_column
    )
    joined, counts = join_predictions(settings, frame, date_used, date_from, date_to)
    if not counts:
        raise ConfigError(
            f"the predictions table {settings.output_table} holds no predictions of pipeline "
            f"{settings.pipeline_name!r}{_window(date_from, date_to)}: nothing to evaluate. "
            "Check --from/--to and the config's pipeline_name."
        )
    matched_labels = joined["matched_labels"]
    rows = joined["rows"]
    if not rows:
        raise ConfigError(
            f"none of the {frame.num_rows} labels in {source} matched a published prediction "
            f"of pipeline {settings.pipeline_name!r}{_window(date_from, date_to)}"
            + (f" on its {date_used!r}" if date_used else "")
            + f": compare the labels' {id_column!r} values with the predictions' customer_id"
            + (f" and {date_used!r} with inference_date." if date_used else ".")
        )
    evaluations = []
    for run_id, (run, predicted) in sorted(counts.items(), key=lambda kv: kv[1][0].inference_date):
        mine = rows.get(run_id)
        if mine is None:
            continue  # this run's customers have no labels
        y_true, y_pred, y_score = mine
        evaluations.append(
            RunEvaluation(
                run, predicted, len(y_true), classification_metrics(y_true, y_pred, y_score)
            )
        )
    recorded = (
        record_many(settings, [(e.run, e.results(source)) for e in evaluations]) if record else 0
    )
    return LabelsEvaluation(
        source=source,
        date_column=date_used,
        labels=frame.num_rows,
        unlabelled=unlabelled,
        unmatched=frame.num_rows - matched_labels,
        runs=evaluations,
        recorded=recorded,
    )


def _window(date_from: dt.date | None, date_to: dt.date | None) -> str:
    if date_from and date_to:
        return f" between {date_from} and {date_to}"
    if date_from:
        return f" from {date_from}"
    if date_to:
        return f" up to {date_to}"
    return ""


# Reading the labels -------------------------------------------------------------------------


def read_labels(settings: Settings, labels: str | Path, id_column: str) -> pa.Table:
    """The labels as Arrow: a file (by its suffix), a folder of Parquet files, or a catalog
    table ``namespace.table``. A CSV's id column is read as text (ids keep leading zeros).

    Raises:
        ConfigError: no such file or table, an unknown suffix, or the file cannot be read.
    """
    import pyarrow as pa

    path = Path(labels)
    text = str(labels)
    if not path.exists() and _TABLE.fullmatch(text):
        return _read_table(settings, text)
    if not path.exists():
        raise ConfigError(
            f"labels {text!r}: no such file, folder or table. Give a .parquet or .csv file, a "
            "folder of Parquet files, or a table of the catalog as namespace.table."
        )
    try:
        if path.is_dir():
            import pyarrow.dataset as ds

            return ds.dataset(path, format="parquet").to_table()
        suffix = path.suffix.lower()
        if suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            return pq.read_table(path)
        if suffix == ".csv":
            import pyarrow.csv as pacsv

            options = pacsv.ConvertOptions(column_types={id_column: pa.string()})
            return pacsv.read_csv(path, convert_options=options)
    except (OSError, pa.ArrowException) as exc:
        raise ConfigError(f"cannot read the labels {text}: {exc}") from exc
    raise ConfigError(
        f"labels {text!r}: unknown file type {path.suffix!r}; give a "
        f"{', '.join(FILE_SUFFIXES)} file or a folder of Parquet files."
    )


def _read_table(settings: Settings, identifier: str) -> pa.Table:
    from batchscore.catalog import load_table, open_catalog

    namespace, _, name = identifier.partition(".")
    validate_identifier(namespace, "labels namespace", SQL_IDENTIFIER)
    validate_identifier(name, "labels table", SQL_IDENTIFIER)
    table = load_table(open_catalog(settings, writable=False), identifier)
    if table is None:
        raise ConfigError(
            f"labels {identifier!r}: no such file, and no such table in the catalog "
            "('batchscore table list' shows its tables)."
        )
    return table.scan().to_arrow()


def prepare_labels(
    raw: pa.Table,
    source: str,
    *,
    id_column: str,
    label_column: str,
    date_column: str | None = AUTO,
) -> tuple[pa.Table, str | None, int]:
    """The labels as ``(id: string, label: int64[, inference_date: date32])``, one row per
    customer (and date), checked.

    Returns:
        The labels, the column joined to ``inference_date`` (None: by customer only) and the
        number of rows skipped for having no label value.

    Raises:
        ConfigError: a column is missing; other date-like columns with ``"auto"`` and no
            ``inference_date``; labels that are not whole-number classes; dates that do not
            parse; a customer (and date) labelled twice with different values.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    columns = raw.column_names
    for column, what, option in ((id_column, "record_identifier", "--id-column"),
                                 (label_column, "target_column", "--label-column")):  # fmt: skip
        if column not in columns:
            raise ConfigError(
                f"the labels in {source} have no column {column!r} (the config's {what}); "
                f"their columns: {', '.join(columns)}. Rename the column, or name it with "
                f"{option}."
            )
    date_used = _date_column(raw, source, id_column, label_column, date_column)
    kept = raw.select([id_column, label_column, *([date_used] if date_used else [])])
    valid = pc.is_valid(kept.column(label_column))
    unlabelled = kept.num_rows - pc.sum(valid).as_py() if kept.num_rows else 0
    kept = kept.filter(valid)
    ids = kept.column(id_column)
    if ids.null_count:
        raise ConfigError(
            f"the labels in {source} have {ids.null_count} row(s) without a {id_column!r}: "
            "remove them, or fill in the customer."
        )
    arrays = [ids.cast(pa.string()), _classes(kept.column(label_column), label_column, source)]
    names = ["id", "label"]
    if date_used:
        arrays.append(_dates(kept.column(date_used), date_used, source))
        names.append(DATE_COLUMN)
    frame = pa.table(arrays, names=names)
    return _one_label_each(frame, source, id_column, date_used), date_used, int(unlabelled)


def _date_column(
    raw: pa.Table, source: str, id_column: str, label_column: str, date_column: str | None
) -> str | None:
    """The labels' column to join to ``inference_date``, as ``date_column`` asks."""
    import pyarrow as pa

    columns = raw.column_names
    if date_column is None:
        return None
    if date_column != AUTO:
        if date_column not in columns:
            raise ConfigError(
                f"--date-column {date_column!r} is not a column of the labels in {source}; "
                f"their columns: {', '.join(columns)}."
            )
        return date_column
    if DATE_COLUMN in columns:
        return DATE_COLUMN
    unclear = [
        name
        for name in columns
        if name not in (id_column, label_column)
        and (
            "date" in name.lower()
            or pa.types.is_date(raw.schema.field(name).type)
            or pa.types.is_timestamp(raw.schema.field(name).type)
        )
    ]
    if unclear:
        raise ConfigError(
            f"the labels in {source} have no {DATE_COLUMN!r} column but have {unclear[0]!r}: "
            f"is it the date of the prediction each label is for? Then --date-column "
            f"{unclear[0]}; if it is when the outcome was seen, --date-column none applies "
            "each label to every prediction of its customer between --from and --to."
        )
    return None


def _classes(values: pa.ChunkedArray, column: str, source: str) -> pa.ChunkedArray:
    """The labels as int64 classes: booleans, whole numbers, or text of them."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_boolean(values.type):
        return values.cast(pa.int64())
    try:
        as_float = values.cast(pa.float64())
        whole = pc.all(pc.equal(pc.floor(as_float), as_float)).as_py()
        if whole is False:
            raise ValueError("not whole numbers")
        return as_float.cast(pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
        seen = pc.unique(values).to_pylist()[:5]
        raise ConfigError(
            f"the labels' {column!r} in {source} must be the classes the model predicts "
            f"(0/1, true/false); found {', '.join(repr(v) for v in seen)}."
        ) from None


def _dates(values: pa.ChunkedArray, column: str, source: str) -> pa.ChunkedArray:
    """The labels' dates as date32: dates, timestamps (their day) or YYYY-MM-DD text."""
    import pyarrow as pa

    try:
        if pa.types.is_date(values.type) or pa.types.is_timestamp(values.type):
            return values.cast(pa.date32())
        return values.cast(pa.string()).cast(pa.date32())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        example = next((v for v in values.to_pylist() if v is not None), None)
        raise ConfigError(
            f"the labels' {column!r} in {source} must be dates (YYYY-MM-DD); found {example!r}."
        ) from None


def _one_label_each(
    frame: pa.Table, source: str, id_column: str, date_column: str | None
) -> pa.Table:
    """One row per customer (and date): exact repeats dropped, disagreeing ones refused."""
    import pyarrow.compute as pc

    keys = ["id", *([DATE_COLUMN] if date_column else [])]
    distinct = frame.group_by([*keys, "label"]).aggregate([])
    counted = distinct.group_by(keys).aggregate([("label", "count")])
    clash = counted.filter(pc.greater(counted.column("label_count"), 1))
    if clash.num_rows:
        first = clash.slice(0, 1).to_pylist()[0]
        where = f"{id_column} {first['id']!r}" + (
            f" on {first[DATE_COLUMN]}" if date_column else ""
        )
        hint = (
            "" if date_column
            else f"; if they are for different dates' predictions, add an {DATE_COLUMN!r} column"
        )  # fmt: skip
        raise ConfigError(
            f"the labels in {source} give {clash.num_rows} customer(s) different labels, e.g. "
            f"{where}: keep one label each{hint}."
        )
    return distinct.select(["id", "label", *keys[1:]])


# Joining ------------------------------------------------------------------------------------


def join_predictions(
    settings: Settings,
    labels: pa.Table,
    date_column: str | None,
    date_from: dt.date | None,
    date_to: dt.date | None,
) -> tuple[dict[str, Any], dict[str, tuple[MonitoredRun, int]]]:
    """The labelled predictions of each run, and each run's published rows in the window.

    Returns:
        ``{"rows": {run_id: (y_true, y_pred, y_score)}, "matched_labels": n}`` and
        ``{run_id: (its lineage, its rows in the window)}``.

    Raises:
        ConfigError: no predictions table.
    """
    import duckdb

    from batchscore.catalog import load_table, open_catalog

    table = load_table(open_catalog(settings, writable=False), settings.output_table)
    if table is None:
        raise ConfigError(
            f"the predictions table {settings.output_table} does not exist: no run has "
            "published to it yet."
        )
    con = duckdb.connect(":memory:")
    try:
        con.register("labels", labels)
        where, params = _predictions_where(settings, date_from, date_to, "")
        _register_predictions(con, "predictions_for_counts", table, settings, date_from, date_to)
        counted = con.execute(
            "SELECT run_id, pipeline_name, id_range, model_name, model_version, inference_date, "
            f"count(*) AS n FROM predictions_for_counts WHERE {where} "
            "GROUP BY ALL",
            params,
        ).fetchall()
        counts = {
            row[0]: (MonitoredRun(row[0], row[1], row[2], row[3], row[4], row[5]), int(row[6]))
            for row in counted
        }
        _register_predictions(con, "predictions_for_join", table, settings, date_from, date_to)
        on = "p.customer_id = l.id" + (
            f" AND p.inference_date = l.{DATE_COLUMN}" if date_column else ""
        )
        joined = con.sql(
            "SELECT p.run_id, l.label, p.prediction, p.prediction_probability, l.id"
            + (f", l.{DATE_COLUMN}" if date_column else "")
            + f" FROM predictions_for_join p JOIN labels l ON {on} WHERE "
            + _predictions_where(settings, date_from, date_to, "p.")[0]
            + " ORDER BY p.run_id",
            params=params,
        ).to_arrow_table()
    finally:
        con.close()
    rows: dict[str, tuple[Any, Any, Any]] = {}
    run_ids = joined.column("run_id").to_numpy(zero_copy_only=False)
    truth = joined.column("label").to_numpy()
    predicted = joined.column("prediction").to_numpy()
    scores = joined.column("prediction_probability").to_numpy()
    for run_id in dict.fromkeys(run_ids.tolist()):
        mask = run_ids == run_id
        rows[run_id] = (truth[mask], predicted[mask], scores[mask])
    label_keys = ["id", *([DATE_COLUMN] if date_column else [])]
    matched = joined.select(label_keys).group_by(label_keys).aggregate([]).num_rows
    return {"rows": rows, "matched_labels": matched}, counts


def _predictions_where(
    settings: Settings, date_from: dt.date | None, date_to: dt.date | None, prefix: str
) -> tuple[str, list[Any]]:
    """The pipeline's rows in the window, as SQL (columns ``prefix``ed) and its parameters."""
    clauses, params = [f"{prefix}pipeline_name = ?"], [settings.pipeline_name]
    if date_from:
        clauses.append(f"{prefix}inference_date >= ?")
        params.append(date_from)
    if date_to:
        clauses.append(f"{prefix}inference_date <= ?")
        params.append(date_to)
    return " AND ".join(clauses), params


def _register_predictions(
    con: Any,
    view: str,
    table: Any,
    settings: Settings,
    date_from: dt.date | None,
    date_to: dt.date | None,
) -> None:
    """The pipeline's predictions in the window as DuckDB view ``view``: the table's own local
    files (streamed by DuckDB), else an Arrow stream of the pyiceberg scan (S3)."""
    from pyiceberg.expressions import And, EqualTo, GreaterThanOrEqual, LessThanOrEqual

    from batchscore.catalog import local_path
    from batchscore.sql import sql_string

    expression: Any = EqualTo("pipeline_name", settings.pipeline_name)
    if date_from:
        expression = And(expression, GreaterThanOrEqual("inference_date", date_from.isoformat()))
    if date_to:
        expression = And(expression, LessThanOrEqual("inference_date", date_to.isoformat()))
    columns: Sequence[str] = (
        "customer_id", "prediction", "prediction_probability", "model_name", "model_version",
        "run_id", "pipeline_name", "id_range", "inference_date",
    )  # fmt: skip
    scan = table.scan(row_filter=expression, selected_fields=tuple(columns))
    tasks = list(scan.plan_files())
    local = [local_path(task.file.file_path) for task in tasks]
    if tasks and all(p is not None for p in local) and not any(t.delete_files for t in tasks):
        files = ", ".join(sql_string(str(p)) for p in local)
        con.execute(
            f"CREATE VIEW {view} AS SELECT {', '.join(columns)} "
            f"FROM read_parquet([{files}], union_by_name = true)"
        )
        return
    con.register(view, scan.to_arrow_batch_reader())
