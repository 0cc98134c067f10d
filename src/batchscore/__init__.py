"""batchscore: batch inference for classification models.

Features from a feature store, the latest approved model from a registry, the model's own
preprocessing, predictions (and evaluation when labels exist) published in one atomic commit
to an Iceberg table — with run records and resume. Every CLI command has a call here.
"""

from batchscore.config import Settings, load_settings
from batchscore.demo import generate_churn_data, quickstart
from batchscore.errors import BatchScoreError
from batchscore.feature_store import open_feature_store
from batchscore.pipeline import Pipeline, PipelineHooks, RunRecord
from batchscore.registry import open_registry
from batchscore.tables import open_catalog, query, run_query
from batchscore.training import train_model

__version__ = "0.1.0"

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
    "query",
    "quickstart",
    "run_query",
    "train_model",
]
