"""Settings: one pydantic model, merged YAML < environment (BATCHSCORE_*) < ``--set`` overrides.

The keys are the proof of concept's own (``pipeline_config.yaml``), so its file loads unchanged;
the AWS-only ones are accepted and reported as unused by the embedded backend.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)

from batchscore.errors import ConfigError, InvalidIdentifierError, did_you_mean
from batchscore.redaction import is_credential_setting
from batchscore.redaction import redact as redact_secrets

APPROVAL_STATUSES = ("PendingManualApproval", "Approved", "Rejected")
WRITE_MODES = ("replace", "append", "overwrite")

# Names that reach SQL, a catalog or a path. SQL identifiers: letters, digits, underscore.
# Checked with ``fullmatch``: with ``match``, ``$`` also matches before a trailing newline.
SQL_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
# Feature group and model group names follow SageMaker's rules: letters, digits, '-' and '_'.
RESOURCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
# A feature group may also be any Iceberg table, named ``namespace.table`` (the namespace may
# itself be dotted: ``a.b.table``).
TABLE_NAME = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9_-]{0,62}\.){0,3}[A-Za-z0-9][A-Za-z0-9_-]{0,62}")

# The seed's AWS-only keys: accepted so its config loads unchanged, unused by the local backend.
AWS_ONLY_KEYS = (
    "region",
    "bucket",
    "prefix",
    "role_arn",
    "processing_instance_type",
    "athena_query_results",
    "sns_topic_arn",
    "notification_email",
)

# Keys people put in configs by habit; refused with a pointer to the AWS credential chain.
CREDENTIAL_KEYS = ("aws_access_key_id", "aws_secret_access_key", "aws_session_token",
                   "access_key", "secret_key", "credentials", "profile", "aws_profile")  # fmt: skip

ENV_PREFIX = "BATCHSCORE_"
ENV_SOURCE = "the environment (BATCHSCORE_* variables)"
# BATCHSCORE_* variables that are not settings: the config file's path, the test and
# fault-injection knobs (faults.py, the Makefile) and how often progress is logged
# (progress.py). Any other BATCHSCORE_* must be a setting.
TOOL_VARIABLES = frozenset({
    "BATCHSCORE_CONFIG", "BATCHSCORE_FAILPOINT", "BATCHSCORE_SOAK", "BATCHSCORE_KILL_REPEATS",
    "BATCHSCORE_PROGRESS_INTERVAL",
})  # fmt: skip
DEFAULT_CONFIG_PATH = Path("configs/pipeline_config.yaml")


def validate_identifier(value: str, what: str, pattern: re.Pattern[str] = SQL_IDENTIFIER) -> str:
    """Return ``value`` if it is a safe name, else raise InvalidIdentifierError naming ``what``."""
    if not isinstance(value, str) or not pattern.fullmatch(value):
        allowed = (
            "letters, digits and '_', not starting with a digit"
            if pattern is SQL_IDENTIFIER
            else "letters, digits, '-' and '_', at most 63 characters"
            + (", or namespace.table" if pattern is TABLE_NAME else "")
        )
        raise InvalidIdentifierError(
            f"{what} {value!r} is not a valid name: use {allowed} (for example 'ml_metrics')."
        )
    return value


def _whole_number(value: Any) -> Any:
    """Accept a whole number however YAML or an override spells it: 100000, "100000",
    "100_000", 1e5 (YAML reads it as the string '1e5'), 100000.0. Refuse booleans and fractions
    with a message saying what to write."""
    if isinstance(value, bool):
        raise ValueError("must be a whole number, not true/false")
    if isinstance(value, int):
        return value
    number: float | None = None
    if isinstance(value, float):
        number = value
    elif isinstance(value, str):
        try:
            number = float(value.strip().replace("_", ""))
        except ValueError:
            number = None
    if number is None or not number.is_integer():
        raise ValueError("must be a whole number such as 100000")
    return int(number)


WHOLE = BeforeValidator(_whole_number)


def validate_cron(expression: str, what: str = "--cron") -> str:
    """Return a valid cron expression (5 fields, or 6 with seconds last), else ConfigError."""
    from croniter import croniter

    if (
        not isinstance(expression, str)
        or len(expression.split()) not in (5, 6)
        or not (croniter.is_valid(expression))
    ):
        raise ConfigError(
            f"{what} {expression!r} is not a cron expression: use five fields "
            "'minute hour day-of-month month day-of-week', e.g. '0 2 * * *' for 02:00 daily."
        )
    return expression


class RegistrySettings(BaseModel):
    """Where registered models live. A plain string in YAML is taken as the tracking URI."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["mlflow", "sagemaker"] | None = None  # default: the backend's
    tracking_uri: str | None = None
    artifact_location: str | None = None
    # Extra types to trust when loading skops artifacts, beyond batchscore's own list.
    trusted_types: list[str] = Field(default_factory=list)
    # SageMaker packages that hold only a pickle (model.joblib/.pkl): loading one runs its code.
    trust_pickle: bool = False
    # The most a SageMaker model.tar.gz may unpack to (and be), in bytes.
    max_archive_bytes: int = Field(default=2 * 1024**3, gt=0)
    # Training data of models batchscore did not train (a Parquet/CSV file, folder or glob,
    # local or s3://, or an Iceberg table namespace.table): their profile is computed from it.
    training_data: str | None = None


