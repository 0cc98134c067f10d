"""AWS plumbing shared by the aws backend: clients, S3 files, the Glue catalog, SNS.

Credentials come from the standard AWS chain (environment, shared config, instance or task
role) — never from batchscore's config. ``region`` comes from the config, else the chain.
Endpoints follow boto3's own ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_<SERVICE>`` variables,
which is how the tests point everything at moto's server; pyiceberg and pyarrow are given the
same endpoints.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from batchscore.errors import ConfigError

if TYPE_CHECKING:
    from pyarrow.fs import S3FileSystem

    from batchscore.config import Settings

EXTRA = "pip install 'batchscore[aws]'"


def _boto3() -> Any:
    try:
        import boto3
    except ImportError as exc:
        raise ConfigError(f"the aws backend needs boto3, which is not installed: {EXTRA}.") from exc
    return boto3


def region_of(settings: Settings) -> str | None:
    return settings.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")


def client(service: str, settings: Settings) -> Any:
    """A boto3 client in the configured region (endpoints from ``AWS_ENDPOINT_URL*``).

    Raises:
        ConfigError: no region anywhere boto3 looks; names the key to set.
    """
    from botocore.exceptions import NoRegionError

    try:
        return _boto3().session.Session(region_name=region_of(settings)).client(service)
    except NoRegionError:
        raise ConfigError(
            f"AWS {service} needs a region: set region in the config (--set region=us-east-1) "
            "or the AWS_DEFAULT_REGION environment variable."
        ) from None


def endpoint(service: str) -> str | None:
    """The endpoint override boto3 would use for ``service``, if any."""
    return os.environ.get(f"AWS_ENDPOINT_URL_{service.upper()}") or os.environ.get(
        "AWS_ENDPOINT_URL"
    )


def glue_catalog_properties(settings: Settings) -> dict[str, str]:
    """pyiceberg properties of the Glue catalog, its warehouse under ``s3://bucket/prefix``."""
    properties = {"type": "glue", "warehouse": f"{settings.s3_prefix}/warehouse"}
    region = region_of(settings)
    if region:
        properties |= {"glue.region": region, "s3.region": region, "client.region": region}
    if endpoint("glue"):
        properties["glue.endpoint"] = endpoint("glue")  # type: ignore[assignment]
    if endpoint("s3"):
        properties["s3.endpoint"] = endpoint("s3")  # type: ignore[assignment]
    return properties


def s3_filesystem(settings: Settings | None = None, region: str | None = None) -> S3FileSystem:
    """pyarrow's S3 filesystem with the chain's credentials (pyarrow reads the same chain)."""
    from pyarrow.fs import S3FileSystem

    kwargs: dict[str, Any] = {}
    region = region or (region_of(settings) if settings else None)
    if region:
        kwargs["region"] = region
    url = endpoint("s3")
    if url:
        parsed = urlparse(url)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
    return S3FileSystem(**kwargs)


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` → (bucket, key)."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("s3", "s3a", "s3n") or not parsed.netloc:
        raise ConfigError(f"{uri!r} is not an S3 URI: use s3://bucket/key.")
    return parsed.netloc, parsed.path.lstrip("/")


def publish_sns(settings: Settings, subject: str, body: str) -> None:
    """Publish one message to ``sns_topic_arn`` (SNS subjects: ≤100 chars, one line)."""
    subject = " ".join(subject.split())[:100]
    client("sns", settings).publish(TopicArn=settings.sns_topic_arn, Subject=subject, Message=body)
