"""The model registry on MLflow: approval status is the version tag ``approval_status``.

Models load only through skops, with batchscore's explicit list of trusted types (plus those
the config adds) — never with the list a model file carries, and never through pickle.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchscore.config import APPROVAL_STATUSES, RESOURCE_NAME, validate_identifier
from batchscore.errors import ModelError, ModelLoadError, UnknownVersionError
from batchscore.registry import mlflow_sqlite
from batchscore.registry.base import (
    APPROVAL_TAG,
    DEFAULT_STATUS,
    STATUS_HISTORY_LIMIT,
    STATUS_HISTORY_TAG,
    TRUSTED_SKOPS_TYPES,
    LoadedModel,
    ModelRegistry,
    ModelVersion,
    StatusChange,
    check_classifier,
)
from batchscore.registry.cache import ModelCache
from batchscore.registry.flavors import SAFE_LOG_CALLS
from batchscore.workspace import readonly_sqlite_url, require_sqlite_file, sqlite_path

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.tracking import MlflowClient

    from batchscore.config import Settings

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
PROFILE_FILE = "training_profile.json"
# Pinned instead of inferred: inference costs 3–6 s per log_model (STACK.md).
PIP_REQUIREMENTS = ["scikit-learn", "skops", "pandas", "numpy"]


def _quiet_mlflow() -> None:
    for name in ("mlflow", "alembic", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)


class MlflowRegistry(ModelRegistry):
    """Model package groups as MLflow registered models."""

    def __init__(
        self,
        tracking_uri: str,
        artifact_location: str,
        cache_dir: Path,
        trusted_types: list[str] | tuple[str, ...] = (),
        *,
        writable: bool = True,
        client: MlflowClient | None = None,
        trust_pickle: bool = False,
    ) -> None:
        """A registry on the MLflow tracking server or store at ``tracking_uri``.

        Args:
            tracking_uri: the MLflow tracking (and registry) URI; the model cache's key.
            artifact_location: where new experiments keep their artifacts.
            cache_dir: the workspace's model cache folder.
            trusted_types: skops types to trust beyond batchscore's own list.
            writable: False opens a SQLite store read-only and creates nothing: the
                database must exist, and MLflow's own table creation and migrations never
                run on it.
            client: the ``MlflowClient`` to talk through (default: one for ``tracking_uri``,
                read-only on SQLite when not ``writable``).
            trust_pickle: load ``pyfunc`` models with custom code (unpickling them).

        Raises:
            WorkspaceNotFoundError: not ``writable``, and the SQLite database does not exist.
        """
        database = sqlite_path(tracking_uri)
        client_uri = tracking_uri
        if database is not None and writable:
            database.parent.mkdir(parents=True, exist_ok=True)
        elif database is not None:
            require_sqlite_file(
                database, "MLflow model registry", "'batchscore train' registers a model"
            )
            client_uri = readonly_sqlite_url(database)
        self.tracking_uri = tracking_uri  # the registry's identity (the model cache's key)
        self.client_uri = client_uri
        self.artifact_location = artifact_location.rstrip("/")
        self.cache_dir = cache_dir
        self.cache = ModelCache(cache_dir)
        self.trusted_types = [*TRUSTED_SKOPS_TYPES, *trusted_types]
        self.trust_pickle = trust_pickle
        # Reads of a SQLite store skip MLflow (registry/mlflow_sqlite.py); an injected client
        # is always the one asked.
        self.database = database if client is None else None
        self._client = client

    @property
    def client(self) -> MlflowClient:
        """The ``MlflowClient`` of this registry, made (importing MLflow) on first use."""
        if self._client is None:
            _quiet_mlflow()
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.client_uri, registry_uri=self.client_uri)
        return self._client

    @classmethod
    def from_settings(cls, settings: Settings, *, writable: bool = True) -> MlflowRegistry:
        """The registry at ``registry.tracking_uri`` (default: SQLite in the workspace), its
        models cached in the workspace's ``models/``.

        Raises:
            WorkspaceNotFoundError: reading, and no workspace or MLflow database there.
            StorageError: writing, and the workspace is not writable.
        """
        from batchscore.workspace import ensure_writable_workspace, require_workspace

        if not settings.registry.tracking_uri:  # the embedded default lives in the workspace
            if writable:
                ensure_writable_workspace(settings)
            else:
                require_workspace(settings)
        return cls(
            tracking_uri=settings.tracking_uri,
            artifact_location=settings.artifact_location,
            cache_dir=settings.workspace_path / "models",
            trusted_types=settings.registry.trusted_types,
            writable=writable,
            trust_pickle=settings.registry.trust_pickle,
        )

    # Listing and status -----------------------------------------------------------------

    def _to_version(self, mv: Any) -> ModelVersion:
        return ModelVersion(
            group=mv.name,
            version=int(mv.version),
            status=(mv.tags or {}).get(APPROVAL_TAG, DEFAULT_STATUS),
            created=dt.datetime.fromtimestamp(mv.creation_timestamp / 1000, dt.UTC),
            source=mv.source,
            run_id=mv.run_id,
            description=mv.description or "",
        )

    def list_versions(self, group: str) -> list[ModelVersion]:
        validate_identifier(group, "model_package_group", RESOURCE_NAME)
        stored = mlflow_sqlite.search_versions(self.database, group)
        if stored is not None:
            return sorted(map(self._to_version, stored), key=lambda v: v.version, reverse=True)
        from mlflow.exceptions import MlflowException

        try:
            found = self.client.search_model_versions(f"name = '{group}'")
        except MlflowException as exc:
            raise ModelError(f"cannot list versions of {group!r}: {exc.message}") from exc
        versions = [self._to_version(mv) for mv in found]
        return sorted(versions, key=lambda v: v.version, reverse=True)

    def get_version(self, group: str, version: int) -> ModelVersion:
        validate_identifier(group, "model_package_group", RESOURCE_NAME)
        stored = mlflow_sqlite.get_version(self.database, group, version)
        if stored is not None:
            return self._to_version(stored)
        from mlflow.exceptions import MlflowException

        try:
            return self._to_version(self.client.get_model_version(group, str(version)))
        except MlflowException:
            known = ", ".join(f"v{v.version}" for v in self.list_versions(group)) or "none"
            raise UnknownVersionError(
                f"model package group {group!r} has no version {version} (versions: {known})."
            ) from None

    def set_status(self, group: str, version: int, status: str) -> ModelVersion:
        if status not in APPROVAL_STATUSES:
            raise ModelError(
                f"approval status {status!r} is not one of {', '.join(APPROVAL_STATUSES)}."
            )
        self.get_version(group, version)
        history = self._history_tag(group, version)
        self.client.set_model_version_tag(group, str(version), APPROVAL_TAG, status)
        history.append({"status": status, "at": dt.datetime.now(dt.UTC).isoformat()})
        self.client.set_model_version_tag(
            group, str(version), STATUS_HISTORY_TAG, json.dumps(history[-STATUS_HISTORY_LIMIT:])
        )
        return self.get_version(group, version)

    def _history_tag(self, group: str, version: int) -> list[dict[str, str]]:
        stored = mlflow_sqlite.get_version(self.database, group, version)
        mv = stored if stored is not None else self.client.get_model_version(group, str(version))
        tags = mv.tags or {}
        try:
            history = json.loads(tags.get(STATUS_HISTORY_TAG, "[]"))
        except ValueError:
            return []
        return history if isinstance(history, list) else []

    def status_history(self, version: ModelVersion) -> list[StatusChange] | None:
        """From the version tag ``approval_status_history`` that ``set_status`` and
        ``register_sklearn`` keep (MLflow records no history of tags itself)."""
        history = self._history_tag(version.group, version.version)
        changes = [
            StatusChange(str(h.get("status")), str(h.get("at")))
            for h in history
            if isinstance(h, dict)
        ]
        return changes or None

    def profile(self, version: ModelVersion) -> dict[str, Any] | None:
        """batchscore's training profile; for a model batchscore did not train, the one the
        loaded model makes from itself (its categories, marked ``profile_source``)."""
        found = read_profile(self._download(version))
        if found is None:
            with contextlib.suppress(ModelError):  # an unloadable model has none
                found = self.load(version).profile
        return found

    def training_data(self, version: ModelVersion) -> str | None:
        """The dataset the version's run logged with ``mlflow.log_input`` (its source's
        ``uri`` or ``path``): the one in context ``training`` first, else the first."""
        from mlflow.exceptions import MlflowException

        if not version.run_id:
            return None
        try:
            inputs = self.client.get_run(version.run_id).inputs
        except MlflowException:
            return None  # the run was deleted
        found: list[tuple[bool, str]] = []
        for logged in getattr(inputs, "dataset_inputs", None) or []:
            try:
                source = json.loads(logged.dataset.source)
            except (TypeError, ValueError):
                continue
            location = isinstance(source, dict) and (source.get("uri") or source.get("path"))
            if location:
                context = {t.key: t.value for t in logged.tags or []}.get("mlflow.data.context")
                found.append((context != "training", str(location)))
        return min(found)[1] if found else None

    def metrics(self, version: ModelVersion) -> dict[str, Any]:
        """The metrics logged in the version's MLflow run."""
        from mlflow.exceptions import MlflowException

        if not version.run_id:
            return {}
        try:
            return dict(self.client.get_run(version.run_id).data.metrics)
        except MlflowException:
            return {}  # the run was deleted: the profile's validation metrics stand in

    # Loading ----------------------------------------------------------------------------

    def _download(self, version: ModelVersion) -> Path:
        """The version's MLflow model folder, from the workspace's verified model cache.

        The cache key is this registry (tracking URI) and the version's own source (run id
        and artifact URI), so a recreated registry's v1 is never taken for the old v1.
        """
        key = {
            "registry": "mlflow",
            "tracking_uri": self.tracking_uri,
            "group": version.group,
            "version": str(version.version),
            "run_id": version.run_id,
            "source": version.source,
        }
        return self.cache.fetch(
            key,
            lambda staging: self._fetch_artifacts(version, staging),
            label=f"model {version.label}",
        )

    def _fetch_artifacts(self, version: ModelVersion, staging: Path) -> Path:
        import mlflow.artifacts

        try:
            uri = self.client.get_model_version_download_uri(version.group, str(version.version))
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=uri, dst_path=str(staging), tracking_uri=self.client_uri
            )
        except Exception as exc:
            raise ModelLoadError(
                f"cannot download model {version.label} from {version.source}: "
                f"{type(exc).__name__}: {exc}. Check that its artifacts still exist."
            ) from exc
        if not (Path(local) / "MLmodel").exists():
            raise ModelLoadError(
                f"model {version.label} has no MLmodel file at {uri}: the artifact is not "
                "an MLflow model. Register an MLflow model folder."
            )
        return Path(local)

    def load(self, version: ModelVersion) -> LoadedModel:
        return load_model_folder(
            self._download(version), version, self.trusted_types, trust_pickle=self.trust_pickle
        )

    def input_types(self, version: ModelVersion) -> dict[str, str] | None:
        return declared_input_types(self._download(version))

    # Registering ------------------------------------------------------------------------

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
        validate_identifier(group, "model_package_group", RESOURCE_NAME)
        import mlflow
        import mlflow.sklearn
        from mlflow.exceptions import MlflowException
        from mlflow.models import infer_signature

        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        experiment_name = f"batchscore/{group}"
        experiment = self.client.get_experiment_by_name(experiment_name)
        experiment_id = (
            experiment.experiment_id
            if experiment
            else self.client.create_experiment(
                experiment_name, artifact_location=f"{self.artifact_location}/{group}"
            )
        )
        signature = infer_signature(sample, estimator.predict_proba(sample))
        with tempfile.TemporaryDirectory() as tmp:
            profile_path = Path(tmp) / PROFILE_FILE
            profile_path.write_text(json.dumps(profile, indent=2, default=str))
            with mlflow.start_run(experiment_id=experiment_id) as run:
                if metrics:
                    mlflow.log_metrics(metrics)
                info = mlflow.sklearn.log_model(
                    estimator,
                    name="model",
                    signature=signature,
                    pip_requirements=PIP_REQUIREMENTS,
                    extra_files=[str(profile_path)],
                    skops_trusted_types=self.trusted_types,
                    pyfunc_predict_fn="predict_proba",
                )
        with contextlib.suppress(MlflowException):  # it exists already
            self.client.create_registered_model(group)
        mv = self.client.create_model_version(
            group,
            info.model_uri,
            run_id=run.info.run_id,
            tags={
                APPROVAL_TAG: DEFAULT_STATUS,
                STATUS_HISTORY_TAG: json.dumps(
                    [{"status": DEFAULT_STATUS, "at": dt.datetime.now(dt.UTC).isoformat()}]
                ),
            },
            description=description,
        )
        return self._to_version(mv)


