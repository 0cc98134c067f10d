"""Ingest as a newcomer meets it (issue 12): real files, the real store, the CLI in-process."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchscore.catalog import open_catalog
from batchscore.cli import main
from batchscore.errors import FeatureGroupError
from batchscore.feature_store.iceberg import IcebergFeatureStore
from batchscore.steps.data_source import data_source

DEFINITION = {"customer_id": "String", "event_time": "String", "x": "Fractional", "n": "Integral"}
HEADER = "customer_id,event_time,x,n\n"


@pytest.fixture
def store(empty_settings) -> IcebergFeatureStore:
    store = IcebergFeatureStore(open_catalog(empty_settings))
    store.create_feature_group("fg", DEFINITION)
    return store


@pytest.fixture
def cli_args(store, empty_settings) -> list[str]:
    return ["--set", f"workspace={empty_settings.workspace}", "--set", "feature_group_name=fg"]


def csv_file(tmp_path: Path, text: str, name: str = "r.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def rows(store: IcebergFeatureStore, start: int = 0, end: int = 10**9) -> dict[str, dict]:
    table = store.latest_records("fg", start, end).to_table()
    return {r["customer_id"]: r for r in table.to_pylist()}


# 1. Event times -------------------------------------------------------------------------------


def test_csv_event_times_epoch_seconds_millis_and_iso_with_or_without_zone(
    store, tmp_path: Path
) -> None:
    csv_file(
        tmp_path,
        HEADER + "CUST_000001,1763600000,1,1\nCUST_000002,1763600000.5,1,1\n",
        "seconds.csv",
    )
    csv_file(tmp_path, HEADER + "CUST_000003,1763600000000,1,1\n", "millis.csv")
    csv_file(
        tmp_path,
        HEADER + "CUST_000004,2025-11-20T01:53:20+01:00,1,1\nCUST_000005,2025-11-20 00:53:20,1,1\n",
        "iso.csv",
    )
    for name in ("seconds.csv", "millis.csv", "iso.csv"):
        store.ingest("fg", tmp_path / name)
    got = {k: v["event_time"] for k, v in rows(store).items()}
    at = dt.datetime(2025, 11, 20, 0, 53, 20)  # 1763600000 in UTC
    assert got == {
        "CUST_000001": at,
        "CUST_000002": at + dt.timedelta(milliseconds=500),
        "CUST_000003": at,
        "CUST_000004": at,
        "CUST_000005": at,
    }
    # The same numbers in Parquet read the same way.
    pq.write_table(
        pa.table({"customer_id": ["CUST_000006"], "event_time": [1763600000000], "x": [1.0],
                  "n": [1]}),
        tmp_path / "millis.parquet",
    )  # fmt: skip
    store.ingest("fg", tmp_path / "millis.parquet")
    assert rows(store)["CUST_000006"]["event_time"] == at


def test_mixed_epoch_units_are_refused(store, tmp_path: Path) -> None:
    path = csv_file(
        tmp_path, HEADER + "CUST_000001,1763600000,1,1\nCUST_000002,1763600000000,1,1\n"
    )
    with pytest.raises(FeatureGroupError, match="mixes epoch seconds and milliseconds"):
        store.ingest("fg", path)


# 2. Missing and extra columns -----------------------------------------------------------------


def test_missing_feature_column_is_refused_unless_allowed(store, tmp_path: Path) -> None:
    store.ingest("fg", csv_file(tmp_path, HEADER + "CUST_000001,2026-01-01,1.5,7\n", "a.csv"))
    partial = csv_file(tmp_path, "customer_id,event_time,x\nCUST_000001,2026-01-02,2.5\n", "b.csv")
    with pytest.raises(FeatureGroupError, match=r"lack feature 'n'.*--allow-missing-columns"):
        store.ingest("fg", partial)
    assert rows(store)["CUST_000001"]["n"] == 7  # nothing written
    result = store.ingest("fg", partial, allow_missing_columns=True)
    assert result.rows == 1 and result.missing_columns == ["n"]
    assert rows(store)["CUST_000001"]["n"] is None


def test_extra_columns_are_refused_unless_ignored(store, tmp_path: Path) -> None:
    path = csv_file(tmp_path, "customer_id,event_time,x,n,y,z\nCUST_000001,2026-01-01,1,2,3,4\n")
    with pytest.raises(FeatureGroupError, match=r"no feature column\(s\) 'y', 'z'"):
        store.ingest("fg", path)
    result = store.ingest("fg", path, ignore_extra_columns=True)
    assert result.rows == 1 and result.ignored_columns == ["y", "z"]


# 3. Ids ----------------------------------------------------------------------------------------


def test_id_rule_trims_and_counts_ids_without_a_number(store, tmp_path: Path) -> None:
    ids = [" CUST_002910 ", "CUST_12AB2905", "A1B2C3", "2911", "CUST_ABC", "CUST_002912\t"]
    table = pa.table(
        {
            "customer_id": ids,
            "event_time": pa.array([dt.datetime(2026, 1, 1)] * len(ids), pa.timestamp("us")),
            "x": [1.0] * len(ids),
            "n": [1] * len(ids),
        }
    )
    store.ingest("fg", table)
    stored = store.iceberg_table("fg").scan().to_arrow().column("customer_id").to_pylist()
    assert " CUST_002910 " not in stored and "CUST_002910" in stored  # stored trimmed
    result = data_source(store, "fg", 2900, 3000, tmp_path / "run" / "input")
    scored = pa.concat_tables(pq.read_table(f) for f in result.files).column(0).to_pylist()
    # CUST_12AB2905 and A1B2C3 used to be 2905 and 3 by their trailing digits.
    assert sorted(scored) == ["2911", "CUST_002910", "CUST_002912"]
    assert result.unmatched_ids == 3
    assert result.unmatched_id_examples == ["A1B2C3", "CUST_12AB2905", "CUST_ABC"]


def test_untrimmed_ids_written_by_others_are_trimmed_at_read(store, tmp_path: Path) -> None:
    """A row written around batchscore's ingest (SageMaker's own writer, say)."""
    table = store.iceberg_table("fg")
    schema = table.schema().as_arrow()
    at = dt.datetime(2026, 1, 1)
    raw = {
        "customer_id": [" CUST_002910 "], "event_time": [at], "x": [1.0], "n": [1],
        "write_time": [at], "api_invocation_time": [at], "is_deleted": [False],
    }  # fmt: skip
    table.append(pa.table(raw, schema=schema))
    assert list(rows(store, 2910, 2910)) == ["CUST_002910"]


def test_the_ray_engine_uses_the_same_id_rule() -> None:
    from batchscore.engines.ray import NUMBER, _in_range

    ids = [" CUST_002910 ", "CUST_12AB2905", "A1B2C3", "2911", "CUST_000001"]
    at = pa.array([dt.datetime(2026, 1, 1)] * len(ids), pa.timestamp("us"))
    got = _in_range(
        pa.table({"customer_id": ids, "event_time": at}),
        key="customer_id", event="event_time", id_start=2900, id_end=3000, as_of=None,
    )  # fmt: skip
    numbers = zip(
        got.column("customer_id").to_pylist(), got.column(NUMBER).to_pylist(), strict=True
    )
    assert dict(numbers) == {
        "CUST_002910": 2910,
        "CUST_12AB2905": None,
        "A1B2C3": None,
        "2911": 2911,
    }


# 4. Deletes ------------------------------------------------------------------------------------


def test_delete_says_what_took_effect(store, tmp_path: Path, cli_args, capsys) -> None:
    store.ingest(
        "fg",
        csv_file(
            tmp_path,
            HEADER + "CUST_000001,2026-01-01,1,1\nCUST_000002,2026-01-01,1,1\n"
            "CUST_000003,2026-03-01,1,1\n",
        ),
    )
    result = store.delete_records(
        "fg", ["CUST_000001", "CUST_000009", "CUST_000003"], event_time=dt.datetime(2026, 2, 1)
    )
    assert (result.deleted, result.unknown_ids, result.stale_ids) == (
        1, ["CUST_000009"], ["CUST_000003"],
    )  # fmt: skip
    assert list(rows(store)) == ["CUST_000002", "CUST_000003"]
    args = [*cli_args, "features", "delete", "CUST_000002", "CUST_000001", "NOPE"]
    assert main([*args, "--event-time", "2026-02-01"]) == 0
    assert capsys.readouterr().out.strip() == (
        "deleted 1 record(s) from fg; 1 id(s) unknown: NOPE; 1 already deleted: CUST_000001"
    )


# 5-7. Duplicates, future times, CSV realities -------------------------------------------------


def test_duplicate_id_and_event_time_in_one_file_is_refused(store, tmp_path: Path) -> None:
    path = csv_file(
        tmp_path,
        HEADER + "CUST_000001,2026-01-01,1,1\nCUST_000001,2026-01-01T00:00:00Z,2,2\n"
        "CUST_000001,2026-01-02,3,3\n",
    )
    with pytest.raises(FeatureGroupError, match=r"1 \(id, event_time\) pair.*: CUST_000001\."):
        store.ingest("fg", path)
    assert store.describe("fg").snapshot_id is None


def test_future_event_times_warn_but_ingest(store, tmp_path: Path, caplog) -> None:
    path = csv_file(tmp_path, HEADER + "CUST_000001,2099-01-01,1,1\nCUST_000002,2026-01-01,1,1\n")
    with caplog.at_level(logging.WARNING, logger="batchscore"):
        result = store.ingest("fg", path)
    assert result.rows == 2 and result.future_event_times == 1
    assert result.max_event_time == dt.datetime(2099, 1, 1)
    assert "1 record(s) for feature group 'fg' have event times in the future" in caplog.text


def test_integral_written_by_pandas_as_float_text(store, tmp_path: Path) -> None:
    store.ingest("fg", csv_file(tmp_path, HEADER + "CUST_000001,2026-01-01,1,25.0\n"
                                 "CUST_000002,2026-01-01,1,\n"))  # fmt: skip
    assert [r["n"] for r in rows(store).values()] == [25, None]
    fraction = csv_file(tmp_path, HEADER + "CUST_000003,2026-01-01,1,25.5\n", "f.csv")
    with pytest.raises(FeatureGroupError, match=r"'n' is Integral but holds 25\.5"):
        store.ingest("fg", fraction)


def test_semicolon_separated_file(store, tmp_path: Path, cli_args, capsys) -> None:
    path = csv_file(tmp_path, HEADER.replace(",", ";") + "CUST_000001;2026-01-01;1,5;2\n")
    assert main([*cli_args, "features", "ingest", str(path)]) == 1
    assert "looks semicolon-separated: pass --delimiter ';'" in capsys.readouterr().err
    path.write_text(HEADER.replace(",", ";") + "CUST_000001;2026-01-01;1.5;2\n")
    assert main([*cli_args, "features", "ingest", str(path), "--delimiter", ";"]) == 0
    assert rows(store)["CUST_000001"]["x"] == 1.5


def test_cli_ingest_flags_missing_file_and_describe(
    store, tmp_path: Path, cli_args, capsys
) -> None:
    assert main([*cli_args, "features", "ingest", str(tmp_path / "nope.csv")]) == 2
    assert "ingest file" in capsys.readouterr().err
    partial = csv_file(tmp_path, "customer_id,event_time,x,extra\nCUST_004000,2026-01-01,1,z\n"
                       "CUST_004100,2026-02-01,2,z\n CUST_X ,2026-02-01,2,z\n")  # fmt: skip
    args = [*cli_args, "features", "ingest", str(partial)]
    assert main([*args, "--allow-missing-columns", "--ignore-extra-columns"]) == 0
    out = capsys.readouterr().out
    assert "ingested 3 record(s) into fg" in out
    assert "3 record(s) lack n: stored NULL" in out and "ignored column(s) extra" in out
    store.delete_records("fg", ["CUST_004100"])
    assert main([*cli_args, "features", "describe"]) == 0
    out = capsys.readouterr().out
    described = {line.split()[0]: " ".join(line.split()[1:]) for line in out.splitlines() if line}
    assert described["live_records"] == "1" and described["id_range"] == "4000–4000"
    assert described["event_time_range"] == "2026-01-01 00:00:00 – 2026-01-01 00:00:00"
    assert described["ids_not_matching"] == "1 (never scored)"
