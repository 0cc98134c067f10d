"""A feature group as an append-only Iceberg table ``feature_store.<name>``.

The embedded default keeps it in the workspace's SQLite catalog; pointed at a Glue catalog the
same code reads SageMaker Feature Store's Iceberg offline store. The latest-record read runs in
DuckDB over the table's Parquet files (out of core, streaming), never in pandas.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import TableAlreadyExistsError
from pyiceberg.expressions import AlwaysTrue, LessThanOrEqual
from pyiceberg.table import Table

from batchscore.clock import utcnow
from batchscore.config import RESOURCE_NAME, validate_identifier
from batchscore.errors import FeatureGroupError, did_you_mean
from batchscore.feature_store.base import (
    FEATURE_TYPES,
    FeatureGroup,
    FeatureStore,
    LatestRecords,
    ReadStats,
    feature_type_of,
)
from batchscore.tables import ensure_namespace, load_table, sql_string

NAMESPACE = "feature_store"
PROP_MARKER = "batchscore.feature_group"
PROP_RECORD_ID = "batchscore.record_identifier"
PROP_EVENT_TIME = "batchscore.event_time_feature"
PROP_TYPES = "batchscore.feature_types"

INGEST_CHUNK_ROWS = 1_000_000
DUCKDB_MEMORY_LIMIT = "512MB"


def _sql_name(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class IcebergFeatureStore(FeatureStore):
    """Feature groups in an Iceberg catalog (pyiceberg), read through DuckDB."""

    def __init__(self, catalog: Catalog, namespace: str = NAMESPACE) -> None:
        self.catalog = catalog
        self.namespace = namespace

    # Definition -------------------------------------------------------------------------

    def _identifier(self, name: str) -> str:
        validate_identifier(name, "feature_group_name", RESOURCE_NAME)
        return f"{self.namespace}.{name}"

    def _table(self, name: str) -> Table:
        table = load_table(self.catalog, self._identifier(name))
        if table is None or table.properties.get(PROP_MARKER) != "true":
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
        table = self._table(name)
        props = table.properties
        types = dict(pair.split(":", 1) for pair in props.get(PROP_TYPES, "").split(",") if pair)
        snapshot = table.current_snapshot()
        total = 0
        if snapshot is not None and snapshot.summary is not None:
            total = int(snapshot.summary.additional_properties.get("total-records", 0))
        return FeatureGroup(
            name=name,
            record_identifier=props[PROP_RECORD_ID],
            event_time_feature=props[PROP_EVENT_TIME],
            features=types,
            table_identifier=self._identifier(name),
            location=table.location(),
            snapshot_id=snapshot.snapshot_id if snapshot else None,
            total_rows=total,
        )

    # Writing ----------------------------------------------------------------------------

    def ingest(self, name: str, data: Any) -> int:
        group = self.describe(name)
        table = self._table(name)
        target = table.schema().as_arrow()
        written = 0
        chunks = [self._conform(group, target, chunk) for chunk in _read_chunks(data, group)]
        if not chunks:
            return 0
        # One commit for the whole ingest: readers see all of it or none of it.
        with table.transaction() as tx:
            for chunk in chunks:
                tx.append(chunk)
                written += chunk.num_rows
        return written

    def delete_records(
        self, name: str, record_ids: list[str], event_time: dt.datetime | None = None
    ) -> int:
        group = self.describe(name)
        table = self._table(name)
        if not record_ids:
            return 0
        when = utc_naive(event_time) or utcnow()
        now = utcnow()
        n = len(record_ids)
        columns: dict[str, pa.Array] = {}
        for f in table.schema().as_arrow():
            if f.name == group.record_identifier:
                columns[f.name] = pa.array([str(i) for i in record_ids], pa.string())
            elif f.name == group.event_time_feature:
                columns[f.name] = pa.array([when] * n, pa.timestamp("us"))
            elif f.name in ("write_time", "api_invocation_time"):
                columns[f.name] = pa.array([now] * n, pa.timestamp("us"))
            elif f.name == "is_deleted":
                columns[f.name] = pa.array([True] * n, pa.bool_())
            else:
                columns[f.name] = pa.nulls(n, f.type)
        table.append(pa.table(columns, schema=table.schema().as_arrow()))
        return n

    def _conform(self, group: FeatureGroup, target: pa.Schema, data: pa.Table) -> pa.Table:
        """Cast incoming records to the group's schema and stamp the store's columns."""
        present = set(data.column_names)
        for required in (group.record_identifier, group.event_time_feature):
            if required not in present:
                raise FeatureGroupError(
                    f"records for feature group {group.name!r} lack column {required!r} "
                    f"(its {_role(group, required)}). "
                    f"Columns given: {', '.join(data.column_names)}."
                )
        known = {group.record_identifier, group.event_time_feature, *group.features}
        unknown = [c for c in data.column_names if c not in known]
        if unknown:
            raise FeatureGroupError(
                f"feature group {group.name!r} has no feature {unknown[0]!r}"
                f"{did_you_mean(unknown[0], known)} Its features: {', '.join(group.features)}. "
                "Drop the column or create a feature group that has it."
            )
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
        ids = columns[group.record_identifier]
        if ids.null_count:
            raise FeatureGroupError(
                f"{ids.null_count} record(s) have no {group.record_identifier!r}: every record "
                "needs its identifier."
            )
        return pa.table(columns, schema=target)

    # Reading ----------------------------------------------------------------------------

    def latest_records(
        self,
        name: str,
        id_start: int,
        id_end: int,
        *,
        as_of: dt.datetime | None = None,
        snapshot_id: int | None = None,
        batch_size: int = 100_000,
        temp_dir: Path | None = None,
    ) -> LatestRecords:
        group = self.describe(name)
        table = self._table(name)
        snapshot_id = pinned_snapshot(table, name, snapshot_id, group.snapshot_id)
        as_of = utc_naive(as_of)

        key, event = group.record_identifier, group.event_time_feature
        out_columns = [key, event, *group.features]
        out_schema = pa.schema([table.schema().as_arrow().field(c) for c in out_columns])
        stats = ReadStats()
        if snapshot_id is None:  # never written to
            return LatestRecords(out_schema, iter(()), None, as_of, stats)

        scan = table.scan(
            snapshot_id=snapshot_id,
            row_filter=LessThanOrEqual(event, as_of.isoformat()) if as_of else AlwaysTrue(),
        )
        batches = _dedup_batches(
            lambda: _scan_source(scan),
            key=key,
            event=event,
            out_columns=out_columns,
            out_schema=out_schema,
            id_start=id_start,
            id_end=id_end,
            as_of=as_of,
            batch_size=batch_size,
            temp_dir=temp_dir,
            stats=stats,
        )
        return LatestRecords(out_schema, batches, snapshot_id, as_of, stats)


def _role(group: FeatureGroup, column: str) -> str:
    return "record identifier" if column == group.record_identifier else "event time feature"


def pinned_snapshot(
    table: Table, name: str, snapshot_id: int | None, current: int | None
) -> int | None:
    """The snapshot a read uses: the run's pinned one, else the table's current one.

    Raises:
        FeatureGroupError: the pinned snapshot no longer exists (expired).
    """
    if snapshot_id is None:
        return current
    if table.snapshot_by_id(snapshot_id) is None:
        raise FeatureGroupError(
            f"feature group {name!r} has no snapshot {snapshot_id}: it may have been expired. "
            "Start a new run instead of resuming this one."
        )
    return snapshot_id


def utc_naive(moment: dt.datetime | None) -> dt.datetime | None:
    """A time as the store compares it: UTC without a zone (naive times are taken as UTC)."""
    if moment is not None and moment.tzinfo is not None:
        return moment.astimezone(dt.UTC).replace(tzinfo=None)
    return moment


def _scan_source(scan: Any) -> list[str] | pa.RecordBatchReader | None:
    """Local Parquet files of the scan for DuckDB to read itself, else pyiceberg's reader
    (remote files, row-level deletes); None when the snapshot has no files."""
    tasks = list(scan.plan_files())
    if not tasks:
        return None
    paths = [urlparse(t.file.file_path) for t in tasks]
    if all(p.scheme in ("", "file") for p in paths) and not any(t.delete_files for t in tasks):
        return [p.path for p in paths]
    return scan.to_arrow_batch_reader()


def _dedup_batches(
    source: Callable[[], list[str] | pa.RecordBatchReader | None],
    *,
    key: str,
    event: str,
    out_columns: list[str],
    out_schema: pa.Schema,
    id_start: int,
    id_end: int,
    as_of: dt.datetime | None,
    batch_size: int,
    temp_dir: Path | None,
    stats: ReadStats,
) -> Iterator[pa.RecordBatch]:
    """Rank versions per id in DuckDB, newest first, then drop delete markers (in that order).

    ``source`` gives local Parquet files (read by DuckDB, ranked on the key columns alone) or
    an Arrow record batch reader; it is called once the DuckDB connection is ready."""
    import duckdb

    # A bounded buffer pool: past it DuckDB spills the window to temp_dir instead of growing
    # (its default is 80% of RAM). Output order is irrelevant, which lets it stream.
    config: dict[str, Any] = {
        "memory_limit": DUCKDB_MEMORY_LIMIT,
        "preserve_insertion_order": False,
    }
    if temp_dir is not None:
        temp_dir.mkdir(parents=True, exist_ok=True)
        config["temp_directory"] = str(temp_dir)
    con = duckdb.connect(":memory:", config=config)
    try:
        found = source()
        if found is None:
            return
        if isinstance(found, list):
            files = ", ".join(sql_string(p) for p in found)
            located: str | None = f"read_parquet([{files}], file_row_number = true)"
        else:  # an Arrow stream (remote files, row-level deletes): one pass, whole rows
            con.register("__source", found)
            located = None
        selected = ", ".join(_sql_name(c) for c in out_columns)
        k, e = _sql_name(key), _sql_name(event)
        time_filter = f"AND {e} <= $as_of" if as_of is not None else ""
        in_range = f"""TRY_CAST(regexp_extract({k}, '([0-9]+)$', 1) AS BIGINT)
                      BETWEEN $id_start AND $id_end {time_filter}"""
        newest_first = f"ORDER BY {e} DESC, api_invocation_time DESC, write_time DESC"
        params: dict[str, Any] = {"id_start": id_start, "id_end": id_end}
        if as_of is not None:
            params["as_of"] = as_of
        reader: Iterator[pa.RecordBatch]
        if located is not None:
            # Pass 1, in DuckDB over the key columns alone: each id's newest version as a
            # position (file, row) — a hash aggregate, arg_max by the three times, no sort —
            # kept in a temporary table (spilled past the memory limit). Pass 2, in pyarrow:
            # each file streamed once, its winning rows taken by row number. The wide feature
            # columns are never sorted, hashed or joined, and memory stays bounded by a batch.
            con.execute(
                f"""
                CREATE TEMP TABLE newest AS
                SELECT CAST(__position >> 40 AS INTEGER) AS file,
                       CAST(__position & 1099511627775 AS BIGINT) AS row, __versions
                FROM (
                    SELECT arg_max(CAST(file_index AS BIGINT) * 1099511627776
                                       + CAST(file_row_number AS BIGINT),
                                   ({e}, api_invocation_time, write_time)) AS __position,
                           count(*) AS __versions
                    FROM {located}
                    WHERE {in_range}
                    GROUP BY {k}
                )
                """,
                params,
            )
            reader = _take_winners(con, found, out_columns, batch_size)  # type: ignore[arg-type]
        else:
            sql = f"""
                SELECT {selected}, is_deleted AS __deleted, __versions FROM (
                    SELECT *,
                        row_number() OVER (PARTITION BY {k} {newest_first}) AS __rank,
                        count(*) OVER (PARTITION BY {k}) AS __versions
                    FROM __source
                    WHERE {in_range}
                )
                WHERE __rank = 1
            """
            reader = iter(con.sql(sql, params=params).to_arrow_reader(batch_size))
        for batch in reader:
            deleted = batch.column("__deleted").fill_null(False)
            versions = batch.column("__versions")
            stats.duplicate_versions_skipped += pc.sum(versions).as_py() - batch.num_rows
            n_deleted = pc.sum(deleted.cast(pa.int64())).as_py() or 0
            stats.deleted_records_skipped += n_deleted
            live = batch.filter(pc.invert(deleted)) if n_deleted else batch
            live = live.select(out_columns)
            if live.num_rows:
                stats.records += live.num_rows
                if live.schema != out_schema:  # e.g. large_string in a file, string in the table
                    live = pa.Table.from_batches([live]).cast(out_schema).to_batches()[0]
                yield pa.RecordBatch.from_arrays(live.columns, schema=out_schema)
    finally:
        con.close()


def _take_winners(
    con: Any, files: list[str], columns: list[str], batch_size: int
) -> Iterator[pa.RecordBatch]:
    """Stream each file once, keeping the rows ``newest`` names (with ``__deleted`` and
    ``__versions``). Row numbers come sorted per file, so both sides advance together."""
    import numpy as np
    import pyarrow.parquet as pq

    for index, path in enumerate(files):
        wanted = con.sql(
            f"SELECT row, __versions FROM newest WHERE file = {index} ORDER BY row"
        ).to_arrow_reader(batch_size)
        rows = np.empty(0, dtype=np.int64)
        versions = np.empty(0, dtype=np.int64)
        exhausted = False
        offset = 0
        for batch in pq.ParquetFile(path).iter_batches(
            batch_size=batch_size, columns=[*columns, "is_deleted"]
        ):
            end = offset + batch.num_rows
            # Top up the wanted rows until they reach past this batch.
            while not exhausted and (len(rows) == 0 or rows[-1] < end):
                try:
                    more = wanted.read_next_batch()
                except StopIteration:
                    exhausted = True
                    break
                rows = np.concatenate([rows, more.column(0).to_numpy(zero_copy_only=False)])
                versions = np.concatenate([versions, more.column(1).to_numpy(zero_copy_only=False)])
            here = int(np.searchsorted(rows, end))
            if here:
                taken = batch.take(pa.array(rows[:here] - offset))
                yield pa.RecordBatch.from_arrays(
                    [
                        *taken.select(columns).columns,
                        taken.column("is_deleted"),
                        pa.array(versions[:here], pa.int64()),
                    ],
                    names=[*columns, "__deleted", "__versions"],
                )
                rows, versions = rows[here:], versions[here:]
            offset = end


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


def _read_chunks(data: Any, group: FeatureGroup) -> Iterator[pa.Table]:
    """Incoming records as Arrow tables of at most INGEST_CHUNK_ROWS rows."""
    import pandas as pd

    if isinstance(data, pd.DataFrame):
        data = pa.Table.from_pandas(data, preserve_index=False)
    if isinstance(data, pa.Table):
        for batch in data.to_batches(max_chunksize=INGEST_CHUNK_ROWS):
            yield pa.Table.from_batches([batch])
        return
    path = Path(data)
    if not path.exists():
        raise FeatureGroupError(f"input file {str(path)!r} does not exist.")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=INGEST_CHUNK_ROWS):
            yield pa.Table.from_batches([batch])
    elif suffix in (".csv", ".txt", ".gz"):
        from pyarrow import csv

        # Everything is read as text and cast per column by _conform, so a bad value is
        # reported with its column's name.
        names = [group.record_identifier, group.event_time_feature, *group.features]
        types = dict.fromkeys(names, pa.string())
        try:
            reader = csv.open_csv(
                path,
                convert_options=csv.ConvertOptions(column_types=types, strings_can_be_null=True),
                read_options=csv.ReadOptions(block_size=64 << 20),
            )
            for batch in reader:
                yield pa.Table.from_batches([batch])
        except pa.ArrowInvalid as exc:
            raise FeatureGroupError(
                f"cannot read {str(path)!r} as CSV for feature group {group.name!r}: {exc}. "
                "Check that each column holds values of its feature type."
            ) from exc
    else:
        raise FeatureGroupError(
            f"input file {str(path)!r} has an unknown format: use .csv or .parquet."
        )


def _cast_column(column: pa.ChunkedArray, target: pa.DataType, name: str) -> pa.ChunkedArray:
    if column.type == target:
        return column
    try:
        if pa.types.is_string(target) and not pa.types.is_string(column.type):
            return pc.cast(column, target)
        if pa.types.is_integer(target) and pa.types.is_floating(column.type):
            # Integral features may arrive as floats (pandas NaN); whole numbers only.
            return pc.cast(column, target, safe=True)
        return pc.cast(column, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise FeatureGroupError(
            f"column {name!r} does not fit its feature type ({target}): {exc}. "
            f"Fix the values in {name!r} or define the feature with another type."
        ) from exc


def _to_timestamp(column: pa.ChunkedArray, name: str) -> pa.ChunkedArray:
    """Event times as naive UTC microseconds, from timestamps, ISO strings or epoch seconds."""
    import pandas as pd

    kind = column.type
    try:
        if pa.types.is_timestamp(kind) and kind.tz is None:
            return pc.cast(column, pa.timestamp("us"))
        if pa.types.is_integer(kind) or pa.types.is_floating(kind):
            micros = pc.cast(pc.multiply(pc.cast(column, pa.float64()), 1_000_000), pa.int64())
            return pc.cast(micros, pa.timestamp("us"))
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
            "(2026-01-31T12:00:00Z), a timestamp, or epoch seconds."
        ) from exc