def _input_types(meta: Any, estimator: Any, version: ModelVersion) -> dict[str, str]:
    """Input columns and types from the signature, else from the fitted estimator."""
    schema = meta.get_input_schema()
    if schema is not None and schema.has_input_names():
        types: dict[str, str] = {}
        for spec in schema.inputs:
            kind = getattr(spec, "type", None)
            types[spec.name] = getattr(kind, "name", str(kind)) if kind is not None else "any"
        return types
    return _feature_names(estimator, version)


def _feature_names(estimator: Any, version: ModelVersion) -> dict[str, str]:
    """Input columns of a model without a signature: the fitted estimator's own."""
    names = getattr(estimator, "feature_names_in_", None)
    if names is None:
        raise ModelLoadError(
            f"model {version.label} declares no input columns (no signature and no "
            "feature_names_in_): log it with a signature so columns can be matched by name."
        )
    return {str(n): "any" for n in names}


def read_profile(folder: Path) -> dict[str, Any] | None:
    for candidate in (folder / "extra_files" / PROFILE_FILE, folder / PROFILE_FILE):
        if candidate.exists():
            return json.loads(candidate.read_text())
    return None


def load_model_folder(
    folder: Path, version: ModelVersion, trusted_types: list[str], *, trust_pickle: bool = False
) -> LoadedModel:
    """Load the MLflow model in ``folder`` without pickle: a sklearn model through skops,
    trusting only batchscore's list plus ``trusted_types``; an xgboost, lightgbm, catboost or
    onnx model from its native file (:mod:`batchscore.registry.flavors`); a ``pyfunc`` model
    with custom code only when ``trust_pickle``.

    Raises:
        ModelLoadError: no flavour batchscore loads, saved with pickle, untrusted types,
            corrupt, not a classifier, or its library is not installed (naming the
            ``pip install 'batchscore[<extra>]'``).
    """
    simple = _simple_mlmodel(folder)
    if simple is not None and simple.skops is not None:  # the common case, without MLflow
        estimator = load_skops(folder / simple.skops, version, trusted_types)
        classes = check_classifier(estimator, version)
        return LoadedModel(
            version=version,
            estimator=estimator,
            input_types=simple.input_types or _feature_names(estimator, version),
            profile=read_profile(folder),
            classes=classes,
        )
    from mlflow.models import Model

    try:
        meta = Model.load(str(folder / "MLmodel"))
    except Exception as exc:
        raise ModelLoadError(
            f"model {version.label}: its MLmodel file is unreadable: {exc}"
        ) from exc
    flavor = meta.flavors.get("sklearn")
    if flavor is None:
        from batchscore.registry.flavors import FLAVOR_EXTRAS, load_flavor

        native = next((f for f in FLAVOR_EXTRAS if f in meta.flavors), None)
        if native is not None:
            return load_flavor(native, folder, meta, version, read_profile(folder))
        return _load_pyfunc(folder, meta, version, trust_pickle=trust_pickle)
    fmt = flavor.get("serialization_format", "pickle")
    if fmt != "skops":
        raise ModelLoadError(
            f"model {version.label} was saved with {fmt!r}, which can run arbitrary code when "
            "loaded. Re-log it with mlflow.sklearn.log_model(serialization_format='skops')."
        )
    estimator = load_skops(
        folder / flavor.get("pickled_model", "model.skops"), version, trusted_types
    )
    classes = check_classifier(estimator, version)
    return LoadedModel(
        version=version,
        estimator=estimator,
        input_types=_input_types(meta, estimator, version),
        profile=read_profile(folder),
        classes=classes,
    )


