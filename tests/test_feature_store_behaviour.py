"""The FeatureStore contract, one suite run against every implementation.

``iceberg``: the embedded store on a SQLite catalog in tmp_path, records written through the
store itself. ``files``: a folder of Parquet files per feature group, each ingestion one more
file, as a Spark or pandas job leaves them. ``sagemaker``: SageMaker Feature Store on moto's
server; SageMaker's ingestion is played by the test (the feature group made with boto3, its
offline store written as Parquet under its S3 location), because batchscore only reads it.
Each test states the contract in the store's own terms; what an implementation cannot do is
named in its harness's ``limits``, with the reason, and those tests skip saying so.

Implementation-specific checks stay beside their implementation: ingest parsing in
tests/test_ingest.py and tests/test_feature_store.py, the Iceberg offline store and the
seed's end-to-end runs in tests/test_aws.py.
"""

from __future__ import annotations

import abc
import datetime as dt
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from batchscore.errors import ConfigError, FeatureGroupError
from batchscore.feature_store import FeatureStore, open_feature_store
from batchscore.feature_store.base import RecordSummary

T0 = dt.datetime(2026, 1, 1)
DAY = dt.timedelta(days=1)
DEFINITION = {
    "customer_id": "String",
    "event_time": "String",
    "x": "Fractional",
    "n": "Integral",
    "c": "String",
}
FEATURES = {"x": "Fractional", "n": "Integral", "c": "String"}
Version = tuple[str, dt.datetime, float | None]  # (id, event time, x); n and c stay NULL
OTHER_REGION = "eu-central-1"  # not the seed's: where the injected SageMaker client points


class Harness(abc.ABC):
    """A feature store under test, and the way records reach it."""

    store: FeatureStore
    # capability -> why this implementation does not have it (the test skips, saying so)
    limits: dict[str, str] = {}  # noqa: RUF012 (read-only class default)

    def require(self, capability: str) -> None:
        if capability in self.limits:
            pytest.skip(f"{type(self.store).__name__}: {self.limits[capability]}")

    @abc.abstractmethod
    def create(self, name: str) -> None:
        """Make feature group ``name`` with DEFINITION."""

    @abc.abstractmethod
    def write(self, name: str, versions: list[Version]) -> None:
        """Append ``versions`` as one ingestion (later calls get later write times)."""

    @abc.abstractmethod
    def delete(self, name: str, ids: list[str], at: dt.datetime) -> None:
        """Append a delete marker at ``at`` for each id."""

    @abc.abstractmethod
    def open_through_factory(self) -> FeatureStore:
        """The same store, as ``open_feature_store`` builds it from settings."""


class IcebergHarness(Harness):
    def __init__(self, tmp_path: Path) -> None:
        from pyiceberg.catalog.sql import SqlCatalog

        from batchscore.config import load_settings
        from batchscore.feature_store.iceberg import IcebergFeatureStore

        catalog = {
            "type": "sql",
            "uri": f"sqlite:///{tmp_path / 'catalog.db'}",
            "warehouse": (tmp_path / "warehouse").as_uri(),
        }
        self.settings = load_settings(
            None, overrides={"workspace": str(tmp_path / "ws"), "catalog": catalog}, env={}
        )
        # The client injected: the catalog, opened here as any pyiceberg user would (named as
        # open_catalog names it: a SQL catalog keys its tables by the catalog's name).
        properties = {k: v for k, v in catalog.items() if k != "type"}
        self.store = IcebergFeatureStore(SqlCatalog("batchscore", **properties))

    def create(self, name: str) -> None:
        self.store.create_feature_group(name, DEFINITION)

    def write(self, name: str, versions: list[Version]) -> None:
        self.store.ingest(name, records(versions))

    def delete(self, name: str, ids: list[str], at: dt.datetime) -> None:
        self.store.delete_records(name, ids, event_time=at)

    def open_through_factory(self) -> FeatureStore:
        return open_feature_store(self.settings)


