"""The files feature store on the demo's rows: a Hive-partitioned Parquet folder (the issue's
done-when (b): the same predictions as the Iceberg feature group, through the whole pipeline),
a CSV folder, a glob, ``s3://`` on moto, as-of, and the configuration it refuses.

The rows are the shared feature group's own (records, delete markers, stale markers), read
from its Iceberg table and written out as a Spark job would leave them: partitioned by event
date (``dt=2025-03-14/part-0.parquet``), without ``api_invocation_time``.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest

from batchscore.config import Settings
from batchscore.errors import ConfigError, FeatureGroupError
from batchscore.feature_store import FeatureStore, open_feature_store
from batchscore.feature_store.files import FilesFeatureStore
from batchscore.pipeline import Pipeline
from tests.helpers import table_rows

AS_OF = dt.datetime(2025, 9, 1)


def demo_rows(settings: Settings) -> pa.Table:
    """Every version of the shared feature group, without ``api_invocation_time``."""
    store = open_feature_store(settings)
    raw = store.iceberg_table(settings.feature_group_name).scan().to_arrow()
    return raw.drop_columns(["api_invocation_time"])


def write_hive(rows: pa.Table, folder: Path) -> None:
    """``folder/dt=YYYY-MM-DD/part-0.parquet``: partitioned by event date, as Spark does."""
    day = pc.strftime(rows.column("event_time"), format="%Y-%m-%d")
    ds.write_dataset(
        rows.append_column("dt", day),
        folder,
        format="parquet",
        partitioning=ds.partitioning(pa.schema([("dt", pa.string())]), flavor="hive"),
        basename_template="part-{i}.parquet",
    )
    (folder / "_SUCCESS").write_text("")  # Spark's marker: not a data file


def latest_by_id(store: FeatureStore, name: str, **kw: object) -> dict[str, dict]:
    table = store.latest_records(name, 4000, 5000, **kw).to_table()
    return {row["customer_id"]: row for row in table.to_pylist()}


def features_of(rows: dict[str, dict], columns: list[str]) -> dict[str, tuple]:
    """Each id's values; times as naive UTC instants (a store keeps its files' own type)."""

    def instant(value: object) -> object:
        if isinstance(value, dt.datetime) and value.tzinfo is not None:
            return value.astimezone(dt.UTC).replace(tzinfo=None)
        return value

    return {i: tuple(instant(row[c]) for c in columns) for i, row in rows.items()}


@pytest.fixture(scope="module")
def hive_folder(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.helpers import make_settings

    folder = tmp_path_factory.mktemp("lake") / "churn"
    write_hive(demo_rows(make_settings(shared_dir, shared_dir / "ws")), folder)
    return folder


def test_a_hive_partitioned_parquet_folder_scores_as_the_iceberg_group(
    make, hive_folder: Path
) -> None:
    iceberg = make()
    files = make(feature_store={"type": "files", "path": str(hive_folder)})
    assert len(list(hive_folder.glob("dt=*/part-0.parquet"))) > 100  # one folder per day
    runs = [Pipeline(s).run() for s in (iceberg, files)]
    assert [r.status for r in runs] == ["succeeded", "succeeded"]
    expected, got = (
        table_rows(s)
        .drop(columns=["run_id", "timestamp"])
        .astype(str)  # run_id, timestamp: when
        .sort_values("customer_id", ignore_index=True)
        for s in (iceberg, files)
    )
    assert len(got) > 900
    pd.testing.assert_frame_equal(
        got, expected
    )  # row by row: ids, predictions, probabilities, the rest
    data = [r.steps["DataSource"].outputs for r in runs]
    for count in ("rows", "deleted_records_skipped", "duplicate_versions_skipped"):
        assert data[1][count] == data[0][count]


def test_the_folder_reads_as_of_a_time_as_the_iceberg_group(make, hive_folder: Path) -> None:
    iceberg = open_feature_store(make())
    files = open_feature_store(make(feature_store={"type": "files", "path": str(hive_folder)}))
    group = files.describe("mlops_poc_churn_classification_feature")
    assert group.snapshot_id is None and "dt" in group.features  # partition columns are data
    columns = list(iceberg.describe("mlops_poc_churn_classification_feature").features)
    name = "mlops_poc_churn_classification_feature"
    for as_of in (AS_OF, None):
        want = features_of(latest_by_id(iceberg, name, as_of=as_of), ["event_time", *columns])
        got = features_of(latest_by_id(files, name, as_of=as_of), ["event_time", *columns])
        assert got == want
    assert len(features_of(latest_by_id(files, name, as_of=AS_OF), columns)) < len(want)


def test_a_csv_folder_with_iso_event_times_reads_the_same(make, tmp_path: Path) -> None:
    import pyarrow.csv as csv

    settings = make()
    rows = demo_rows(settings)
    iso = pc.strftime(rows.column("event_time"), format="%Y-%m-%dT%H:%M:%SZ")
    rows = rows.set_column(rows.schema.get_field_index("event_time"), "event_time", iso)
    folder = tmp_path / "csv"
    folder.mkdir()
    step = rows.num_rows // 4 + 1
    for part in range(4):
        options = csv.WriteOptions(delimiter=";")
        csv.write_csv(rows.slice(part * step, step), folder / f"part-{part}.csv", options)
    name = settings.feature_group_name
    files = open_feature_store(
        make(feature_store={"type": "files", "path": str(folder), "delimiter": ";"})
    )
    iceberg = open_feature_store(settings)
    columns = list(iceberg.describe(name).features)
    assert files.describe(name).features == iceberg.describe(name).features
    for as_of in (AS_OF, None):
        want = features_of(latest_by_id(iceberg, name, as_of=as_of), ["event_time", *columns])
        got = features_of(latest_by_id(files, name, as_of=as_of), ["event_time", *columns])
        assert got == want


def test_a_glob_reads_only_the_files_it_matches(hive_folder: Path) -> None:
    everything = FilesFeatureStore(str(hive_folder / "dt=*" / "*.parquet"), name="churn")
    first_half = FilesFeatureStore(str(hive_folder / "dt=2025-0[1-6]-*/*.parquet"), name="churn")
    days = {r["dt"] for r in latest_by_id(everything, "churn").values()}
    assert any(d >= "2025-07" for d in days)
    read = latest_by_id(first_half, "churn")
    assert read and all(r["dt"] < "2025-07" for r in read.values())  # partitions still parsed
    assert first_half.describe("churn").features == everything.describe("churn").features


def test_an_s3_folder_on_moto_reads_as_the_local_one(aws, hive_folder: Path) -> None:
    import boto3

    from tests.aws_fixtures import BUCKET, REGION

    s3 = boto3.client("s3", region_name=REGION)
    for path in hive_folder.rglob("*"):
        if path.is_file():
            key = f"lake/churn/{path.relative_to(hive_folder).as_posix()}"
            s3.put_object(Bucket=BUCKET, Key=key, Body=path.read_bytes())
    remote = FilesFeatureStore(f"s3://{BUCKET}/lake/churn/", name="churn", region=REGION)
    local = FilesFeatureStore(str(hive_folder), name="churn")
    assert remote.describe("churn").features == local.describe("churn").features
    assert latest_by_id(remote, "churn", as_of=AS_OF) == latest_by_id(local, "churn", as_of=AS_OF)
    assert remote.record_summary("churn") == local.record_summary("churn")


def test_a_missing_configured_column_names_it_and_the_columns_found(
    make, hive_folder: Path
) -> None:
    settings = make(
        feature_store={"type": "files", "path": str(hive_folder)}, record_identifier="cust_id"
    )
    store = open_feature_store(settings)
    with pytest.raises(
        FeatureGroupError,
        match=r"has no column 'cust_id' \(record_identifier\)\. Columns found: customer_id, "
        r"event_time, tenure_months, .*Set record_identifier",
    ):
        store.describe(settings.feature_group_name)
    with pytest.raises(FeatureGroupError, match=r"no column 'cust_id'.*Columns found"):
        Pipeline(settings).run()


def test_event_times_with_a_zone_or_as_epoch_compare_in_utc(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    moment = dt.datetime(2026, 1, 1, 12)  # UTC
    berlin = dt.timezone(dt.timedelta(hours=1))
    for kind, values in {
        "zoned": pa.array(
            [moment.replace(tzinfo=dt.UTC).astimezone(berlin)], pa.timestamp("us", tz="+01:00")
        ),
        "seconds": pa.array([int(moment.replace(tzinfo=dt.UTC).timestamp())], pa.int64()),
        "millis": pa.array([int(moment.replace(tzinfo=dt.UTC).timestamp() * 1000)], pa.int64()),
        "date": pa.array([dt.date(2026, 1, 1)], pa.date32()),
    }.items():
        folder = tmp_path / kind
        folder.mkdir()
        pq.write_table(pa.table({"customer_id": ["C1"], "event_time": values, "x": [1.0]}),
                       folder / "part-0.parquet")  # fmt: skip
        store = FilesFeatureStore(str(folder), name="fg")
        want = dt.datetime(2026, 1, 1) if kind == "date" else moment
        rows = store.latest_records("fg", 0, 10).to_table().to_pylist()
        # The snapshot keeps the files' own value; the as-of cut compares it in UTC.
        assert rows == [{"customer_id": "C1", "event_time": values[0].as_py(), "x": 1.0}], kind
        at = store.latest_records("fg", 0, 10, as_of=want)
        assert at.to_table().num_rows == 1, kind
        before = store.latest_records("fg", 0, 10, as_of=want - dt.timedelta(seconds=1))
        assert before.to_table().num_rows == 0, kind


def test_without_store_columns_every_version_is_live(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    folder = tmp_path / "plain"
    folder.mkdir()
    times = [dt.datetime(2026, 1, d) for d in (1, 3, 2)]
    pq.write_table(pa.table({"customer_id": ["C1", "C1", "C2"], "event_time": times,
                             "x": [1.0, 3.0, 2.0]}), folder / "part-0.parquet")  # fmt: skip
    store = FilesFeatureStore(str(folder), name="fg")
    group = store.describe("fg")
    assert group.features == {"x": "Fractional"}
    # What 'features describe' shows: no tie-break or delete columns to read by.
    assert (group.tie_breaks, group.delete_marker, group.event_time_kind) == ((), None, "timestamp")
    rows = store.latest_records("fg", 0, 10).to_table()
    assert dict(zip(rows["customer_id"].to_pylist(), rows["x"].to_pylist(), strict=True)) == {
        "C1": 3.0, "C2": 2.0,
    }  # fmt: skip


def test_an_empty_folder_says_it_has_no_data_files(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    store = FilesFeatureStore(str(tmp_path / "empty"), name="fg")
    with pytest.raises(FeatureGroupError, match="has no data files at"):
        store.describe("fg")
    with pytest.raises(FeatureGroupError, match=r"'other' does not exist.*one dataset"):
        store.describe("other")


# Configuration -----------------------------------------------------------------------------


def test_files_needs_a_path_and_path_needs_files(empty_settings) -> None:
    from batchscore.config import load_settings

    with pytest.raises(ConfigError, match=r"feature_store type 'files' needs feature_store\.path"):
        load_settings(None, overrides={"feature_store": {"type": "files"}}, env={})
    with pytest.raises(ConfigError, match="belong to feature_store type 'files'"):
        load_settings(None, overrides={"feature_store": {"path": "/data"}}, env={})
    with pytest.raises(ConfigError, match="format"):
        load_settings(
            None, overrides={"feature_store": {"type": "files", "path": "x", "format": "orc"}},
            env={},
        )  # fmt: skip


def test_the_ray_engine_is_refused_with_the_files_store() -> None:
    from batchscore.config import load_settings

    with pytest.raises(ConfigError, match="not the files feature store: set engine: local"):
        load_settings(
            None,
            overrides={"engine": "ray", "feature_store": {"type": "files", "path": "/data"}},
            env={},
        )


def test_the_files_store_is_read_only(hive_folder: Path) -> None:
    store = FilesFeatureStore(str(hive_folder), name="churn")
    for write in (
        lambda: store.create_feature_group("x", {}),
        lambda: store.ingest("churn", "f.csv"),
        lambda: store.delete_records("churn", ["CUST_000001"]),
    ):
        with pytest.raises(FeatureGroupError, match="read-only"):
            write()