def _load_pyfunc(
    folder: Path, meta: Any, version: ModelVersion, *, trust_pickle: bool
) -> LoadedModel:
    """A ``python_function`` model with custom code: unpickled only when trusted."""
    pyfunc = meta.flavors.get("python_function") or {}
    # mlflow.pyfunc.log_model(python_model=…) keeps its code in a (cloud)pickle.
    custom = pyfunc.get("loader_module") == "mlflow.pyfunc.model" or "cloudpickle_version" in pyfunc
    if not (custom and trust_pickle):
        what = (
            "a pyfunc model with custom code, which MLflow loads by unpickling it (running "
            "whatever code it holds)"
            if custom
            else f"not a model batchscore loads (flavours: {', '.join(meta.flavors) or 'none'})"
        )
        way_out = "; or set registry.trust_pickle: true if you trust whoever wrote it"
        raise ModelLoadError(
            f"model {version.label} is {what}. Log it in a safe flavour instead: "
            f"{SAFE_LOG_CALLS}{way_out if custom else ''}."
        )
    import mlflow.pyfunc

    try:
        model = mlflow.pyfunc.load_model(str(folder))
    except Exception as exc:
        raise ModelLoadError(
            f"model {version.label}: loading the pyfunc model failed ({type(exc).__name__}: {exc})."
        ) from exc
    types = declared_input_types(folder)
    if types is None:
        raise ModelLoadError(
            f"model {version.label} declares no input columns: log it with a signature."
        )
    return LoadedModel(
        version=version,
        estimator=_PyfuncClassifier(model),
        input_types=types,
        profile=read_profile(folder),
        classes=[],
    )


