"""The feature store interface: SageMaker Feature Store's model of a feature group.

A feature group is append-only. Each row is one version of a record: the record identifier,
the event time, the features, and the store's own columns ``write_time``,
``api_invocation_time`` and ``is_deleted``. Reading the latest records follows the SageMaker
SDK's DatasetBuilder: per id, the newest version by (event_time, api_invocation_time,
write_time) wins, and if it is a delete marker the id is gone.
"""

from __future__ import annotations

import abc
import datetime as dt
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

if TYPE_CHECKING:
    from typing import Self

    from batchscore.config import Settings

STORE_COLUMNS = ("write_time", "api_invocation_time", "is_deleted")

# SageMaker's feature types and the Arrow types that hold them.
FEATURE_TYPES: dict[str, pa.DataType] = {
    "Integral": pa.int64(),
    "Fractional": pa.float64(),
    "String": pa.string(),
}


def feature_type_of(arrow_type: pa.DataType) -> str:
    """The SageMaker feature type for an Arrow type (booleans count as Integral)."""
    if pa.types.is_integer(arrow_type) or pa.types.is_boolean(arrow_type):
        return "Integral"
    if pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type):
        return "Fractional"
    return "String"


@dataclass(frozen=True)
class FeatureGroup:
    """A feature group's definition and where it lives."""

    name: str
    record_identifier: str
    event_time_feature: str
    features: dict[
        str, str
    ]  # feature name -> Integral | Fractional | String, ids and time excluded
    table_identifier: str
    location: str
    snapshot_id: int | None = None
    total_rows: int = 0
    # How the latest-record rule reads it (feature_store/latest.py's ReadPlan): the event
    # time's kind, the tie-break columns after it, the delete marker column (None: none), and
    # whether batchscore created it (False: any table, read by the config's column names).
    event_time_kind: str = "timestamp"
    tie_breaks: tuple[str, ...] = ("api_invocation_time", "write_time")
    delete_marker: str | None = "is_deleted"
    managed: bool = True

    def describe(self) -> dict[str, Any]:
        return {
            "feature_group_name": self.name,
            "record_identifier": self.record_identifier,
            "event_time_feature": self.event_time_feature,
            "features": dict(self.features),
            "offline_store_table": self.table_identifier,
            "location": self.location,
            "snapshot_id": self.snapshot_id,
            "total_rows": self.total_rows,
        }


@dataclass
class ReadStats:
    """What a latest-record read skipped, filled in as its batches are consumed."""

    records: int = 0
    duplicate_versions_skipped: int = 0
    deleted_records_skipped: int = 0
    # Ids without a number (see feature_store.ids): never scored, counted, a few kept to show.
    unmatched_ids: int = 0
    unmatched_id_examples: list[str] = field(default_factory=list)
    # Data files and Parquet row groups never decoded for features: pruned by the table's
    # statistics (event time after as_of) or holding no winner (local Parquet reads only).
    files_skipped: int = 0
    row_groups_skipped: int = 0

    def add_unmatched(self, ids: list[str]) -> None:
        self.unmatched_ids += len(ids)
        room = UNMATCHED_EXAMPLES - len(self.unmatched_id_examples)
        if room > 0:
            self.unmatched_id_examples += ids[:room]


UNMATCHED_EXAMPLES = 5


@dataclass(frozen=True)
class IngestResult:
    """What an ingest wrote.

    ``missing_columns``: features the input lacked (only with ``allow_missing_columns``): all
    ``rows`` were written with them NULL, and as the newest versions those NULLs win.
    ``ignored_columns``: input columns the group has no feature for (only with
    ``ignore_extra_columns``). ``future_event_times``: rows whose event time is after now.
    """

    rows: int
    missing_columns: list[str] = field(default_factory=list)
    ignored_columns: list[str] = field(default_factory=list)
    future_event_times: int = 0
    max_event_time: dt.datetime | None = None


