"""The model registry interface, in SageMaker Model Registry's words.

A model package group holds numbered versions; each has an approval status, one of
``PendingManualApproval``, ``Approved``, ``Rejected``. "Latest approved" is the newest
version whose status is ``Approved``.
"""

from __future__ import annotations

import abc
import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from batchscore.errors import ModelError, ModelLoadError, SchemaMismatchError

if TYPE_CHECKING:
    from typing import Self

    from batchscore.config import Settings

APPROVAL_TAG = "approval_status"
# A registry that keeps no approval history of its own gets one in this version tag: a JSON
# list of {"status", "at"} (UTC ISO times), newest last, at most STATUS_HISTORY_LIMIT entries.
STATUS_HISTORY_TAG = "approval_status_history"
STATUS_HISTORY_LIMIT = 50
DEFAULT_STATUS = "PendingManualApproval"
# vocabulary_source of a model with no profile, no categories and no training data found.
NO_PROFILE = (
    "none: the model has no training profile and no categories of its own, and no training "
    "data was found to compute one (set registry.training_data, or log the dataset with "
    "mlflow.log_input), so unseen categories are not counted"
)

# Types a scikit-learn pipeline of standard parts needs beyond skops' own safe list.
# Anything else must be trusted explicitly in the config (registry.trusted_types).
TRUSTED_SKOPS_TYPES = (
    "numpy.dtype",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.tree._tree.Tree",
)


@dataclass(frozen=True)
class ModelVersion:
    """One registered version of a model package group."""

    group: str
    version: int
    status: str
    created: dt.datetime
    source: str
    run_id: str | None = None
    description: str = ""

    @property
    def label(self) -> str:
        return f"{self.group!r} v{self.version}"


@dataclass(frozen=True)
class StatusChange:
    """One approval status a version was given, and when (UTC)."""

    status: str
    at: str


@dataclass(frozen=True)
class ModelDetails:
    """What a person looks for in a version (``batchscore models show``).

    ``status_history`` is None when the registry keeps none for this version (registered
    before batchscore recorded it, or a registry without history).
    """

    version: ModelVersion
    input_types: dict[str, str] | None
    metrics: dict[str, Any]
    profile: dict[str, Any] | None
    status_history: list[StatusChange] | None

    @property
    def training(self) -> dict[str, Any]:
        """The training profile's summary: data, id range, rows, target, when."""
        profile = self.profile or {}
        keys = ("feature_group", "feature_group_snapshot_id", "id_range", "rows",
                "target_column", "target_distribution", "trained_at")  # fmt: skip
        return {k: profile[k] for k in keys if k in profile}

    def to_dict(self) -> dict[str, Any]:
        v = self.version
        return {
            "group": v.group,
            "version": v.version,
            "status": v.status,
            "created": v.created.isoformat(),
            "source": v.source,
            "run_id": v.run_id,
            "description": v.description,
            "input_types": self.input_types,
            "metrics": self.metrics,
            "training": self.training,
            "category_vocabularies": (self.profile or {}).get("category_vocabularies"),
            "status_history": None
            if self.status_history is None
            else [{"status": c.status, "at": c.at} for c in self.status_history],
        }


# Signature types the model reads as numbers (its input is cast to float64).
NUMERIC_KINDS = ("double", "float", "long", "integer", "int")


