"""DataSource skips data files and row groups that cannot hold a winner (issue 16), and reads
the same rows as reading everything.

The table is written by plain pyiceberg (a SQL catalog, four rows per row group, one data file
per append): a file superseded half by a later one, a file of ids outside the range, a file
newer than ``as_of``, a delete marker. The expectation is computed in pandas over every row.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchscore.feature_store.iceberg import IcebergFeatureStore
from batchscore.feature_store.latest import packed_order
from batchscore.steps.data_source import data_source

DAY = dt.datetime(2025, 1, 1)
AS_OF = DAY + dt.timedelta(days=10)
SCHEMA = pa.schema(
    [
        pa.field("customer_id", pa.string()),
        pa.field("event_time", pa.timestamp("us")),
        pa.field("x", pa.float64()),
        pa.field("is_deleted", pa.bool_()),
    ]
)


def rows(ids: range | list[int], day: int, x: float | None, deleted: bool = False) -> pa.Table:
    n = len(ids)
    return pa.table(
        {
            "customer_id": [f"CUST_{i:04d}" for i in ids],
            "event_time": [DAY + dt.timedelta(days=day)] * n,
            "x": [x] * n,
            "is_deleted": [deleted] * n,
        },
        schema=SCHEMA,
    )


APPENDS = [
    rows(range(1, 9), day=1, x=1.0),  # two row groups: ids 1-4 (superseded), 5-8
    rows(range(1, 5), day=2, x=2.0),  # the newest of ids 1-4
    rows(range(100, 108), day=1, x=9.0),  # ids outside 1..50: no winner
    rows([5, 6], day=30, x=30.0),  # after as_of: pruned by the manifests' statistics
    rows([8], day=3, x=None, deleted=True),  # id 8 deleted
]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> IcebergFeatureStore:
    from pyiceberg.catalog.sql import SqlCatalog

    root = tmp_path_factory.mktemp("skipping")
    catalog = SqlCatalog(
        "lake", uri=f"sqlite:///{root}/catalog.db", warehouse=f"file://{root}/warehouse"
    )
    catalog.create_namespace("sales")
    table = catalog.create_table(
        "sales.events", schema=SCHEMA, properties={"write.parquet.row-group-limit": "4"}
    )
    for data in APPENDS:
        table.append(data)
    return IcebergFeatureStore(catalog)


def expected_by_pandas(start: int, end: int) -> pd.DataFrame:
    """Each id's newest version as of AS_OF, in range, not deleted: the obvious way."""
    frame = pa.concat_tables(APPENDS).to_pandas()
    frame["number"] = frame.customer_id.str[5:].astype(int)
    frame = frame[(frame.event_time <= AS_OF) & frame.number.between(start, end)]
    newest = frame.sort_values("event_time").groupby("customer_id").tail(1)
    newest = newest[~newest.is_deleted]
    return newest[["customer_id", "event_time", "x"]].sort_values("customer_id")


def test_files_and_row_groups_without_a_winner_are_skipped(store, tmp_path: Path) -> None:
    data_files = store.iceberg_table("sales.events").inspect.files().num_rows
    assert data_files == len(APPENDS)
    result = data_source(store, "sales.events", 1, 50, tmp_path / "input", as_of=AS_OF)

    read = pq.read_table(result.files[0]).to_pandas().sort_values("customer_id")
    want = expected_by_pandas(1, 50)
    pd.testing.assert_frame_equal(read.reset_index(drop=True), want.reset_index(drop=True))
    assert result.deleted_records_skipped == 1
    # The file newer than as_of (manifests) and the one of ids out of range (no winner).
    assert result.files_skipped == 2
    # The superseded half of the first file and both row groups of the out-of-range one.
    assert result.row_groups_skipped == 3


def test_reading_every_id_skips_only_what_holds_no_winner(store, tmp_path: Path) -> None:
    result = data_source(store, "sales.events", None, None, tmp_path / "input", as_of=AS_OF)
    read = pq.read_table(result.files[0]).to_pandas().sort_values("customer_id")
    want = expected_by_pandas(0, 10**9)
    pd.testing.assert_frame_equal(read.reset_index(drop=True), want.reset_index(drop=True))
    assert (result.files_skipped, result.row_groups_skipped) == (1, 1)


def write(path: Path, columns: dict[str, pa.Array]) -> str:
    pq.write_table(pa.table(columns), path)
    return str(path)


def test_the_ranking_key_is_packed_only_when_the_statistics_prove_it_exact(tmp_path):
    at = [DAY, DAY + dt.timedelta(seconds=1)]
    exact = write(tmp_path / "a.parquet", {"t": pa.array(at), "w": pa.array(at)})
    assert packed_order([exact], "t", "timestamp", ["w"]) is not None
    with_null = write(tmp_path / "b.parquet", {"t": pa.array(at), "w": pa.array([at[0], None])})
    assert packed_order([exact, with_null], "t", "timestamp", ["w"]) is None
    nanos = write(tmp_path / "c.parquet", {"t": pa.array(at, pa.timestamp("ns")), "w": at})
    assert packed_order([nanos], "t", "timestamp", ["w"]) is None
    assert packed_order([exact], "t", "string", ["w"]) is None


def test_ids_differing_only_by_whitespace_are_one_id(tmp_path: Path) -> None:
    """Ranked by the id as stored first; an untrimmed one makes it rank again by the trimmed
    id, so a version written with whitespace by another tool still competes with the rest."""
    from pyiceberg.catalog.sql import SqlCatalog

    catalog = SqlCatalog(
        "lake", uri=f"sqlite:///{tmp_path}/catalog.db", warehouse=f"file://{tmp_path}/wh"
    )
    catalog.create_namespace("sales")
    table = catalog.create_table("sales.events", schema=SCHEMA)
    table.append(rows([1, 2], day=1, x=1.0))
    newer = rows([1], day=2, x=2.0)
    table.append(newer.set_column(0, "customer_id", pa.array([" CUST_0001\t"])))
    result = data_source(IcebergFeatureStore(catalog), "sales.events", 1, 50, tmp_path / "in")
    read = pq.read_table(result.files[0]).to_pandas().sort_values("customer_id")
    assert read.customer_id.tolist() == ["CUST_0001", "CUST_0002"]
    assert read.x.tolist() == [2.0, 1.0]
    assert result.duplicate_versions_skipped == 1
