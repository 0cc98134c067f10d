"""SageMaker Model Registry: model package groups, versions, ``ModelApprovalStatus``.

The newest package whose status is ``Approved`` (by creation time, which is version order)
is the one a run scores with. Its ``ModelDataUrl`` (a ``model.tar.gz`` on S3) is downloaded
once into the workspace's model cache (``cache``) and unpacked by ``archive``, which refuses
links, paths outside the folder and archives over the size limits; an MLflow model folder
inside it (``MLmodel`` at the top or one level down) loads exactly like a model from the MLflow
registry — through skops, with batchscore's trusted types, or natively for the xgboost,
lightgbm, catboost and onnx flavours. A bare ``model.skops`` loads the same way. SageMaker's
built-in XGBoost ``xgboost-model`` (JSON, UBJ or XGBoost binary, told apart by content) loads
natively; its columns, which the model does not name, come from the package's customer
metadata ``feature_names`` (comma-separated, training order). A pickle-only artifact
(``model.joblib``, ``model.pkl``) loads only with ``registry.trust_pickle: true``, because
unpickling runs whatever code the file holds.
"""

from __future__ import annotations

import datetime as dt
import tarfile
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchscore.config import APPROVAL_STATUSES, RESOURCE_NAME, validate_identifier
from batchscore.errors import ModelError, ModelLoadError, UnknownVersionError
from batchscore.registry.archive import extract_archive, format_bytes
from batchscore.registry.base import (
    DEFAULT_STATUS,
    TRUSTED_SKOPS_TYPES,
    LoadedModel,
    ModelRegistry,
    ModelVersion,
    check_classifier,
)
from batchscore.registry.cache import ModelCache

if TYPE_CHECKING:
    import pandas as pd

    from batchscore.config import Settings

# The image a SageMaker endpoint would use; batch scoring here never runs it, but a model
# package must name one. This is AWS's scikit-learn inference image for us-east-1.
DEFAULT_IMAGE = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.2-1-cpu-py3"
PICKLE_NAMES = ("model.joblib", "model.pkl", "model.pickle")
# SageMaker's built-in XGBoost algorithm leaves this file in its model.tar.gz.
XGBOOST_MODEL_NAME = "xgboost-model"
# Customer metadata key naming a header-less model's columns, in training order.
FEATURE_NAMES_KEY = "feature_names"


