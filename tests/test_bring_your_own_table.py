"""Any Iceberg table in any catalog, scored as it is (issue 14, done-when (a)).

The table is written by plain pyiceberg in a SQL catalog named ``lakehouse``: integer ids, a
zone-aware ``event_time``, no SageMaker columns, no batchscore properties. The model is plain
scikit-learn registered by plain MLflow. Every expectation is computed here in pandas, around
batchscore.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import yaml

from batchscore.config import load_settings
from batchscore.errors import FeatureGroupError
from batchscore.feature_store import open_feature_store
from batchscore.pipeline import Pipeline
from tests.helpers import cli, log_external, table_rows

FEATURES = ["tenure", "monthly_charges"]
N_IDS = 60
BASE = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def versions_frame() -> pd.DataFrame:
    """1 to 3 versions per id, one a day; the hour alternates 11:00 / 00:00 so that, written
    with offsets +12:00 / -12:00, an older version's local time reads later than the newer's."""
    rng = np.random.default_rng(7)
    rows = []
    for customer in range(1, N_IDS + 1):
        for version in range(int(rng.integers(1, 4))):
            hour = 11 if version % 2 == 0 else 0
            rows.append(
                {
                    "customer_id": customer,
                    "event_time": BASE + dt.timedelta(days=customer % 5 + version, hours=hour),
                    "tenure": int(rng.integers(0, 72)),
                    "monthly_charges": float(rng.uniform(20, 120)),
                    "churn": int(rng.integers(0, 2)),
                    "version": version,
                }
            )
    frame = pd.DataFrame(rows).sample(frac=1, random_state=3)  # written in no order
    return frame.reset_index(drop=True)


def latest_by_pandas(frame: pd.DataFrame, ids: range | None = None) -> pd.DataFrame:
    """Each id's newest version by UTC event time, the obvious way."""
    newest = frame.sort_values("event_time").groupby("customer_id").tail(1)
    if ids is not None:
        newest = newest[newest.customer_id.isin(ids)]
    return newest.sort_values("customer_id").reset_index(drop=True)


def event_times_as(kind: str, frame: pd.DataFrame) -> pa.Array:
    """The frame's event times (UTC instants) written as ``kind``."""
    times = list(frame.event_time)
    if kind == "timestamptz":
        return pa.array(times, pa.timestamp("us", tz="UTC"))
    if kind == "date":
        return pa.array([t.date() for t in times], pa.date32())
    if kind == "iso":
        # Even versions +12:00, odd ones -12:00 ("Z" for some): local times out of order.
        out = []
        for t, v in zip(times, frame.version, strict=True):
            zone = dt.timezone(dt.timedelta(hours=12 if v % 2 == 0 else -12))
            text = t.astimezone(zone).isoformat()
            out.append(text.replace("+00:00", "Z"))
        return pa.array(out, pa.string())
    if kind == "epoch_s":
        return pa.array([int(t.timestamp()) for t in times], pa.int64())
    if kind == "epoch_ms":
        return pa.array([int(t.timestamp() * 1000) for t in times], pa.int64())
    raise AssertionError(kind)


def write_table(catalog, identifier: str, frame: pd.DataFrame, kind: str) -> None:
    """The table as plain pyiceberg writes it: no batchscore properties, no store columns."""
    data = pa.table(
        {
            "customer_id": pa.array(frame.customer_id, pa.int64()),
            "event_time": event_times_as(kind, frame),
            "tenure": pa.array(frame.tenure, pa.int64()),
            "monthly_charges": pa.array(frame.monthly_charges, pa.float64()),
            "churn": pa.array(frame.churn, pa.int64()),
        }
    )
    table = catalog.create_table(identifier, schema=data.schema)
    table.append(data)