class FeatureStoreSettings(BaseModel):
    """Where feature groups live: ``iceberg`` (in the catalog), ``sagemaker``, or ``files``
    (a Parquet or CSV dataset: a folder or glob, local or ``s3://``; read-only)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["iceberg", "sagemaker", "files"] | None = None  # default: the backend's
    # files: the dataset's folder or glob; a {name} in it stands for the feature group's name.
    path: str | None = None
    # files: parquet or csv (default: from the files' extension, else parquet).
    format: Literal["parquet", "csv"] | None = None
    # files, csv: the field separator (default ',').
    delimiter: str | None = Field(default=None, min_length=1, max_length=1)

    @model_validator(mode="after")
    def _check_files(self) -> FeatureStoreSettings:
        if self.type == "files" and not self.path:
            raise ValueError(
                "feature_store type 'files' needs feature_store.path: the dataset's folder or "
                "glob, local or s3:// (e.g. path: s3://lake/features/churn/)."
            )
        if self.type != "files" and (self.path or self.format or self.delimiter):
            raise ValueError(
                "feature_store.path, format and delimiter belong to feature_store type 'files' "
                f"(this one is {self.type or 'the backend default'}): set type: files."
            )
        return self


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)?\s*$")
_DURATION_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def parse_duration(value: Any) -> float:
    """Seconds in ``value``: a number of seconds, or ``"90s"``, ``"30m"``, ``"36h"``, ``"7d"``,
    ``"2w"``. Raises ValueError with the accepted forms."""
    if isinstance(value, bool):
        raise ValueError("must be a duration such as '36h' or '7d', not true/false")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(
                f"{value!r} is not a duration: write a number with s, m, h, d or w, e.g. '36h'"
            )
        seconds = float(match.group(1)) * _DURATION_SECONDS[match.group(2) or "s"]
    if seconds <= 0:
        raise ValueError("must be a positive duration such as '36h' or '7d'")
    return seconds


DURATION = BeforeValidator(parse_duration)
CheckAction = Literal["warn", "block", "off"]


class CheckSettings(BaseModel):
    """One check: the threshold its statistic may reach, and what happens beyond it
    (``warn``: publish and notify; ``block``: fail the run at Validate, publish nothing;
    ``off``: not computed)."""

    model_config = ConfigDict(extra="forbid")

    threshold: Annotated[float, Field(ge=0)] | None = None
    action: CheckAction = "warn"


class FreshnessSettings(CheckSettings):
    """``max_age``: the newest ``event_time`` in the snapshot may be at most this old at the
    run's as-of time; ``max_feature_age`` and ``threshold``: at most ``threshold`` (a share) of
    the customers may have a latest record older than ``max_feature_age``."""

    max_age: Annotated[float, DURATION] | None = None
    max_feature_age: Annotated[float, DURATION] | None = None


# Each check's defaults; a check given in the config keeps the defaults it does not set.
CHECK_DEFAULTS: dict[str, dict[str, Any]] = {
    # A required column missing, or not castable to the type the model was trained on.
    "contract": {"action": "block"},
    # Null share of a feature minus its share in the reference (absolute).
    "null_rate": {"threshold": 0.10, "action": "warn"},
    # Population stability index of a numeric feature on the reference's quantile bins.
    "psi": {"threshold": 0.25, "action": "warn"},
    # PSI of a categorical feature's category shares.
    "category_psi": {"threshold": 0.25, "action": "warn"},
    # Share of a categorical feature's values the model never saw.
    "unseen_categories": {"threshold": 0.05, "action": "warn"},
    # Share of a numeric feature's values outside the training [min, max].
    "range": {"threshold": 0.01, "action": "warn"},
    # Newest event_time older than max_age; share of customers whose latest record is older
    # than max_feature_age above threshold. Both ages are unset by default (the age is
    # recorded, not judged): how fresh a feature group should be depends on how it is fed,
    # and any fixed default fires on data written once (the demo's event times end in June
    # 2026, so a 30d max_age warned on every demo run). Set them per pipeline: '36h', '90d'.
    "freshness": {"threshold": 0.5, "action": "warn"},
    # Rows scored vs the previous run: the largest drop allowed, as a share (0.5 = half).
    "volume": {"threshold": 0.5, "action": "warn"},
    # PSI of the probability distribution vs the training validation scores / previous run.
    "prediction_psi": {"threshold": 0.25, "action": "warn"},
    # Change of the positive-prediction rate vs the reference (absolute).
    "positive_rate": {"threshold": 0.15, "action": "warn"},
}


class ChecksSettings(BaseModel):
    """The checks Validate runs between BatchInference and Publish (docs/monitoring.md).

    Each has a ``threshold`` and an ``action`` (``CHECK_DEFAULTS``); a check set to a word
    (``psi: block``) keeps its threshold and takes that action. Statistics are compared with
    the model's training profile and with the previous successful run of the same logical run.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    contract: CheckSettings
    null_rate: CheckSettings
    psi: CheckSettings
    category_psi: CheckSettings
    unseen_categories: CheckSettings
    range: CheckSettings
    freshness: FreshnessSettings
    volume: CheckSettings
    prediction_psi: CheckSettings
    positive_rate: CheckSettings

    @model_validator(mode="before")
    @classmethod
    def _with_defaults(cls, data: Any) -> Any:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            return data
        merged = dict(data)
        for name, defaults in CHECK_DEFAULTS.items():
            given = data.get(name)
            if isinstance(given, str):
                given = {"action": given}
            elif isinstance(given, int | float) and not isinstance(given, bool):
                given = {"threshold": given}
            if given is None:
                given = {}
            merged[name] = {**defaults, **given} if isinstance(given, dict) else given
        return merged

    def named(self) -> dict[str, CheckSettings]:
        """Every check by name, in ``CHECK_DEFAULTS`` order."""
        return {name: getattr(self, name) for name in CHECK_DEFAULTS}


