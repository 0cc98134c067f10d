"""Model registries: the interface in ``base``, implementations beside it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from batchscore.registry.base import LoadedModel, ModelRegistry, ModelVersion

if TYPE_CHECKING:
    from batchscore.config import Settings

__all__ = ["LoadedModel", "ModelRegistry", "ModelVersion", "open_registry"]


def open_registry(settings: Settings, *, writable: bool = True) -> ModelRegistry:
    """The registry the settings choose (MLflow on SQLite in the workspace by default).

    Args:
        settings: the registry settings, or the workspace.
        writable: False to only read (list versions): the workspace must exist already and
            an MLflow SQLite store is opened read-only, so a read-only workspace works. True
            (the default) creates the workspace if needed and checks it is writable.

    Raises:
        WorkspaceNotFoundError: reading, and no workspace or MLflow database there.
        StorageError: writing, and the workspace is not writable.
    """
    from batchscore.workspace import ensure_writable_workspace, require_workspace

    if settings.registry_type == "sagemaker":
        from batchscore.registry.sagemaker import SageMakerRegistry

        return SageMakerRegistry(settings, cache_dir=settings.workspace_path / "models")
    from batchscore.registry.mlflow import MlflowRegistry

    if not settings.registry.tracking_uri:  # the embedded default lives in the workspace
        if writable:
            ensure_writable_workspace(settings)
        else:
            require_workspace(settings)
    return MlflowRegistry(
        tracking_uri=settings.tracking_uri,
        artifact_location=settings.artifact_location,
        cache_dir=settings.workspace_path / "models",
        trusted_types=settings.registry.trusted_types,
        writable=writable,
    )
