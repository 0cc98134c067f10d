"""Synthetic churn data and the quickstart that sets everything up from an empty workspace.

The generator is deterministic for a seed: customers ``CUST_000001`` … with a dozen numeric
and categorical features, a few percent missing, a label that depends on the features with
noise (a fitted model reaches ROC AUC near 0.8), some customers with two or three record
versions over time, and about 1% deleted.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from batchscore.catalog import catalog_properties
from batchscore.config import Settings
from batchscore.progress import NO_PROGRESS, Progress, tracked

FEATURES: dict[str, str] = {
    "customer_id": "String",
    "event_time": "String",
    "tenure_months": "Integral",
    "monthly_charges": "Fractional",
    "total_charges": "Fractional",
    "num_support_calls": "Integral",
    "contract_type": "String",
    "payment_method": "String",
    "internet_service": "String",
    "age": "Integral",
    "num_products": "Integral",
    "last_login_days": "Integral",
    "satisfaction_score": "Fractional",
    "region": "String",
    "churn": "Integral",
}
CONTRACTS = ["month-to-month", "one_year", "two_year"]
PAYMENTS = ["credit_card", "bank_transfer", "electronic_check", "mailed_check"]
INTERNET = ["fiber", "dsl", "none"]
REGIONS = ["north", "south", "east", "west"]
MISSING = (
    "monthly_charges",
    "satisfaction_score",
    "payment_method",
    "internet_service",
    "last_login_days",
)
FIRST_EVENT = dt.datetime(2025, 1, 1)
DELETE_TIME = dt.datetime(2026, 3, 1)
STALE_DELETE_TIME = dt.datetime(2024, 12, 1)  # older than every record: deletes nothing


def customer_id(number: int) -> str:
    return f"CUST_{number:06d}"


@dataclass
class ChurnData:
    records: pa.Table
    deleted_ids: list[str]
    stale_delete_ids: list[str] = field(default_factory=list)


def _features(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    contract = rng.choice(CONTRACTS, n, p=[0.5, 0.3, 0.2])
    tenure = rng.integers(0, 73, n)
    monthly = np.round(rng.uniform(20, 120, n), 2)
    return {
        "tenure_months": tenure,
        "monthly_charges": monthly,
        "total_charges": np.round(tenure * monthly * rng.uniform(0.9, 1.1, n), 2),
        "num_support_calls": rng.poisson(1.5, n),
        "contract_type": contract,
        "payment_method": rng.choice(PAYMENTS, n),
        "internet_service": rng.choice(INTERNET, n, p=[0.45, 0.4, 0.15]),
        "age": rng.integers(18, 86, n),
        "num_products": rng.integers(1, 6, n),
        "last_login_days": rng.geometric(0.08, n),
        "satisfaction_score": np.round(np.clip(rng.normal(3.4, 1.0, n), 1, 5), 1),
        "region": rng.choice(REGIONS, n),
    }


def _churn(rng: np.random.Generator, f: dict[str, np.ndarray]) -> np.ndarray:
    logit = (
        -1.6
        + 1.6 * (f["contract_type"] == "month-to-month")
        - 0.9 * (f["contract_type"] == "two_year")
        - 0.04 * f["tenure_months"]
        + 0.02 * (f["monthly_charges"] - 70)
        + 0.45 * f["num_support_calls"]
        - 0.7 * (f["satisfaction_score"] - 3.4)
        + 0.02 * np.minimum(f["last_login_days"], 60)
        + 0.6 * (f["payment_method"] == "electronic_check")
        + 0.4 * (f["internet_service"] == "fiber")
        + rng.normal(0, 0.5, len(f["tenure_months"]))
    )
    return (rng.uniform(size=len(logit)) < 1 / (1 + np.exp(-logit))).astype(np.int64)


def generate_churn_data(n_customers: int = 5000, seed: int = 42) -> ChurnData:
    """Records for customers 1..n, with versions, missing values and delete markers."""
    rng = np.random.default_rng(seed)
    numbers = np.arange(1, n_customers + 1)
    extra = rng.uniform(size=n_customers)
    versions = 1 + (extra < 0.25) + (extra < 0.08)  # 25% have two versions, 8% three
    owner = np.repeat(numbers, versions)
    rank = np.concatenate([np.arange(v) for v in versions])
    n = len(owner)
    f = _features(rng, n)
    # Later versions of a customer: longer tenure, drifted charges; mostly the same profile.
    first = np.repeat(np.cumsum(versions) - versions, versions)
    for column in ("contract_type", "payment_method", "internet_service", "age", "region"):
        keep = rng.uniform(size=n) < 0.85
        f[column] = np.where(keep, f[column][first], f[column])
    f["tenure_months"] = f["tenure_months"][first] + 3 * rank
    f["age"] = f["age"] + (rank > 0)
    label = _churn(rng, f)
    start_days = rng.integers(0, 240, n_customers)
    offsets = np.concatenate([np.cumsum(rng.integers(25, 120, v)) - 25 for v in versions])
    event_days = np.repeat(start_days, versions) + offsets
    event_time = np.array(FIRST_EVENT, dtype="datetime64[us]") + (
        event_days * 86_400 + rng.integers(0, 86_400, n)
    ).astype("timedelta64[s]")

    columns: dict[str, Any] = {
        "customer_id": pa.array([customer_id(int(i)) for i in owner], pa.string()),
        "event_time": pa.array(event_time, pa.timestamp("us")),
    }
    for name, values in f.items():
        missing = rng.uniform(size=n) < 0.03 if name in MISSING else np.zeros(n, dtype=bool)
        if values.dtype.kind in "iu":
            columns[name] = pa.array(values.astype(np.int64), pa.int64(), mask=missing)
        elif values.dtype.kind == "f":
            columns[name] = pa.array(values, pa.float64(), mask=missing)
        else:
            columns[name] = pa.array(values.astype(str), pa.string(), mask=missing)
    columns["churn"] = pa.array(label, pa.int64())
    picked = rng.permutation(numbers)
    n_deleted = max(1, round(n_customers * 0.01))
    deleted = [customer_id(int(i)) for i in sorted(picked[:n_deleted])]
    stale = [customer_id(int(i)) for i in sorted(picked[n_deleted : n_deleted + n_deleted // 5])]
    return ChurnData(pa.table(columns), deleted, stale)


# Quickstart ----------------------------------------------------------------------------------

TRAIN_RANGE = (1, 4000)


@dataclass
class QuickstartSummary:
    workspace: str
    feature_group: str
    feature_rows: int
    created_feature_group: bool
    model_name: str
    model_version: int
    trained_model: bool
    training_metrics: dict[str, Any] | None
    run: Any
    table: str
    table_rows: int
    run_rows: int
    catalog: dict[str, str]


def external_targets(settings: Settings) -> list[str]:
    """The stores the settings point at that are not the embedded defaults in the workspace."""
    targets = []
    if settings.catalog or settings.backend == "aws":
        properties = catalog_properties(settings)
        shown = properties.get("uri") or properties.get("type")
        targets.append(f"Iceberg catalog {settings.redact(str(shown))}")
    if settings.registry.tracking_uri or settings.registry_type != "mlflow":
        where = settings.tracking_uri if settings.registry_type == "mlflow" else "SageMaker"
        targets.append(f"model registry {settings.redact(where)}")
    if settings.feature_store_type != "iceberg":
        targets.append(f"{settings.feature_store_type} feature store")
    return targets


def quickstart(
    settings: Settings,
    n_customers: int = 5000,
    seed: int = 42,
    *,
    allow_external: bool = False,
    progress: Progress = NO_PROGRESS,
) -> QuickstartSummary:
    """Feature group, trained and approved model, one pipeline run — each only if missing.
    Its phases (generating data, ingesting, training, approving, running) and those of
    training and the run are reported to ``progress``.

    Safe to run twice: an existing feature group and approved model are reused, and the run
    replaces its own earlier rows (write mode ``replace``). It writes synthetic data and
    approves a synthetic model, so it refuses stores other than the embedded defaults unless
    ``allow_external``.

    Raises:
        ConfigError: the settings point at a real catalog, registry or feature store.
    """
    from batchscore.errors import ConfigError, NoApprovedModelError

    external = external_targets(settings)
    if external and not allow_external:
        raise ConfigError(
            "quickstart creates a synthetic feature group and trains and approves a synthetic "
            f"model, but the config points at {', '.join(external)}, not the embedded "
            "defaults in the workspace. Run it without those settings, or pass --yes to set "
            "up the demo there anyway."
        )
    from batchscore.catalog import load_table, open_catalog
    from batchscore.feature_store import open_feature_store
    from batchscore.pipeline import Pipeline
    from batchscore.queries import run_query
    from batchscore.registry import open_registry
    from batchscore.training import train_model

    with tracked(progress, "quickstart: opening the feature store"):
        store = open_feature_store(settings)
    name = settings.feature_group_name
    created = name not in store.list_feature_groups()
    if created:
        with tracked(progress, f"quickstart: generating {n_customers:,} customers"):
            data = generate_churn_data(n_customers, seed)
        with tracked(progress, f"quickstart: ingesting {data.records.num_rows:,} records"):
            store.create_feature_group(
                name,
                FEATURES,
                record_identifier=settings.record_identifier,
                event_time_feature=settings.event_time_feature,
            )
            store.ingest(name, data.records)
            store.delete_records(name, data.deleted_ids, event_time=DELETE_TIME)
            store.delete_records(name, data.stale_delete_ids, event_time=STALE_DELETE_TIME)
    group = store.describe(name)

    metrics = None
    try:
        with tracked(progress, "quickstart: looking for an approved model"):
            registry = open_registry(settings)
            version = registry.resolve(settings.model_package_group, "Approved")
        trained = False
    except NoApprovedModelError:
        with tracked(progress, "quickstart: training a model"):
            result = train_model(
                settings, store, registry, id_start=TRAIN_RANGE[0], id_end=TRAIN_RANGE[1],
                seed=seed, progress=progress,
            )  # fmt: skip
        with tracked(progress, f"quickstart: approving v{result.version.version}"):
            version = registry.set_status(
                settings.model_package_group, result.version.version, "Approved"
            )
        metrics = result.metrics
        trained = True

    with tracked(progress, "quickstart: running the pipeline"):
        pipeline = Pipeline(settings, feature_store=store, registry=registry, progress=progress)
        record = pipeline.run()
    catalog = open_catalog(settings)
    table = load_table(catalog, settings.output_table)
    assert table is not None
    counts = run_query(
        catalog,
        f"SELECT count(*) AS n, count(*) FILTER (WHERE run_id = ?) AS run_rows "
        f"FROM {settings.output_table}",
        [record.run_id],
    ).to_pylist()[0]
    return QuickstartSummary(
        workspace=str(settings.workspace_path),
        feature_group=name,
        feature_rows=group.total_rows,
        created_feature_group=created,
        model_name=version.group,
        model_version=version.version,
        trained_model=trained,
        training_metrics=metrics,
        run=record,
        table=settings.output_table,
        table_rows=counts["n"],
        run_rows=counts["run_rows"],
        catalog=catalog_properties(settings),
    )
