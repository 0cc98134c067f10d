"""The latest-record rule, shared by every feature store that reads Parquet or Arrow rows.

A feature group is append-only (see :mod:`batchscore.feature_store.base`): per record id, the
newest version with event time <= ``as_of`` wins, ordered by (event time,
``api_invocation_time``, ``write_time``); if that winner is a delete marker (``is_deleted``)
the id is gone. Ids are compared by their number (:mod:`batchscore.feature_store.ids`).

Any table reads by the same rule (:class:`ReadPlan`, made by :func:`plan_read` from its
schema): the store's columns are used when present — the tie-breaks are those of
``api_invocation_time``, ``write_time`` it has, and without ``is_deleted`` nothing is a delete
marker. The event time may be a timestamp with or without zone, a date, an ISO 8601 string or
epoch seconds/milliseconds (:func:`event_time_sql`); it is ranked and compared with ``as_of``
as naive UTC in every case.

Here the rule runs in DuckDB, out of core, over whatever rows a store can hand over:

- :func:`latest_batches` ranks a source and streams the winners as Arrow batches. Local
  Parquet files are ranked on the key columns alone (an arg-max per id, no sort) and the
  winning rows taken back from each file by row number (:func:`take_winners`); an Arrow
  stream (remote files, row-level deletes) is ranked in one window pass.
- :func:`summarize_latest` counts the live records and their id and event-time ranges.
- :func:`scan_source` turns an Iceberg scan into such a source; :func:`pinned_snapshot`
  checks the snapshot a resumed run pinned; :func:`utc_naive` puts ``as_of`` on the stores'
  clock; :func:`sql_name` quotes a column for the SQL.

The Iceberg store (its own tables) and the SageMaker store (its offline store, Parquet in S3 or
an Iceberg table in Glue) both read through here; the Ray engine uses the same helpers.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.compute as pc

from batchscore.errors import FeatureGroupError
from batchscore.feature_store.base import (
    UNMATCHED_EXAMPLES,
    FeatureGroup,
    ReadStats,
    RecordSummary,
)
from batchscore.feature_store.ids import ID_WHITESPACE, id_number_sql, trimmed_id_sql
from batchscore.sql import sql_string

# DuckDB's buffer pool per read: past it the ranking spills to disk instead of growing.
DUCKDB_MEMORY_LIMIT = "512MB"

# A source of rows to rank: local Parquet paths, an Arrow stream, or None (no rows at all).
RowSource = list[str] | pa.RecordBatchReader | None

# The store's ordering columns after the event time, and its delete marker (SageMaker's).
TIE_BREAKS = ("api_invocation_time", "write_time")
DELETE_MARKER = "is_deleted"

# Epoch numbers whose magnitude is below this are seconds (up to the year 5138); from it on
# they are milliseconds (from March 1973 on). Told per value, so a column may mix them.
EPOCH_MILLIS_START = 100_000_000_000

# What an event time column holds, by Arrow type (see event_time_kind).
EVENT_KINDS = ("timestamp", "timestamptz", "date", "string", "epoch")


def event_time_kind(arrow_type: pa.DataType) -> str | None:
    """How an event time column of ``arrow_type`` is read (one of :data:`EVENT_KINDS`).

    Args:
        arrow_type: the column's Arrow type.

    Returns:
        ``timestamp`` (no zone: UTC), ``timestamptz``, ``date`` (midnight UTC), ``string``
        (ISO 8601, an offset converted to UTC, none meaning UTC), ``epoch`` (integers: seconds
        below :data:`EPOCH_MILLIS_START`, milliseconds from it), or None (not a time).
    """
    if pa.types.is_timestamp(arrow_type):
        return "timestamptz" if arrow_type.tz is not None else "timestamp"
    if pa.types.is_date(arrow_type):
        return "date"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "string"
    if pa.types.is_integer(arrow_type):
        return "epoch"
    return None


def event_time_sql(column: str, kind: str) -> str:
    """DuckDB SQL for the event time in ``column`` (a quoted name) as a naive UTC timestamp.

    Args:
        column: the quoted column name.
        kind: what it holds (:func:`event_time_kind`).

    Returns:
        A TIMESTAMP expression (the column itself for a naive timestamp).
    """
    if kind == "timestamp":
        return column  # as stored: Parquet statistics still prune
    if kind == "timestamptz":
        return f"CAST({column} AS TIMESTAMP)"  # the UTC wall time (the session is UTC)
    if kind == "date":
        return f"CAST({column} AS TIMESTAMP)"
    if kind == "string":
        return f"CAST(CAST({column} AS TIMESTAMPTZ) AS TIMESTAMP)"
    if kind == "epoch":
        micros = (
            f"CASE WHEN abs({column}) >= {EPOCH_MILLIS_START} THEN CAST({column} AS BIGINT) * 1000 "
            f"ELSE CAST({column} AS BIGINT) * 1000000 END"
        )
        return f"make_timestamp({micros})"
    raise ValueError(f"unknown event time kind {kind!r}")


@dataclass(frozen=True)
class ReadPlan:
    """How a table is read by the latest-record rule: which columns play which part.

    ``key``: the record identifier. ``event``: the event time, holding ``event_kind``
    (:data:`EVENT_KINDS`). ``tie_breaks``: the columns that order two versions with the same
    event time, newest last (those of :data:`TIE_BREAKS` the table has). ``deleted``: the
    delete marker column, or None (no version is a marker).
    """

    key: str
    event: str
    event_kind: str = "timestamp"
    tie_breaks: tuple[str, ...] = TIE_BREAKS
    deleted: str | None = DELETE_MARKER

    @classmethod
    def of(cls, group: FeatureGroup) -> ReadPlan:
        """The plan ``describe`` worked out for a feature group."""
        return cls(
            key=group.record_identifier,
            event=group.event_time_feature,
            event_kind=group.event_time_kind,
            tie_breaks=tuple(group.tie_breaks),
            deleted=group.delete_marker,
        )

    @property
    def store_columns(self) -> list[str]:
        """The tie-break and delete-marker columns the rule reads besides id and event time."""
        return [*self.tie_breaks, *([self.deleted] if self.deleted else [])]

    def kwargs(self) -> dict[str, Any]:
        """The plan as keyword arguments of :func:`latest_batches` / :func:`summarize_latest`."""
        return {
            "key": self.key,
            "event": self.event,
            "event_kind": self.event_kind,
            "tie_breaks": self.tie_breaks,
            "deleted": self.deleted,
        }


def plan_read(
    schema: pa.Schema,
    key: str,
    event: str,
    *,
    label: str,
    key_setting: str = "record_identifier",
    event_setting: str = "event_time_feature",
) -> ReadPlan:
    """The read plan of a table with ``schema`` whose id is ``key`` and event time ``event``.

    Args:
        schema: the table's Arrow schema.
        key: the record identifier column (from the config or the table's properties).
        event: the event time column.
        label: what is read, for errors (``"table 'sales.customers'"``).
        key_setting: the config key that names ``key``, for the error.
        event_setting: the config key that names ``event``, for the error.

    Returns:
        The plan: the store's columns the table has, the event time's kind.

    Raises:
        FeatureGroupError: ``key`` or ``event`` is not a column (naming the column, the
            table's columns and the key to set), or the event time is not a time.
    """
    names = schema.names
    for column, setting in ((key, key_setting), (event, event_setting)):
        if column not in names:
            raise FeatureGroupError(
                f"{label} has no column {column!r} (set by {setting}). Its columns: "
                f"{', '.join(names)}. Set {setting} to the column that holds the "
                f"{'record identifier' if setting == key_setting else 'event time'}."
            )
    kind = event_time_kind(schema.field(event).type)
    if kind is None:
        raise FeatureGroupError(
            f"event time column {event!r} of {label} is {schema.field(event).type}: use a "
            "timestamp (with or without zone), a date, an ISO 8601 string or epoch seconds or "
            f"milliseconds (integers), or set {event_setting} to another column."
        )
    return ReadPlan(
        key=key,
        event=event,
        event_kind=kind,
        tie_breaks=tuple(c for c in TIE_BREAKS if c in names),
        deleted=DELETE_MARKER if DELETE_MARKER in names else None,
    )


def _utc_session(con: Any) -> None:
    """Timestamps with zone cast to UTC: with the ICU extension loaded DuckDB would use the
    machine's zone; without it (the default here) casts are UTC already and SET fails."""
    import duckdb

    with contextlib.suppress(duckdb.Error):
        con.execute("SET TimeZone = 'UTC'")


def id_range_sql(number: str, id_start: int | None, id_end: int | None) -> str:
    """SQL keeping the ids in range (a None bound is open) and those without a number (they
    are counted, then dropped); TRUE when both bounds are None: every id, numbered or not."""
    if id_start is None and id_end is None:
        return "TRUE"
    bounds = [f"{number} >= $id_start" if id_start is not None else None,
              f"{number} <= $id_end" if id_end is not None else None]  # fmt: skip
    return f"(({' AND '.join(b for b in bounds if b)}) OR {number} IS NULL)"


def sql_name(name: str) -> str:
    """``name`` as a quoted SQL identifier (double quotes, inner quotes doubled).

    Args:
        name: a column name, as the feature group defines it.

    Returns:
        The identifier to splice into DuckDB SQL.
    """
    return '"' + name.replace('"', '""') + '"'


def pinned_snapshot(
    table: Any, name: str, snapshot_id: int | None, current: int | None
) -> int | None:
    """The snapshot a read uses: the run's pinned one, else the table's current one.

    Args:
        table: the pyiceberg ``Table`` read (the Iceberg store's own, or an offline store).
        name: the feature group, for the error.
        snapshot_id: the snapshot a resumed run pinned, or None for a new read.
        current: the table's current snapshot (None: never written to).

    Returns:
        The snapshot id to scan, or None when the table has no snapshot.

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
    """A time as the stores compare it: UTC without a zone (naive times are taken as UTC).

    Args:
        moment: an ``as_of`` or delete time, zoned or naive, or None.

    Returns:
        The same instant, naive UTC (None stays None).
    """
    if moment is not None and moment.tzinfo is not None:
        return moment.astimezone(dt.UTC).replace(tzinfo=None)
    return moment


def scan_source(scan: Any, stats: ReadStats | None = None) -> RowSource:
    """An Iceberg scan as a source for :func:`latest_batches`.

    Args:
        scan: a pyiceberg ``DataScan`` (snapshot and row filter already set).
        stats: counts the data files the row filter pruned by the manifests' statistics
            (None: not counted).

    Returns:
        The scan's local Parquet files for DuckDB to read itself, else pyiceberg's Arrow
        reader (remote files, row-level deletes); None when the snapshot has no files.
    """
    tasks = list(scan.plan_files())
    if stats is not None:
        snapshot = scan.snapshot()
        summary = snapshot.summary.additional_properties if snapshot and snapshot.summary else {}
        if "total-data-files" in summary:
            stats.files_skipped += max(0, int(summary["total-data-files"]) - len(tasks))
    if not tasks:
        return None
    paths = [urlparse(t.file.file_path) for t in tasks]
    if all(p.scheme in ("", "file") for p in paths) and not any(t.delete_files for t in tasks):
        return [p.path for p in paths]
    return scan.to_arrow_batch_reader()


def latest_batches(
    source: Callable[[], RowSource],
    *,
    key: str,
    event: str,
    out_columns: list[str],
    out_schema: pa.Schema,
    id_start: int | None,
    id_end: int | None,
    as_of: dt.datetime | None,
    batch_size: int,
    temp_dir: Path | None,
    stats: ReadStats,
    label: str = "the feature group",
    event_kind: str = "timestamp",
    tie_breaks: Sequence[str] = TIE_BREAKS,
    deleted: str | None = DELETE_MARKER,
) -> Iterator[pa.RecordBatch]:
    """The latest live version of each id in range, as Arrow batches: versions ranked per id
    in DuckDB, newest first, then delete markers dropped (in that order).

    Args:
        source: called once the DuckDB connection is ready; gives local Parquet files (read
            by DuckDB, ranked on the key columns alone), an Arrow record batch reader, or
            None (no rows).
        key: the record identifier column.
        event: the event time column.
        out_columns: the columns to yield, the id first.
        out_schema: their schema (batches are cast to it).
        id_start: the smallest id number to keep (None: no lower bound).
        id_end: the largest id number to keep, inclusive (None: no upper bound). Both None:
            every id, with a number or not.
        as_of: only versions with event time <= as_of count (None: all).
        batch_size: the most rows per yielded batch.
        temp_dir: where DuckDB may spill (None: it keeps to memory).
        stats: filled in as the batches are consumed (records, versions and deletes
            skipped, ids without a number).
        label: what is read, for errors (``"feature group 'churn'"``).
        event_kind: what the event time column holds (:func:`event_time_kind`); it is
            ranked and compared with ``as_of`` as naive UTC.
        tie_breaks: the columns ordering versions with equal event times (those the rows
            have; :func:`plan_read` picks them).
        deleted: the delete marker column, or None (no version is a marker).

    Yields:
        Record batches of ``out_schema``, at most ``batch_size`` rows each; columns as
        stored (the id trimmed when it is text).

    Raises:
        FeatureGroupError: DuckDB could not read the data (a damaged or missing file …): its
            first line, never the SQL it echoes.
    """
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
    _utc_session(con)
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
        selected = ", ".join(sql_name(c) for c in out_columns)
        k = sql_name(key)
        e = event_time_sql(sql_name(event), event_kind)
        time_filter = f"AND {e} <= $as_of" if as_of is not None else ""
        every_id = id_start is None and id_end is None
        # Every id scored: none is "without a number" (the constant is never NULL).
        number = "0" if every_id else id_number_sql(k)
        # Ids without a number are kept through the ranking so they can be counted, then
        # dropped: never scored, but never silently.
        in_range = f"{id_range_sql(number, id_start, id_end)} {time_filter}"
        order = ", ".join([e, *(sql_name(c) for c in tie_breaks)])
        newest_first = "ORDER BY " + ", ".join(
            f"{c} DESC" for c in [e, *(sql_name(c) for c in tie_breaks)]
        )
        marker = sql_name(deleted) if deleted else "false"
        params: dict[str, Any] = {}
        if id_start is not None:
            params["id_start"] = id_start
        if id_end is not None:
            params["id_end"] = id_end
        if as_of is not None:
            params["as_of"] = as_of
        reader: Iterator[pa.RecordBatch]
        if located is not None:
            # Pass 1, in DuckDB over the key columns alone: each id's newest version as a
            # position (file, row, delete marker in one number) — a hash aggregate, arg_max by
            # the three times, no sort — kept in a table (spilled past the memory limit).
            # Pass 2, in pyarrow: each file's winning rows taken by row number, row groups and
            # files without a winner never decoded. The wide feature columns are never sorted,
            # hashed or joined, and memory stays bounded by a batch.
            ranking = packed_order(found, event, event_kind, tie_breaks) or f"({order})"
            trim = rank_newest(
                con, located, k, ranking, marker,
                (lambda _: "0") if every_id else partial(id_number_sql, trimmed=True),
                id_range_sql("__number", id_start, id_end), time_filter, params,
            )  # fmt: skip
            # Counted when live: an id whose newest version is a marker would not be scored.
            unmatched = con.execute(
                "SELECT count(*) FROM newest WHERE __number IS NULL AND NOT __gone"
            ).fetchall()[0]
            if unmatched[0]:
                examples = con.execute(
                    "SELECT __id FROM newest WHERE __number IS NULL AND NOT __gone ORDER BY __id "
                    f"LIMIT {UNMATCHED_EXAMPLES}"
                ).fetchall()
                stats.unmatched_ids = unmatched[0]
                stats.unmatched_id_examples = [r[0] for r in examples]
            con.execute("DELETE FROM newest WHERE __number IS NULL")
            winners = winner_positions(con, len(found))
            stats.duplicate_versions_skipped += winners.duplicates
            # Pass 2 needs nothing more of DuckDB: closed, its memory is handed back.
            con.close()
            reader = take_winners(found, out_columns, winners, batch_size, stats, trim=trim)  # type: ignore[arg-type]
        else:
            sql = f"""
                SELECT {selected}, {marker} AS __deleted, __versions, __number FROM (
                    SELECT *,
                        row_number() OVER (PARTITION BY {k} {newest_first}) AS __rank,
                        count(*) OVER (PARTITION BY {k}) AS __versions
                    FROM (
                        SELECT * REPLACE ({trimmed_id_sql(k)} AS {k}), {number} AS __number
                        FROM __source
                        WHERE {in_range}
                    )
                )
                WHERE __rank = 1
            """
            reader = iter(con.sql(sql, params=params).to_arrow_reader(batch_size))
        for batch in reader:
            if "__number" in batch.schema.names:
                no_number = pc.is_null(batch.column("__number"))
                if pc.any(no_number).as_py():
                    live = pc.invert(batch.column("__deleted").fill_null(False))
                    shown = pc.filter(batch.column(key), pc.and_(no_number, live))
                    stats.add_unmatched(shown.to_pylist())
                    batch = batch.filter(pc.invert(no_number))
            deleted = batch.column("__deleted").fill_null(False)
            if "__versions" in batch.schema.names:  # (pass 2 counted them all at once)
                versions = batch.column("__versions")
                skipped = (pc.sum(versions).as_py() or 0) - batch.num_rows
                stats.duplicate_versions_skipped += skipped
            n_deleted = pc.sum(deleted.cast(pa.int64())).as_py() or 0
            stats.deleted_records_skipped += n_deleted
            live = batch.filter(pc.invert(deleted)) if n_deleted else batch
            live = live.select(out_columns)
            if live.num_rows:
                stats.records += live.num_rows
                if live.schema != out_schema:  # e.g. large_string in a file, string in the table
                    live = pa.Table.from_batches([live]).cast(out_schema).to_batches()[0]
                yield pa.RecordBatch.from_arrays(live.columns, schema=out_schema)
    except (duckdb.Error, pa.ArrowException) as exc:  # pass 2 and the statistics: pyarrow's
        raise engine_read_error(label, exc) from exc
    finally:
        con.close()


def engine_read_error(label: str, exc: BaseException) -> FeatureGroupError:
    """A DuckDB (or pyarrow) failure while reading ``label``, as one line: the first line names
    the problem and the file; the rest echoes batchscore's own SQL, which tells the user nothing.

    Args:
        label: what was read (``"feature group 'churn'"``).
        exc: DuckDB's or pyarrow's error.

    Returns:
        The FeatureGroupError to raise ``from exc``.
    """
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return FeatureGroupError(
        f"reading {label} failed: {first}. A data file of the feature group is damaged or "
        "was changed outside batchscore: restore it, or re-ingest the records into a new "
        "feature group (--debug shows the whole engine error)."
    )


def open_parquet(path: str | Path) -> Any:
    """``pyarrow.parquet.ParquetFile(path)`` to stream from; a damaged file's error names it
    (pyarrow's does not).

    Opened without pre-buffering: pyarrow's default keeps every row group it has read in a
    cache until the file is closed, so reading a 5M-row file batch by batch grew by 640 MB
    (at 10M customers, BatchInference's peak came from it).
    """
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path, pre_buffer=False)
    except pa.ArrowException as exc:
        raise pa.ArrowInvalid(f"{path}: {exc}") from exc


# A ranked position packs the file index, the row number (ROW_BITS bits) and the winner's
# delete marker (the lowest bit) into one BIGINT: one arg_max per id instead of two.
ROW_BITS = 40


# The most bits a packed ranking key may use: it is a signed 128-bit HUGEINT.
PACKED_BITS = 126

# Time units of a Parquet timestamp that epoch_us() keeps exactly (nanoseconds it would not).
EXACT_UNITS = {"s": 1_000_000, "ms": 1_000, "us": 1}


def packed_order(
    files: list[str], event: str, event_kind: str, tie_breaks: Sequence[str]
) -> str | None:
    """The ranking tuple (event time, tie-breaks) as one HUGEINT, ordered as the tuple is,
    when the files' row-group statistics prove it exact; else None (rank by the tuple).

    Each time becomes its microseconds above the column's smallest value, in as many bits as
    the column's range needs, the event time highest: comparing the numbers compares the
    tuples. DuckDB's arg_max keeps a number per id where a tuple costs a serialised value:
    pass 1 takes half the time at 10M ids. It applies when every ranked column is a
    timestamp in seconds, milliseconds or microseconds (a zone is fine: stored as UTC), no
    row group has a NULL in one or lacks statistics, and the ranges fit in
    :data:`PACKED_BITS` bits.

    Args:
        files: the local Parquet files ranked.
        event: the event time column.
        event_kind: what it holds (:func:`event_time_kind`).
        tie_breaks: the columns after it.

    Returns:
        The SQL of the packed key, or None.
    """

    if event_kind not in ("timestamp", "timestamptz") or not files:
        return None
    columns = [event, *tie_breaks]
    low: dict[str, int] = {}
    high: dict[str, int] = {}
    for path in files:
        parquet = open_parquet(path)
        meta = parquet.metadata
        for name in columns:
            arrow_type = parquet.schema_arrow.field(name).type
            if not pa.types.is_timestamp(arrow_type) or arrow_type.unit not in EXACT_UNITS:
                return None
            scale = EXACT_UNITS[arrow_type.unit]
            index = parquet.schema_arrow.get_field_index(name)
            for group in range(meta.num_row_groups):
                stats = meta.row_group(group).column(index).statistics
                if stats is None or not stats.has_min_max or stats.null_count != 0:
                    return None
                if not isinstance(stats.min_raw, int) or not isinstance(stats.max_raw, int):
                    return None
                lo, hi = stats.min_raw * scale, stats.max_raw * scale
                low[name] = min(low.get(name, lo), lo)
                high[name] = max(high.get(name, hi), hi)
    bits = [(high[c] - low[c]).bit_length() for c in columns]
    if sum(bits) > PACKED_BITS:
        return None
    terms, shift = [], 0
    for name, width in reversed(list(zip(columns, bits, strict=True))):
        value = f"CAST(epoch_us({sql_name(name)}) - {low[name]} AS HUGEINT)"
        terms.append(f"({value} << {shift})" if shift else value)
        shift += width
    return "(" + " + ".join(reversed(terms)) + ")"


def rank_newest(
    con: Any,
    located: str,
    key: str,
    order: str,
    marker: str,
    number_of: Callable[[str], str],
    id_filter: str,
    time_filter: str,
    params: dict[str, Any],
) -> bool:
    """Pass 1 of :func:`latest_batches` over local Parquet files: the table ``newest`` with
    each id's newest version as ``__position`` (file, row and delete marker packed as
    :data:`ROW_BITS` says), ``__gone`` (the marker), ``__versions`` and ``__number``.

    Ids are grouped as stored and their number worked out once per id, after the aggregate
    (trimming and matching 20M strings cost more than the aggregate itself). Ids differing
    only by surrounding whitespace are one id, so when any stored id is untrimmed the ranking
    runs again grouped by the trimmed id: the result is the same either way.

    Args:
        con: the DuckDB connection.
        located: the ``read_parquet`` call (with ``file_row_number``).
        key: the quoted id column.
        order: the ranking key's SQL: the tuple (event time, tie-breaks), or one number
            ordered as it is (:func:`packed_order`).
        marker: the delete marker's SQL (``false`` when none).
        number_of: SQL for the number of an id expression taken as trimmed
            (:func:`id_number_sql`, or ``0`` when every id is read): when some id is not,
            the ranking runs again by the trimmed ids, and their numbers are the ones kept.
        id_filter: SQL over ``__number`` keeping the ids in range (and those without one).
        time_filter: ``AND <event> <= $as_of``, or empty.
        params: the query's parameters.

    Returns:
        Whether some stored id is untrimmed (then ids were grouped trimmed, and the winners'
        ids must be trimmed as they are taken from the files).
    """
    position = (
        f"CAST(file_index AS BIGINT) * {1 << (ROW_BITS + 1)} "
        f"+ CAST(file_row_number AS BIGINT) * 2 + CAST(coalesce({marker}, false) AS BIGINT)"
    )

    def rank(grouped_id: str) -> None:
        con.execute(
            f"""
            CREATE OR REPLACE TABLE newest AS
            SELECT __id, __position, (__position & 1) = 1 AS __gone, __versions, __number
            FROM (
                SELECT *, {number_of("__id")} AS __number
                FROM (
                    SELECT {grouped_id} AS __id,
                           arg_max({position}, {order}) AS __position,
                           count(*) AS __versions
                    FROM {located}
                    WHERE TRUE {time_filter}
                    GROUP BY __id
                )
            )
            """,
            {k: v for k, v in params.items() if k == "as_of"},
        )
        # Apart: in the same query DuckDB pushes a filter on the group key below the
        # aggregate, matching every stored row's id instead of each id once.
        con.execute(
            f"DELETE FROM newest WHERE NOT ({id_filter})",
            {k: v for k, v in params.items() if k != "as_of"},
        )

    rank(f"CAST({key} AS VARCHAR)")
    # An id's first or last character is whitespace (an empty id counts too: a false alarm
    # costs a second ranking, never a wrong result); 4x cheaper than comparing with trim().
    untrimmed = con.execute(
        f"SELECT count(*) FROM newest WHERE contains('{ID_WHITESPACE}', __id[1]) "
        f"OR contains('{ID_WHITESPACE}', __id[-1])"
    ).fetchall()[0][0]
    if untrimmed:  # " 42" and "42" are one id: rank again by the trimmed id
        rank(trimmed_id_sql(key))
    return bool(untrimmed)


@dataclass
class Winners:
    """Pass 1's winners in file and row order (:func:`winner_positions`).

    For file ``i``, ``rows[starts[i]:starts[i + 1]]`` holds its winners, ascending, each as
    ``row << 1 | delete marker``: int32 when every file's rows fit (4 bytes a winner, where the
    packed file-and-row BIGINT with its version count took 12: 80 MB less at 10M customers).
    """

    rows: Any  # numpy int32 (or int64 for files past 2**30 rows)
    starts: Any  # numpy int64, one more than there are files
    duplicates: int  # versions ranked out: every id's versions but its newest


def winner_positions(con: Any, files: int) -> Winners:
    """The winners of ``newest`` for ``files`` files, sorted by DuckDB (its parallel sort:
    0.8 s at 10M where numpy's argsort took 1.8 s), in one fetch — a query per file scanned the
    whole table each time (30 files: 30 scans of 10M rows)."""
    import numpy as np

    shift, mask = ROW_BITS + 1, (1 << (ROW_BITS + 1)) - 1
    per_file = con.execute(
        f"SELECT __position >> {shift} AS f, count(*), max(__position & {mask}), "
        f"sum(__versions) FROM newest GROUP BY f"
    ).fetchall()
    starts = np.zeros(files + 1, np.int64)
    for index, count, _, _ in per_file:
        starts[index + 1] = count
    np.cumsum(starts, out=starts)
    largest = max((r for _, _, r, _ in per_file), default=0)
    kind, dtype = ("INTEGER", np.int32) if largest < ROWS_INT32 else ("BIGINT", np.int64)
    fetched = con.execute(
        f"SELECT CAST(__position & {mask} AS {kind}) AS r FROM newest ORDER BY __position"
    ).fetchnumpy()
    duplicates = sum(int(v) for _, _, _, v in per_file) - int(starts[-1])
    return Winners(np.asarray(fetched["r"], dtype), starts, duplicates)


# Packed rows (row << 1 | marker) below this fit an int32, with room for a bound above them.
ROWS_INT32 = (1 << 31) - 1


def take_winners(
    files: list[str],
    columns: list[str],
    winners: Winners,
    batch_size: int,
    stats: ReadStats | None = None,
    *,
    trim: bool = False,
) -> Iterator[pa.RecordBatch]:
    """The winning rows of each file, streamed once: the second pass of
    :func:`latest_batches` over local Parquet files.

    A row group without a winner is skipped without being decoded — a file without any is
    never read past its footer.

    Args:
        files: the Parquet files, in the order the positions number them.
        columns: the columns to take, the id first.
        winners: the winners (:func:`winner_positions`).
        batch_size: the most rows read from a file at a time.
        stats: counts the files and row groups skipped (None: not counted).
        trim: the ids were grouped trimmed (:func:`rank_newest`): trim them as taken.

    Yields:
        Batches of ``columns`` plus ``__deleted``.
    """
    import numpy as np

    from batchscore.feature_store.ids import trim_ids

    key = columns[0]
    bound = np.iinfo(winners.rows.dtype).max  # no row's packed number reaches it

    def below(rows: Any, row: int) -> int:
        """How many of ``rows`` (ascending) come before row number ``row``."""
        return int(np.searchsorted(rows, min(row << 1, bound)))

    for index, path in enumerate(files):
        mine = winners.rows[winners.starts[index] : winners.starts[index + 1]]
        parquet = open_parquet(path)
        done = 0  # this file's winners before this index are taken
        groups_read = 0
        start = 0
        for group in range(parquet.metadata.num_row_groups):
            end = start + parquet.metadata.row_group(group).num_rows
            upto = done + below(mine[done:], end)
            if upto == done:  # no winner among this group's rows
                if stats is not None:
                    stats.row_groups_skipped += 1
                start = end
                continue
            groups_read += 1
            offset = start
            batches = parquet.iter_batches(
                batch_size=batch_size, row_groups=[group], columns=columns
            )
            for batch in batches:
                stop = offset + batch.num_rows
                here = done + below(mine[done:upto], stop)
                if here > done:
                    packed = mine[done:here]
                    taken = batch.take(pa.array((packed >> 1) - offset))
                    ids = taken.column(key)
                    if trim and (
                        pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type)
                    ):
                        ids = trim_ids(ids)
                    yield pa.RecordBatch.from_arrays(
                        [
                            ids,
                            *taken.select(columns[1:]).columns,
                            pa.array((packed & 1).astype(bool)),
                        ],
                        names=[*columns, "__deleted"],
                    )
                    done = here
                offset = stop
            start = end
        if stats is not None and not groups_read:
            stats.files_skipped += 1


def summarize_latest(
    source: RowSource,
    *,
    key: str,
    event: str,
    label: str,
    event_kind: str = "timestamp",
    tie_breaks: Sequence[str] = TIE_BREAKS,
    deleted: str | None = DELETE_MARKER,
) -> RecordSummary:
    """The live records of a source (each id's newest version, not a delete marker): how
    many, their id numbers' range and their event times' range, in one DuckDB pass over the
    id, time and delete-marker columns.

    Args:
        source: local Parquet files, an Arrow stream, or None (no rows).
        key: the record identifier column.
        event: the event time column.
        label: what is read, for errors.
        event_kind: what the event time column holds (:func:`event_time_kind`).
        tie_breaks: the columns ordering versions with equal event times.
        deleted: the delete marker column, or None.

    Returns:
        The summary (event times as naive UTC); ids without a number are counted in
        ``unmatched_ids`` and left out of the ranges.

    Raises:
        FeatureGroupError: DuckDB could not read the data.
    """
    import duckdb

    if source is None:
        return RecordSummary(0, None, None, None, None)
    k, e = sql_name(key), event_time_sql(sql_name(event), event_kind)
    order = ", ".join([e, *(sql_name(c) for c in tie_breaks)])
    marker = sql_name(deleted) if deleted else "false"
    con = duckdb.connect(":memory:", config={"memory_limit": DUCKDB_MEMORY_LIMIT})
    _utc_session(con)
    try:
        if isinstance(source, list):
            rows = f"read_parquet([{', '.join(sql_string(p) for p in source)}])"
        else:
            con.register("__source", source)
            rows = "__source"
        row = con.execute(
            f"""
            SELECT count(*) FILTER (WHERE NOT __deleted AND __number IS NOT NULL),
                   min(__number) FILTER (WHERE NOT __deleted),
                   max(__number) FILTER (WHERE NOT __deleted),
                   min(__event) FILTER (WHERE NOT __deleted AND __number IS NOT NULL),
                   max(__event) FILTER (WHERE NOT __deleted AND __number IS NOT NULL),
                   count(*) FILTER (WHERE NOT __deleted AND __number IS NULL)
            FROM (
                SELECT {id_number_sql(k)} AS __number,
                       coalesce(arg_max({marker}, ({order})), false) AS __deleted,
                       max({e}) AS __event
                FROM {rows}
                GROUP BY {trimmed_id_sql(k)}
            )
            """
        ).fetchall()[0]
    except duckdb.Error as exc:
        raise engine_read_error(label, exc) from exc
    finally:
        con.close()
    return RecordSummary(*row)
