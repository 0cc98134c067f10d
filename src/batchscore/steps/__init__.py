"""The pipeline's steps, one module each: DataSource → BatchInference → Publish.

A step is a function of its inputs and the backends it needs; it returns its outputs and
writes its files under the run folder. It never knows which backend it was handed.
"""

from batchscore.steps.batch_inference import BatchInferenceResult, batch_inference
from batchscore.steps.data_source import DataSourceResult, data_source
from batchscore.steps.publish import PublishResult, publish

__all__ = [
    "BatchInferenceResult",
    "DataSourceResult",
    "PublishResult",
    "batch_inference",
    "data_source",
    "publish",
]