class TrackingSettings(BaseModel):
    """MLflow tracking of every run: one MLflow run per batchscore run, in the experiment
    named after the pipeline (docs/monitoring.md). ``tracking: false`` turns it off.

    On by default with the MLflow registry (in its store, ``registry.tracking_uri``); with the
    SageMaker registry there is no MLflow store, so it is off unless ``uri`` names one.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool | None = None  # None: on wherever there is an MLflow store
    uri: str | None = None  # the MLflow tracking URI; default: the MLflow registry's

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"enabled": data} if isinstance(data, bool) else data


class Settings(BaseModel):
    """Every setting of a batchscore pipeline. Defaults reproduce the proof of concept."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # The seed's keys.
    project_name: str = "classification-model-batch-inference"
    pipeline_name: str = "classification-model-batch-inference-pipeline"
    feature_group_name: str = "mlops_poc_churn_classification_feature"
    # The ids scored, by their number (feature_store/ids.py). None is an open bound; both None
    # (null): every live record, numbered or not (the run's id range reads "all").
    customer_id_start: Annotated[int, WHOLE, Field(ge=0)] | None = 4000
    customer_id_end: Annotated[int, WHOLE, Field(ge=0)] | None = 5000
    model_package_group: str = "classification-model-group"
    model_approval_status: Literal["PendingManualApproval", "Approved", "Rejected"] = "Approved"
    athena_database: str = "ml_metrics"
    athena_output_table: str = "mlops_poc_daily_inference"

    # The seed's AWS-only keys.
    region: str | None = None
    bucket: str | None = None
    prefix: str | None = None
    role_arn: str | None = None
    processing_instance_type: str | None = None
    athena_query_results: str | None = None
    athena_workgroup: str | None = None  # not the seed's: Athena's own default is 'primary'
    sns_topic_arn: str | None = None
    notification_email: str | None = None

    # batchscore's own.
    backend: Literal["local", "aws"] = "local"
    workspace: str = ".batchscore"
    # With an s3:// workspace: where its working copy lives on this machine.
    local_workspace: str | None = None
    catalog: dict[str, str] = Field(default_factory=dict)
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    feature_store: FeatureStoreSettings = Field(default_factory=FeatureStoreSettings)
    record_identifier: str = "customer_id"
    event_time_feature: str = "event_time"
    target_column: str | None = "churn"
    write_mode: Literal["replace", "append", "overwrite"] = "replace"
    batch_size: Annotated[int, WHOLE, Field(gt=0, le=10_000_000)] = 100_000

    # Engine: where DataSource and BatchInference run.
    engine: Literal["local", "ray"] = "local"
    ray_address: str | None = None  # host:port of a running cluster; unset = Ray on this machine
    ray_actors: Annotated[int, WHOLE, Field(ge=1)] | None = None  # default: one per CPU
    ray_cpus_per_actor: Annotated[float, Field(gt=0, le=64)] = 0.5
    # How BatchInference scores (docs/architecture.md#scoring): ``auto`` compiles a tree
    # ensemble to native code when it can (checked against the library on every run, falling
    # back to it on any difference); ``library`` always calls the model's own predict_proba;
    # ``compiled`` fails the run instead of falling back.
    scoring: Literal["auto", "library", "compiled"] = "auto"

    # Operations.
    notification_urls: list[str] = Field(default_factory=list)
    notify_on: list[Literal["failure", "success"]] = Field(default_factory=lambda: ["failure"])
    max_attempts: Annotated[int, WHOLE, Field(ge=1, le=20)] = 3
    retry_backoff_seconds: Annotated[float, Field(ge=0, le=300)] = 0.5
    schedule_cron: str | None = None
    # How long a run's shared lock (SQL catalog or S3) stays valid without a heartbeat; the
    # holder renews it every third of this, so only a dead or cut-off holder lets it expire.
    lock_lease_seconds: Annotated[float, Field(gt=0, le=86_400)] = 120.0

    # Validate: the checks between BatchInference and Publish (docs/monitoring.md).
    checks: ChecksSettings = Field(default_factory=lambda: ChecksSettings.model_validate({}))
    # Rows that cannot be scored go to <athena_output_table>_quarantine; the run fails only
    # when their share of the snapshot exceeds this (0: any such row fails the run).
    max_quarantine_fraction: Annotated[float, Field(ge=0, le=1)] = 0.0
    # MLflow tracking of every run; ``tracking: false`` turns it off (docs/monitoring.md).
    tracking: TrackingSettings = Field(default_factory=TrackingSettings)

    _secrets: set[str] = PrivateAttr(default_factory=set)

    @model_validator(mode="before")
    @classmethod
    def _registry_shorthand(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("registry"), str):
            data = {**data, "registry": {"tracking_uri": data["registry"]}}
        return data

    @model_validator(mode="after")
    def _check(self) -> Settings:
        validate_identifier(self.athena_database, "athena_database")
        validate_identifier(self.athena_output_table, "athena_output_table")
        validate_identifier(self.record_identifier, "record_identifier")
        validate_identifier(self.event_time_feature, "event_time_feature")
        if self.target_column is not None:
            validate_identifier(self.target_column, "target_column")
        validate_identifier(self.feature_group_name, "feature_group_name", TABLE_NAME)
        validate_identifier(self.model_package_group, "model_package_group", RESOURCE_NAME)
        # It names lock files, S3 keys, unit files and SageMaker / EventBridge resources.
        validate_identifier(self.pipeline_name, "pipeline_name", RESOURCE_NAME)
        if self.schedule_cron is not None:
            validate_cron(self.schedule_cron, "schedule_cron")
        if self.engine == "ray" and self.feature_store_type != "iceberg":
            # The Ray engine reads the feature group's Iceberg table itself (read_iceberg).
            raise ValueError(
                f"engine 'ray' reads feature groups stored as Iceberg tables in the catalog "
                f"(feature_store.type: iceberg), not the {self.feature_store_type} feature "
                "store: set engine: local with it."
            )
        if self.engine == "ray" and None in (self.customer_id_start, self.customer_id_end):
            raise ValueError(
                "engine 'ray' reads an id range: set customer_id_start and customer_id_end, "
                "or use engine: local to score every record."
            )
        if self.tracking.enabled and not self.tracking.uri and self.registry_type != "mlflow":
            raise ValueError(
                "tracking: true with the SageMaker registry needs tracking.uri, the MLflow "
                "tracking store to record runs in (e.g. a SageMaker managed MLflow tracking "
                "server's ARN, or http://mlflow.internal:5000); or set tracking: false."
            )
        if (
            self.customer_id_start is not None
            and self.customer_id_end is not None
            and self.customer_id_start > self.customer_id_end
        ):
            raise ValueError(
                f"customer_id_start ({self.customer_id_start}) is greater than customer_id_end "
                f"({self.customer_id_end}): the range is inclusive, so set start <= end."
            )
        return self

    # Derived locations -------------------------------------------------------------------

    @property
    def remote_workspace(self) -> str | None:
        """The workspace's S3 URI: ``workspace`` when it is ``s3://…``; with the aws backend
        and no ``workspace`` set, ``s3://bucket/prefix``; else None (a local workspace)."""
        if self.workspace.startswith("s3://"):
            return self.workspace.rstrip("/")
        if self.backend == "aws" and "workspace" not in self.model_fields_set and self.bucket:
            return self.s3_prefix
        return None

    @property
    def workspace_path(self) -> Path:
        """The local workspace; for an ``s3://`` workspace, its local working copy
        (``local_workspace``, default ``~/.cache/batchscore/<bucket>/<key>``)."""
        if self.remote_workspace:
            if self.local_workspace:
                return Path(self.local_workspace).expanduser().resolve()
            return Path("~/.cache/batchscore").expanduser() / self.remote_workspace[5:]
        return Path(self.workspace).expanduser().resolve()

    @property
    def runs_path(self) -> Path:
        return self.workspace_path / "runs"

    @property
    def registry_type(self) -> str:
        return self.registry.type or ("sagemaker" if self.backend == "aws" else "mlflow")

    @property
    def feature_store_type(self) -> str:
        return self.feature_store.type or ("sagemaker" if self.backend == "aws" else "iceberg")

    @property
    def s3_prefix(self) -> str:
        """``s3://bucket/prefix`` (the seed's bucket and prefix), for the aws backend."""
        if not self.bucket:
            raise ConfigError(
                "backend 'aws' needs 'bucket' (and optionally 'prefix'): the S3 location of "
                "the warehouse and model artifacts, e.g. bucket: my-ml-bucket."
            )
        prefix = (self.prefix or "batchscore").strip("/")
        return f"s3://{self.bucket}/{prefix}"

    @property
    def tracking_uri(self) -> str:
        return self.registry.tracking_uri or f"sqlite:///{self.workspace_path / 'mlflow.db'}"

    @property
    def artifact_location(self) -> str:
        return self.registry.artifact_location or (self.workspace_path / "mlartifacts").as_uri()

    @property
    def output_table(self) -> str:
        return f"{self.athena_database}.{self.athena_output_table}"

    def unused_keys(self) -> list[str]:
        """Keys that are set but mean nothing to the chosen backend (the seed's AWS keys)."""
        if self.backend == "aws":
            # processing_instance_type, role_arn: used by 'deploy sagemaker', not by a run.
            return []
        used = set()
        if any(url.startswith("mailto") for url in self.notification_urls):
            used.add("notification_email")  # fills in the mailto URLs' recipient
        aws_keys = (*AWS_ONLY_KEYS, "athena_workgroup")
        return [k for k in aws_keys if getattr(self, k) is not None and k not in used]

    def redact(self, text: str) -> str:
        """Replace every secret with '***': values that came from a ``${VAR}`` and credentials
        set by ``BATCHSCORE_*`` variables, whole, in parts and URL-encoded (see
        ``batchscore.redaction``)."""
        return redact_secrets(text, self._secrets)

    def redacted_dict(self, catalog: Mapping[str, str] | None = None) -> dict[str, Any]:
        """All settings as plain data, with values read from the environment hidden.

        Args:
            catalog: the catalog properties in effect, to show instead of the configured ones
                (``batchscore.catalog.catalog_properties`` fills in the backend's default).
        """
        data = self.model_dump(mode="json")
        if catalog is not None:
            data["catalog"] = dict(catalog)
        data["registry"]["tracking_uri"] = self.tracking_uri
        data["registry"]["artifact_location"] = self.artifact_location
        return map_strings(data, self.redact)