@dataclass
class LoadedModel:
    """A classifier ready to score: the estimator, the columns it takes and their types.

    ``input_types`` maps each input column to ``"double"``, ``"long"``, ``"string"`` … as the
    model's signature declares (or ``"any"`` when it declares nothing).
    """

    version: ModelVersion
    estimator: Any
    input_types: dict[str, str]
    profile: dict[str, Any] | None = None
    classes: list[Any] = field(default_factory=list)
    non_finite: dict[str, int] = field(default_factory=dict)  # ±inf values scored as missing

    @property
    def input_columns(self) -> list[str]:
        return list(self.input_types)

    @property
    def vocabulary_source(self) -> str:
        """Where the category vocabularies that count unseen categories come from, for the
        run record: batchscore's training profile, the model itself (a model batchscore did
        not train), or nowhere — then unseen categories are not counted, and this says so."""
        profile = self.profile or {}
        if "profile_source" in profile:
            return str(profile["profile_source"])
        if "category_vocabularies" in profile:
            return "training profile"
        return NO_PROFILE

    def check_columns(self, available: list[str], source: str) -> None:
        """Raise SchemaMismatchError naming the first column the model needs that is missing."""
        check_columns(self.version, self.input_columns, available, source)

    def frame(self, batch: pa.RecordBatch | pa.Table) -> pd.DataFrame:
        """The model's input columns of a batch, cast to the types it was trained on."""
        data: dict[str, Any] = {}
        for column, kind in self.input_types.items():
            values = batch.column(column)
            if kind in NUMERIC_KINDS:
                arr = values.to_numpy(zero_copy_only=False)
                data[column] = self._finite(_as_float(arr, column), column)
            else:
                series = values.to_pandas()
                if pd.api.types.is_float_dtype(series):
                    series = pd.Series(self._finite(series.to_numpy(copy=True), column))
                data[column] = series
        return pd.DataFrame(data, columns=self.input_columns)

    def _finite(self, values: np.ndarray, column: str) -> np.ndarray:
        """±inf becomes missing (NaN), which the model's imputation handles; counted."""
        infinite = np.isinf(values)
        if infinite.any():
            values[infinite] = np.nan
            self.non_finite[column] = self.non_finite.get(column, 0) + int(infinite.sum())
        return values

    def predict(self, batch: pa.RecordBatch | pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """Predicted class (as int) and the probability used to rank (positive class).

        Raises:
            ModelError: the model cannot take missing values and the batch has some; the
                message names the columns.
        """
        frame = self.frame(batch)
        try:
            proba = np.asarray(self.estimator.predict_proba(frame), dtype=np.float64)
        except ValueError as exc:
            if "contains NaN" not in str(exc):
                raise
            raise self._missing_values_error(frame) from exc
        return self.decide(proba)

    def decide(self, proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Predicted class (as int) and ranking probability from class probabilities
        (n, classes) — the rule every scoring path shares (``predict``, compiled trees)."""
        best = proba.argmax(axis=1)
        classes = self.classes
        if classes and all(_is_int_like(c) for c in classes):
            prediction = np.asarray([int(c) for c in classes])[best]
        else:
            prediction = best
        # Binary: the positive (last) class; multi-class: the predicted class' probability.
        probability = proba[:, -1] if proba.shape[1] == 2 else proba.max(axis=1)
        return prediction.astype(np.int32), probability

    def _missing_values_error(self, frame: pd.DataFrame) -> ModelError:
        missing = frame.isna().sum()
        columns = [f"{c!r} ({n} rows)" for c, n in missing.items() if n]
        named = ", ".join(columns) or "(none of its declared columns: inside the model)"
        return ModelError(
            f"model {self.version.label} ({type(self.estimator).__name__}) cannot take missing "
            f"values, and this batch has them in {named}. Impute in the model's pipeline "
            "(e.g. a SimpleImputer step, as 'batchscore train' does) and register it again."
        )


def approve_command(group: str, version: int | str) -> str:
    """The command that approves ``version`` of ``group`` — always naming the group, so it
    cannot approve a version of another group."""
    return f"batchscore models approve {version} --group {group}"


def check_columns(
    version: ModelVersion, needed: list[str], available: list[str], source: str
) -> None:
    """Raise SchemaMismatchError naming the first of ``needed`` that ``available`` lacks."""
    missing = [c for c in needed if c not in available]
    if missing:
        more = f" (and {len(missing) - 1} more: {', '.join(missing[1:])})" if missing[1:] else ""
        raise SchemaMismatchError(
            f"model {version.label} needs column {missing[0]!r}, which {source} does "
            f"not have{more}. Add the feature, or approve a model trained on these columns."
        )


def _is_int_like(value: Any) -> bool:
    try:
        return float(value) == int(value)
    except (TypeError, ValueError):
        return False


def _as_float(arr: np.ndarray, column: str) -> np.ndarray:
    try:
        return arr.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise SchemaMismatchError(
            f"column {column!r} must be numeric for the model, but holds values like "
            f"{next((v for v in arr if v is not None), None)!r}: {exc}."
        ) from exc


def check_classifier(estimator: Any, version: ModelVersion) -> list[Any]:
    """The estimator's classes; ModelLoadError when it cannot give probabilities."""
    if not hasattr(estimator, "predict_proba"):
        raise ModelLoadError(
            f"model {version.label} ({type(estimator).__name__}) has no predict_proba: "
            "batchscore scores classifiers that give class probabilities."
        )
    classes = getattr(estimator, "classes_", None)
    return list(classes) if classes is not None else []


class ModelRegistry(abc.ABC):
    """Where models come from.

    Implementations (``REGISTRIES`` in :mod:`batchscore.registry`): ``mlflow.MlflowRegistry``,
    ``sagemaker.SageMakerRegistry``. Each is built from the settings by :meth:`from_settings`,
    and its constructor takes the client it talks through (an ``MlflowClient``, boto3
    clients), so a test can hand it one.
    """

    @classmethod
    @abc.abstractmethod
    def from_settings(cls, settings: Settings, *, writable: bool = True) -> Self:
        """The registry as the settings describe it (what ``open_registry`` calls).

        Args:
            settings: the whole settings; the registry reads its own keys.
            writable: False to only read (list versions); see ``open_registry``.

        Raises:
            ConfigError: the settings cannot reach the registry.
            WorkspaceNotFoundError: reading, and the registry lives in a missing workspace.
            StorageError: writing, and the workspace is not writable.
        """

    @abc.abstractmethod
    def list_versions(self, group: str) -> list[ModelVersion]:
        """All versions of the group, newest first (empty when the group does not exist)."""

    @abc.abstractmethod
    def set_status(self, group: str, version: int, status: str) -> ModelVersion:
        """Set a version's approval status.

        Raises:
            ModelError: no such version, or an unknown status.
        """

    def resolve(self, group: str, status: str = "Approved") -> ModelVersion:
        """The newest version with ``status``.

        Raises:
            NoApprovedModelError: no version has it; the message lists what there is.
        """
        from batchscore.errors import NoApprovedModelError

        versions = self.list_versions(group)
        for version in versions:
            if version.status == status:
                return version
        if not versions:
            raise NoApprovedModelError(
                f"model package group {group!r} has no versions. Train one with "
                f"'batchscore train', then approve it with "
                f"'{approve_command(group, 'VERSION')}'."
            )
        seen = ", ".join(f"v{v.version} {v.status}" for v in versions[:5])
        candidates = [v for v in versions if v.status != "Rejected"][:5]
        unloadable: list[str] = []
        for candidate in candidates:  # suggest only a version that would score
            reason = self.unloadable_reason(candidate)
            if reason is None:
                raise NoApprovedModelError(
                    f"model package group {group!r} has no version with status {status!r} "
                    f"(versions: {seen}). Approve one: "
                    f"{approve_command(group, candidate.version)}."
                )
            unloadable.append(f"v{candidate.version}: {reason}")
        why = f" None of them can be loaded ({'; '.join(unloadable)})." if unloadable else ""
        raise NoApprovedModelError(
            f"model package group {group!r} has no version with status {status!r} "
            f"(versions: {seen}).{why} Register a loadable model with 'batchscore train' or "
            f"MLflow, then approve it with '{approve_command(group, 'VERSION')}'."
        )

    def unloadable_reason(self, version: ModelVersion) -> str | None:
        """Why ``version`` cannot be loaded (None when it loads): for hints, not for runs."""
        try:
            self.load(version)
        except ModelError as exc:
            return str(exc).removeprefix(f"model {version.label} ").removeprefix(": ")
        return None

    @abc.abstractmethod
    def get_version(self, group: str, version: int) -> ModelVersion:
        """One version. Raises ModelError when it does not exist."""

    def input_types(self, version: ModelVersion) -> dict[str, str] | None:
        """The version's input columns and types as declared (its signature), without loading
        the estimator; None when only the loaded model can tell."""
        return None

    def profile(self, version: ModelVersion) -> dict[str, Any] | None:
        """The training profile logged beside the model, if there is one."""
        return None

    def training_data(self, version: ModelVersion) -> str | None:
        """Where the version's training data is, as its registry recorded it (a path, an
        ``s3://`` URI or an Iceberg table); None when it recorded none."""
        return None

    def metrics(self, version: ModelVersion) -> dict[str, Any]:
        """Metrics the registry keeps for the version (default: the profile's validation)."""
        return {}

    def status_history(self, version: ModelVersion) -> list[StatusChange] | None:
        """Approval statuses given to the version, oldest first; None when not kept."""
        return None

    def describe_version(self, group: str, version: int) -> ModelDetails:
        """A version with its signature, metrics, training profile and status history.

        Raises:
            UnknownVersionError: the group has no such version.
        """
        found = self.get_version(group, version)
        profile = self.profile(found)
        metrics = self.metrics(found)
        if not metrics and profile and isinstance(profile.get("validation_metrics"), dict):
            metrics = {f"validation_{k}": v for k, v in profile["validation_metrics"].items()
                       if isinstance(v, int | float) and k != "rows"}  # fmt: skip
        return ModelDetails(
            version=found,
            input_types=self.input_types(found),
            metrics=metrics,
            profile=profile,
            status_history=self.status_history(found),
        )

    @abc.abstractmethod
    def load(self, version: ModelVersion) -> LoadedModel:
        """Load a version's classifier safely.

        Raises:
            ModelLoadError: the artifact is missing, corrupt, untrusted, or not a classifier.
        """

    @abc.abstractmethod
    def register_sklearn(
        self,
        group: str,
        estimator: Any,
        sample: pd.DataFrame,
        *,
        profile: dict[str, Any],
        metrics: dict[str, float] | None = None,
        description: str = "",
    ) -> ModelVersion:
        """Log a fitted scikit-learn classifier and register it as ``PendingManualApproval``."""
