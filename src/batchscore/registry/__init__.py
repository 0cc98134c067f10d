"""Model registries: the interface in ``base``, implementations beside it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from batchscore.registry.base import LoadedModel, ModelRegistry, ModelVersion

if TYPE_CHECKING:
    from batchscore.config import Settings

__all__ = ["LoadedModel", "ModelRegistry", "ModelVersion", "open_registry"]


def open_registry(settings: Settings) -> ModelRegistry:
    """The registry the settings choose (MLflow on SQLite in the workspace by default)."""
    if settings.registry_type == "sagemaker":
        from batchscore.registry.sagemaker import SageMakerRegistry

        return SageMakerRegistry(settings, cache_dir=settings.workspace_path / "models")
    from batchscore.registry.mlflow import MlflowRegistry

    return MlflowRegistry(
        tracking_uri=settings.tracking_uri,
        artifact_location=settings.artifact_location,
        cache_dir=settings.workspace_path / "models",
        trusted_types=settings.registry.trusted_types,
    )