@pytest.fixture(scope="module")
def lakehouse(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A SQL catalog named 'lakehouse' holding sales.customers (timestamptz) and one table per
    other event-time kind, and an MLflow registry with a plain scikit-learn model, Approved."""
    from pyiceberg.catalog.sql import SqlCatalog
    from sklearn.linear_model import LogisticRegression

    root = tmp_path_factory.mktemp("lakehouse")
    properties = {
        "type": "sql",
        "uri": f"sqlite:///{root / 'lake.db'}",
        "warehouse": (root / "warehouse").as_uri(),
    }
    catalog = SqlCatalog("lakehouse", **{k: v for k, v in properties.items() if k != "type"})
    catalog.create_namespace("sales")
    frame = versions_frame()
    write_table(catalog, "sales.customers", frame, "timestamptz")
    for kind in ("date", "iso", "epoch_s", "epoch_ms"):
        write_table(catalog, f"sales.customers_{kind}", frame, kind)

    values = {
        "workspace": str(root / "ws"),
        "catalog": {"name": "lakehouse", **properties},
        "registry": {
            "tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
            "artifact_location": (root / "mlartifacts").as_uri(),
        },
        "feature_group_name": "sales.customers",
        "model_package_group": "churn-external",
        "customer_id_start": 10,
        "customer_id_end": 40,
    }
    settings = load_settings(path=None, overrides=values, env={})
    train = frame[FEATURES].astype("float64")
    model = LogisticRegression(max_iter=500).fit(train, frame.churn)
    log_external(settings, "churn-external", model, train, "Approved")
    return {"root": root, "values": values, "frame": frame, "model": model}


def settings_of(lakehouse: dict, tmp_path: Path, **overrides: object):
    values = {**lakehouse["values"], "workspace": str(tmp_path / "ws"), **overrides}
    return load_settings(path=None, overrides=values, env={})


def config_file(lakehouse: dict, tmp_path: Path, **overrides: object) -> Path:
    path = tmp_path / "config.yaml"
    values = {**lakehouse["values"], "workspace": str(tmp_path / "ws"), **overrides}
    path.write_text(yaml.safe_dump(values))
    return path


def expected_probabilities(lakehouse: dict, ids: range | None) -> pd.Series:
    latest = latest_by_pandas(lakehouse["frame"], ids)
    proba = lakehouse["model"].predict_proba(latest[FEATURES].astype("float64"))[:, 1]
    return pd.Series(proba, index=latest.customer_id.astype(str), name="expected")


def scored(settings) -> pd.Series:
    rows = table_rows(settings)
    return rows.set_index("customer_id").prediction_probability.sort_index()


def test_a_plain_pyiceberg_table_in_a_named_catalog_is_scored_as_it_is(lakehouse, tmp_path):
    settings = settings_of(lakehouse, tmp_path)
    record = Pipeline(settings).run()

    assert record.status == "succeeded"
    expected = expected_probabilities(lakehouse, range(10, 41)).sort_index()
    got = scored(settings)
    assert list(got.index) == list(expected.index)
    np.testing.assert_allclose(got.to_numpy(), expected.to_numpy(), rtol=0, atol=1e-12)
    assert set(table_rows(settings).id_range) == {"10-40"}


def test_without_an_id_range_every_live_record_is_scored(lakehouse, tmp_path):
    settings = settings_of(lakehouse, tmp_path, customer_id_start=None, customer_id_end=None)
    record = Pipeline(settings).run()

    assert (record.id_start, record.id_end) == (None, None)
    expected = expected_probabilities(lakehouse, None).sort_index()
    got = scored(settings)
    assert len(got) == N_IDS
    assert list(got.index) == list(expected.index)
    np.testing.assert_allclose(got.to_numpy(), expected.to_numpy(), rtol=0, atol=1e-12)
    assert set(table_rows(settings).id_range) == {"all"}
    # Re-running 'all' replaces its own rows: still one row per customer.
    Pipeline(settings).run()
    assert len(table_rows(settings)) == N_IDS


@pytest.mark.parametrize("kind", ["date", "iso", "epoch_s", "epoch_ms"])
def test_every_event_time_kind_gives_the_same_latest_rows(lakehouse, tmp_path, kind):
    settings = settings_of(lakehouse, tmp_path, feature_group_name=f"sales.customers_{kind}")
    store = open_feature_store(settings, writable=False)
    group = store.describe(settings.feature_group_name)
    got = store.latest_records(group.name, None, None).to_table().to_pandas()

    want = latest_by_pandas(lakehouse["frame"])
    got = got.sort_values("customer_id").reset_index(drop=True)
    assert group.event_time_kind == {"iso": "string", "epoch_s": "epoch", "epoch_ms": "epoch"}.get(
        kind, kind
    )
    pd.testing.assert_frame_equal(
        got[["customer_id", *FEATURES]], want[["customer_id", *FEATURES]], check_dtype=False
    )
    # The times themselves, as naive UTC: a unit or zone misread would shift them.
    newest = max(lakehouse["frame"].event_time).astimezone(dt.UTC).replace(tzinfo=None)
    if kind == "date":
        newest = dt.datetime.combine(newest.date(), dt.time())
    assert store.record_summary(group.name).event_time_max == newest


def test_as_of_compares_zone_aware_event_times_in_utc(lakehouse, tmp_path):
    settings = settings_of(lakehouse, tmp_path)
    store = open_feature_store(settings, writable=False)
    # 2024-01-03 00:00 UTC, given in another zone: the same instant.
    as_of = dt.datetime(2024, 1, 3, 5, 30, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30)))
    got = store.latest_records("sales.customers", None, None, as_of=as_of).to_table().to_pandas()

    frame = lakehouse["frame"]
    want = latest_by_pandas(frame[frame.event_time <= as_of.astimezone(dt.UTC)])
    assert sorted(got.customer_id) == list(want.customer_id)
    assert 0 < len(want) < N_IDS


def test_a_missing_configured_column_names_it_the_columns_and_the_key(lakehouse, tmp_path):
    settings = settings_of(lakehouse, tmp_path, event_time_feature="updated_at")
    store = open_feature_store(settings, writable=False)
    with pytest.raises(FeatureGroupError) as caught:
        store.describe("sales.customers")
    message = str(caught.value)
    assert "'updated_at'" in message
    assert "event_time_feature" in message
    assert "customer_id, event_time, tenure, monthly_charges, churn" in message

    config = config_file(lakehouse, tmp_path, record_identifier="cust")
    result = cli("-c", str(config), "features", "describe")
    assert result.returncode == 1
    assert "no column 'cust' (set by record_identifier)" in result.stderr + result.stdout


def test_a_table_batchscore_did_not_create_is_never_written(lakehouse, tmp_path):
    store = open_feature_store(settings_of(lakehouse, tmp_path))
    with pytest.raises(FeatureGroupError, match="not created by batchscore"):
        store.ingest("sales.customers", lakehouse["frame"][["customer_id"]])


def test_features_describe_shows_how_the_table_is_read(lakehouse, tmp_path):
    result = cli("-c", str(config_file(lakehouse, tmp_path)), "features", "describe")

    assert result.returncode == 0, result.stderr
    out = result.stdout
    for expected in (
        "sales.customers",
        "record_identifier",
        "customer_id",
        "event_time_type",
        "timestamptz",
        "tie_breaks",
        "delete_marker",
        "none",
        "record_identifier / event_time_feature from the config",
        "tenure",
        "monthly_charges",
        "Fractional",
    ):
        assert expected in out, expected
    (tmp_path / "describe.txt").write_text(out)


def test_catalog_name_reads_pyicebergs_own_config(lakehouse, tmp_path, monkeypatch):
    """catalog: {name: lakehouse} alone, the properties in PYICEBERG_CATALOG__LAKEHOUSE__*."""
    values = lakehouse["values"]["catalog"]
    for key, value in values.items():
        if key != "name":
            monkeypatch.setenv(f"PYICEBERG_CATALOG__LAKEHOUSE__{key.upper()}", value)
    settings = settings_of(lakehouse, tmp_path, catalog={"name": "lakehouse"})
    store = open_feature_store(settings, writable=False)
    assert store.describe("sales.customers").event_time_kind == "timestamptz"

    # And with no catalog settings at all, pyiceberg's default catalog, named in the env.
    monkeypatch.setenv("PYICEBERG_DEFAULT_CATALOG", "lakehouse")
    bare = settings_of(lakehouse, tmp_path, catalog={})
    assert "sales.customers" in [
        ".".join(t) for t in open_feature_store(bare, writable=False).catalog.list_tables("sales")
    ]

    # Runs of several machines meet in that catalog's database: the run lock's lease goes there.
    from batchscore.leases import SqlLeaseStore, open_lease_store

    assert isinstance(open_lease_store(settings), SqlLeaseStore)
    assert isinstance(open_lease_store(bare), SqlLeaseStore)
