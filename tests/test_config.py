from __future__ import annotations

from pathlib import Path

import pytest

from batchscore.catalog import catalog_properties
from batchscore.config import (
    AWS_ONLY_KEYS,
    DEFAULT_CONFIG_PATH,
    load_settings,
    resolve_config_path,
)
from batchscore.errors import ConfigError, InvalidIdentifierError
from tests.helpers import SEED_CONFIG
from tests.reliability import record


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_defaults_are_the_seeds() -> None:
    s = load_settings(env={})
    assert (s.customer_id_start, s.customer_id_end) == (4000, 5000)
    assert s.output_table == "ml_metrics.mlops_poc_daily_inference"
    assert s.model_approval_status == "Approved"
    assert s.write_mode == "replace"
    assert catalog_properties(s)["type"] == "sql"
    assert catalog_properties(s)["uri"].endswith(".batchscore/catalog.db")
    assert s.tracking_uri.endswith(".batchscore/mlflow.db")


def test_seed_config_loads_unchanged_and_aws_keys_are_reported_unused(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, SEED_CONFIG), env={})
    assert s.feature_group_name == "mlops_poc_churn_classification_feature"
    assert s.region == "us-west-2"
    assert s.unused_keys() == list(AWS_ONLY_KEYS)


def test_the_shipped_config_loads() -> None:
    shipped = Path(__file__).parents[1] / "configs" / "pipeline_config.yaml"
    s = load_settings(shipped, env={})
    assert s.unused_keys() == []
    assert s.target_column == "churn"


def test_unknown_key_suggests_the_right_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, "customer_id_strat: 10\n"), env={})
    message = str(err.value)
    assert "unknown config key 'customer_id_strat'" in message
    assert "Did you mean 'customer_id_start'?" in message


@pytest.mark.parametrize("key", ["aws_secret_access_key", "AWS_ACCESS_KEY_ID", "aws_profile"])
def test_credentials_in_the_config_are_refused_without_echoing_them(
    tmp_path: Path, key: str
) -> None:
    path = write(tmp_path, f"backend: aws\n{key}: wJalrXUtnFEMI-not-a-real-secret\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path, env={})
    message = str(err.value)
    assert f"{key!r} in config file" in message and "standard AWS chain" in message
    assert "wJalrXUtnFEMI" not in message


def test_start_after_end_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "customer_id_start: 5000\ncustomer_id_end: 4000\n")
    with pytest.raises(ConfigError, match=r"customer_id_start \(5000\) is greater than"):
        load_settings(path, env={})


@pytest.mark.parametrize("value", ["-1", "abc", "4000.5", "true", "[1, 2]"])
def test_ids_must_be_non_negative_integers(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match="customer_id_start") as err:
        load_settings(write(tmp_path, f"customer_id_start: {value}\n"), env={})
    assert "got" in str(err.value)


@pytest.mark.parametrize("value", ['"100000"', "1e5", "100_000", "100000.0", "1.0e+5"])
def test_whole_numbers_as_yaml_spells_them(tmp_path: Path, value: str) -> None:
    assert load_settings(write(tmp_path, f"batch_size: {value}\n"), env={}).batch_size == 100_000


def test_wrong_type_names_key_and_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"write_mode: .*'replace'.*\(got 'upsert'\)"):
        load_settings(write(tmp_path, "write_mode: upsert\n"), env={})


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "project_name: x\ncustomer_id_start: [4000\ncustomer_id_end: 5\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+"):
        load_settings(path, env={})


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml", env={})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("athena_database", "ml_metrics; DROP TABLE x"),
        ("athena_output_table", "../../etc"),
        ("feature_group_name", "../../etc/passwd"),
        ("model_package_group", "group' OR '1'='1"),
        ("athena_database", "1abc"),
    ],
)
def test_unsafe_identifiers_are_refused(key: str, value: str) -> None:
    with pytest.raises(InvalidIdentifierError, match=key):
        load_settings(overrides={key: value}, env={})
    record(
        "security",
        f"identifier {value!r} for {key}",
        outcome="refused before reaching SQL, the catalog or a path",
    )


def test_env_var_expansion_and_redaction(tmp_path: Path) -> None:
    path = write(tmp_path, "registry: sqlite:///${DB_DIR}/mlflow.db\nnotification_email: ${MAIL}\n")
    s = load_settings(path, env={"DB_DIR": "/tmp/x", "MAIL": "s3cret@example.com"})
    assert s.tracking_uri == "sqlite:////tmp/x/mlflow.db"
    shown = str(s.redacted_dict())
    assert "s3cret@example.com" not in shown
    assert "***" in shown


def test_unset_env_var_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "notification_email: ${NOT_SET_ANYWHERE}\n")
    with pytest.raises(ConfigError, match=r"notification_email: environment variable "):
        load_settings(path, env={})


def test_precedence_yaml_then_env_then_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "customer_id_start: 1\ncustomer_id_end: 100\nbatch_size: 10\n")
    env = {"BATCHSCORE_CUSTOMER_ID_START": "2", "BATCHSCORE_BATCH_SIZE": "20"}
    s = load_settings(path, ["batch_size=30", "catalog.uri=sqlite:///x.db"], env=env)
    assert (s.customer_id_start, s.batch_size) == (2, 30)
    assert s.catalog == {"uri": "sqlite:///x.db"}


def test_unknown_env_key_is_refused() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'batch_size'"):
        load_settings(env={"BATCHSCORE_BATCH_SIZ": "5"})


def test_override_without_equals_sign() -> None:
    with pytest.raises(ConfigError, match="key=value"):
        load_settings(overrides=["write_mode"], env={})


def test_the_ray_engine_with_the_sagemaker_feature_store_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"engine 'ray' .* set engine: local"):
        load_settings(
            None, {"backend": "aws", "bucket": "b", "region": "us-east-1", "engine": "ray"}, env={}
        )
    settings = load_settings(None, {"engine": "ray"}, env={})  # Iceberg feature groups: fine
    assert settings.engine == "ray"


def test_config_path_precedence_given_then_environment_then_default_file(tmp_path: Path) -> None:
    # The autouse fixture runs every test in its own tmp_path.
    assert resolve_config_path(None, env={}) is None
    DEFAULT_CONFIG_PATH.parent.mkdir()
    DEFAULT_CONFIG_PATH.write_text("batch_size: 1\n")
    (tmp_path / "from-env.yaml").write_text("batch_size: 2\n")
    (tmp_path / "given.yaml").write_text("batch_size: 3\n")
    from_env = {"BATCHSCORE_CONFIG": "from-env.yaml"}
    assert resolve_config_path(None, env={}) == DEFAULT_CONFIG_PATH
    assert resolve_config_path(None, env={"BATCHSCORE_CONFIG": ""}) == DEFAULT_CONFIG_PATH
    assert resolve_config_path(None, env=from_env) == Path("from-env.yaml")
    assert resolve_config_path("given.yaml", env=from_env) == Path("given.yaml")
    # load_settings reads the file resolve_config_path names.
    assert load_settings(env={}).batch_size == 1
    assert load_settings(env=from_env).batch_size == 2
    assert load_settings("given.yaml", env=from_env).batch_size == 3