@dataclass(frozen=True)
class DeleteResult:
    """What a delete took effect on. A marker is appended for every id either way (the store is
    append-only); only ``deleted`` ids disappear from reads.

    ``unknown_ids``: no record with that id. ``stale_ids``: the id's newest version is later
    than the marker, which therefore deletes nothing. ``already_deleted_ids``: its newest
    version was a delete marker already.
    """

    markers_written: int
    deleted: int
    unknown_ids: list[str] = field(default_factory=list)
    stale_ids: list[str] = field(default_factory=list)
    already_deleted_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RecordSummary:
    """The live records of a feature group (the newest version per id, not a delete marker):
    how many, their id numbers' range and their event times' range."""

    live_records: int
    id_min: int | None
    id_max: int | None
    event_time_min: dt.datetime | None
    event_time_max: dt.datetime | None
    unmatched_ids: int = 0


@dataclass
class LatestRecords:
    """A stream of the latest live record per id, and the snapshot it was read from.

    ``batches`` yields Arrow record batches of at most the requested size; ``stats`` is complete
    once they are consumed.
    """

    schema: pa.Schema
    batches: Iterator[pa.RecordBatch]
    snapshot_id: int | None
    as_of: dt.datetime | None
    stats: ReadStats = field(default_factory=ReadStats)

    def to_table(self) -> pa.Table:
        return pa.Table.from_batches(list(self.batches), schema=self.schema)


class FeatureStore(abc.ABC):
    """Where features come from.

    Implementations (``FEATURE_STORES`` in :mod:`batchscore.feature_store`):
    ``iceberg.IcebergFeatureStore``, ``sagemaker.SageMakerFeatureStore``. Each is built from
    the settings by :meth:`from_settings`, and its constructor takes the client it talks
    through (a pyiceberg catalog, a boto3 client), so a test can hand it one.
    """

    @classmethod
    @abc.abstractmethod
    def from_settings(cls, settings: Settings, *, writable: bool = True) -> Self:
        """The store as the settings describe it (what ``open_feature_store`` calls).

        Args:
            settings: the whole settings; the store reads its own keys.
            writable: False to only read (a store that can be opened read-only is).

        Raises:
            ConfigError: the settings cannot reach the store.
        """

    @abc.abstractmethod
    def create_feature_group(
        self,
        name: str,
        features: Mapping[str, str] | pa.Schema,
        *,
        record_identifier: str,
        event_time_feature: str,
        exist_ok: bool = False,
    ) -> FeatureGroup:
        """Create a feature group.

        Raises:
            FeatureGroupError: it exists (unless ``exist_ok``), or a type is unknown.
        """

    @abc.abstractmethod
    def list_feature_groups(self) -> list[str]:
        """Names of the feature groups in this store, sorted."""

    @abc.abstractmethod
    def describe(self, name: str) -> FeatureGroup:
        """The feature group's definition and current snapshot.

        Raises:
            FeatureGroupError: no such feature group.
        """

    @abc.abstractmethod
    def ingest(
        self,
        name: str,
        data: pa.Table | Any | str | Path,
        *,
        allow_missing_columns: bool = False,
        ignore_extra_columns: bool = False,
        delimiter: str | None = None,
    ) -> IngestResult:
        """Append records (a table, DataFrame, CSV or Parquet path) in one commit.

        Args:
            allow_missing_columns: write records that lack some features (stored NULL, and
                as the newest version those NULLs win); by default that is refused.
            ignore_extra_columns: drop input columns the group has no feature for; by default
                they are refused.
            delimiter: the CSV field separator (default ``,``).

        Raises:
            FeatureGroupError: the file is missing or unreadable, a column is missing or unknown,
                a value does not fit its feature type, or an (id, event time) pair repeats.
        """

    @abc.abstractmethod
    def delete_records(
        self, name: str, record_ids: list[str], event_time: dt.datetime | None = None
    ) -> DeleteResult:
        """Append one delete marker per id (SageMaker's DeleteRecord); say what took effect."""

    def record_summary(self, name: str) -> RecordSummary | None:
        """Live records, id range and event-time range (None: this store cannot say cheaply)."""
        return None

    @abc.abstractmethod
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
        """The newest live version of each record whose numeric id is in [id_start, id_end].

        Args:
            as_of: only versions with event time <= as_of count (None: all).
            snapshot_id: read this snapshot of the offline store (None: the current one).

        Raises:
            FeatureGroupError: no such feature group or snapshot.
        """
