"""Row quarantine: rows that cannot be scored are set aside with their reason, and the run fails
only past ``max_quarantine_fraction``.

Real data throughout: a feature group whose poisoned versions are written around batchscore by
plain pyiceberg (another writer), and a model logged by plain MLflow (skops) that raises on a
category it never saw — scikit-learn's ``OneHotEncoder(handle_unknown="error")``.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from batchscore.catalog import load_table, open_catalog
from batchscore.config import Settings
from batchscore.feature_store import open_feature_store
from batchscore.pipeline import Pipeline
from tests.helpers import cli, config_for, log_external, make_settings, table_rows
from tests.reliability import record

ROWS = 600
NUMERIC = ["tenure_months", "num_products", "age"]
# The two poisoned records: a text value that is no number, a category the model never saw.
UNCASTABLE_ID, UNKNOWN_ID = "CUST_000123", "CUST_000457"
CONTRACTS = ["month-to-month", "one_year", "two_year"]


@dataclass(frozen=True)
class Poisoned:
    shared: Path
    group: str  # the feature group
    model: str  # the model group


def clean_rows(n: int, seed: int = 5) -> pa.Table:
    rng = np.random.default_rng(seed)
    tenure = rng.integers(1, 72, n)
    products = rng.integers(1, 5, n)
    contract = rng.choice(CONTRACTS, n)
    churn = (rng.uniform(size=n) < 0.2 + 0.3 * (contract == "month-to-month")).astype(int)
    return pa.table({
        "customer_id": [f"CUST_{i:06d}" for i in range(1, n + 1)],
        "event_time": pa.array([dt.datetime(2025, 3, 1) + dt.timedelta(minutes=i)
                                for i in range(n)], pa.timestamp("us")),
        "tenure_months": pa.array(tenure, pa.int64()),
        "num_products": pa.array([str(p) for p in products], pa.string()),  # text, as upstream
        "age": pa.array(rng.integers(18, 80, n), pa.int64()),
        "contract_type": pa.array(contract, pa.string()),
        "churn": pa.array(churn, pa.int64()),
    })  # fmt: skip


def model_pipeline():
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline as SkPipeline
    from sklearn.preprocessing import OneHotEncoder

    encode = ColumnTransformer([
        ("contract", OneHotEncoder(handle_unknown="error"), ["contract_type"]),
        ("numbers", "passthrough", NUMERIC),
    ])  # fmt: skip
    return SkPipeline([("encode", encode), ("classify", LogisticRegression(max_iter=1000))])


@pytest.fixture(scope="module")
def poisoned(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Poisoned:
    suffix = uuid.uuid4().hex[:8]
    group, model = f"quarantine_{suffix}", f"quarantine-{suffix}"
    settings = make_settings(shared_dir, tmp_path_factory.mktemp("q") / "ws")
    store = open_feature_store(settings)
    store.create_feature_group(group, {
        "customer_id": "String", "event_time": "String", "tenure_months": "Integral",
        "num_products": "String", "age": "Integral", "contract_type": "String",
        "churn": "Integral",
    })  # fmt: skip
    rows = clean_rows(ROWS)
    store.ingest(group, rows)

    # The model, trained on the clean rows (numbers as numbers), logged by plain MLflow.
    frame = rows.to_pandas()
    frame["num_products"] = frame["num_products"].astype("float64")
    frame[["tenure_months", "age"]] = frame[["tenure_months", "age"]].astype("float64")
    features = frame[["contract_type", *NUMERIC]]
    estimator = model_pipeline().fit(features, frame["churn"])
    log_external(settings, model, estimator, features, "Approved", serialization_format="skops")

    # Newer versions of two records, appended by another writer with plain pyiceberg.
    table = store.iceberg_table(group)
    current = table.scan().to_arrow()
    newer = []
    for record_id, column, value in (
        (UNCASTABLE_ID, "num_products", "three"),
        (UNKNOWN_ID, "contract_type", "quarterly"),
    ):
        row = current.filter(pc.equal(current.column("customer_id"), record_id)).to_pylist()[0]
        row[column] = value
        row["event_time"] = row["event_time"] + dt.timedelta(days=1)
        newer.append(row)
    table.append(pa.Table.from_pylist(newer, schema=current.schema))
    return Poisoned(shared_dir, group, model)


def settings_for(poisoned: Poisoned, workspace: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "feature_group_name": poisoned.group,
        "model_package_group": poisoned.model,
        "customer_id_start": 1,
        "customer_id_end": ROWS,
        "target_column": "churn",
        **overrides,
    }
    return make_settings(poisoned.shared, workspace, **values)


def quarantine_rows(settings: Settings) -> pa.Table | None:
    table = load_table(open_catalog(settings), f"{settings.output_table}_quarantine")
    return None if table is None else table.scan().to_arrow().sort_by("record_id")


def test_poisoned_rows_are_quarantined_with_their_reason_and_the_rest_publish(
    poisoned: Poisoned, tmp_path: Path
) -> None:
    settings = settings_for(poisoned, tmp_path / "ws", max_quarantine_fraction=0.01)
    run = Pipeline(settings).run()
    assert run.status == "succeeded"
    scored = run.outputs("BatchInference")
    assert scored["rows"] == ROWS - 2 and scored["quarantined"] == 2
    assert Path(scored["quarantine_path"]) == Path(run.run_dir) / "quarantine"
    assert scored["evaluation"]["rows"] == ROWS - 2  # the labels of the rows scored

    published = table_rows(settings)
    assert len(published) == ROWS - 2
    assert not {UNCASTABLE_ID, UNKNOWN_ID} & set(published.customer_id)

    rows = quarantine_rows(settings)
    assert rows is not None
    assert rows.column("record_id").to_pylist() == [UNCASTABLE_ID, UNKNOWN_ID]
    assert rows.column("reason").to_pylist() == ["uncastable_value", "model_error"]
    uncastable, unknown = rows.column("detail").to_pylist()
    assert uncastable == (
        "column 'num_products' holds 'three', which is not a number (the model was trained "
        "on double)"
    )
    assert unknown.startswith("ValueError: Found unknown categories ['quarterly']")
    assert set(rows.column("run_id").to_pylist()) == {run.run_id}
    day = dt.date.fromisoformat(run.logical_date)
    assert set(rows.column("inference_date").to_pylist()) == {day}
    raw = [json.loads(v) for v in rows.column("raw_values").to_pylist()]
    assert raw[0]["num_products"] == "three" and raw[0]["customer_id"] == UNCASTABLE_ID
    assert raw[1]["contract_type"] == "quarterly" and raw[1]["churn"] in (0, 1)
    publish = run.outputs("Publish")
    assert publish["quarantined"] == 2
    assert publish["quarantine_table"] == f"{settings.output_table}_quarantine"

    # Publishing the run's quarantine again (a retry, a resume) adds nothing.
    from batchscore.monitoring.quarantine import quarantine_files
    from batchscore.sinks.quarantine import publish_quarantine

    snapshot, earlier = publish_quarantine(
        open_catalog(settings), publish["quarantine_table"],
        quarantine_files(scored["quarantine_path"]), run_id=run.run_id,
        inference_date=dt.date.fromisoformat(run.logical_date),
    )  # fmt: skip
    assert earlier and snapshot == publish["quarantine_snapshot_id"]
    assert quarantine_rows(settings).num_rows == 2

    # Queryable as any table of the catalog.
    config = config_for(settings, tmp_path / "c.yaml", feature_group_name=poisoned.group)
    sql = (
        f"SELECT record_id, reason, json_extract_string(raw_values, '$.num_products') AS products "
        f"FROM ml_metrics.{settings.athena_output_table}_quarantine ORDER BY record_id"
    )
    done = cli("-c", str(config), "query", sql)
    assert done.returncode == 0, done.stderr
    print(done.stdout)
    assert UNCASTABLE_ID in done.stdout and "uncastable_value" in done.stdout
    assert "three" in done.stdout
    record(
        "data",
        "a value that is no number in a numeric feature; a row the model raises on",
        outcome="quarantined with its reason and raw values (max_quarantine_fraction 0.01); "
        "the other rows published",
    )


def test_the_default_budget_fails_the_run_naming_the_rows_then_resume_publishes(
    poisoned: Poisoned, tmp_path: Path
) -> None:
    settings = settings_for(poisoned, tmp_path / "ws")
    overrides = {
        "feature_group_name": poisoned.group, "model_package_group": poisoned.model,
        "customer_id_start": 1, "customer_id_end": ROWS, "target_column": "churn",
    }  # fmt: skip
    config = config_for(settings, tmp_path / "c.yaml", **overrides)
    failed = cli("-c", str(config), "run")
    assert failed.returncode == 1, failed.stderr
    error = next(line for line in failed.stderr.splitlines() if line.startswith("Error: "))
    print(error)
    assert f"2 of {ROWS} rows (0.33%) could not be scored" in error
    assert "max_quarantine_fraction" in error
    assert f"'{UNCASTABLE_ID}' (uncastable_value: column 'num_products' holds 'three'" in error
    assert f"'{UNKNOWN_ID}' (model_error: ValueError: Found unknown categories" in error
    run_id = error.split(f"Resume it: batchscore -c {config} resume ")[1].split()[0]
    folder = settings.runs_path / run_id / "quarantine"
    assert str(folder) in error
    assert sum(pq.read_metadata(f).num_rows for f in folder.glob("*.parquet")) == 2
    assert load_table(open_catalog(settings), settings.output_table) is None  # untouched
    assert quarantine_rows(settings) is None  # nothing published, no table made

    config_for(settings, tmp_path / "c.yaml", **overrides, max_quarantine_fraction=0.005)
    resumed = cli("-c", str(config), "resume", run_id)
    assert resumed.returncode == 0, resumed.stderr
    assert len(table_rows(settings)) == ROWS - 2
    rows = quarantine_rows(settings)
    assert rows is not None and rows.num_rows == 2
    assert set(rows.column("run_id").to_pylist()) == {run_id}
    record(
        "data",
        "rows that cannot be scored, default max_quarantine_fraction 0",
        outcome="exit 1 naming count, share, rows, reasons and the key; table untouched; "
        "resume after raising the budget publishes",
    )


def test_bisecting_finds_exactly_the_rows_the_model_raises_on(
    poisoned: Poisoned, tmp_path: Path
) -> None:
    """A batch of 4,000 rows with seven bad ones scattered: those seven are set aside, every
    other row scored exactly as MLflow's own model scores it."""
    import mlflow.sklearn

    from batchscore.registry import open_registry
    from batchscore.steps.batch_inference import Scorer
    from batchscore.steps.results import Lineage

    settings = settings_for(poisoned, tmp_path / "ws")
    registry = open_registry(settings)
    model = registry.load(registry.resolve(poisoned.model))
    rows = clean_rows(4000, seed=11)
    bad = [0, 1, 977, 2048, 2049, 3500, 3999]
    contract = rows.column("contract_type").to_pylist()
    for i in bad:
        contract[i] = "weekly"
    rows = rows.set_column(rows.schema.get_field_index("contract_type"), "contract_type",
                           pa.array(contract, pa.string()))  # fmt: skip
    lineage = Lineage("r1", "p", "1-4000", dt.date(2025, 3, 2), dt.datetime(2025, 3, 2))
    scorer = Scorer(model, record_identifier="customer_id", lineage=lineage, target_column=None)
    scored = scorer(rows.to_batches()[0])

    assert scored.quarantined is not None
    expected_ids = [f"CUST_{i + 1:06d}" for i in bad]
    assert scored.quarantined.column("record_id").to_pylist() == expected_ids
    assert set(scored.quarantined.column("reason").to_pylist()) == {"model_error"}
    good = [i for i in range(4000) if i not in bad]
    assert scored.predictions.column("customer_id").to_pylist() == [
        f"CUST_{i + 1:06d}" for i in good
    ]
    reference = mlflow.sklearn.load_model(f"models:/{poisoned.model}/1")
    frame = (
        rows.take(good)
        .to_pandas()[["contract_type", *NUMERIC]]
        .astype({c: "float64" for c in NUMERIC})
    )
    np.testing.assert_allclose(
        scored.predictions.column("prediction_probability").to_numpy(),
        reference.predict_proba(frame)[:, 1],
        rtol=1e-12,
    )

    # A model that raises on every row is broken, not fed bad rows: its error, after 100.
    from batchscore.errors import ModelError, SchemaMismatchError

    weekly = rows.set_column(rows.schema.get_field_index("contract_type"), "contract_type",
                             pa.array(["weekly"] * 4000, pa.string()))  # fmt: skip
    with pytest.raises(ModelError, match=r"raised on more than 100 rows of a batch of 4000 "
                       r"\(first 'CUST_000001', 'CUST_000002', 'CUST_000003'\): ValueError: "
                       r"Found unknown categories \['weekly'\]"):  # fmt: skip
        scorer(weekly.to_batches()[0])

    # A column none of whose values is a number is the model's contract, not a row problem.

    words = rows.set_column(rows.schema.get_field_index("num_products"), "num_products",
                            pa.array(["many"] * 4000, pa.string()))  # fmt: skip
    with pytest.raises(SchemaMismatchError, match="column 'num_products' must be numeric"):
        scorer(words.to_batches()[0])