def map_strings(value: Any, fn: Any) -> Any:
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, dict):
        return {k: map_strings(v, fn) for k, v in value.items()}
    if isinstance(value, list):
        return [map_strings(v, fn) for v in value]
    return value


VAR_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand_env(value: Any, env: Mapping[str, str], key: str, secrets: dict[str, str]) -> Any:
    """Replace ``${VAR}`` in strings with the environment's value; remember those values
    (``secrets`` maps each to where it came from, e.g. ``${SLACK_URL}``)."""
    if isinstance(value, dict):
        return {
            k: _expand_env(v, env, f"{key}.{k}" if key else k, secrets) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_expand_env(v, env, f"{key}[{i}]", secrets) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in env:
            raise ConfigError(
                f"{key}: environment variable ${{{name}}} is not set. "
                f"Export it (export {name}=...) or remove it from the config."
            )
        if env[name]:
            secrets[env[name]] = f"${{{name}}}"
        return env[name]

    return VAR_REFERENCE.sub(substitute, value)


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(
            f"config file {str(path)!r} does not exist. Pass an existing file with --config, "
            f"or copy configs/pipeline_config.yaml."
        ) from None
    except OSError as exc:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {exc.strerror}.") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(
            f"config file {str(path)!r} is not valid YAML{where}: {problem}. "
            "Fix the syntax there (indentation, a missing ':' or quote)."
        ) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {str(path)!r} must hold a mapping of keys to values, "
            f"not a {type(data).__name__}."
        )
    return data


