"""AWS as the tests play it: moto's server on 127.0.0.1, and SageMaker's part where moto has none.

Helpers only; the fixtures ``moto_url`` (one server for the session) and ``aws`` (credentials,
endpoints and a clean moto state per test) are in ``tests/conftest.py``, built on
:func:`start_moto`, :func:`reset_moto` and :data:`AWS_ENVIRONMENT`. The helpers write a feature
group's offline store (Parquet under its S3 location, or an Iceberg table in Glue, with
SageMaker's own columns) as SageMaker's ingestion would.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import boto3
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from batchscore import demo
from batchscore.config import load_settings
from tests.helpers import SEED_CONFIG
from tests.servers import free_port

REGION = "us-west-2"  # the seed's
BUCKET = "mlbucket-sagemaker"
GROUP = "mlops_poc_churn_classification_feature"
OFFLINE = f"s3://{BUCKET}/offline-store/{GROUP}"


def seed_settings_data():
    """The seed's settings with backend aws, no workspace (for helpers that need S3 names)."""
    data = yaml.safe_load(SEED_CONFIG)
    return load_settings(None, overrides={**data, "backend": "aws"}, env={})


def seed_settings(tmp_path: Path, **extra: object):
    """The seed's own config file plus ``backend: aws`` (and a local workspace)."""
    data = yaml.safe_load(SEED_CONFIG)
    data.update({"backend": "aws", "workspace": str(tmp_path / "ws"), **extra})
    path = tmp_path / "pipeline_config.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_settings(path, env={})


def offline_store_rows(data: demo.ChurnData) -> pd.DataFrame:
    """The demo records as SageMaker's offline store holds them: event time as an ISO string
    (a String feature), write/api times as timestamps, delete markers with is_deleted."""
    records = data.records.to_pandas()
    records["api_invocation_time"] = records["event_time"] + pd.Timedelta(seconds=1)
    records["write_time"] = records["event_time"] + pd.Timedelta(minutes=5)
    records["is_deleted"] = False
    markers = pd.DataFrame({
        "customer_id": data.deleted_ids,
        "event_time": pd.Timestamp(demo.DELETE_TIME),
        "api_invocation_time": pd.Timestamp(demo.DELETE_TIME),
        "write_time": pd.Timestamp(demo.DELETE_TIME) + pd.Timedelta(minutes=5),
        "is_deleted": True,
    })  # fmt: skip
    return pd.concat([records, markers], ignore_index=True)


def offline_store_table(rows: pd.DataFrame) -> pa.Table:
    """Rows as the offline store's Arrow table: the event time is an ISO-8601 string."""
    table = pa.Table.from_pandas(rows, preserve_index=False)
    iso = pa.array(rows["event_time"].dt.strftime("%Y-%m-%dT%H:%M:%SZ"), pa.string())
    return table.set_column(table.schema.get_field_index("event_time"), "event_time", iso)


def create_feature_group(rows: pd.DataFrame, table_format: str = "Glue") -> None:
    """What SageMaker holds: the feature group's definition, and its offline store files."""
    kinds = {"int64": "Integral", "Int64": "Integral", "float64": "Fractional"}
    definitions = [
        {"FeatureName": c, "FeatureType": kinds.get(str(rows[c].dtype), "String")}
        for c in rows.columns
        if c not in ("api_invocation_time", "write_time", "is_deleted")
    ]
    for d in definitions:
        if d["FeatureName"] == "event_time":
            d["FeatureType"] = "String"
    sagemaker = boto3.client("sagemaker", region_name=REGION)
    sagemaker.create_feature_group(
        FeatureGroupName=GROUP,
        RecordIdentifierFeatureName="customer_id",
        EventTimeFeatureName="event_time",
        FeatureDefinitions=definitions,
        OfflineStoreConfig={
            "S3StorageConfig": {"S3Uri": OFFLINE},
            "TableFormat": table_format,
            "DataCatalogConfig": {
                "TableName": GROUP,
                "Catalog": "AwsDataCatalog",
                "Database": "sagemaker_featurestore",
            },
        },
        RoleArn="arn:aws:iam::123456789012:role/ML-Role-Pipelines",
    )
    table = offline_store_table(rows)
    offline = sagemaker.describe_feature_group(FeatureGroupName=GROUP)["OfflineStoreConfig"]
    if table_format == "Iceberg":  # SageMaker keeps an Iceberg offline store in Glue
        from pyiceberg.catalog import load_catalog

        from batchscore.aws import glue_catalog_properties

        names = offline["DataCatalogConfig"]
        catalog = load_catalog("offline", **glue_catalog_properties(seed_settings_data()))
        catalog.create_namespace(names["Database"])
        iceberg = catalog.create_table(
            f"{names['Database']}.{names['TableName']}", schema=table.schema
        )
        half = table.num_rows // 2
        iceberg.append(table.slice(0, half))
        iceberg.append(table.slice(half))
        return
    # SageMaker writes under the resolved location: <S3Uri>/<account>/…/<group>-<ts>/data,
    # one file per partition and hour; two files here.
    resolved = offline["S3StorageConfig"]["ResolvedOutputS3Uri"]
    prefix = resolved.removeprefix(f"s3://{BUCKET}/").rstrip("/")
    s3 = boto3.client("s3", region_name=REGION)
    half = table.num_rows // 2
    for i, part in enumerate((table.slice(0, half), table.slice(half))):
        sink = pa.BufferOutputStream()
        pq.write_table(part, sink)
        key = f"{prefix}/year=2026/month=03/day=0{i + 1}/hour=00/part-{i}.parquet"
        s3.put_object(Bucket=BUCKET, Key=key, Body=sink.getvalue().to_pybytes())


@contextmanager
def moto_server() -> Iterator[str]:
    """moto's server on a free port of 127.0.0.1; yields its URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def aws_environment(moto_url: str) -> dict[str, str]:
    """The variables that point boto3, pyiceberg and pyarrow at moto, with fake credentials."""
    return {
        "AWS_ENDPOINT_URL": moto_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }


def reset_moto(moto_url: str) -> None:
    """Forget everything moto holds, then make the seed's bucket again."""
    request = urllib.request.Request(f"{moto_url}/moto-api/reset", method="POST")
    urllib.request.urlopen(request).close()
    s3 = boto3.client(
        "s3", region_name=REGION, endpoint_url=moto_url,
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )  # fmt: skip
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
