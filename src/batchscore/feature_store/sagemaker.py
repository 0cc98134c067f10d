"""SageMaker Feature Store's offline store, read with the embedded store's semantics.

``describe_feature_group`` says where the offline store is and in which format:

- ``Iceberg``: an Iceberg table in the Glue catalog (``DataCatalogConfig``), read through
  pyiceberg's Glue catalog at its current snapshot (pinned for resume, like the embedded store);
- ``Glue`` (the default): Parquet files under ``ResolvedOutputS3Uri``, read directly with
  pyarrow's S3 filesystem.

Either way the rows go through the embedded store's DuckDB ranking: per id the newest version
by (event time, ``api_invocation_time``, ``write_time``), dropped if it is a delete marker
(``is_deleted``), ids in range by their numeric part (``CUST_004000`` → 4000). Event times
stored as ISO-8601 strings (SageMaker's usual ``String`` event time) are read as timestamps.

Records reach the offline store through SageMaker's own ingestion (``PutRecord``, the SDK's
``ingest``); batchscore only reads it, so ``features create|ingest|delete`` say so.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from batchscore.errors import FeatureGroupError, did_you_mean
from batchscore.feature_store.base import FeatureGroup, FeatureStore, LatestRecords, ReadStats

if TYPE_CHECKING:
    from batchscore.config import Settings

TYPES = {"Integral": "Integral", "Fractional": "Fractional", "String": "String"}


class SageMakerFeatureStore(FeatureStore):
    """Feature groups of SageMaker Feature Store (read-only)."""

    def __init__(
        self,
        settings: Settings,
        *,
        sagemaker_client: Any = None,
        filesystem: Any = None,
        offline_catalog: Any = None,
    ) -> None:
        """The feature groups in the settings' region.

        Args:
            settings: ``region``, and ``catalog`` for an Iceberg offline store's Glue catalog.
            sagemaker_client: the boto3 SageMaker client to talk through (default: one from
                the standard AWS chain, in the settings' region).
            filesystem: the pyarrow filesystem a Parquet (``Glue``) offline store is read
                with (default: S3 with the chain's credentials).
            offline_catalog: the pyiceberg catalog an ``Iceberg`` offline store is read from
                (default: ``catalog`` from the settings, else the Glue catalog).

        Raises:
            ConfigError: boto3 is not installed, or no region is set anywhere.
        """
        from batchscore import aws

        self.settings = settings
        self.sagemaker = sagemaker_client or aws.client("sagemaker", settings)
        self._filesystem = filesystem
        self._offline_catalog = offline_catalog

    @classmethod
    def from_settings(cls, settings: Settings, *, writable: bool = True) -> SageMakerFeatureStore:
        """The store in the settings' region (``writable`` changes nothing: batchscore only
        reads SageMaker's feature groups).

        Raises:
            ConfigError: boto3 is not installed, or no region is set anywhere.
        """
        return cls(settings)

    # Definition -------------------------------------------------------------------------

    def list_feature_groups(self) -> list[str]:
        names: list[str] = []
        kwargs: dict[str, Any] = {}
        while True:
            page = self.sagemaker.list_feature_groups(**kwargs)
            names += [g["FeatureGroupName"] for g in page.get("FeatureGroupSummaries", [])]
            if not page.get("NextToken"):
                return sorted(names)
            kwargs["NextToken"] = page["NextToken"]

    def _describe(self, name: str) -> dict[str, Any]:
        from botocore.exceptions import ClientError

        try:
            return self.sagemaker.describe_feature_group(FeatureGroupName=name)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            try:
                known: list[str] | None = self.list_feature_groups()
            except Exception:  # listing needs its own permission (and moto lacks it)
                known = None
            if code in ("ResourceNotFound", "ValidationException") or (
                known is not None and name not in known
            ):
                listed = (
                    f"{did_you_mean(name, known)} (feature groups: {', '.join(known) or 'none'})"
                    if known is not None
                    else ""
                )
                raise FeatureGroupError(
                    f"feature group {name!r} does not exist in SageMaker Feature Store in region "
                    f"{self.sagemaker.meta.region_name}{listed}. Check feature_group_name and "
                    "region."
                ) from exc
            raise

    def describe(self, name: str) -> FeatureGroup:
        described = self._describe(name)
        offline = described.get("OfflineStoreConfig")
        if not offline:
            raise FeatureGroupError(
                f"feature group {name!r} has no offline store: batch scoring reads the offline "
                "store, so create the feature group with OfflineStoreConfig."
            )
        key = described["RecordIdentifierFeatureName"]
        event = described["EventTimeFeatureName"]
        features = {
            d["FeatureName"]: TYPES.get(d["FeatureType"], "String")
            for d in described.get("FeatureDefinitions", [])
            if d["FeatureName"] not in (key, event)
        }
        catalog = offline.get("DataCatalogConfig", {})
        snapshot_id = None
        table_identifier = f"{catalog.get('Database', '')}.{catalog.get('TableName', '')}"
        if _format(offline) == "Iceberg":
            table = self._iceberg_table(name, offline)
            snapshot = table.current_snapshot()
            snapshot_id = snapshot.snapshot_id if snapshot else None
            location = table.location()
        else:
            location = _data_uri(offline)
        return FeatureGroup(
            name=name,
            record_identifier=key,
            event_time_feature=event,
            features=features,
            table_identifier=table_identifier,
            location=location,
            snapshot_id=snapshot_id,
        )

    def _iceberg_table(self, name: str, offline: dict[str, Any]) -> Any:
        catalog_config = offline.get("DataCatalogConfig") or {}
        if not catalog_config.get("Database") or not catalog_config.get("TableName"):
            raise FeatureGroupError(
                f"feature group {name!r} is in Iceberg format but names no Glue database and "
                "table (OfflineStoreConfig.DataCatalogConfig)."
            )
        catalog = self._catalog()
        identifier = f"{catalog_config['Database']}.{catalog_config['TableName']}"
        try:
            return catalog.load_table(identifier)
        except Exception as exc:
            raise FeatureGroupError(
                f"the offline store table {identifier} of feature group {name!r} cannot be "
                f"loaded from the Glue catalog: {exc}"
            ) from exc

    def _catalog(self) -> Any:
        """The Glue catalog of Iceberg offline stores (opened once)."""
        if self._offline_catalog is None:
            from pyiceberg.catalog import load_catalog

            from batchscore.aws import glue_catalog_properties

            properties = dict(
                self.settings.catalog or glue_catalog_properties(_no_warehouse(self.settings))
            )
            self._offline_catalog = load_catalog("sagemaker-offline-store", **properties)
        return self._offline_catalog

    def create_feature_group(self, name: str, features: Any, **kwargs: Any) -> FeatureGroup:
        raise FeatureGroupError(_READ_ONLY)

    def ingest(self, name: str, data: Any, **kwargs: Any) -> Any:
        raise FeatureGroupError(_READ_ONLY)

    def delete_records(self, name: str, ids: Any, **kwargs: Any) -> Any:
        raise FeatureGroupError(_READ_ONLY)

    # Reading ----------------------------------------------------------------------------

    def latest_records(
        self,
        name: str,
        id_start: int,
        id_end: int,
        *,
        as_of: dt.datetime | None = None,
        snapshot_id: int | None = None,
        batch_size: int = 100_000,
        temp_dir: Path | None = None,
    ) -> LatestRecords:
        from batchscore.feature_store.latest import (
            latest_batches,
            pinned_snapshot,
            scan_source,
            utc_naive,
        )

        described = self._describe(name)
        offline = described["OfflineStoreConfig"]
        group = self.describe(name)
        key, event = group.record_identifier, group.event_time_feature
        as_of = utc_naive(as_of)
        stats = ReadStats()
        if _format(offline) == "Iceberg":
            table = self._iceberg_table(name, offline)
            snapshot_id = pinned_snapshot(table, name, snapshot_id, group.snapshot_id)
            schema = table.schema().as_arrow()
            if snapshot_id is None:
                source: Any = lambda: None  # noqa: E731  (never written to)
            else:
                scan = table.scan(snapshot_id=snapshot_id)
                source = lambda: _typed(_as_reader(scan_source(scan)), event)  # noqa: E731
        else:
            dataset = self._parquet_dataset(name, offline)
            schema = dataset.schema
            source = lambda: _typed(dataset.scanner(batch_size=batch_size).to_reader(), event)  # noqa: E731
        out_columns = [key, event, *group.features]
        missing = [c for c in out_columns if c not in schema.names]
        if missing:
            raise FeatureGroupError(
                f"the offline store of feature group {name!r} lacks column {missing[0]!r} that "
                "its definition names: is the offline store still being written?"
            )
        out_schema = pa.schema(
            [
                pa.field(event, pa.timestamp("us")) if c == event else schema.field(c)
                for c in out_columns
            ]
        )
        batches = latest_batches(
            source,
            key=key,
            event=event,
            out_columns=out_columns,
            out_schema=out_schema,
            id_start=id_start,
            id_end=id_end,
            as_of=as_of,
            batch_size=batch_size,
            temp_dir=temp_dir,
            stats=stats,
        )
        return LatestRecords(out_schema, batches, snapshot_id, as_of, stats)

    def _parquet_dataset(self, name: str, offline: dict[str, Any]) -> Any:
        import pyarrow.dataset as ds

        from batchscore.aws import s3_filesystem, split_s3

        uri = _data_uri(offline)
        bucket, prefix = split_s3(uri)
        try:
            return ds.dataset(
                f"{bucket}/{prefix.rstrip('/')}",
                filesystem=self._filesystem or s3_filesystem(self.settings),
                format="parquet",
                exclude_invalid_files=True,
            )
        except (OSError, pa.ArrowInvalid) as exc:
            raise FeatureGroupError(
                f"cannot read the offline store of feature group {name!r} at {uri}: {exc}"
            ) from exc


_READ_ONLY = (
    "the SageMaker feature store is read-only to batchscore: records reach its offline store "
    "through SageMaker's own ingestion (PutRecord, the SageMaker SDK's FeatureGroup.ingest)."
)


def _format(offline: dict[str, Any]) -> str:
    return offline.get("TableFormat") or "Glue"


def _data_uri(offline: dict[str, Any]) -> str:
    storage = offline.get("S3StorageConfig", {})
    uri = storage.get("ResolvedOutputS3Uri") or storage.get("S3Uri")
    if not uri:
        raise FeatureGroupError("the feature group's offline store names no S3 location.")
    return uri


def _no_warehouse(settings: Settings) -> Settings:
    """Settings for reading someone else's Glue tables (no bucket needed)."""
    if settings.bucket:
        return settings
    return settings.model_copy(update={"bucket": "unused"})


def _as_reader(found: list[str] | pa.RecordBatchReader | None) -> pa.RecordBatchReader | None:
    if found is None or isinstance(found, pa.RecordBatchReader):
        return found
    import pyarrow.dataset as ds

    return ds.dataset(found, format="parquet").scanner().to_reader()


def _typed(reader: pa.RecordBatchReader | None, event: str) -> pa.RecordBatchReader | None:
    """The offline store's rows with the event time as a UTC-naive timestamp."""
    if reader is None:
        return None
    field = reader.schema.field(event)
    if pa.types.is_timestamp(field.type) and field.type.tz is None:
        return reader
    schema = reader.schema.set(
        reader.schema.get_field_index(event), pa.field(event, pa.timestamp("us"))
    )

    def batches() -> Iterator[pa.RecordBatch]:
        for batch in reader:
            values = batch.column(event)
            if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
                values = pc.cast(values, pa.timestamp("us", tz="UTC"))
            elif pa.types.is_floating(values.type) or pa.types.is_integer(values.type):
                # Fractional event times are seconds since the epoch.
                values = pc.cast(
                    pc.multiply(values, 1_000_000).cast(pa.int64()), pa.timestamp("us", tz="UTC")
                )
            values = values.cast(pa.timestamp("us", tz="UTC")).cast(pa.timestamp("us"))
            columns = list(batch.columns)
            columns[batch.schema.get_field_index(event)] = values
            yield pa.RecordBatch.from_arrays(columns, schema=schema)

    return pa.RecordBatchReader.from_batches(schema, batches())