class SageMakerHarness(Harness):
    limits = {  # noqa: RUF012
        "write": "records reach the offline store through SageMaker's own ingestion",
        "list": "moto implements no ListFeatureGroups, so there are no names to list or suggest",
        "missing": "moto answers DescribeFeatureGroup of a missing group with HTTP 500 (a "
        "KeyError inside moto), where SageMaker says ResourceNotFound",
        "empty": "an offline store with no files yet (SageMaker writes the first some minutes "
        "after ingestion) has no S3 prefix to read: FeatureGroupError 'cannot read the "
        "offline store', not an empty read",
        "record_summary": "a summary would read the whole offline store: not cheap, so None",
    }

    def __init__(self, tmp_path: Path) -> None:
        import boto3

        from batchscore.feature_store.sagemaker import SageMakerFeatureStore
        from tests.aws_fixtures import REGION, seed_settings

        # The client injected, in another region than the settings name: the feature groups
        # are there, so every test shows the store talks through the client it was given.
        self.sagemaker = boto3.client("sagemaker", region_name=OTHER_REGION)
        self.s3 = boto3.client("s3", region_name=REGION)
        self.store = SageMakerFeatureStore(seed_settings(tmp_path), sagemaker_client=self.sagemaker)
        self.settings = seed_settings(tmp_path, region=OTHER_REGION)  # for open_feature_store
        self.ingestions = 0

    def create(self, name: str) -> None:
        from tests.aws_fixtures import BUCKET

        definitions = [{"FeatureName": f, "FeatureType": t} for f, t in DEFINITION.items()]
        self.sagemaker.create_feature_group(
            FeatureGroupName=name,
            RecordIdentifierFeatureName="customer_id",
            EventTimeFeatureName="event_time",
            FeatureDefinitions=definitions,
            OfflineStoreConfig={
                "S3StorageConfig": {"S3Uri": f"s3://{BUCKET}/offline-store/{name}"},
                "TableFormat": "Glue",
            },
            RoleArn="arn:aws:iam::123456789012:role/ML-Role-Pipelines",
        )

    def _put(self, name: str, rows: pa.Table) -> None:
        """One Parquet file in the offline store, as SageMaker's ingestion writes it."""
        import pyarrow.parquet as pq

        from tests.aws_fixtures import BUCKET

        described = self.sagemaker.describe_feature_group(FeatureGroupName=name)
        resolved = described["OfflineStoreConfig"]["S3StorageConfig"]["ResolvedOutputS3Uri"]
        prefix = resolved.removeprefix(f"s3://{BUCKET}/").rstrip("/")
        sink = pa.BufferOutputStream()
        pq.write_table(rows, sink)
        key = f"{prefix}/year=2026/month=01/day=01/hour=00/part-{self.ingestions}.parquet"
        self.s3.put_object(Bucket=BUCKET, Key=key, Body=sink.getvalue().to_pybytes())

    def _stamped(self, table: pa.Table, deleted: bool) -> pa.Table:
        """SageMaker's own columns; each ingestion a minute after the last."""
        self.ingestions += 1
        now = dt.datetime(2027, 1, 1) + self.ingestions * dt.timedelta(minutes=1)
        n = table.num_rows
        iso = [t.strftime("%Y-%m-%dT%H:%M:%SZ") for t in table.column("event_time").to_pylist()]
        table = table.set_column(1, "event_time", pa.array(iso, pa.string()))
        return (
            table.append_column("api_invocation_time", pa.array([now] * n, pa.timestamp("us")))
            .append_column("write_time", pa.array([now + DAY] * n, pa.timestamp("us")))
            .append_column("is_deleted", pa.array([deleted] * n, pa.bool_()))
        )

    def write(self, name: str, versions: list[Version]) -> None:
        self._put(name, self._stamped(records(versions), deleted=False))

    def delete(self, name: str, ids: list[str], at: dt.datetime) -> None:
        self._put(name, self._stamped(records([(i, at, None) for i in ids]), deleted=True))

    def open_through_factory(self) -> FeatureStore:
        return open_feature_store(self.settings)


