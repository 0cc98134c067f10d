"""The Iceberg sink: predictions published to an Iceberg table in one atomic commit.

The table has ``PREDICTIONS_SCHEMA``, partitioned by ``inference_date``. BatchInference's files
already have that schema, so a commit links them into the table's data folder and registers
them as they are (``add_files``), deleting in the same transaction the rows its write mode
replaces (``rows_to_replace``). The commit's snapshot summary carries ``batchscore.run_id``,
which is how ``find_commit`` makes a publish exactly-once.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from pyiceberg.exceptions import (
    CommitFailedException,
    TableAlreadyExistsError,
    ValidationException,
)
from pyiceberg.expressions import And, BooleanExpression, EqualTo, In
from pyiceberg.table import Table
from pyiceberg.transforms import IdentityTransform

from batchscore.catalog import (
    RUN_ID_PROPERTY,
    ensure_namespace,
    load_table,
    local_path,
    open_catalog,
)
from batchscore.clock import utcnow
from batchscore.config import WRITE_MODES, validate_identifier
from batchscore.errors import (
    BatchScoreError,
    CommitConflictError,
    ConfigError,
    PublishError,
    PublishRefusedError,
    TransientStoreError,
    is_busy_error,
)
from batchscore.faults import failpoint
from batchscore.records import LogicalRun, parse_id_range
from batchscore.sinks.base import PredictionSink, SnapshotInfo
from batchscore.sinks.schema import PARTITION_COLUMN, PREDICTIONS_SCHEMA

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog

    from batchscore.config import Settings

# Full (untruncated) column bounds for the columns `replace` deletes by. pyiceberg's default,
# truncate(16), cuts "classification-model-batch-inference-pipeline" short, so it cannot prove
# that a whole file matches and rewrites it instead of dropping it: at 10M customers that read
# 10M rows back (2.6 s, +1.1 GiB peak) in a commit that needs only metadata.
TABLE_PROPERTIES = {
    f"write.metadata.metrics.column.{column}": "full"
    for column in ("pipeline_name", "id_range", "run_id")
}


class IcebergSink(PredictionSink):
    """The predictions table ``identifier`` (``database.table``) in an Iceberg catalog.

    Args:
        catalog: an open pyiceberg catalog (``batchscore.catalog.open_catalog``).
        identifier: ``database.table``; both parts must be safe SQL names.
    """

    def __init__(self, catalog: Catalog, identifier: str) -> None:
        self.catalog = catalog
        self.identifier = identifier
        self.database, _, self.table_name = identifier.partition(".")
        self._table: Table | None = None  # the state this publish read (see the base module)

    @classmethod
    def from_settings(
        cls, settings: Settings, identifier: str, *, writable: bool = True
    ) -> IcebergSink:
        return cls(open_catalog(settings, writable=writable), identifier)

    def __repr__(self) -> str:
        return f"IcebergSink({self.identifier!r})"

    def ensure(self) -> None:
        self._table = ensure_predictions_table(self.catalog, self.database, self.table_name)

    def table(self) -> Table:
        """The table as it is now.

        Raises:
            ConfigError: no such table.
        """
        return _predictions_table(self.catalog, self.identifier)

    def find_commit(self, run_id: str) -> int | None:
        if self._table is None:
            self._table = load_table(self.catalog, self.identifier)
        return None if self._table is None else find_run_commit(self._table, run_id)

    def commit(
        self,
        files: Sequence[Path],
        *,
        run_id: str,
        logical_run: LogicalRun,
        write_mode: str,
        started: dt.datetime | None = None,
    ) -> int:
        table = (
            self._table if self._table is not None else load_table(self.catalog, self.identifier)
        )
        self._table = None  # done or failed, the next call reads the table afresh
        if table is None:
            raise PublishError(
                f"table {self.identifier} does not exist: ensure() creates it before a commit. "
                "Nothing was published."
            )
        return publish_predictions(
            table,
            files,
            run_id=run_id,
            logical_run=logical_run,
            write_mode=write_mode,
            started=started,
        )

    def drop(self) -> None:
        self._table = None
        drop_table(self.catalog, self.identifier)

    def snapshots(self) -> list[SnapshotInfo]:
        return table_snapshots(self.catalog, self.identifier)

    def rollback(self, snapshot_id: int) -> None:
        self._table = None
        rollback_table(self.catalog, self.identifier, snapshot_id)


# The table ----------------------------------------------------------------------------------


def ensure_predictions_table(catalog: Catalog, database: str, table_name: str) -> Table:
    """Create ``database.table_name`` with the predictions schema, partitioned by date."""
    validate_identifier(database, "athena_database")
    validate_identifier(table_name, "athena_output_table")
    identifier = f"{database}.{table_name}"
    table = load_table(catalog, identifier)
    if table is not None:
        missing = {k: v for k, v in TABLE_PROPERTIES.items() if table.properties.get(k) != v}
        if missing:  # a table made by an earlier version: files added from now on get them
            with table.transaction() as tx:
                tx.set_properties(missing)
            table = catalog.load_table(identifier)
        return table
    ensure_namespace(catalog, database)
    try:
        # Schema, partition spec and properties in one commit: a concurrent writer never
        # sees the table half made (unpartitioned, or without the full-bounds properties).
        return catalog.create_table(
            identifier,
            schema=iceberg_schema(),
            partition_spec=partition_spec(),
            properties=TABLE_PROPERTIES,
        )
    except TableAlreadyExistsError:  # another process created it first
        return catalog.load_table(identifier)


def iceberg_schema(schema: pa.Schema = PREDICTIONS_SCHEMA) -> Any:
    """An Arrow schema (PREDICTIONS_SCHEMA) as an Iceberg schema, field ids 1..n in order."""
    from pyiceberg.io.pyarrow import pyarrow_to_schema
    from pyiceberg.schema import Schema

    with_ids = pa.schema(
        [
            f.with_metadata({b"PARQUET:field_id": str(i).encode()})
            for i, f in enumerate(schema, start=1)
        ]
    )
    converted = pyarrow_to_schema(with_ids)
    return Schema(*converted.fields, schema_id=0)


def partition_spec(schema: pa.Schema = PREDICTIONS_SCHEMA) -> Any:
    from pyiceberg.partitioning import PartitionField, PartitionSpec

    source = schema.get_field_index(PARTITION_COLUMN) + 1
    return PartitionSpec(
        PartitionField(
            source_id=source, field_id=1000, transform=IdentityTransform(), name=PARTITION_COLUMN
        )
    )


def drop_table(catalog: Catalog, identifier: str) -> None:
    """Drop a table and delete its files.

    Raises:
        ConfigError: no such table.
    """
    table = _predictions_table(catalog, identifier)
    location = local_path(table.location())
    catalog.drop_table(identifier)
    if location is not None and location.exists():
        shutil.rmtree(location)


def _predictions_table(catalog: Catalog, identifier: str) -> Table:
    namespace, _, name = identifier.partition(".")
    validate_identifier(namespace, "athena_database")
    validate_identifier(name, "athena_output_table")
    table = load_table(catalog, identifier)
    if table is None:
        raise ConfigError(f"table {identifier} does not exist: no run has published to it yet.")
    return table


def table_snapshots(catalog: Catalog, identifier: str) -> list[SnapshotInfo]:
    """The table's commits in the current history, newest first.

    A publish that replaces rows makes two snapshots in one commit — the delete, then the
    append — and readers only ever saw the second: the pair is listed once, under the
    append's id, with the rows it removed and added (operation ``delete+append``).

    Raises:
        ConfigError: no such table.
    """
    table = _predictions_table(catalog, identifier)
    current = table.current_snapshot()
    by_id = {s.snapshot_id: s for s in table.snapshots()}
    halves = _first_halves(table)  # append id -> the delete before it in the same commit
    found = []
    for snapshot in by_id.values():
        if snapshot.snapshot_id in halves.values():
            continue  # shown with the append that completed its commit
        first = halves.get(snapshot.snapshot_id)
        parts = [snapshot] if first is None else [by_id[first], snapshot]
        operation = "+".join(_operation(p) for p in parts)
        found.append(
            SnapshotInfo(
                snapshot_id=snapshot.snapshot_id,
                committed=dt.datetime.fromtimestamp(snapshot.timestamp_ms / 1000, dt.UTC).replace(
                    tzinfo=None
                ),
                operation=operation,
                run_id=_summary(snapshot).get(RUN_ID_PROPERTY),
                added_rows=_total(parts, "added-records"),
                deleted_rows=_total(parts, "deleted-records"),
                current=current is not None and snapshot.snapshot_id == current.snapshot_id,
            )
        )
    return sorted(found, key=lambda s: (s.committed, s.current), reverse=True)


def _summary(snapshot: Any) -> dict[str, str]:
    return snapshot.summary.additional_properties if snapshot.summary is not None else {}


def _operation(snapshot: Any) -> str:
    return str(snapshot.summary.operation.value) if snapshot.summary is not None else "?"


def _total(snapshots: list[Any], key: str) -> int | None:
    counts = [int(_summary(s)[key]) for s in snapshots if key in _summary(s)]
    return sum(counts) if counts else None


def _first_halves(table: Table) -> dict[int, int]:
    """``append id -> delete id`` for each publish committed as a delete then an append of the
    same run (one commit: the delete alone was never the table's state)."""
    by_id = {s.snapshot_id: s for s in table.snapshots()}
    pairs: dict[int, int] = {}
    for snapshot in by_id.values():
        parent = by_id.get(snapshot.parent_snapshot_id or -1)
        run_id = _summary(snapshot).get(RUN_ID_PROPERTY)
        if (
            parent is not None
            and run_id is not None
            and _summary(parent).get(RUN_ID_PROPERTY) == run_id
            and _operation(parent) == "delete"
            and _operation(snapshot) != "delete"
        ):
            pairs[snapshot.snapshot_id] = parent.snapshot_id
    return pairs


def rollback_table(catalog: Catalog, identifier: str, snapshot_id: int) -> None:
    """Make ``snapshot_id`` current again, in one commit.

    Undoes the commits after it (e.g. a publish with the wrong write mode); their snapshots
    and files stay in the table's history, so rolling forward again works the same way.

    Raises:
        ConfigError: no such table, or no such snapshot in its history.
    """
    table = _predictions_table(catalog, identifier)
    completed_by = {first: append for append, first in _first_halves(table).items()}
    if snapshot_id in completed_by:
        first = next(s for s in table.snapshots() if s.snapshot_id == snapshot_id)
        run_id = _summary(first).get(RUN_ID_PROPERTY)
        raise ConfigError(
            f"snapshot {snapshot_id} is the first half of run {run_id}'s publish (its old rows "
            "removed, the new ones not yet added): readers never saw it. Roll back to "
            f"{first.parent_snapshot_id} (the table before that publish) or to "
            f"{completed_by[snapshot_id]} (after it)."
        )
    try:
        table.manage_snapshots().set_current_snapshot(snapshot_id=snapshot_id).commit()
    except ValueError as exc:
        known = ", ".join(str(s.snapshot_id) for s in table_snapshots(catalog, identifier)[:5])
        raise ConfigError(
            f"cannot roll {identifier} back to snapshot {snapshot_id}: {exc}. Pick one of its "
            f"history ('batchscore table snapshots'; newest: {known or 'none'})."
        ) from exc


# Publish ------------------------------------------------------------------------------------


def partition_filter(logical_run: LogicalRun) -> BooleanExpression:
    """This pipeline's rows for the run's date (the ``inference_date`` partition)."""
    return And(
        EqualTo(PARTITION_COLUMN, logical_run.inference_date.isoformat()),
        EqualTo("pipeline_name", logical_run.pipeline_name),
    )


def run_filter(logical_run: LogicalRun, id_ranges: Sequence[str] = ()) -> BooleanExpression:
    """This pipeline's rows for the date whose id range is the run's (or in ``id_ranges``)."""
    ranges = {logical_run.id_range, *id_ranges}
    return And(partition_filter(logical_run), In("id_range", ranges))


@dataclass(frozen=True)
class PublishedRun:
    """An earlier run's rows in the table: its id range, run id and start time."""

    id_range: str
    run_id: str
    started: dt.datetime


def published_runs(table: Table, logical_run: LogicalRun) -> list[PublishedRun]:
    """The runs whose rows the table holds for this pipeline and date.

    Read from the data files' column bounds (metadata only: prediction files hold one run
    each, and the lineage columns keep full bounds); a file whose bounds do not pin one run
    (written by something else) has those three columns read instead.
    """
    from pyiceberg.conversions import from_bytes

    schema = table.schema()
    fields = {name: schema.find_field(name) for name in ("id_range", "run_id", "timestamp")}
    found: dict[tuple[str, str], dt.datetime] = {}
    unclear = False
    for task in table.scan(row_filter=partition_filter(logical_run)).plan_files():
        data = task.file
        values: dict[str, object] = {}
        for name, spec in fields.items():
            low = (data.lower_bounds or {}).get(spec.field_id)
            high = (data.upper_bounds or {}).get(spec.field_id)
            if low is None or high is None:
                break
            low_value = from_bytes(spec.field_type, low)
            if name != "timestamp" and low_value != from_bytes(spec.field_type, high):
                break
            values[name] = low_value
        else:
            started = _EPOCH + dt.timedelta(microseconds=int(values["timestamp"]))
            key = (str(values["id_range"]), str(values["run_id"]))
            found[key] = min(found.get(key, started), started)
            continue
        unclear = True
    if unclear:  # read the lineage columns themselves, for this pipeline and date only
        rows = table.scan(
            row_filter=partition_filter(logical_run),
            selected_fields=("id_range", "run_id", "timestamp"),
        ).to_arrow()
        groups = rows.group_by(["id_range", "run_id"]).aggregate([("timestamp", "min")])
        for row in groups.to_pylist():
            found[(row["id_range"], row["run_id"])] = row["timestamp_min"]
    return [PublishedRun(ids, run, started) for (ids, run), started in sorted(found.items())]


_EPOCH = dt.datetime(1970, 1, 1)


def rows_to_replace(
    table: Table, logical_run: LogicalRun, *, run_id: str, started: dt.datetime, write_mode: str
) -> BooleanExpression | None:
    """The rows this run's commit removes, after checking it may remove them.

    ``replace``: earlier runs of the same id range, and of ranges inside this run's (a run
    for 4000–5000 re-scores every customer of an earlier 4000–4500). ``overwrite``: all of this
    pipeline's rows for the date. ``append``: none.

    Raises:
        PublishError: an earlier run's range overlaps this one without lying inside it (a
            customer would be published twice), or the rows to remove were published by a run
            that started after this one (an old run resumed late must not replace newer rows).
    """
    if write_mode == "append":
        return None
    start, end = logical_run.ids
    replaced: list[PublishedRun] = []
    for earlier in published_runs(table, logical_run):
        if earlier.run_id == run_id:
            continue
        first, last = parse_id_range(earlier.id_range)
        inside = start <= first and last <= end
        if write_mode == "replace" and not inside and first <= end and start <= last:
            raise PublishRefusedError(
                f"run {earlier.run_id} published ids {earlier.id_range} of pipeline "
                f"{logical_run.pipeline_name!r} for {logical_run.inference_date}; this run's ids "
                f"{logical_run.id_range} overlap them, so a customer would appear twice. Score "
                "the same range, one that covers it or one that does not overlap; or set "
                "write_mode: overwrite to replace all of this pipeline's rows for the date. "
                "The table is unchanged."
            )
        if write_mode == "overwrite" or inside:
            replaced.append(earlier)
    newer = [r for r in replaced if r.started > started]
    if newer:
        raise PublishRefusedError(
            f"run {newer[0].run_id} (started {newer[0].started.isoformat()}) published ids "
            f"{newer[0].id_range} for {logical_run.inference_date} after this run started "
            f"({started.isoformat()}): publishing now would replace newer predictions with older "
            "ones. Start a new run for the date instead. The table is unchanged."
        )
    if write_mode == "overwrite":
        return partition_filter(logical_run)
    return run_filter(logical_run, [r.id_range for r in replaced])


def find_run_commit(table: Table, run_id: str) -> int | None:
    """The snapshot id of a commit made by ``run_id``, or None: a resume looks here first."""
    for snapshot in table.snapshots():
        summary = snapshot.summary
        if summary is not None and summary.additional_properties.get(RUN_ID_PROPERTY) == run_id:
            return snapshot.snapshot_id
    return None


def place_file(source: Path, target_dir_uri: str, name: str, io: Any) -> str:
    """Put a finished Parquet file into the table's data folder: a hard link where possible,
    else a copy through the table's own FileIO (S3 with the catalog's endpoint and region)."""
    target_dir = local_path(target_dir_uri)
    if target_dir is None:
        uri = f"{target_dir_uri.rstrip('/')}/{name}"
        with open(source, "rb") as data, io.new_output(uri).create(overwrite=True) as out:
            shutil.copyfileobj(data, out, 8 << 20)
        return uri
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / name
    if target.exists():
        target.unlink()
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
    return f"file://{target}"  # not as_uri(): pyiceberg does not unquote '%3D' back to '='.


def publish_predictions(
    table: Table,
    files: Sequence[Path],
    *,
    run_id: str,
    logical_run: LogicalRun,
    write_mode: str,
    started: dt.datetime | None = None,
) -> int:
    """Commit prediction files to the table in one Iceberg commit and return its snapshot id.

    The files already have the table's schema, so they are linked into the table's data folder
    and registered as they are, not rewritten. ``replace`` first drops the rows of earlier runs
    of the same logical run (and of id ranges inside this run's), ``overwrite`` drops this
    pipeline's rows for the run's date, ``append`` drops nothing (see ``rows_to_replace``); the
    drop and the add are one commit, so readers see the table before or after, never between.
    ``started`` (the run's start, default now) keeps an old run from replacing a newer one's.

    Raises:
        CommitConflictError: another writer committed first (transient: retry the publish).
        PublishError: any other failure, or a refusal of ``rows_to_replace``; the table is
            unchanged.
    """
    if write_mode not in WRITE_MODES:
        raise ConfigError(f"write_mode {write_mode!r} must be one of {', '.join(WRITE_MODES)}.")
    data_dir = (
        f"{table.location().rstrip('/')}/data/"
        f"{PARTITION_COLUMN}={logical_run.inference_date.isoformat()}"
    )
    properties = {RUN_ID_PROPERTY: run_id}
    uris: list[str] = []
    try:
        drop = rows_to_replace(
            table, logical_run, run_id=run_id, started=started or utcnow(), write_mode=write_mode
        )
        # Placed files are invisible until the commit names them; a failed commit leaves
        # them as unreferenced files, which no reader sees.
        uris = [
            place_file(path, data_dir, f"{run_id}-{i:05d}.parquet", table.io)
            for i, path in enumerate(files)
        ]
        failpoint("Publish:files-placed")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Delete operation did not match any records")
            with table.transaction() as tx:
                if drop is not None:
                    tx.delete(drop, snapshot_properties=properties)
                if uris:
                    tx.add_files(uris, snapshot_properties=properties)
    except (CommitFailedException, ValidationException) as exc:
        raise CommitConflictError(
            f"another writer committed to {'.'.join(table.name())} first: {exc}. "
            "The table is unchanged; the publish is retried."
        ) from exc
    except BatchScoreError:
        raise
    except Exception as exc:
        if is_busy_error(exc):
            raise TransientStoreError(
                f"the catalog database was locked while committing to "
                f"{'.'.join(table.name())}: {exc}. The table is unchanged; the publish is retried."
            ) from exc
        raise PublishError(
            f"committing {len(files)} prediction file(s) to {'.'.join(table.name())} failed: "
            f"{type(exc).__name__}: {exc}. The table is unchanged."
        ) from exc
    snapshot = table.current_snapshot()
    assert snapshot is not None
    return snapshot.snapshot_id
