"""Profiles of training data: category vocabularies and feature statistics.

batchscore's own models carry a training profile (:mod:`batchscore.training`). A model
batchscore did not train gets one computed at first use from its training data — found in
``registry.training_data`` (a Parquet/CSV file, folder or glob, local or ``s3://``, or an Iceberg
table ``namespace.table`` of the catalog), else in the dataset its MLflow run logged
(``mlflow.log_input``) — and cached in ``<workspace>/profiles/`` keyed by the model's identity
and the data source, so it is computed once. Categories the model keeps itself (XGBoost,
LightGBM …) stay authoritative; the data adds the rest and the feature statistics. With no data
found, the model's ``vocabulary_source`` says so and names the key to set: never skipped
silently.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from batchscore.registry.base import NO_PROFILE

if TYPE_CHECKING:
    from batchscore.config import Settings
    from batchscore.registry.base import LoadedModel, ModelRegistry, ModelVersion

log = logging.getLogger("batchscore")

TRAINING_DATA_KEY = "registry.training_data"
_ICEBERG_IDENTIFIER = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+$")
_DATA_SUFFIXES = (".parquet", ".pq", ".csv", ".tsv", ".txt")
# Rows of the training data scored for a computed profile's prediction reference.
PREDICTION_SAMPLE_ROWS = 50_000
# Part of the cache key: a profile cached before the reference bins existed is recomputed.
PROFILE_FORMAT = 2


def feature_profile(
    table: pa.Table,
    numeric: list[str],
    categorical: list[str],
    vocabularies: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """Columns, types, category vocabularies and summary statistics of ``table``.

    Args:
        table: the training rows (numbers, and categories as strings); NaN counts as missing.
        numeric: the numeric feature columns.
        categorical: the categorical feature columns.
        vocabularies: each categorical column's known categories (default: the distinct
            values of the column, sorted).

    Returns:
        The profile fields batchscore's training profile and a first-use profile share; a
        numeric column's statistics include its decile ``bin_edges`` and ``bin_fractions``.
    """
    import pyarrow.compute as pc

    from batchscore.monitoring.summaries import bin_reference

    rows = table.num_rows
    statistics: dict[str, Any] = {}
    for column in numeric:
        values = table.column(column).cast(pa.float64())
        values = pc.if_else(pc.is_nan(values), pa.scalar(None, pa.float64()), values)
        bounds = pc.min_max(values).as_py()
        median = pc.quantile(values, q=0.5, interpolation="linear").to_pylist()
        statistics[column] = {
            "mean": _num(pc.mean(values).as_py()),
            "std": _num(pc.stddev(values, ddof=1).as_py()),
            "min": _num(bounds["min"]),
            "p50": _num(median[0] if median else None),
            "max": _num(bounds["max"]),
            "missing_fraction": values.null_count / rows if rows else 0.0,
            # Decile cut points and shares: what a run's drift (PSI) is measured against.
            **bin_reference(values.to_numpy(zero_copy_only=False)),
        }
    found: dict[str, list[str]] = {}
    for column in categorical:
        values = table.column(column).cast(pa.string())
        counts = pc.value_counts(values.drop_null()).to_pylist()
        known = sum(c["counts"] for c in counts)
        counts.sort(key=lambda c: -c["counts"])
        statistics[column] = {
            "frequencies": {str(c["values"]): round(c["counts"] / known, 6) for c in counts},
            "missing_fraction": values.null_count / rows if rows else 0.0,
        }
        found[column] = sorted(str(c["values"]) for c in counts)
    return {
        "columns": [*numeric, *categorical],
        "dtypes": {**dict.fromkeys(numeric, "double"), **dict.fromkeys(categorical, "string")},
        "numeric_features": numeric,
        "categorical_features": categorical,
        "category_vocabularies": vocabularies if vocabularies is not None else found,
        "statistics": statistics,
        "rows": rows,
    }


def _num(value: Any) -> float | None:
    return None if value is None or value != value else float(value)  # NaN != NaN


# Where the training data is -------------------------------------------------------------


def training_data_source(
    settings: Settings, registry: ModelRegistry, version: ModelVersion
) -> str | None:
    """The model's training data: ``registry.training_data``, else the dataset the model's
    run logged (MLflow), else None."""
    configured = settings.registry.training_data
    if configured:
        return _normalised(configured)
    logged = registry.training_data(version)
    return _normalised(logged) if logged else None


def _normalised(source: str) -> str:
    source = source.removeprefix("file://")
    if "://" in source or is_iceberg_table(source):
        return source
    return str(Path(source).expanduser().absolute())


def is_iceberg_table(source: str) -> bool:
    """``namespace.table`` (no path separator, no data file suffix, nothing there on disk)."""
    return (
        bool(_ICEBERG_IDENTIFIER.match(source))
        and not source.lower().endswith(_DATA_SUFFIXES)
        and not Path(source).exists()
    )


def read_training_data(settings: Settings, source: str, columns: list[str]) -> pa.Table:
    """The ``columns`` of the training data at ``source`` that it has, as Arrow.

    Raises:
        FeatureGroupError: the files cannot be found or read, or the Iceberg table does
            not exist.
    """
    if is_iceberg_table(source):
        from batchscore.catalog import load_table, open_catalog
        from batchscore.errors import FeatureGroupError

        table = load_table(open_catalog(settings, writable=False), source)
        if table is None:
            raise FeatureGroupError(f"Iceberg table {source!r} does not exist in the catalog.")
        present = [c for c in columns if c in {f.name for f in table.schema().fields}]
        return table.scan(selected_fields=tuple(present)).to_arrow()
    from batchscore.aws import region_of
    from batchscore.feature_store.files import FilesFeatureStore

    files = FilesFeatureStore(source, name="training data", region=region_of(settings))
    dataset, _ = files.dataset("training data")
    return dataset.to_table(columns=[c for c in columns if c in dataset.schema.names])


def profile_from_data(table: pa.Table, input_types: dict[str, str]) -> dict[str, Any]:
    """A profile of the model's input columns in ``table``: strings are categories, numbers
    numeric features (whatever the signature says, the data decides)."""
    numeric, categorical = [], []
    for column in input_types:
        if column not in table.column_names:
            continue
        kind = table.schema.field(column).type
        if pa.types.is_dictionary(kind):
            kind = kind.value_type
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            categorical.append(column)
        elif pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
            numeric.append(column)
    profile = feature_profile(table, numeric, categorical)
    profile["columns_not_in_training_data"] = [
        c for c in input_types if c not in table.column_names
    ]
    return profile


def scored_reference(loaded: LoadedModel, table: pa.Table) -> dict[str, Any] | None:
    """The model's ``prediction_reference`` from its scores of (a sample of up to
    ``PREDICTION_SAMPLE_ROWS`` rows of) its training data; None when the data lacks an input
    column or the model cannot score it (the prediction checks then have no training
    reference, only the previous run)."""
    import numpy as np

    from batchscore.monitoring.summaries import prediction_reference

    if any(c not in table.column_names for c in loaded.input_columns) or not table.num_rows:
        return None
    if table.num_rows > PREDICTION_SAMPLE_ROWS:
        rows = np.random.default_rng(0).choice(table.num_rows, PREDICTION_SAMPLE_ROWS, False)
        table = table.take(np.sort(rows))
    try:
        predicted, probabilities = loaded.predict(table.select(loaded.input_columns))
    except Exception as exc:  # any model error only leaves the reference out
        log.warning(
            "profile of model %s: scoring its training data failed (%s); no prediction "
            "reference from training", loaded.version.label, exc,
        )  # fmt: skip
        return None
    finally:
        loaded.non_finite.clear()  # what scoring the sample noticed is not the run's
    return prediction_reference(probabilities, predicted)


# The cache ------------------------------------------------------------------------------


def cache_path(
    settings: Settings, registry: ModelRegistry, version: ModelVersion, source: str
) -> Path:
    """``<workspace>/profiles/<group>-v<version>-<hash>.json``: the hash covers the registry,
    the version's own source and run (a recreated v1 is another model) and the data source."""
    key = {
        "registry": type(registry).__name__,
        "at": getattr(registry, "tracking_uri", None),
        "group": version.group,
        "version": version.version,
        "model_source": version.source,
        "run_id": version.run_id,
        "data": source,
        "format": PROFILE_FORMAT,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    safe_group = re.sub(r"[^\w.-]", "_", version.group)
    return settings.workspace_path / "profiles" / f"{safe_group}-v{version.version}-{digest}.json"


def _write_atomically(path: Path, profile: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    staging.write_text(json.dumps(profile, indent=2, default=str))
    os.replace(staging, path)  # readers see the whole file or none


def computed_profile(
    settings: Settings,
    registry: ModelRegistry,
    loaded: LoadedModel,
    source: str,
    *,
    compute: bool = True,
) -> dict[str, Any] | None:
    """The first-use profile of ``loaded`` from ``source``: from the cache, else computed and
    cached (None when not cached and not ``compute``).

    Raises:
        BatchScoreError: the training data cannot be found or read.
    """
    path = cache_path(settings, registry, loaded.version, source)
    if path.exists():
        log.info("profile of model %s: cached in %s", loaded.version.label, path)
        return json.loads(path.read_text())
    if not compute:
        return None
    table = read_training_data(settings, source, loaded.input_columns)
    now = dt.datetime.now(dt.UTC)
    profile = profile_from_data(table, loaded.input_types)
    reference = scored_reference(loaded, table)
    if reference is not None:
        profile["prediction_reference"] = reference
    profile |= {
        "profile_source": f"profile computed at first use from {source} ({now:%Y-%m-%d})",
        "training_data": source,
        "computed_at": now.isoformat(),
    }
    _write_atomically(path, profile)
    log.info(
        "profile of model %s computed from %s (%d rows), cached in %s",
        loaded.version.label, source, table.num_rows, path,
    )  # fmt: skip
    return profile


def complete_profile(
    settings: Settings, registry: ModelRegistry, loaded: LoadedModel, *, compute: bool = True
) -> None:
    """Give ``loaded`` category vocabularies and feature statistics when it lacks them.

    A batchscore training profile (it has ``statistics``) stays as it is. Otherwise the first
    use profile of the training data fills in: the model's own categories win where it has
    them. With no training data found (or unreadable), ``vocabulary_source`` says why.
    """
    from batchscore.errors import BatchScoreError

    own = loaded.profile or {}
    if "statistics" in own:
        return
    source = training_data_source(settings, registry, loaded.version)
    if source is None:
        if "profile_source" not in own:
            loaded.profile = {**own, "profile_source": NO_PROFILE}
        return
    try:
        data = computed_profile(settings, registry, loaded, source, compute=compute)
    except (BatchScoreError, OSError, pa.ArrowException) as exc:
        reason = f"none: reading the training data {source} failed ({exc})"
        log.warning("category vocabularies: %s", reason)
        if "profile_source" not in own:
            loaded.profile = {**own, "profile_source": reason}
        return
    if data is None:
        loaded.profile = {
            **own,
            "profile_source": f"{own.get('profile_source', 'none yet')}; to be computed at "
            f"first use from {source}",
        }
        return
    merged = {**data, "category_vocabularies": {
        **data["category_vocabularies"], **own.get("category_vocabularies", {})}}  # fmt: skip
    if own.get("category_vocabularies"):
        merged["profile_source"] = f"{own['profile_source']}; other columns and feature " \
            f"statistics from the {data['profile_source']}"  # fmt: skip
    loaded.profile = merged


def describe_source(
    settings: Settings,
    registry: ModelRegistry,
    version: ModelVersion,
    profile: dict[str, Any] | None,
) -> str:
    """Where a version's profile comes from, for ``batchscore models show`` (computes
    nothing: a first-use profile not yet computed is named as such)."""
    own = profile or {}
    if "statistics" in own and "profile_source" not in own:
        return "training profile (logged beside the model)"
    source = training_data_source(settings, registry, version)
    if source is None:
        return str(own.get("profile_source", NO_PROFILE))
    path = cache_path(settings, registry, version, source)
    if not path.exists():
        before = f"{own['profile_source']}; " if "profile_source" in own else ""
        return f"{before}computed at first use from {source} (not yet)"
    computed = str(json.loads(path.read_text()).get("profile_source"))
    if own.get("category_vocabularies"):
        return f"{own['profile_source']}; other columns and feature statistics from the {computed}"
    return f"{computed}; cached in {path}"
