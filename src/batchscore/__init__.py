"""batchscore: batch inference for classification models.

Features from a feature store, the latest approved model from a registry, the model's own
preprocessing, predictions (and evaluation when labels exist) published in one atomic commit
to an Iceberg table — with run records and resume. Every CLI command has a call here.

The names below are imported on first use, so ``import batchscore`` (and ``batchscore
--help``) does not pay for pandas, pyiceberg and MLflow until a command needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> the module that defines it
_EXPORTS = {
    "BatchScoreError": "batchscore.errors",
    "Pipeline": "batchscore.pipeline",
    "PipelineHooks": "batchscore.records",
    "RunRecord": "batchscore.records",
    "Settings": "batchscore.config",
    "generate_churn_data": "batchscore.demo",
    "load_settings": "batchscore.config",
    "open_catalog": "batchscore.catalog",
    "open_feature_store": "batchscore.feature_store",
    "open_registry": "batchscore.registry",
    "open_sink": "batchscore.sinks",
    "query": "batchscore.queries",
    "quickstart": "batchscore.demo",
    "run_query": "batchscore.queries",
    "train_model": "batchscore.training",
}

__all__ = [
    "BatchScoreError",
    "Pipeline",
    "PipelineHooks",
    "RunRecord",
    "Settings",
    "generate_churn_data",
    "load_settings",
    "open_catalog",
    "open_feature_store",
    "open_registry",
    "open_sink",
    "query",
    "quickstart",
    "run_query",
    "train_model",
]
assert sorted(__all__) == sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'batchscore' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:
    from batchscore.catalog import open_catalog
    from batchscore.config import Settings, load_settings
    from batchscore.demo import generate_churn_data, quickstart
    from batchscore.errors import BatchScoreError
    from batchscore.feature_store import open_feature_store
    from batchscore.pipeline import Pipeline
    from batchscore.queries import query, run_query
    from batchscore.records import PipelineHooks, RunRecord
    from batchscore.registry import open_registry
    from batchscore.sinks import open_sink
    from batchscore.training import train_model
