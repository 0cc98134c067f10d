"""Feature stores: the interface in ``base``, implementations beside it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from batchscore.feature_store.base import FeatureGroup, FeatureStore, LatestRecords, ReadStats

if TYPE_CHECKING:
    from batchscore.config import Settings

__all__ = ["FeatureGroup", "FeatureStore", "LatestRecords", "ReadStats", "open_feature_store"]


def open_feature_store(settings: Settings, *, writable: bool = True) -> FeatureStore:
    """The feature store the settings choose (the embedded Iceberg catalog by default).

    ``writable=False`` only reads: see ``open_catalog``.
    """
    if settings.feature_store_type == "sagemaker":
        from batchscore.feature_store.sagemaker import SageMakerFeatureStore

        return SageMakerFeatureStore(settings)
    from batchscore.catalog import open_catalog
    from batchscore.feature_store.iceberg import IcebergFeatureStore

    return IcebergFeatureStore(open_catalog(settings, writable=writable))