def _parse_scalar(text: str) -> Any:
    """Parse an override or environment value the way YAML would ('4000' -> 4000)."""
    try:
        return yaml.safe_load(text) if text.strip() else text
    except yaml.YAMLError:
        return text


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def _env_overrides(env: Mapping[str, str], secrets: dict[str, str]) -> dict[str, Any]:
    """BATCHSCORE_CUSTOMER_ID_START -> customer_id_start; BATCHSCORE_CATALOG__URI -> catalog.uri.

    Values that can be credentials (``redaction.is_credential_setting``) go into ``secrets``.
    """
    data: dict[str, Any] = {}
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or name in TOOL_VARIABLES:
            continue
        dotted = name[len(ENV_PREFIX) :].lower().replace("__", ".")
        value = _parse_scalar(raw)
        for item in [raw, *(value if isinstance(value, list) else [])]:
            if isinstance(item, str) and is_credential_setting(dotted, item):
                secrets[item] = name
        _set_dotted(data, dotted, value)
    return data


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict) and key != "catalog":
            out[key] = _merge(out[key], value)
        elif isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def _check_unknown_keys(data: Mapping[str, Any], source: str) -> None:
    known = set(Settings.model_fields)
    for key in data:
        if key.lower() in CREDENTIAL_KEYS:
            raise ConfigError(
                f"{key!r} in {source}: AWS credentials are never read from the config file. "
                "Remove it and use the standard AWS chain: AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) in the environment, or an instance, "
                "task or job role."
            )
        if key not in known:
            if source == ENV_SOURCE:
                raise ConfigError(
                    f"environment variable {ENV_PREFIX}{key.upper()} names no setting "
                    f"({key!r}).{did_you_mean(key, known)} Unset it, or rename it to a setting "
                    f"({ENV_PREFIX}<KEY>, e.g. {ENV_PREFIX}BATCH_SIZE). Valid keys: "
                    f"{', '.join(sorted(known))}."
                )
            raise ConfigError(
                f"unknown config key {key!r} in {source}.{did_you_mean(key, known)} "
                f"Valid keys: {', '.join(sorted(known))}."
            )
    registry = data.get("registry")
    if isinstance(registry, Mapping):
        known_registry = set(RegistrySettings.model_fields)
        for key in registry:
            if key not in known_registry:
                raise ConfigError(
                    f"unknown config key 'registry.{key}' in {source}."
                    f"{did_you_mean(key, known_registry)}"
                )


