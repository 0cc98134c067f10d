"""A feature group as an append-only Iceberg table ``feature_store.<name>``, or any Iceberg table.

The embedded default keeps it in the workspace's SQLite catalog; pointed at a Glue catalog the
same code reads SageMaker Feature Store's Iceberg offline store. The latest-record read runs in
DuckDB over the table's Parquet files (out of core, streaming), never in pandas.

A name with a dot (``sales.customers``) is that table of the catalog; a plain name is the
table of the ``feature_store`` namespace. A table batchscore created carries its definition in
its ``batchscore.*`` properties; any other table is read by the configured
``record_identifier`` and ``event_time_feature``, its other columns being the features, the
store's columns used when present (:func:`batchscore.feature_store.latest.plan_read`). Such a
table is read, never written: ingest and delete refuse it.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import TableAlreadyExistsError
from pyiceberg.expressions import AlwaysTrue, In, LessThanOrEqual
from pyiceberg.table import Table

from batchscore.catalog import ensure_namespace, load_table
from batchscore.clock import utcnow
from batchscore.config import RESOURCE_NAME, TABLE_NAME, validate_identifier
from batchscore.errors import FeatureGroupError, did_you_mean
from batchscore.feature_store.base import (
    FEATURE_TYPES,
    STORE_COLUMNS,
    DeleteResult,
    FeatureGroup,
    FeatureStore,
    IngestResult,
    LatestRecords,
    ReadStats,
    RecordSummary,
    feature_type_of,
)
from batchscore.feature_store.ids import ID_WHITESPACE, trim_ids
from batchscore.feature_store.latest import (
    EPOCH_MILLIS_START,
    ReadPlan,
    latest_batches,
    open_parquet,
    pinned_snapshot,
    plan_read,
    scan_source,
    summarize_latest,
    utc_naive,
)

if TYPE_CHECKING:
    from batchscore.config import Settings

NAMESPACE = "feature_store"
PROP_MARKER = "batchscore.feature_group"
PROP_RECORD_ID = "batchscore.record_identifier"
PROP_EVENT_TIME = "batchscore.event_time_feature"
PROP_TYPES = "batchscore.feature_types"

log = logging.getLogger("batchscore")

INGEST_CHUNK_ROWS = 1_000_000


class IcebergFeatureStore(FeatureStore):
    """Feature groups in an Iceberg catalog (pyiceberg), read through DuckDB."""

    def __init__(
        self,
        catalog: Catalog,
        namespace: str = NAMESPACE,
        *,
        record_identifier: str = "customer_id",
        event_time_feature: str = "event_time",
    ) -> None:
        """Feature groups as the tables of ``namespace`` in ``catalog`` (or any table named
        ``namespace.table``).

        Args:
            catalog: the pyiceberg catalog to talk through (any type: SQL, Glue, REST …).
            namespace: the namespace that holds the feature groups.
            record_identifier: the id column of a table without batchscore's properties.
            event_time_feature: the event time column of such a table.
        """
        self.catalog = catalog
        self.namespace = namespace
        self.record_identifier = record_identifier
        self.event_time_feature = event_time_feature

    @classmethod
    def from_settings(cls, settings: Settings, *, writable: bool = True) -> IcebergFeatureStore:
        """The store in the configured catalog (SQLite in the workspace by default).

        Raises:
            WorkspaceNotFoundError: reading, and no workspace or SQLite catalog there.
            StorageError: writing, and the workspace is not writable.
            ConfigError: the catalog cannot be opened with the given properties.
        """
        from batchscore.catalog import open_catalog

        return cls(
            open_catalog(settings, writable=writable),
            record_identifier=settings.record_identifier,
            event_time_feature=settings.event_time_feature,
        )

    # Definition -------------------------------------------------------------------------

    def _identifier(self, name: str) -> str:
        if "." in name:  # any table of the catalog: namespace.table
            return validate_identifier(name, "feature_group_name", TABLE_NAME)
        validate_identifier(name, "feature_group_name", RESOURCE_NAME)
        return f"{self.namespace}.{name}"

    def iceberg_table(self, name: str) -> Table:
        """The Iceberg table behind feature group ``name`` (what the Ray engine reads).

        Raises:
            FeatureGroupError: no such feature group (with "Did you mean").
        """
        table = load_table(self.catalog, self._identifier(name))
        if table is None:
            known = self.list_feature_groups()
            listing = f" Feature groups here: {', '.join(known)}." if known else ""
            raise FeatureGroupError(
                f"feature group {name!r} does not exist.{did_you_mean(name, known)}{listing} "
                "Create it with 'batchscore features create' (or 'batchscore quickstart')."
            )
        return table

    def list_feature_groups(self) -> list[str]:
        try:
            return sorted(t[-1] for t in self.catalog.list_tables(self.namespace))
        except Exception:
            return []

    def create_feature_group(
        self,
        name: str,
        features: Mapping[str, str] | pa.Schema,
        *,
        record_identifier: str = "customer_id",
        event_time_feature: str = "event_time",
        exist_ok: bool = False,
    ) -> FeatureGroup:
        identifier = self._identifier(name)
        types = _feature_types(features, record_identifier, event_time_feature)
        fields = [
            pa.field(record_identifier, pa.string()),
            pa.field(event_time_feature, pa.timestamp("us")),
            *(pa.field(f, FEATURE_TYPES[t]) for f, t in types.items()),
            pa.field("write_time", pa.timestamp("us")),
            pa.field("api_invocation_time", pa.timestamp("us")),
            pa.field("is_deleted", pa.bool_()),
        ]
        ensure_namespace(self.catalog, self.namespace)
        properties = {
            PROP_MARKER: "true",
            PROP_RECORD_ID: record_identifier,
            PROP_EVENT_TIME: event_time_feature,
            PROP_TYPES: ",".join(f"{f}:{t}" for f, t in types.items()),
        }
        try:
            self.catalog.create_table(identifier, schema=pa.schema(fields), properties=properties)
        except TableAlreadyExistsError:
            if not exist_ok:
                raise FeatureGroupError(
                    f"feature group {name!r} already exists. Ingest into it, or pick another name."
                ) from None
        return self.describe(name)

    def describe(self, name: str) -> FeatureGroup:
        """The feature group's definition and how it is read: from its ``batchscore.*``
        properties, or, for any other table, from the configured id and event time columns.

        Raises:
            FeatureGroupError: no such table; a configured column is missing (naming it, the
                table's columns and the key to set) or the event time is not a time.
        """
        table = self.iceberg_table(name)
        props = table.properties
        snapshot = table.current_snapshot()
        total = 0
        if snapshot is not None and snapshot.summary is not None:
            total = int(snapshot.summary.additional_properties.get("total-records", 0))
        managed = props.get(PROP_MARKER) == "true"
        schema = table.schema().as_arrow()
        if managed:
            types = dict(
                pair.split(":", 1) for pair in props.get(PROP_TYPES, "").split(",") if pair
            )
            plan = ReadPlan(key=props[PROP_RECORD_ID], event=props[PROP_EVENT_TIME])
        else:
            plan = plan_read(
                schema,
                self.record_identifier,
                self.event_time_feature,
                label=f"table {self._identifier(name)!r}",
            )
            types = {
                f.name: feature_type_of(f.type)
                for f in schema
                if f.name not in (plan.key, plan.event, *STORE_COLUMNS)
            }
        return FeatureGroup(
            name=name,
            record_identifier=plan.key,
            event_time_feature=plan.event,
            features=types,
            table_identifier=self._identifier(name),
            location=table.location(),
            snapshot_id=snapshot.snapshot_id if snapshot else None,
            total_rows=total,
            event_time_kind=plan.event_kind,
            tie_breaks=plan.tie_breaks,
            delete_marker=plan.deleted,
            managed=managed,
        )

    def _writable(self, name: str) -> FeatureGroup:
        """The group, refused when batchscore did not create it (it only reads such tables).

        Raises:
            FeatureGroupError: a table without batchscore's properties.
        """
        group = self.describe(name)
        if not group.managed:
            raise FeatureGroupError(
                f"table {group.table_identifier!r} was not created by batchscore: it is read "
                "as a feature group, never written to. Write to it with the tool that owns "
                "it, or create a feature group with 'batchscore features create'."
            )
        return group

    # Writing ----------------------------------------------------------------------------

    def ingest(
        self,
        name: str,
        data: Any,
        *,
        allow_missing_columns: bool = False,
        ignore_extra_columns: bool = False,
        delimiter: str | None = None,
    ) -> IngestResult:
        group = self._writable(name)
        table = self.iceberg_table(name)
        target = table.schema().as_arrow()
        checks = _IngestChecks(group, allow_missing_columns, ignore_extra_columns)
        chunks = [
            self._conform(group, target, checks.columns(chunk))
            for chunk in _read_chunks(data, group, delimiter)
        ]
        if not chunks:
            return IngestResult(rows=0)
        _refuse_duplicates(group, chunks)
        result = checks.result(chunks)
        if result.future_event_times:
            log.warning(
                "%d record(s) for feature group %r have event times in the future (latest %s): "
                "they count only in runs as of that time or later.",
                result.future_event_times,
                name,
                result.max_event_time,
            )
        # One commit for the whole ingest: readers see all of it or none of it.
        with table.transaction() as tx:
            for chunk in chunks:
                tx.append(chunk)
        return result

    def delete_records(
        self, name: str, record_ids: list[str], event_time: dt.datetime | None = None
    ) -> DeleteResult:
        group = self._writable(name)
        table = self.iceberg_table(name)
        ids = list(dict.fromkeys(str(i).strip(ID_WHITESPACE) for i in record_ids))
        if not ids:
            return DeleteResult(markers_written=0, deleted=0)
        when = utc_naive(event_time) or utcnow()
        outcome = self._delete_outcome(group, table, ids, when)
        now = utcnow()
        n = len(ids)
        columns: dict[str, pa.Array] = {}
        for f in table.schema().as_arrow():
            if f.name == group.record_identifier:
                columns[f.name] = pa.array(ids, pa.string())
            elif f.name == group.event_time_feature:
                columns[f.name] = pa.array([when] * n, pa.timestamp("us"))
            elif f.name in ("write_time", "api_invocation_time"):
                columns[f.name] = pa.array([now] * n, pa.timestamp("us"))
            elif f.name == "is_deleted":
                columns[f.name] = pa.array([True] * n, pa.bool_())
            else:
                columns[f.name] = pa.nulls(n, f.type)
        table.append(pa.table(columns, schema=table.schema().as_arrow()))
        return outcome

    def _delete_outcome(
        self, group: FeatureGroup, table: Table, ids: list[str], when: dt.datetime
    ) -> DeleteResult:
        """What markers at ``when`` do to ``ids``, judged by each id's newest version now."""
        key, event = group.record_identifier, group.event_time_feature
        newest: dict[str, tuple[Any, ...]] = {}
        if table.current_snapshot() is not None:
            versions = table.scan(
                row_filter=In(key, ids),
                selected_fields=(key, event, "api_invocation_time", "write_time", "is_deleted"),
            ).to_arrow()
            for row in versions.to_pylist():
                order = (row[event], row["api_invocation_time"], row["write_time"])
                if row[key] not in newest or order > newest[row[key]][0]:
                    newest[row[key]] = (order, bool(row["is_deleted"]))
        unknown, stale, already = [], [], []
        for i in ids:
            if i not in newest:
                unknown.append(i)
            elif newest[i][0][0] > when:  # on a tie the marker, written later, wins
                stale.append(i)
            elif newest[i][1]:
                already.append(i)
        deleted = len(ids) - len(unknown) - len(stale) - len(already)
        return DeleteResult(len(ids), deleted, unknown, stale, already)

    def _conform(self, group: FeatureGroup, target: pa.Schema, data: pa.Table) -> pa.Table:
        """Cast incoming records to the group's schema and stamp the store's columns."""
        present = set(data.column_names)
        n = data.num_rows
        now = utcnow()
        columns: dict[str, pa.Array] = {}
        for f in target:
            if f.name == group.event_time_feature:
                columns[f.name] = _to_timestamp(data.column(f.name), f.name)
            elif f.name in ("write_time", "api_invocation_time"):
                columns[f.name] = pa.array([now] * n, pa.timestamp("us"))
            elif f.name == "is_deleted":
                columns[f.name] = pa.array([False] * n, pa.bool_())
            elif f.name in present:
                columns[f.name] = _cast_column(data.column(f.name), f.type, f.name)
            else:
                columns[f.name] = pa.nulls(n, f.type)
        key = group.record_identifier
        ids = trim_ids(columns[key])
        empty = pc.sum(pc.equal(pc.utf8_length(ids), 0).cast(pa.int64())).as_py() or 0
        if ids.null_count or empty:
            raise FeatureGroupError(
                f"{ids.null_count + empty} record(s) have no {key!r} (empty or blank): every "
                "record needs its identifier. Fill it in or drop those rows."
            )
        columns[key] = ids
        return pa.table(columns, schema=target)

    def record_summary(self, name: str) -> RecordSummary:
        """Live records, their id numbers' and event times' ranges: one DuckDB pass over the
        id, time and delete-marker columns of the current snapshot."""
        group = self.describe(name)
        if group.snapshot_id is None:
            return RecordSummary(0, None, None, None, None)
        source = scan_source(self.iceberg_table(name).scan(snapshot_id=group.snapshot_id))
        return summarize_latest(
            source, **ReadPlan.of(group).kwargs(), label=f"feature group {name!r}"
        )

    # Reading ----------------------------------------------------------------------------

    def latest_records(
        self,
        name: str,
        id_start: int | None,
        id_end: int | None,
        *,
        as_of: dt.datetime | None = None,
        snapshot_id: int | None = None,
        batch_size: int = 100_000,
        temp_dir: Path | None = None,
    ) -> LatestRecords:
        group = self.describe(name)
        table = self.iceberg_table(name)
        snapshot_id = pinned_snapshot(table, name, snapshot_id, group.snapshot_id)
        as_of = utc_naive(as_of)

        key, event = group.record_identifier, group.event_time_feature
        out_columns = [key, event, *group.features]
        out_schema = pa.schema([table.schema().as_arrow().field(c) for c in out_columns])
        stats = ReadStats()
        if snapshot_id is None:  # never written to
            return LatestRecords(out_schema, iter(()), None, as_of, stats)

        plan = ReadPlan.of(group)
        scan = table.scan(snapshot_id=snapshot_id, row_filter=as_of_filter(plan, as_of))
        batches = latest_batches(
            lambda: scan_source(scan, stats),
            **plan.kwargs(),
            out_columns=out_columns,
            out_schema=out_schema,
            id_start=id_start,
            id_end=id_end,
            as_of=as_of,
            batch_size=batch_size,
            temp_dir=temp_dir,
            stats=stats,
            label=f"feature group {name!r}",
        )
        return LatestRecords(out_schema, batches, snapshot_id, as_of, stats)


def as_of_filter(plan: ReadPlan, as_of: dt.datetime | None) -> Any:
    """The Iceberg row filter that prunes files by ``as_of`` (naive UTC) for the event time's
    kind; DuckDB applies the exact comparison in UTC afterwards.

    Args:
        plan: how the table is read.
        as_of: the read's time, or None (every version).

    Returns:
        A pyiceberg expression: the bound written as the column's type expects it (a zone for
        ``timestamptz``, a day for a date); AlwaysTrue for strings and epoch numbers, which
        Iceberg cannot compare as times.
    """
    if as_of is None:
        return AlwaysTrue()
    if plan.event_kind == "timestamp":
        return LessThanOrEqual(plan.event, as_of.isoformat())
    if plan.event_kind == "timestamptz":
        return LessThanOrEqual(plan.event, as_of.replace(tzinfo=dt.UTC).isoformat())
    if plan.event_kind == "date":
        return LessThanOrEqual(plan.event, as_of.date().isoformat())
    return AlwaysTrue()


def _role(group: FeatureGroup, column: str) -> str:
    return "record identifier" if column == group.record_identifier else "event time feature"


def _feature_types(
    features: Mapping[str, str] | pa.Schema, record_identifier: str, event_time_feature: str
) -> dict[str, str]:
    if isinstance(features, pa.Schema):
        pairs = {f.name: feature_type_of(f.type) for f in features}
    else:
        pairs = dict(features)
    for column in (record_identifier, event_time_feature):
        if column not in pairs:
            raise FeatureGroupError(
                f"the feature definitions lack {column!r}: a feature group needs its record "
                f"identifier and event time feature among its columns."
            )
    types: dict[str, str] = {}
    for feature, kind in pairs.items():
        if feature in (record_identifier, event_time_feature):
            continue
        if feature in ("write_time", "api_invocation_time", "is_deleted"):
            raise FeatureGroupError(
                f"feature name {feature!r} is reserved for the store's own column; rename it."
            )
        validate_identifier(feature, "feature name")
        normalized = {k.lower(): k for k in FEATURE_TYPES}.get(str(kind).lower())
        if normalized is None:
            raise FeatureGroupError(
                f"feature {feature!r} has type {kind!r}: use one of "
                f"{', '.join(FEATURE_TYPES)} (SageMaker's feature types)."
            )
        types[feature] = normalized
    return types


class _IngestChecks:
    """The column checks of one ingest, and what it reports once its chunks are conformed."""

    def __init__(
        self, group: FeatureGroup, allow_missing_columns: bool, ignore_extra_columns: bool
    ) -> None:
        self.group = group
        self.allow_missing = allow_missing_columns
        self.ignore_extra = ignore_extra_columns
        self.missing: list[str] = []
        self.ignored: list[str] = []

    def columns(self, data: pa.Table) -> pa.Table:
        """``data`` with its columns checked (extra ones dropped when allowed).

        Raises:
            FeatureGroupError: the id or event time column is missing; features are missing
                (unless allowed); columns are unknown (unless ignored).
        """
        group = self.group
        given = data.column_names
        for required in (group.record_identifier, group.event_time_feature):
            if required not in given:
                raise FeatureGroupError(
                    f"records for feature group {group.name!r} lack column {required!r} "
                    f"(its {_role(group, required)}). Columns given: {', '.join(given)}."
                )
        known = {group.record_identifier, group.event_time_feature, *group.features}
        extra = [c for c in given if c not in known]
        if extra and not self.ignore_extra:
            hint = did_you_mean(extra[0], known) if len(extra) == 1 else ""
            raise FeatureGroupError(
                f"feature group {group.name!r} has no feature {_names(extra)}.{hint} Its "
                f"features: {', '.join(group.features)}. Drop the column(s), pass "
                "--ignore-extra-columns (ignore_extra_columns=True) to skip them, or create a "
                "feature group that has them."
            )
        missing = [f for f in group.features if f not in given]
        if missing and not self.allow_missing:
            raise FeatureGroupError(
                f"records for feature group {group.name!r} lack feature {_names(missing)}: "
                "ingested, each record would become its id's newest version with those features "
                "NULL, and be scored as missing them. Add the column(s), or pass "
                "--allow-missing-columns (allow_missing_columns=True) if NULL is meant."
            )
        self.missing = missing
        self.ignored = extra
        return data.drop_columns(extra) if extra else data

    def result(self, chunks: list[pa.Table]) -> IngestResult:
        event = self.group.event_time_feature
        now = utcnow()
        future, latest = 0, None
        for chunk in chunks:
            times = chunk.column(event)
            later = pc.greater(times, pa.scalar(now, times.type))
            future += pc.sum(later.cast(pa.int64())).as_py() or 0
            top = pc.max(times).as_py()
            latest = top if latest is None or (top is not None and top > latest) else latest
        return IngestResult(
            rows=sum(c.num_rows for c in chunks),
            missing_columns=self.missing,
            ignored_columns=self.ignored,
            future_event_times=future,
            max_event_time=latest if future else None,
        )


def _names(columns: list[str]) -> str:
    quoted = ", ".join(repr(c) for c in columns)
    return f"column(s) {quoted}" if len(columns) > 1 else quoted


def _refuse_duplicates(group: FeatureGroup, chunks: list[pa.Table]) -> None:
    """Two rows of one ingest with the same id and event time tie on every ordering column
    (their write times are equal too), so neither would reliably win: refuse them.

    Raises:
        FeatureGroupError: naming up to five of the repeated ids.
    """
    key, event = group.record_identifier, group.event_time_feature
    pairs = pa.concat_tables(c.select([key, event]) for c in chunks)
    counts = pairs.group_by([key, event]).aggregate([([], "count_all")])
    repeated = counts.filter(pc.greater(counts.column("count_all"), 1))
    if repeated.num_rows:
        ids = list(dict.fromkeys(repeated.column(key).to_pylist()))
        shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
        raise FeatureGroupError(
            f"{repeated.num_rows} (id, {event}) pair(s) appear more than once in the records for "
            f"feature group {group.name!r}: {shown}. Two versions with the same event time "
            "cannot be ordered; keep one row per id and event time."
        )


def _read_chunks(
    data: Any, group: FeatureGroup, delimiter: str | None = None
) -> Iterator[pa.Table]:
    """Incoming records as Arrow tables of at most INGEST_CHUNK_ROWS rows."""
    import pandas as pd

    if isinstance(data, pd.DataFrame):
        data = pa.Table.from_pandas(data, preserve_index=False)
    if isinstance(data, pa.Table):
        for batch in data.to_batches(max_chunksize=INGEST_CHUNK_ROWS):
            yield pa.Table.from_batches([batch])
        return
    path = Path(data)
    if not path.is_file():
        raise FeatureGroupError(f"input file {str(path)!r} does not exist.")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        for batch in open_parquet(path).iter_batches(batch_size=INGEST_CHUNK_ROWS):
            yield pa.Table.from_batches([batch])
    elif suffix in (".csv", ".txt", ".gz"):
        from pyarrow import csv

        if delimiter is not None and len(delimiter) != 1:
            raise FeatureGroupError(
                f"delimiter {delimiter!r} must be one character, e.g. ';' or a tab."
            )
        # Every column is read as text and cast per column by _conform, so a bad value is
        # reported with its column's name.
        if delimiter is None:
            _refuse_other_separators(path)
        names = [group.record_identifier, group.event_time_feature, *group.features]
        types = dict.fromkeys(names, pa.string())
        try:
            reader = csv.open_csv(
                path,
                convert_options=csv.ConvertOptions(column_types=types, strings_can_be_null=True),
                parse_options=csv.ParseOptions(delimiter=delimiter or ","),
                read_options=csv.ReadOptions(block_size=64 << 20),
            )
            for batch in reader:
                yield pa.Table.from_batches([batch])
        except pa.ArrowInvalid as exc:
            raise FeatureGroupError(
                f"cannot read {str(path)!r} as CSV for feature group {group.name!r}: {exc}. "
                "Check the delimiter (--delimiter) and that every row has the header's columns."
            ) from exc
    else:
        raise FeatureGroupError(
            f"input file {str(path)!r} has an unknown format: use .csv or .parquet."
        )


def _refuse_other_separators(path: Path) -> None:
    """A header that would read as one column holding ';' (or a tab): the file is separated
    by that, and saying so beats pyarrow's row-length complaint.

    Raises:
        FeatureGroupError: naming the delimiter to pass.
    """
    with pa.input_stream(str(path), compression="detect") as stream:
        header = stream.read(1 << 16).decode("utf-8", errors="replace").splitlines()[:1]
    if not header or "," in header[0]:
        return
    for sep, shown in ((";", "semicolon-separated: pass --delimiter ';'"),
                       ("\t", "tab-separated: pass --delimiter $'\\t'")):  # fmt: skip
        if sep in header[0]:
            raise FeatureGroupError(
                f"{str(path)!r} looks {shown} (delimiter= in Python); its header reads as one "
                f"column, {header[0][:60]!r}."
            )


def _cast_column(column: pa.ChunkedArray, target: pa.DataType, name: str) -> pa.ChunkedArray:
    if column.type == target:
        return column
    try:
        if pa.types.is_string(target) and not pa.types.is_string(column.type):
            return pc.cast(column, target)
        if pa.types.is_integer(target) and (
            pa.types.is_floating(column.type) or pa.types.is_string(column.type)
        ):
            return _whole_numbers(column, target, name)
        return pc.cast(column, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise FeatureGroupError(
            f"column {name!r} does not fit its feature type ({target}): {exc}. "
            f"Fix the values in {name!r} or define the feature with another type."
        ) from exc


def _whole_numbers(column: pa.ChunkedArray, target: pa.DataType, name: str) -> pa.ChunkedArray:
    """Integral values that arrive as floats or text: pandas writes an integer column with
    missing values as ``25.0``. A zero fraction is cast; a real one is refused."""
    if pa.types.is_string(column.type):
        try:
            return pc.cast(column, target)
        except pa.ArrowInvalid:
            column = pc.cast(column, pa.float64())  # raises naming a value that is no number
    whole = pc.equal(pc.floor(column), column)
    bad = pc.invert(pc.fill_null(whole, True))
    if pc.any(bad).as_py():
        value = pc.filter(column, bad)[0].as_py()
        raise FeatureGroupError(
            f"column {name!r} is Integral but holds {value!r}, which is not a whole number. "
            f"Round the values in {name!r}, or define the feature as Fractional."
        )
    return pc.cast(column, target)


# Epoch numbers below EPOCH_MILLIS_START (the read's threshold) are seconds; from it up to
# EPOCH_MILLIS_END they are milliseconds (March 1973 to the year 5138). Ingest wants one unit
# per column.
EPOCH_MILLIS_END = 100_000_000_000_000
_NUMBER = r"^\s*[+-]?[0-9]+(\.[0-9]*)?\s*$"


def _to_timestamp(column: pa.ChunkedArray, name: str) -> pa.ChunkedArray:
    """Event times as naive UTC microseconds, from timestamps, dates, ISO 8601 strings (with or
    without a zone; naive ones are UTC) or epoch seconds/milliseconds (numbers or digits)."""
    import pandas as pd

    kind = column.type
    try:
        if pa.types.is_timestamp(kind) and kind.tz is None:
            return pc.cast(column, pa.timestamp("us"))
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            numeric = pc.match_substring_regex(column, _NUMBER)
            if pc.all(pc.fill_null(numeric, True)).as_py() and len(column) > column.null_count:
                return _epoch(pc.cast(pc.utf8_trim_whitespace(column), pa.float64()), name)
            if pc.any(pc.fill_null(numeric, False)).as_py():
                value = pc.filter(column, pc.fill_null(numeric, False))[0].as_py()
                raise FeatureGroupError(
                    f"event time column {name!r} mixes epoch numbers ({value!r}) with other "
                    "values: use one form for the whole file."
                )
        if pa.types.is_integer(kind) or pa.types.is_floating(kind):
            return _epoch(pc.cast(column, pa.float64()), name)
        if pa.types.is_date(kind):
            return pc.cast(column, pa.timestamp("us"))
        # Zoned timestamps and ISO 8601 strings, with or without offsets, mixed: pandas parses
        # them all; offsets are converted to UTC.
        values = column.to_pandas()
        if not pa.types.is_timestamp(kind):
            values = pd.to_datetime(values, utc=True, format="ISO8601")
        naive = values.dt.tz_convert("UTC").dt.tz_localize(None)
        return pa.chunked_array([pa.array(naive, pa.timestamp("us"))])
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError, TypeError) as exc:
        raise FeatureGroupError(
            f"event time column {name!r} holds values that are not times: {exc}. Use ISO 8601 "
            "(2026-01-31T12:00:00Z; without a zone it is UTC), a timestamp, or epoch seconds "
            f"(below {EPOCH_MILLIS_START:,}) or milliseconds (from it)."
        ) from exc


def _epoch(seconds_or_millis: pa.ChunkedArray, name: str) -> pa.ChunkedArray:
    """Epoch numbers as timestamps, the unit told by magnitude (see EPOCH_MILLIS_START)."""
    magnitude = pc.abs(seconds_or_millis)
    millis = pc.greater_equal(magnitude, EPOCH_MILLIS_START)
    n_millis = pc.sum(millis.cast(pa.int64())).as_py() or 0
    n_valid = len(seconds_or_millis) - seconds_or_millis.null_count
    too_big = pc.greater_equal(magnitude, EPOCH_MILLIS_END)
    if pc.any(too_big).as_py():
        value = pc.filter(seconds_or_millis, too_big)[0].as_py()
        raise FeatureGroupError(
            f"event time column {name!r} holds {value!r}, too large for epoch seconds or "
            "milliseconds (micro- or nanoseconds?): convert to seconds or ISO 8601."
        )
    if 0 < n_millis < n_valid:
        raise FeatureGroupError(
            f"event time column {name!r} mixes epoch seconds and milliseconds (numbers from "
            f"{EPOCH_MILLIS_START:,} on are read as milliseconds): use one unit for the file."
        )
    scale = 1_000 if n_millis else 1_000_000
    micros = pc.cast(pc.round(pc.multiply(seconds_or_millis, scale)), pa.int64())
    return pc.cast(micros, pa.timestamp("us"))