class _PyfuncClassifier:
    """A trusted pyfunc model whose ``predict`` returns class probabilities (one column per
    class, or the positive class' probability alone)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def predict_proba(self, frame: pd.DataFrame) -> Any:
        import numpy as np

        proba = np.asarray(self.model.predict(frame), dtype=np.float64)
        return np.column_stack([1 - proba, proba]) if proba.ndim == 1 else proba


def load_skops(path: Path, version: ModelVersion, trusted_types: list[str]) -> Any:
    import skops.io

    try:
        untrusted = [t for t in skops.io.get_untrusted_types(file=path) if t not in trusted_types]
    except Exception as exc:
        raise ModelLoadError(
            f"model {version.label}: artifact {path.name} is missing or corrupt "
            f"({type(exc).__name__}: {exc}). Register the model again."
        ) from exc
    if untrusted:
        raise ModelLoadError(
            f"model {version.label} contains types batchscore does not trust: "
            f"{', '.join(untrusted)}. If you know them to be safe, add them to "
            "registry.trusted_types in the config."
        )
    try:
        return skops.io.load(path, trusted=trusted_types)
    except Exception as exc:
        raise ModelLoadError(
            f"model {version.label}: loading {path.name} failed ({type(exc).__name__}: {exc})."
        ) from exc


# The column types of an MLflow signature (``mlflow.types.DataType``): a signature of these
# alone is read here without importing MLflow.
COLUMN_TYPES = frozenset(
    {"boolean", "integer", "long", "float", "double", "string", "binary", "datetime"}
)


@dataclass(frozen=True)
class SimpleMLmodel:
    """What a run needs from an MLmodel file whose signature has only named columns of
    plain types (or no signature).

    Attributes:
        input_types: column -> type name, as MLflow's ``get_input_schema()`` gives them;
            None: no signature.
        skops: the skops file of its ``sklearn`` flavour (saved with
            ``serialization_format='skops'``); None: another flavour or format, which the
            MLflow path loads or refuses.
    """

    input_types: dict[str, str] | None
    skops: str | None


def _simple_mlmodel(folder: Path) -> SimpleMLmodel | None:
    """``folder``'s MLmodel read with PyYAML alone (MLflow's import costs seconds); None
    when the file is anything but plain — unreadable, or a signature of tensors, arrays,
    objects or unnamed columns — so MLflow's own ``Model.load`` reads it and reports what is
    wrong exactly as before."""
    import yaml

    try:
        document = yaml.safe_load((folder / "MLmodel").read_text())
        flavors = document.get("flavors") or {}
        signature = document.get("signature")
        inputs = None if signature is None else signature.get("inputs")
        specs = None if inputs is None else json.loads(inputs)
    except Exception:  # Model.load says what is wrong with it
        return None
    if not isinstance(flavors, dict):
        return None
    types: dict[str, str] | None = None
    if signature is not None:
        if (
            not isinstance(specs, list)
            or not specs
            or not all(
                isinstance(spec, dict)
                and isinstance(spec.get("name"), str)
                and spec.get("type") in COLUMN_TYPES
                for spec in specs
            )
        ):
            return None
        types = {spec["name"]: spec["type"] for spec in specs}
    sklearn = flavors.get("sklearn")
    skops = None
    if isinstance(sklearn, dict) and sklearn.get("serialization_format") == "skops":
        skops = str(sklearn.get("pickled_model", "model.skops"))
    return SimpleMLmodel(types, skops)


def declared_input_types(folder: Path) -> dict[str, str] | None:
    """Input columns and types from the MLmodel signature in ``folder``, if it has one."""
    simple = _simple_mlmodel(folder)
    if simple is not None:
        return simple.input_types
    from mlflow.models import Model

    try:
        schema = Model.load(str(folder / "MLmodel")).get_input_schema()
    except Exception:
        return None  # load() reports what is wrong with the model
    if schema is None or not schema.has_input_names():
        return None
    return {
        spec.name: getattr(getattr(spec, "type", None), "name", "any") for spec in schema.inputs
    }