class FilesHarness(Harness):
    """A folder per feature group (``path: <tmp>/{name}``), written as a Spark or pandas job
    would: each ingestion one more Parquet file. Creating a group is its job's first, empty
    file (the dataset's columns, no rows); SageMaker's columns are written, so the tie-break and
    delete markers are the rule's "when present" case."""

    limits = {  # noqa: RUF012
        "write": "a folder of files is read as the jobs that write it left it: read-only",
    }

    def __init__(self, tmp_path: Path) -> None:
        from batchscore.config import load_settings
        from batchscore.feature_store.files import FilesFeatureStore

        self.root = tmp_path / "datasets"
        self.root.mkdir()
        path = str(self.root / "{name}")
        self.settings = load_settings(
            None,
            overrides={
                "workspace": str(tmp_path / "ws"),
                "feature_group_name": "fg",
                "feature_store": {"type": "files", "path": path},
            },
            env={},
        )
        self.store = FilesFeatureStore(path, name="fg")
        self.ingestions = 0

    def _put(self, name: str, rows: pa.Table) -> None:
        import pyarrow.parquet as pq

        pq.write_table(rows, self.root / name / f"part-{self.ingestions:05d}.parquet")

    def _stamped(self, table: pa.Table, deleted: bool) -> pa.Table:
        self.ingestions += 1
        now = dt.datetime(2027, 1, 1) + self.ingestions * dt.timedelta(minutes=1)
        n = table.num_rows
        return (
            table.append_column("api_invocation_time", pa.array([now] * n, pa.timestamp("us")))
            .append_column("write_time", pa.array([now] * n, pa.timestamp("us")))
            .append_column("is_deleted", pa.array([deleted] * n, pa.bool_()))
        )

    def create(self, name: str) -> None:
        (self.root / name).mkdir()
        self._put(name, self._stamped(records([]), deleted=False))

    def write(self, name: str, versions: list[Version]) -> None:
        self._put(name, self._stamped(records(versions), deleted=False))

    def delete(self, name: str, ids: list[str], at: dt.datetime) -> None:
        self._put(name, self._stamped(records([(i, at, None) for i in ids]), deleted=True))

    def open_through_factory(self) -> FeatureStore:
        return open_feature_store(self.settings)


