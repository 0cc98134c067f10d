"""The predictions' columns: what BatchInference writes and every sink stores.

BatchInference (and the Ray engine) write their Parquet files in exactly this schema, so a sink
can take the files as they are.
"""

from __future__ import annotations

import pyarrow as pa

# The seed's four columns, then lineage, then the partition column.
PREDICTIONS_SCHEMA = pa.schema(
    [
        pa.field("customer_id", pa.string()),
        pa.field("prediction", pa.int32()),
        pa.field("prediction_probability", pa.float64()),
        pa.field("timestamp", pa.timestamp("us")),
        pa.field("model_name", pa.string()),
        pa.field("model_version", pa.int32()),
        pa.field("run_id", pa.string()),
        pa.field("pipeline_name", pa.string()),
        pa.field("id_range", pa.string()),
        pa.field("inference_date", pa.date32()),
    ]
)
# Rows BatchInference could not score (batchscore.monitoring.quarantine): why, and the row as
# read; then the same lineage columns as the predictions, partitioned the same way.
QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("record_id", pa.string()),
        pa.field("reason", pa.string()),  # uncastable_value or model_error
        pa.field("detail", pa.string()),  # one line: the column and value, or the model's error
        pa.field("raw_values", pa.string()),  # the row as read, as JSON
        *list(PREDICTIONS_SCHEMA)[3:],
    ]
)
# One partition per inference date: what ``overwrite`` replaces and readers prune by.
PARTITION_COLUMN = "inference_date"
