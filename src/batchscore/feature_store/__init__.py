"""Feature stores: the interface in ``base``, implementations beside it, chosen by type.

``FEATURE_STORES`` maps ``feature_store.type`` to the implementation's lazy loader (see
:mod:`batchscore.loaders`); :func:`open_feature_store` imports only the one the settings choose
and builds it with its ``from_settings``. A new feature store is one module implementing
:class:`FeatureStore` plus one entry here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from batchscore.feature_store.base import FeatureGroup, FeatureStore, LatestRecords, ReadStats
from batchscore.loaders import Loader, load_implementation

if TYPE_CHECKING:
    from batchscore.config import Settings

__all__ = [
    "FEATURE_STORES",
    "FeatureGroup",
    "FeatureStore",
    "LatestRecords",
    "ReadStats",
    "open_feature_store",
]

# feature_store.type -> where its implementation lives (imported only when chosen).
FEATURE_STORES: dict[str, Loader] = {
    "iceberg": Loader("batchscore.feature_store.iceberg:IcebergFeatureStore"),
    "files": Loader("batchscore.feature_store.files:FilesFeatureStore"),
    "sagemaker": Loader(
        "batchscore.feature_store.sagemaker:SageMakerFeatureStore",
        extra="aws",
        requires=("boto3",),
    ),
}


def open_feature_store(settings: Settings, *, writable: bool = True) -> FeatureStore:
    """The feature store the settings choose (the embedded Iceberg catalog by default).

    Args:
        settings: the feature store settings (``feature_store.type``, else the backend's).
        writable: False to only read: see ``open_catalog``.

    Raises:
        ConfigError: the type is unknown, or its extra is not installed
            (``pip install 'batchscore[aws]'`` for ``sagemaker``).
    """
    store_class = load_implementation(
        FEATURE_STORES, settings.feature_store_type, kind="feature store", key="feature_store.type"
    )
    return store_class.from_settings(settings, writable=writable)