def _holds(value: Any, secret: str) -> bool:
    """Whether ``value`` (a string, or a list or mapping of them) contains ``secret``."""
    if isinstance(value, str):
        return secret in value
    if isinstance(value, Mapping):
        return any(_holds(k, secret) or _holds(v, secret) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_holds(v, secret) for v in value)
    return secret in str(value)


def _format_validation_error(
    exc: ValidationError, data: Mapping[str, Any], secrets: Mapping[str, str]
) -> str:
    """One line per error, naming the key and the value given — unless that value is, or
    holds, a secret: then only where it came from (``(value from ${SLACK_URL} hidden)``)."""
    lines = []
    for error in exc.errors():
        loc = ".".join(str(part) for part in error["loc"])
        msg = error["msg"].removeprefix("Value error, ")
        if loc:
            value = data
            for part in error["loc"]:
                value = value.get(part) if isinstance(value, Mapping) else None
            shown = f" (got {value!r})" if value is not None and error["type"] != "missing" else ""
            origins = [o for s, o in secrets.items() if shown and _holds(value, s)]
            if origins:
                shown = f" (value from {', '.join(sorted(set(origins)))} hidden)"
            lines.append(f"{loc}: {msg}{shown}")
        else:
            lines.append(msg)
    return "invalid configuration: " + "; ".join(lines)