@pytest.mark.timeout(600)
def test_the_ray_engine_quarantines_as_the_local_engine(poisoned: Poisoned, tmp_path: Path) -> None:
    import ray

    settings = settings_for(
        poisoned, tmp_path / "ws", max_quarantine_fraction=0.01, engine="ray", ray_actors=1,
        batch_size=150,
    )  # fmt: skip
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    try:
        run = Pipeline(settings).run()
        every_row_set_aside = actor_output_of_a_block_without_a_good_row(settings, run)
    finally:
        ray.shutdown()
    assert every_row_set_aside.predictions.num_rows == 0
    assert every_row_set_aside.quarantined.num_rows == 20
    assert every_row_set_aside.labels is None
    scored = run.outputs("BatchInference")
    assert run.status == "succeeded" and scored["engine"] == "ray"
    assert scored["rows"] == ROWS - 2 and scored["quarantined"] == 2
    assert scored["evaluation"]["rows"] == ROWS - 2
    assert len(table_rows(settings)) == ROWS - 2
    rows = quarantine_rows(settings)
    assert rows is not None
    assert rows.column("record_id").to_pylist() == [UNCASTABLE_ID, UNKNOWN_ID]
    assert rows.column("reason").to_pylist() == ["uncastable_value", "model_error"]


def actor_output_of_a_block_without_a_good_row(settings: Settings, run):
    """What the driver makes of an actor's output for a block whose every row was set aside."""
    from batchscore.engines.ray import RayScorer, _unpack
    from batchscore.registry import open_registry
    from batchscore.steps.results import Lineage

    registry = open_registry(settings)
    model = registry.load(registry.get_version(settings.model_package_group, 1))
    lineage = Lineage(run.run_id, "p", "1-600", dt.date(2025, 3, 2), dt.datetime(2025, 3, 2))
    actor = RayScorer(model, "customer_id", lineage, "churn")
    rows = clean_rows(20)
    unknown = pa.array(["weekly"] * 20, pa.string())
    block = rows.set_column(rows.schema.get_field_index("contract_type"), "contract_type", unknown)
    return _unpack(actor(block), set())