@pytest.fixture(params=["iceberg", "sagemaker", "files"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Harness:
    if request.param == "sagemaker":
        request.getfixturevalue("aws")  # moto, clean, with the seed's bucket
        return SageMakerHarness(tmp_path)
    if request.param == "files":
        return FilesHarness(tmp_path)
    return IcebergHarness(tmp_path)


def records(versions: list[Version]) -> pa.Table:
    """Records with every feature of DEFINITION (n and c NULL)."""
    return pa.table(
        {
            "customer_id": pa.array([v[0] for v in versions], pa.string()),
            "event_time": pa.array([v[1] for v in versions], pa.timestamp("us")),
            "x": pa.array([v[2] for v in versions], pa.float64()),
            "n": pa.nulls(len(versions), pa.int64()),
            "c": pa.nulls(len(versions), pa.string()),
        }
    )


def latest(store: FeatureStore, start: int = 0, end: int = 10**9, **kw: object):
    """The read's rows as {id: x}, and its stats."""
    result = store.latest_records("fg", start, end, **kw)
    table = result.to_table()
    assert table.column_names == ["customer_id", "event_time", "x", "n", "c"]
    return dict(zip(table["customer_id"].to_pylist(), table["x"].to_pylist(), strict=True)), (
        result.stats
    )


# Definition ---------------------------------------------------------------------------------


def test_describe_names_the_identifier_event_time_and_feature_types(harness: Harness) -> None:
    harness.create("fg")
    group = harness.store.describe("fg")
    assert (group.name, group.record_identifier, group.event_time_feature) == (
        "fg", "customer_id", "event_time",
    )  # fmt: skip
    assert group.features == FEATURES


def test_list_feature_groups_is_sorted(harness: Harness) -> None:
    harness.require("list")
    for name in ("fg_b", "fg_a"):
        harness.create(name)
    assert harness.store.list_feature_groups() == ["fg_a", "fg_b"]


def test_a_missing_feature_group_is_a_feature_group_error(harness: Harness) -> None:
    harness.require("missing")
    harness.create("fg")
    with pytest.raises(FeatureGroupError, match=r"'fgg' does not exist"):
        harness.store.describe("fgg")
    with pytest.raises(FeatureGroupError, match=r"'fgg' does not exist"):
        harness.store.latest_records("fgg", 0, 10)


def test_a_missing_feature_group_suggests_the_close_name(harness: Harness) -> None:
    harness.require("missing")
    harness.require("list")
    harness.create("fg")
    with pytest.raises(FeatureGroupError, match=r"'fgg' does not exist.*Did you mean 'fg'\?"):
        harness.store.describe("fgg")


def test_the_factory_builds_the_same_store_from_settings(harness: Harness) -> None:
    harness.create("fg")
    harness.write("fg", [("CUST_000001", T0, 1.0)])
    opened = harness.open_through_factory()
    assert type(opened) is type(harness.store)
    assert opened.describe("fg").features == FEATURES
    assert latest(opened)[0] == {"CUST_000001": 1.0}


# Writing through the store ----------------------------------------------------------------


def test_a_store_writes_what_it_is_given_or_refuses_to_write(harness: Harness) -> None:
    harness.create("fg")
    store = harness.store
    if "write" in harness.limits:  # read-only: the harness's limits say why
        for write in (
            lambda: store.create_feature_group("fg2", DEFINITION, record_identifier="customer_id",
                                               event_time_feature="event_time"),
            lambda: store.ingest("fg", records([("CUST_000001", T0, 1.0)])),
            lambda: store.delete_records("fg", ["CUST_000001"]),
        ):  # fmt: skip
            with pytest.raises(FeatureGroupError, match="read-only"):
                write()
        return
    with pytest.raises(FeatureGroupError, match="already exists"):
        store.create_feature_group("fg", DEFINITION)
    store.create_feature_group("fg", DEFINITION, exist_ok=True)
    assert store.ingest("fg", records([("CUST_000001", T0, 1.0), ("CUST_2", T0, 2.0)])).rows == 2
    deleted = store.delete_records("fg", ["CUST_2", "CUST_3"], event_time=T0 + DAY)
    assert (deleted.markers_written, deleted.deleted, deleted.unknown_ids) == (2, 1, ["CUST_3"])
    assert latest(store)[0] == {"CUST_000001": 1.0}


# Reading the latest records -----------------------------------------------------------------


def test_an_empty_feature_group_reads_no_records(harness: Harness) -> None:
    harness.require("empty")
    harness.create("fg")
    rows, stats = latest(harness.store)
    assert rows == {} and stats.records == 0


def test_the_newest_event_time_wins_whatever_the_write_order(harness: Harness) -> None:
    harness.create("fg")
    harness.write("fg", [("CUST_000001", T0 + 2 * DAY, 2.0), ("CUST_000002", T0, 5.0)])
    harness.write("fg", [("CUST_000001", T0, 1.0)])  # written later, but older
    rows, stats = latest(harness.store)
    assert rows == {"CUST_000001": 2.0, "CUST_000002": 5.0}
    assert stats.records == 2 and stats.duplicate_versions_skipped == 1


def test_a_tie_on_event_time_goes_to_the_later_write(harness: Harness) -> None:
    harness.create("fg")
    harness.write("fg", [("CUST_000001", T0, 1.0)])
    harness.write("fg", [("CUST_000001", T0, 7.0)])
    assert latest(harness.store)[0] == {"CUST_000001": 7.0}


def test_a_newer_delete_marker_removes_and_an_older_one_does_not(harness: Harness) -> None:
    harness.create("fg")
    harness.write("fg", [("CUST_000001", T0, 1.0), ("CUST_000002", T0, 2.0),
                         ("CUST_000003", T0 + 5 * DAY, 3.0)])  # fmt: skip
    harness.delete("fg", ["CUST_000002"], T0 + DAY)
    harness.delete("fg", ["CUST_000003"], T0)  # older than the record: deletes nothing
    rows, stats = latest(harness.store)
    assert rows == {"CUST_000001": 1.0, "CUST_000003": 3.0}
    assert stats.deleted_records_skipped == 1
    assert stats.duplicate_versions_skipped == 2  # each marker and the version it competed with


def test_a_record_written_after_its_delete_marker_is_back(harness: Harness) -> None:
    harness.create("fg")
    harness.write("fg", [("CUST_000001", T0, 1.0)])
    harness.delete("fg", ["CUST_000001"], T0 + DAY)
    harness.write("fg", [("CUST_000001", T0 + 2 * DAY, 3.0)])
    assert latest(harness.store)[0] == {"CUST_000001": 3.0}


def test_as_of_sees_the_store_as_it_was(harness: Harness) -> None:
    harness.create("fg")
    harness.write("fg", [("CUST_000001", T0, 1.0), ("CUST_000001", T0 + 10 * DAY, 2.0)])
    harness.delete("fg", ["CUST_000001"], T0 + 20 * DAY)
    assert latest(harness.store, as_of=T0 + 5 * DAY)[0] == {"CUST_000001": 1.0}
    assert latest(harness.store, as_of=T0 + 10 * DAY)[0] == {"CUST_000001": 2.0}  # inclusive
    assert latest(harness.store, as_of=T0 + 25 * DAY)[0] == {}
    zoned = (T0 + 5 * DAY).replace(tzinfo=dt.UTC).astimezone(dt.timezone(dt.timedelta(hours=2)))
    assert latest(harness.store, as_of=zoned)[0] == {"CUST_000001": 1.0}  # the same instant


def test_the_id_range_is_inclusive_and_compares_numbers(harness: Harness) -> None:
    harness.create("fg")
    ids = ["CUST_003999", "CUST_004000", "CUST_4001", " CUST_005000\t", "CUST_005001", "5000"]
    harness.write("fg", [(i, T0, float(n)) for n, i in enumerate(ids)])
    rows, stats = latest(harness.store, 4000, 5000)
    assert rows == {"CUST_004000": 1.0, "CUST_4001": 2.0, "CUST_005000": 3.0, "5000": 5.0}
    assert stats.unmatched_ids == 0


def test_ids_without_a_number_are_counted_never_read(harness: Harness) -> None:
    harness.create("fg")
    harness.write("fg", [("CUST_000001", T0, 1.0), ("CUST_ABC", T0, 2.0), ("A1B2C3", T0, 3.0),
                         ("CUST_XYZ", T0, 4.0)])  # fmt: skip
    harness.delete("fg", ["CUST_XYZ"], T0 + DAY)  # deleted: not counted
    rows, stats = latest(harness.store)
    assert rows == {"CUST_000001": 1.0}
    assert stats.unmatched_ids == 2
    assert sorted(stats.unmatched_id_examples) == ["A1B2C3", "CUST_ABC"]


def test_batches_hold_at_most_batch_size_rows(harness: Harness) -> None:
    harness.create("fg")
    harness.write("fg", [(f"CUST_{i:06d}", T0, float(i)) for i in range(500)])
    result = harness.store.latest_records("fg", 0, 10**6, batch_size=64)
    sizes = [b.num_rows for b in result.batches]
    assert sum(sizes) == 500 and max(sizes) <= 64
    assert result.stats.records == 500


def test_record_summary_counts_live_records_and_their_ranges(harness: Harness) -> None:
    harness.create("fg")
    if "record_summary" in harness.limits:
        assert harness.store.record_summary("fg") is None  # the contract: None, not a guess
        harness.require("record_summary")
    assert harness.store.record_summary("fg") == RecordSummary(0, None, None, None, None)
    harness.write("fg", [("CUST_000002", T0, 1.0), ("CUST_000009", T0 + 3 * DAY, 2.0),
                         ("CUST_000005", T0 + DAY, 3.0), ("CUST_ABC", T0, 4.0)])  # fmt: skip
    harness.delete("fg", ["CUST_000009"], T0 + 4 * DAY)
    assert harness.store.record_summary("fg") == RecordSummary(
        live_records=2,
        id_min=2,
        id_max=5,
        event_time_min=T0,
        event_time_max=T0 + DAY,
        unmatched_ids=1,
    )


# Choosing an implementation ----------------------------------------------------------------


def test_an_unknown_type_names_the_known_ones(empty_settings) -> None:
    from batchscore.config import FeatureStoreSettings

    # model_copy skips validation: the factory's own check, behind the config's.
    settings = empty_settings.model_copy(
        update={"feature_store": FeatureStoreSettings.model_construct(type="icebreg")}
    )
    with pytest.raises(
        ConfigError, match=r"Did you mean 'iceberg'\? Known types: files, iceberg, sagemaker\."
    ):
        open_feature_store(settings)


def test_sagemaker_without_boto3_names_the_extra(
    empty_settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)  # import boto3 now fails, as uninstalled
    settings = empty_settings.model_copy(update={"backend": "aws"})
    with pytest.raises(
        ConfigError,
        match=r"feature store type 'sagemaker' needs boto3, which is not installed: "
        r"pip install 'batchscore\[aws\]'\.",
    ):
        open_feature_store(settings)
