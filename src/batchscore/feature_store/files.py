"""A Parquet or CSV dataset as a read-only feature group: ``feature_store: {type: files}``.

What Spark, dbt or pandas jobs leave behind — a folder of files, Hive-partitioned or not
(``dt=2026-11-01/part-0.parquet``), or a glob (``features/*/part-*.parquet``), local or
``s3://`` — is read with the same latest-record rule as the other stores
(:mod:`batchscore.feature_store.latest`): per id (``record_identifier``) the newest version by
``event_time_feature`` at or before ``as_of``, tie-broken by ``api_invocation_time`` and
``write_time`` and dropped when ``is_deleted``, each only when the files have it.

Naming: ``path`` is one dataset, labelled by ``feature_group_name``; a ``{name}`` in ``path``
(``/lake/features/{name}/``) makes each folder (or file) it matches a feature group of that
name. Columns: the features are every column but the id, the event time and SageMaker's
``api_invocation_time``/``write_time``/``is_deleted``; Hive partition columns count as
features (Spark's ``partitionBy`` moves a column into the path, so it is data; scoring ignores
the ones the model does not name). Event times may be timestamps with or without a zone,
dates, ISO-8601 strings or epoch seconds/milliseconds: compared in UTC.

Files have no snapshots (``snapshot_id`` is None): a resumed run reads the files again, so
``as_of`` keeps it point-in-time only as far as the dataset is append-only. S3 is read with
pyarrow's S3 filesystem and the standard AWS chain (:func:`batchscore.aws.s3_filesystem`).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from batchscore.errors import FeatureGroupError, did_you_mean
from batchscore.feature_store.base import (
    STORE_COLUMNS,
    FeatureGroup,
    FeatureStore,
    LatestRecords,
    ReadStats,
    RecordSummary,
    feature_type_of,
)
from batchscore.feature_store.latest import ReadPlan, plan_read

if TYPE_CHECKING:
    from pyarrow.dataset import Dataset

    from batchscore.config import Settings

NAME = "{name}"
GLOB_CHARACTERS = re.compile(r"[*?\[]")
CSV_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".txt")
PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")

_READ_ONLY = (
    "the files feature store is read-only to batchscore: it reads the Parquet/CSV dataset at "
    "feature_store.path as the jobs that write it left it. Add files there (or use the "
    "iceberg feature store to create and ingest feature groups)."
)


class FilesFeatureStore(FeatureStore):
    """A Parquet or CSV dataset (a folder or glob, local or ``s3://``) as a feature group."""

    def __init__(
        self,
        path: str,
        *,
        name: str,
        record_identifier: str = "customer_id",
        event_time_feature: str = "event_time",
        file_format: str | None = None,
        delimiter: str | None = None,
        filesystem: Any = None,
        region: str | None = None,
    ) -> None:
        """The dataset at ``path``.

        Args:
            path: a folder, a file or a glob, local or ``s3://bucket/key``; a ``{name}`` in
                it stands for the feature group's name.
            name: the feature group this dataset is (without ``{name}`` in ``path``).
            record_identifier: the id column.
            event_time_feature: the event time column.
            file_format: ``parquet`` or ``csv`` (None: from the files' extension).
            delimiter: the CSV field separator (None: ``,``).
            filesystem: the pyarrow filesystem of an ``s3://`` path (default: S3 with the
                standard AWS chain's credentials and ``AWS_ENDPOINT_URL*`` endpoints).
            region: the AWS region of that default filesystem.
        """
        self.path = path
        self.name = name
        self.record_identifier = record_identifier
        self.event_time_feature = event_time_feature
        self.file_format = file_format
        self.delimiter = delimiter
        self._filesystem = filesystem
        self._region = region

    @classmethod
    def from_settings(cls, settings: Settings, *, writable: bool = True) -> FilesFeatureStore:
        """The dataset at ``feature_store.path`` (``writable`` changes nothing: read-only).

        Raises:
            ConfigError: ``feature_store.path`` is not set.
        """
        from batchscore.aws import region_of
        from batchscore.errors import ConfigError

        options = settings.feature_store
        if not options.path:
            raise ConfigError("feature_store type 'files' needs feature_store.path.")
        return cls(
            options.path,
            name=settings.feature_group_name,
            record_identifier=settings.record_identifier,
            event_time_feature=settings.event_time_feature,
            file_format=options.format,
            delimiter=options.delimiter,
            region=region_of(settings),
        )

    # Where the files are ----------------------------------------------------------------

    @property
    def is_s3(self) -> bool:
        return self.path.startswith(("s3://", "s3a://", "s3n://"))

    def _fs(self) -> Any:
        """The filesystem and the path in it (``bucket/key`` for S3)."""
        if not self.is_s3:
            from pyarrow.fs import LocalFileSystem

            return self._filesystem or LocalFileSystem()
        if self._filesystem is None:
            from batchscore.aws import s3_filesystem

            self._filesystem = s3_filesystem(region=self._region)
        return self._filesystem

    def _location(self, name: str) -> str:
        """``path`` for feature group ``name``, without the ``s3://`` scheme."""
        path = self.path.replace(NAME, name)
        if self.is_s3:
            return path.split("://", 1)[1]
        return str(Path(path).expanduser().absolute())

    def _files(self, name: str) -> tuple[list[str], str]:
        """The data files of feature group ``name``, and the folder partitions start under.

        Raises:
            FeatureGroupError: no such feature group (the path matches nothing).
        """
        from pyarrow.fs import FileSelector, FileType

        if NAME not in self.path and name != self.name:
            raise self._missing(name)
        fs = self._fs()
        location = self._location(name)
        match = GLOB_CHARACTERS.search(location)
        base = location if match is None else location[: location.rfind("/", 0, match.start())]
        try:
            info = fs.get_file_info(base)
            if info.type == FileType.File and match is None:
                return [base], base.rsplit("/", 1)[0]
            if info.type != FileType.Directory:
                raise self._missing(name)
            found = fs.get_file_info(FileSelector(base, recursive=True))
        except OSError as exc:
            raise FeatureGroupError(
                f"cannot list the files of feature group {name!r} at {self._shown(name)}: {exc}"
            ) from exc
        pattern = None if match is None else _glob_regex(location)
        files = sorted(
            f.path
            for f in found
            if f.type == FileType.File
            and not _hidden(f.path[len(base) :])
            and (pattern.fullmatch(f.path) if pattern else True)
        )
        return files, base

    def _shown(self, name: str) -> str:
        return self.path.replace(NAME, name)

    def _missing(self, name: str) -> FeatureGroupError:
        known = self.list_feature_groups()
        where = (
            f"no file or folder matches {self._shown(name)}"
            if NAME in self.path
            else f"this store reads one dataset, {self.path}, as feature group {self.name!r} "
            "(feature_group_name); put {name} in feature_store.path to read one per name"
            if name != self.name
            else f"nothing is at {self.path}"
        )
        return FeatureGroupError(
            f"feature group {name!r} does not exist: {where}.{did_you_mean(name, known)} "
            f"(feature groups: {', '.join(known) or 'none'})"
        )

    def _format(self, files: list[str]) -> str:
        if self.file_format:
            return self.file_format
        if files and all(f.lower().endswith(CSV_SUFFIXES) for f in files):
            return "csv"
        return "parquet"

    def dataset(self, name: str) -> tuple[Dataset, list[str]]:
        """The dataset of feature group ``name``: its files with one schema (unified across
        files, so a column all NULL in one file takes its type from the others), and the
        Hive partition columns.

        Raises:
            FeatureGroupError: no such feature group, no data files, or unreadable files.
        """
        import pyarrow.dataset as ds

        files, base = self._files(name)
        if not files:
            raise FeatureGroupError(
                f"feature group {name!r} has no data files at {self._shown(name)}: the files "
                "store takes its columns from the files, so it reads a dataset once a job has "
                "written one."
            )
        kind = self._format(files)
        if kind == "csv":
            from pyarrow import csv

            # An empty field is NULL, as `features ingest` reads CSV.
            file_format: Any = ds.CsvFileFormat(
                parse_options=csv.ParseOptions(delimiter=self.delimiter or ","),
                convert_options=csv.ConvertOptions(strings_can_be_null=True),
            )
        else:
            file_format = ds.ParquetFileFormat()
        try:
            dataset = ds.dataset(
                files,
                format=file_format,
                filesystem=self._fs(),
                partitioning="hive",
                partition_base_dir=base,
            )
            partitions = [c for c in dataset.schema.names if c not in _physical(dataset).names]
            schema = pa.unify_schemas(
                [_physical(dataset), *(pa.schema([dataset.schema.field(c)]) for c in partitions)],
                promote_options="permissive",
            )
            dataset = ds.dataset(
                files,
                schema=schema,
                format=file_format,
                filesystem=self._fs(),
                partitioning="hive",
                partition_base_dir=base,
            )
        except (OSError, pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise FeatureGroupError(
                f"cannot read feature group {name!r} at {self._shown(name)} as {kind}: {exc}"
            ) from exc
        return dataset, partitions

    # Definition -------------------------------------------------------------------------

    def list_feature_groups(self) -> list[str]:
        """The label of the one dataset; with ``{name}`` in the path, the names it matches
        (folders, or files with the path's suffix), sorted."""
        if NAME not in self.path:
            return [self.name]
        from pyarrow.fs import FileSelector, FileType

        location = self._location(NAME)
        parent, _, segment = location[: location.index(NAME) + len(NAME)].rpartition("/")
        rest = location[location.index(NAME) + len(NAME) :].split("/", 1)[0]
        try:
            entries = self._fs().get_file_info(FileSelector(parent, allow_not_found=True))
        except OSError:
            return []
        prefix = segment.removesuffix(NAME)
        names = []
        for entry in entries:
            base = entry.path.rsplit("/", 1)[-1]
            if entry.type == FileType.NotFound or not base.startswith(prefix):
                continue
            if base.endswith(rest) and len(base) > len(prefix) + len(rest):
                names.append(base[len(prefix) : len(base) - len(rest)])
        return sorted(names)

    def describe(self, name: str) -> FeatureGroup:
        """The dataset as a feature group: the configured id and event time, every other
        column a feature except SageMaker's own; ``snapshot_id`` None (files have none).

        Raises:
            FeatureGroupError: no such feature group, no data files, or the id or event time
                column is not in the files (naming the columns found).
        """
        dataset, _ = self.dataset(name)
        schema = dataset.schema
        for column, key in (
            (self.record_identifier, "record_identifier"),
            (self.event_time_feature, "event_time_feature"),
        ):
            if column not in schema.names:
                raise FeatureGroupError(
                    f"feature group {name!r} at {self._shown(name)} has no column {column!r} "
                    f"({key}). Columns found: {', '.join(schema.names)}. Set {key} to the "
                    "dataset's column."
                )
        features = {
            f.name: feature_type_of(f.type)
            for f in schema
            if f.name not in (self.record_identifier, self.event_time_feature, *STORE_COLUMNS)
        }
        # How the rule reads these files (for describe): the store columns they really have.
        plan = plan_read(
            schema, self.record_identifier, self.event_time_feature, label=self._shown(name)
        )
        return FeatureGroup(
            name=name,
            record_identifier=self.record_identifier,
            event_time_feature=self.event_time_feature,
            features=features,
            table_identifier=self._shown(name),
            location=self._shown(name),
            snapshot_id=None,
            total_rows=_parquet_rows(dataset),
            event_time_kind=plan.event_kind,
            tie_breaks=plan.tie_breaks,
            delete_marker=plan.deleted,
            managed=False,
        )

    def create_feature_group(self, name: str, features: Any, **kwargs: Any) -> FeatureGroup:
        raise FeatureGroupError(_READ_ONLY)

    def ingest(self, name: str, data: Any, **kwargs: Any) -> Any:
        raise FeatureGroupError(_READ_ONLY)

    def delete_records(self, name: str, record_ids: Any, *args: Any, **kwargs: Any) -> Any:
        raise FeatureGroupError(_READ_ONLY)

    # Reading ----------------------------------------------------------------------------

    def _rows(self, name: str, columns: list[str], batch_size: int) -> pa.RecordBatchReader:
        """``columns`` of every file, each in the type the files unify to; the latest-record
        rule reads the event time as UTC, whatever its kind (``latest.event_time_sql``)."""
        dataset, _ = self.dataset(name)
        schema = pa.schema([dataset.schema.field(c) for c in columns])
        scanner = dataset.scanner(columns=columns, batch_size=batch_size)
        label = f"feature group {name!r}"

        def batches() -> Iterator[pa.RecordBatch]:
            for batch in scanner.to_batches():
                arrays = [_cast(batch.column(f.name), f.type, label) for f in schema]
                yield pa.RecordBatch.from_arrays(arrays, schema=schema)

        return pa.RecordBatchReader.from_batches(schema, batches())

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
        """The newest live version per id in [id_start, id_end] with event time <= ``as_of``.

        ``snapshot_id`` is ignored: files have no snapshots, so a resumed run reads the files
        as they are now (point-in-time through ``as_of`` as long as they are only appended to).
        """
        from batchscore.feature_store.latest import latest_batches, utc_naive

        group = self.describe(name)
        plan = ReadPlan.of(group)
        out_columns = [plan.key, plan.event, *group.features]
        reader = self._rows(name, [*out_columns, *plan.store_columns], batch_size)
        out_schema = pa.schema([reader.schema.field(c) for c in out_columns])
        as_of = utc_naive(as_of)
        stats = ReadStats()
        batches = latest_batches(
            lambda: reader,
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
        return LatestRecords(out_schema, batches, None, as_of, stats)

    def record_summary(self, name: str) -> RecordSummary:
        """Live records and their id and event-time ranges: one pass over the id, event time
        and SageMaker columns (an empty folder: no records)."""
        from batchscore.feature_store.latest import summarize_latest

        if not self._files(name)[0]:
            return RecordSummary(0, None, None, None, None)
        plan = ReadPlan.of(self.describe(name))  # the columns are there, or the error says
        return summarize_latest(
            self._rows(name, [plan.key, plan.event, *plan.store_columns], 100_000),
            **plan.kwargs(),
            label=f"feature group {name!r}",
        )


def _physical(dataset: Dataset) -> pa.Schema:
    """The file columns, unified across every file (permissive: NULL-only and int/float)."""
    schemas = [fragment.physical_schema for fragment in dataset.get_fragments()]
    return pa.unify_schemas(schemas, promote_options="permissive")


def _parquet_rows(dataset: Dataset) -> int:
    """Rows in the files, from Parquet footers (0 for CSV: counting would read it all)."""
    import pyarrow.dataset as ds

    if not isinstance(dataset.format, ds.ParquetFileFormat):
        return 0
    return sum(f.metadata.num_rows for f in dataset.get_fragments())


def _hidden(relative: str) -> bool:
    """Spark's and Hadoop's bookkeeping: ``_SUCCESS``, ``_committed_*``, ``.part.crc``."""
    return any(part.startswith(("_", ".")) for part in relative.split("/") if part)


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A glob as a regex over whole paths: ``*`` and ``?`` stay within a folder, ``**``
    crosses folders, ``[...]`` is a character class."""
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 1 :]:
            end = pattern.index("]", i + 1)
            body = pattern[i + 1 : end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def _cast(values: pa.Array, target: pa.DataType, label: str) -> pa.Array:
    if values.type == target:
        return values
    try:
        return pc.cast(values, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise FeatureGroupError(f"reading {label}: a column does not fit {target}: {exc}") from exc