def parse_overrides(pairs: Iterable[str]) -> dict[str, Any]:
    """Turn ``["customer_id_start=10", "catalog.uri=sqlite:///x"]`` into nested data."""
    data: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set {pair!r} must look like key=value (e.g. write_mode=append).")
        key, value = pair.split("=", 1)
        _set_dotted(data, key.strip(), _parse_scalar(value))
    return data


def resolve_config_path(
    explicit: str | Path | None, env: Mapping[str, str] | None = None
) -> Path | None:
    """The config file batchscore reads, the first of:

    1. ``explicit`` (``--config``/``-c``, or a library caller's path);
    2. ``$BATCHSCORE_CONFIG``, when set and not empty;
    3. ``configs/pipeline_config.yaml`` under the current folder, when it exists;
    4. none: the defaults, the environment and ``--set`` alone.

    Every command and ``load_settings`` find the file through this one function, so what
    ``deploy`` uploads and ``schedule --print`` names is what a run reads.

    Args:
        explicit: the path given by the user, or None.
        env: the environment to read; ``os.environ`` by default.

    Returns:
        The path to read (not checked for existence when given), or None.
    """
    env = os.environ if env is None else env
    if explicit is not None:
        return Path(explicit)
    if env.get("BATCHSCORE_CONFIG"):
        return Path(env["BATCHSCORE_CONFIG"])
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.exists() else None


def load_settings(
    path: str | Path | None = None,
    overrides: Iterable[str] | Mapping[str, Any] = (),
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Build Settings from a YAML file, the environment and explicit overrides, in that order.

    Args:
        path: YAML config file. None finds one as ``resolve_config_path`` does
            (``$BATCHSCORE_CONFIG``, else ``configs/pipeline_config.yaml`` when present);
            without one, the defaults alone.
        overrides: ``key=value`` strings (dotted keys for nested settings) or a mapping.
        env: the environment to read; ``os.environ`` by default.

    Raises:
        ConfigError: unreadable or invalid YAML, an unknown key, a bad value, an unset ``${VAR}``.
    """
    env = os.environ if env is None else env
    path = resolve_config_path(path, env)
    secrets: dict[str, str] = {}  # secret value -> where it came from

    data: dict[str, Any] = {}
    if path is not None:
        file_data = read_yaml(Path(path))
        _check_unknown_keys(file_data, f"config file {str(path)!r}")
        data = _expand_env(file_data, env, "", secrets)

    from_env = _env_overrides(env, secrets)
    _check_unknown_keys(from_env, ENV_SOURCE)
    data = _merge(data, from_env)

    extra = dict(overrides) if isinstance(overrides, Mapping) else parse_overrides(overrides)
    _check_unknown_keys(extra, "--set overrides")
    data = _merge(data, _expand_env(extra, env, "", secrets))

    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        message = _format_validation_error(exc, data, secrets)
        raise ConfigError(redact_secrets(message, secrets)) from None
    except ConfigError as exc:  # a validator's own message names the value it refused
        raise type(exc)(redact_secrets(str(exc), secrets)) from None
    settings._secrets = set(secrets)
    return settings
