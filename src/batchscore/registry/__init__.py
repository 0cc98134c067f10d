"""Model registries: the interface in ``base``, implementations beside it, chosen by type.

``REGISTRIES`` maps ``registry.type`` to the implementation's lazy loader (see
:mod:`batchscore.loaders`); :func:`open_registry` imports only the one the settings choose and
builds it with its ``from_settings``. A new registry is one module implementing
:class:`ModelRegistry` plus one entry here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from batchscore.loaders import Loader, load_implementation
from batchscore.registry.base import LoadedModel, ModelRegistry, ModelVersion

if TYPE_CHECKING:
    from batchscore.config import Settings

__all__ = ["REGISTRIES", "LoadedModel", "ModelRegistry", "ModelVersion", "open_registry"]

# registry.type -> where its implementation lives (imported only when chosen).
REGISTRIES: dict[str, Loader] = {
    "mlflow": Loader("batchscore.registry.mlflow:MlflowRegistry"),
    "sagemaker": Loader(
        "batchscore.registry.sagemaker:SageMakerRegistry", extra="aws", requires=("boto3",)
    ),
}


def open_registry(settings: Settings, *, writable: bool = True) -> ModelRegistry:
    """The registry the settings choose (MLflow on SQLite in the workspace by default).

    Args:
        settings: the registry settings, or the workspace.
        writable: False to only read (list versions): the workspace must exist already and
            an MLflow SQLite store is opened read-only, so a read-only workspace works. True
            (the default) creates the workspace if needed and checks it is writable.

    Raises:
        ConfigError: the type is unknown, or its extra is not installed
            (``pip install 'batchscore[aws]'`` for ``sagemaker``).
        WorkspaceNotFoundError: reading, and no workspace or MLflow database there.
        StorageError: writing, and the workspace is not writable.
    """
    registry_class = load_implementation(
        REGISTRIES, settings.registry_type, kind="model registry", key="registry.type"
    )
    return registry_class.from_settings(settings, writable=writable)
