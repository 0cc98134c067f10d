"""The reference trainer (the proof of concept's training_poc, small).

One scikit-learn Pipeline carries all preprocessing — median imputation for numbers, ordinal
encoding for categories (unseen and missing categories become NaN, which the gradient boosting
model handles natively) — so training and scoring cannot drift apart. The model is logged with
a signature and a JSON training profile, and registered as ``PendingManualApproval``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from batchscore.config import Settings
from batchscore.errors import FeatureGroupError, NothingToScoreError
from batchscore.feature_store import FeatureStore
from batchscore.metrics import classification_metrics
from batchscore.monitoring.summaries import prediction_reference
from batchscore.progress import NO_PROGRESS, Progress, tracked
from batchscore.registry import ModelRegistry, ModelVersion


@dataclass(frozen=True)
class TrainResult:
    version: ModelVersion
    rows: int
    metrics: dict[str, Any]
    features: list[str]


def build_pipeline(numeric: list[str], categorical: list[str], seed: int = 0) -> Any:
    """Impute, encode and fit a HistGradientBoosting classifier, as one estimator."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OrdinalEncoder

    preprocess = ColumnTransformer(
        [
            ("numeric", SimpleImputer(strategy="median"), numeric),
            (
                "categorical",
                OrdinalEncoder(
                    handle_unknown="use_encoded_value",
                    unknown_value=np.nan,
                    encoded_missing_value=np.nan,
                ),
                categorical,
            ),
        ],
        remainder="drop",
    )
    classifier = HistGradientBoostingClassifier(
        max_iter=200, learning_rate=0.05, max_leaf_nodes=15, random_state=seed
    )
    return Pipeline([("preprocess", preprocess), ("classifier", classifier)])


def training_frame(table: pa.Table, numeric: list[str], categorical: list[str]) -> pd.DataFrame:
    """Features as the model sees them: numbers as float64, categories as pandas strings."""
    data: dict[str, Any] = {c: table.column(c).to_numpy().astype(np.float64) for c in numeric}
    data.update({c: table.column(c).to_pandas() for c in categorical})
    return pd.DataFrame(data, columns=[*numeric, *categorical])


def training_profile(
    frame: pd.DataFrame,
    y: np.ndarray,
    numeric: list[str],
    categorical: list[str],
    pipeline: Any,
    **context: Any,
) -> dict[str, Any]:
    """Columns, types, category vocabularies and summary statistics of the training data
    (:func:`~batchscore.registry.profiles.feature_profile`, the vocabularies the pipeline's
    encoder learnt), its target distribution, and ``context``."""
    from batchscore.registry.profiles import feature_profile

    encoder = pipeline.named_steps["preprocess"].named_transformers_["categorical"]
    vocabularies = {
        column: sorted(str(v) for v in cats if isinstance(v, str))
        for column, cats in zip(categorical, encoder.categories_, strict=True)
    }
    table = pa.Table.from_pandas(frame[[*numeric, *categorical]], preserve_index=False)
    profile = feature_profile(table, numeric, categorical, vocabularies)
    classes, counts = np.unique(y, return_counts=True)
    return {
        **profile,
        "unseen_categories": "encoded as missing (NaN); the classifier routes them as missing",
        "target_distribution": {str(c): int(n) for c, n in zip(classes, counts, strict=True)},
        **context,
    }


def train_model(
    settings: Settings,
    store: FeatureStore,
    registry: ModelRegistry,
    *,
    id_start: int = 1,
    id_end: int = 4000,
    target_column: str | None = None,
    as_of: dt.datetime | None = None,
    seed: int = 0,
    progress: Progress = NO_PROGRESS,
) -> TrainResult:
    """Train on the latest records of an id range and register a PendingManualApproval version.

    Reports its phases to ``progress``: reading features, fitting, evaluating, registering.

    Raises:
        FeatureGroupError: no such feature group, or it lacks the target column.
        NothingToScoreError: the id range has no records to train on.
    """
    target = target_column or settings.target_column
    with tracked(progress, f"train: reading features of ids {id_start}–{id_end}"):
        from sklearn.model_selection import train_test_split  # ~1.5 s: inside the phase

        group = store.describe(settings.feature_group_name)
        if not target or target not in group.features:
            raise FeatureGroupError(
                f"target column {target!r} is not a feature of {group.name!r} "
                f"(features: {', '.join(group.features)}). Set target_column."
            )
        latest = store.latest_records(group.name, id_start, id_end, as_of=as_of)
        records = latest.to_table()
    labelled = records.filter(records.column(target).is_valid())
    if labelled.num_rows < 20:
        raise NothingToScoreError(
            f"ids {id_start}–{id_end} of {group.name!r} hold {labelled.num_rows} labelled "
            "record(s); training needs at least 20."
        )
    features = [f for f in group.features if f != target]
    numeric = [f for f in features if group.features[f] in ("Integral", "Fractional")]
    categorical = [f for f in features if group.features[f] == "String"]
    frame = training_frame(labelled, numeric, categorical)
    y = labelled.column(target).to_numpy().astype(np.int64)

    stratify = y if len(np.unique(y)) > 1 and min(np.bincount(y - y.min())) >= 2 else None
    x_train, x_valid, y_train, y_valid = train_test_split(
        frame, y, test_size=0.2, random_state=seed, stratify=stratify
    )
    with tracked(progress, f"train: fitting on {len(x_train):,} rows"):
        pipeline = build_pipeline(numeric, categorical, seed).fit(x_train, y_train)
    with tracked(progress, f"train: evaluating on {len(x_valid):,} rows"):
        proba = pipeline.predict_proba(x_valid)
        predicted = pipeline.classes_[proba.argmax(axis=1)]
        metrics = classification_metrics(y_valid, predicted, proba[:, -1])
    profile = training_profile(
        frame,
        y,
        numeric,
        categorical,
        pipeline,
        feature_group=group.name,
        feature_group_snapshot_id=latest.snapshot_id,
        id_range=[id_start, id_end],
        target_column=target,
        trained_at=dt.datetime.now(dt.UTC).isoformat(),
        validation_metrics=metrics,
    )
    # What the probabilities of a run are compared with: the validation scores, as a loaded
    # model computes them (positive class of two, else the predicted class').
    scores = proba[:, -1] if proba.shape[1] == 2 else proba.max(axis=1)
    profile["prediction_reference"] = prediction_reference(scores, predicted)
    logged = {k: v for k, v in metrics.items() if isinstance(v, float)}
    with tracked(progress, f"train: registering in {settings.model_package_group!r}"):
        version = registry.register_sklearn(
            settings.model_package_group,
            pipeline,
            x_train.head(200),
            profile=profile,
            metrics={f"validation_{k}": v for k, v in logged.items()},
            description=f"trained on {group.name} ids {id_start}-{id_end}, target {target}",
        )
    return TrainResult(version=version, rows=labelled.num_rows, metrics=metrics, features=features)