class SageMakerRegistry(ModelRegistry):
    """Model package groups in SageMaker's Model Registry."""

    def __init__(
        self,
        settings: Settings,
        cache_dir: Path | None = None,
        *,
        sagemaker_client: Any = None,
        s3_client: Any = None,
    ) -> None:
        """A registry in the settings' region, uploading under ``s3://bucket/prefix``.

        Args:
            settings: ``region``, ``bucket``/``prefix`` and the ``registry`` keys.
            cache_dir: the model cache folder (default: the workspace's ``models/``).
            sagemaker_client: the boto3 SageMaker client to talk through (default: one from
                the standard AWS chain, in the settings' region).
            s3_client: the boto3 S3 client for model archives (default: likewise).

        Raises:
            ConfigError: boto3 is not installed, or no region is set anywhere.
        """
        from batchscore import aws

        self.region = aws.region_of(settings)
        self.settings = settings
        self.sagemaker = sagemaker_client or aws.client("sagemaker", settings)
        self.s3 = s3_client or aws.client("s3", settings)
        self.cache_dir = cache_dir if cache_dir is not None else settings.workspace_path / "models"
        self.cache = ModelCache(self.cache_dir)
        self.max_archive_bytes = settings.registry.max_archive_bytes
        self.trusted_types = [*TRUSTED_SKOPS_TYPES, *settings.registry.trusted_types]
        self.trust_pickle = settings.registry.trust_pickle

    @classmethod
    def from_settings(cls, settings: Settings, *, writable: bool = True) -> SageMakerRegistry:
        """The registry in the settings' region (``writable`` changes nothing: the
        workspace only holds the model cache).

        Raises:
            ConfigError: boto3 is not installed, or no region is set anywhere.
        """
        return cls(settings)

    # Listing and status -----------------------------------------------------------------

    def _packages(self, group: str) -> list[dict[str, Any]]:
        validate_identifier(group, "model_package_group", RESOURCE_NAME)
        from botocore.exceptions import ClientError

        packages: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {
            "ModelPackageGroupName": group,
            "SortBy": "CreationTime",
            "SortOrder": "Descending",
        }
        try:
            while True:
                page = self.sagemaker.list_model_packages(**kwargs)
                packages.extend(page.get("ModelPackageSummaryList", []))
                if not page.get("NextToken"):
                    break
                kwargs["NextToken"] = page["NextToken"]
        except ClientError as exc:
            if "does not exist" in str(exc) or "ValidationException" in str(exc):
                return []
            raise ModelError(f"cannot list model packages of {group!r}: {exc}") from exc
        return packages

    def _to_version(self, group: str, summary: dict[str, Any]) -> ModelVersion:
        created = summary.get("CreationTime") or dt.datetime.now(dt.UTC)
        return ModelVersion(
            group=group,
            version=int(summary.get("ModelPackageVersion") or 0),
            status=summary.get("ModelApprovalStatus") or DEFAULT_STATUS,
            created=created,
            source=summary["ModelPackageArn"],
            description=summary.get("ModelPackageDescription") or "",
        )

    def list_versions(self, group: str) -> list[ModelVersion]:
        versions = [self._to_version(group, p) for p in self._packages(group)]
        return sorted(versions, key=lambda v: (v.created, v.version), reverse=True)

    def get_version(self, group: str, version: int) -> ModelVersion:
        for candidate in self.list_versions(group):
            if candidate.version == version:
                return candidate
        known = ", ".join(f"v{v.version}" for v in self.list_versions(group)) or "none"
        raise UnknownVersionError(
            f"model package group {group!r} has no version {version} (versions: {known})."
        )

    def set_status(self, group: str, version: int, status: str) -> ModelVersion:
        if status not in APPROVAL_STATUSES:
            raise ModelError(
                f"approval status {status!r} is not one of {', '.join(APPROVAL_STATUSES)}."
            )
        package = self.get_version(group, version)
        self.sagemaker.update_model_package(
            ModelPackageArn=package.source, ModelApprovalStatus=status
        )
        return self.get_version(group, version)

    # Loading ----------------------------------------------------------------------------

    def _model_data_url(self, version: ModelVersion) -> str:
        described = self.sagemaker.describe_model_package(ModelPackageName=version.source)
        containers = described.get("InferenceSpecification", {}).get("Containers", [])
        url = next((c.get("ModelDataUrl") for c in containers if c.get("ModelDataUrl")), None)
        if not url:
            raise ModelLoadError(
                f"model package {version.label} ({version.source}) has no ModelDataUrl: "
                "register it with its model.tar.gz in InferenceSpecification.Containers."
            )
        return url

    def _download(self, version: ModelVersion) -> Path:
        """The package's unpacked model.tar.gz, from the workspace's verified model cache.

        The cache key is the package ARN (region, account, group, version), its ModelDataUrl
        and the S3 object's ETag/version, so a recreated group's v1 or a replaced object is
        never taken for what was cached before.
        """
        from batchscore.aws import split_s3

        url = self._model_data_url(version)
        bucket, key = split_s3(url)
        label = f"model {version.label}"
        try:
            head = self.s3.head_object(Bucket=bucket, Key=key)
        except Exception as exc:
            raise ModelLoadError(
                f"cannot download {label} from {url}: {exc}. Check that the object exists and "
                "this role may s3:GetObject it."
            ) from exc
        size = int(head.get("ContentLength") or 0)
        if size > self.max_archive_bytes:
            raise ModelLoadError(
                f"{label}: {url} is {format_bytes(size)}, over the "
                f"{format_bytes(self.max_archive_bytes)} limit (registry.max_archive_bytes)."
            )
        object_version = head.get("VersionId")
        cache_key = {
            "registry": "sagemaker",
            "region": self.region,
            "package_arn": version.source,
            "model_data_url": url,
            "etag": head.get("ETag"),
            "object_version": object_version,
        }

        def fetch(staging: Path) -> Path:
            archive = staging / "model.tar.gz"
            extra = {"VersionId": object_version} if object_version else None
            try:
                self.s3.download_file(bucket, key, str(archive), ExtraArgs=extra)
            except Exception as exc:
                raise ModelLoadError(
                    f"cannot download {label} from {url}: {exc}. Check that the object exists "
                    "and this role may s3:GetObject it."
                ) from exc
            unpacked = staging / "model"
            extract_archive(archive, unpacked, name=label, max_bytes=self.max_archive_bytes)
            return unpacked

        return self.cache.fetch(cache_key, fetch, label=label)

    def input_types(self, version: ModelVersion) -> dict[str, str] | None:
        from batchscore.registry.mlflow import declared_input_types

        folder = self._download(version)
        mlflow_folder = _mlflow_folder(folder)
        return declared_input_types(mlflow_folder) if mlflow_folder else None

    def profile(self, version: ModelVersion) -> dict[str, Any] | None:
        from batchscore.registry.mlflow import read_profile

        folder = self._download(version)
        mlflow_folder = _mlflow_folder(folder)
        return read_profile(mlflow_folder) if mlflow_folder else None

    def load(self, version: ModelVersion) -> LoadedModel:
        from batchscore.registry.mlflow import load_model_folder, load_skops

        folder = self._download(version)
        mlflow_folder = _mlflow_folder(folder)
        if mlflow_folder is not None:
            return load_model_folder(
                mlflow_folder, version, self.trusted_types, trust_pickle=self.trust_pickle
            )
        xgboost_files = sorted(folder.rglob(XGBOOST_MODEL_NAME))
        if xgboost_files:
            from batchscore.registry.flavors import load_xgboost_file

            return load_xgboost_file(xgboost_files[0], version, self._feature_names(version))
        skops_files = sorted(folder.rglob("*.skops"))
        if skops_files:
            estimator = load_skops(skops_files[0], version, self.trusted_types)
            return _bare_model(estimator, version)
        pickles = [p for name in PICKLE_NAMES for p in sorted(folder.rglob(name))]
        if pickles:
            if not self.trust_pickle:
                raise ModelLoadError(
                    f"model {version.label} holds only a pickle ({pickles[0].name}), which runs "
                    "arbitrary code when loaded. Re-register it as an MLflow model saved with "
                    "skops, or set registry.trust_pickle: true if you trust whoever wrote it."
                )
            import joblib

            try:
                estimator = joblib.load(pickles[0])
            except Exception as exc:
                raise ModelLoadError(
                    f"model {version.label}: loading {pickles[0].name} failed ({exc})."
                ) from exc
            return _bare_model(estimator, version)
        found = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
        raise ModelLoadError(
            f"model {version.label}: its model.tar.gz holds {found}; expected an MLflow model "
            "folder (MLmodel), SageMaker XGBoost's xgboost-model, a model.skops, or (with "
            "trust_pickle) a model.joblib."
        )

    def _feature_names(self, version: ModelVersion) -> list[str] | None:
        """The training columns in order, from the package's customer metadata
        ``feature_names`` (comma-separated): SageMaker's built-in XGBoost trains on CSV
        without a header, so its model has no names of its own."""
        described = self.sagemaker.describe_model_package(ModelPackageName=version.source)
        names = (described.get("CustomerMetadataProperties") or {}).get(FEATURE_NAMES_KEY)
        return [n.strip() for n in names.split(",") if n.strip()] if names else None

    # Registering ------------------------------------------------------------------------

    def register_sklearn(
        self,
        group: str,
        estimator: Any,
        sample: pd.DataFrame,
        *,
        profile: dict[str, Any],
        metrics: dict[str, float] | None = None,
        description: str = "",
    ) -> ModelVersion:
        """Save an MLflow model folder (skops), upload it as model.tar.gz under
        ``s3://bucket/prefix/models/<group>/``, and create a ``PendingManualApproval`` package."""
        validate_identifier(group, "model_package_group", RESOURCE_NAME)
        import json

        import mlflow.sklearn
        from mlflow.models import infer_signature

        from batchscore.aws import split_s3
        from batchscore.registry.mlflow import PIP_REQUIREMENTS, PROFILE_FILE

        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")
        url = f"{self.settings.s3_prefix}/models/{group}/{stamp}/model.tar.gz"
        with tempfile.TemporaryDirectory() as tmp:
            profile_path = Path(tmp) / PROFILE_FILE
            profile_path.write_text(json.dumps(profile, indent=2, default=str))
            folder = Path(tmp) / "model"
            mlflow.sklearn.save_model(
                estimator,
                str(folder),
                signature=infer_signature(sample, estimator.predict_proba(sample)),
                pip_requirements=PIP_REQUIREMENTS,
                extra_files=[str(profile_path)],
                serialization_format="skops",
                skops_trusted_types=self.trusted_types,
                pyfunc_predict_fn="predict_proba",
            )
            archive = Path(tmp) / "model.tar.gz"
            with tarfile.open(archive, "w:gz") as tar:
                for path in sorted(folder.rglob("*")):
                    tar.add(path, arcname=str(path.relative_to(folder)), recursive=False)
            bucket, key = split_s3(url)
            self.s3.upload_file(str(archive), bucket, key)
        from botocore.exceptions import ClientError

        try:
            self.sagemaker.create_model_package_group(ModelPackageGroupName=group)
        except ClientError as exc:
            if "already exists" not in str(exc).lower():
                raise ModelError(f"cannot create model package group {group!r}: {exc}") from exc
        created = self.sagemaker.create_model_package(
            ModelPackageGroupName=group,
            ModelPackageDescription=description or "registered by batchscore train",
            ModelApprovalStatus=DEFAULT_STATUS,
            InferenceSpecification={
                "Containers": [{"Image": DEFAULT_IMAGE, "ModelDataUrl": url}],
                "SupportedContentTypes": ["text/csv"],
                "SupportedResponseMIMETypes": ["text/csv"],
            },
            CustomerMetadataProperties={
                k: f"{v:.6f}" for k, v in (metrics or {}).items() if isinstance(v, float)
            },
        )
        arn = created["ModelPackageArn"]
        for version in self.list_versions(group):
            if version.source == arn:
                return version
        raise ModelError(f"model package {arn} was created but is not listed in {group!r}.")


def _mlflow_folder(folder: Path) -> Path | None:
    """The MLflow model folder in an unpacked model.tar.gz: ``MLmodel`` at the top or one
    level down (the first such folder by name), else None."""
    for candidate in (folder, *sorted(p for p in folder.iterdir() if p.is_dir())):
        if (candidate / "MLmodel").exists():
            return candidate
    return None


def _bare_model(estimator: Any, version: ModelVersion) -> LoadedModel:
    """A model without an MLflow signature: columns from the fitted feature_names_in_."""
    classes = check_classifier(estimator, version)
    names = getattr(estimator, "feature_names_in_", None)
    if names is None:
        raise ModelLoadError(
            f"model {version.label} declares no input columns (no MLflow signature and no "
            "feature_names_in_): fit it on a DataFrame, or register an MLflow model."
        )
    return LoadedModel(
        version=version,
        estimator=estimator,
        input_types={str(n): "any" for n in names},
        classes=classes,
    )
