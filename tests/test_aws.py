"""The aws backend against moto's server on 127.0.0.1 — API-contract tests, not real AWS.

The tests play SageMaker's part where moto does not: they write the feature group's offline
store (Parquet under its S3 location, with SageMaker's own columns) as SageMaker's ingestion
would. Everything batchscore does goes through boto3, pyiceberg's Glue catalog and pyarrow's
S3 filesystem, pointed at moto by ``AWS_ENDPOINT_URL``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import urllib.request
from pathlib import Path

import boto3
import pandas as pd
import pyarrow as pa
import pytest
import yaml

from batchscore import demo
from batchscore.config import load_settings
from batchscore.errors import BatchScoreError, ModelLoadError
from batchscore.feature_store import open_feature_store
from batchscore.pipeline import Pipeline
from batchscore.registry import open_registry
from batchscore.training import train_model
from tests.aws_fixtures import (
    BUCKET,
    GROUP,
    REGION,
    create_feature_group,
    offline_store_rows,
    offline_store_table,
    seed_settings,
    seed_settings_data,
)
from tests.helpers import SEED_CONFIG
from tests.reference import reference_latest


@pytest.fixture
def sagemaker_world(aws: str, tmp_path: Path):
    """A feature group with the demo data and one Approved model package, as on AWS."""
    data = demo.generate_churn_data(5000, seed=42)
    rows = offline_store_rows(data)
    create_feature_group(rows)
    settings = seed_settings(tmp_path)
    store, registry = open_feature_store(settings), open_registry(settings)
    result = train_model(settings, store, registry, id_start=1, id_end=4000)
    registry.set_status(settings.model_package_group, result.version.version, "Approved")
    return settings, rows


def glue_table_rows(settings) -> pa.Table:
    from pyiceberg.catalog import load_catalog

    from batchscore.catalog import catalog_properties

    catalog = load_catalog("check", **catalog_properties(settings))
    table = catalog.load_table(f"{settings.athena_database}.{settings.athena_output_table}")
    return table.scan().to_arrow()


def test_seed_config_with_backend_aws_runs_end_to_end(sagemaker_world) -> None:
    settings, rows = sagemaker_world
    record = Pipeline(settings).run()
    assert record.status == "succeeded"

    # The Iceberg table is in moto's Glue catalog, with the latest live record per id in range.
    glue = boto3.client("glue", region_name=REGION)
    described = glue.get_table(DatabaseName="ml_metrics", Name="mlops_poc_daily_inference")
    assert described["Table"]["Parameters"]["table_type"].upper() == "ICEBERG"
    assert described["Table"]["Parameters"]["metadata_location"].startswith(
        f"s3://{BUCKET}/mlops/batch_inference/warehouse/"
    )
    published = glue_table_rows(settings)
    expected = reference_latest(rows, 4000, 5000)
    assert sorted(published.column("customer_id").to_pylist()) == sorted(expected.customer_id)
    assert set(published.column("model_name").to_pylist()) == {"classification-model-group"}
    assert record.steps["BatchInference"].outputs["evaluation"]["rows"] == len(expected)

    # Running again replaces the run's rows (the seed's daily job, run twice).
    Pipeline(settings).run()
    assert glue_table_rows(settings).num_rows == len(expected)

    # The seed's Athena query, through batchscore's own reader of the Glue table.
    from batchscore.catalog import open_catalog
    from batchscore.queries import run_query

    churners = run_query(
        open_catalog(settings),
        "SELECT * FROM ml_metrics.mlops_poc_daily_inference WHERE prediction = 1 "
        "ORDER BY customer_id LIMIT 100",
    )
    assert 0 < churners.num_rows <= 100


def test_a_failure_publishes_one_sns_message(aws: str, tmp_path: Path) -> None:
    sns = boto3.client("sns", region_name=REGION)
    sqs = boto3.client("sqs", region_name=REGION)
    topic = sns.create_topic(Name="ml-model-pipeline-failures")["TopicArn"]
    queue = sqs.create_queue(QueueName="failures")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    rows = offline_store_rows(demo.generate_churn_data(300, seed=1))
    create_feature_group(rows)
    settings = seed_settings(tmp_path, sns_topic_arn=topic, customer_id_start=1)

    with pytest.raises(BatchScoreError, match="no versions"):  # no model registered at all
        Pipeline(settings).run()

    messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1)
    received = messages.get("Messages", [])
    assert len(received) == 1
    envelope = json.loads(received[0]["Body"])
    assert envelope["Subject"] == (
        "[batchscore] classification-model-batch-inference-pipeline failed at BatchInference"
    )
    assert "batchscore resume" in envelope["Message"]


def test_a_pickle_only_package_loads_only_when_trusted(sagemaker_world, tmp_path: Path) -> None:
    """Listing, approval and loading are the registry contract: test_registry_behaviour.py."""
    settings, _ = sagemaker_world
    registry = open_registry(settings)
    # A package whose model.tar.gz holds only a pickle is refused unless trusted.
    import io
    import tarfile

    import joblib
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression().fit(pd.DataFrame({"x": [0.0, 1.0, 2.0, 3.0]}), [0, 0, 1, 1])
    buffer = io.BytesIO()
    joblib.dump(model, tmp_path / "model.joblib")
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(tmp_path / "model.joblib", arcname="model.joblib")
    s3 = boto3.client("s3", region_name=REGION)
    s3.put_object(Bucket=BUCKET, Key="legacy/model.tar.gz", Body=buffer.getvalue())
    sagemaker = boto3.client("sagemaker", region_name=REGION)
    sagemaker.create_model_package(
        ModelPackageGroupName=settings.model_package_group,
        ModelApprovalStatus="Approved",
        InferenceSpecification={
            "Containers": [
                {"Image": "sklearn:1", "ModelDataUrl": f"s3://{BUCKET}/legacy/model.tar.gz"}
            ],
            "SupportedContentTypes": ["text/csv"],
            "SupportedResponseMIMETypes": ["text/csv"],
        },
    )
    newest = registry.resolve(settings.model_package_group)
    with pytest.raises(ModelLoadError, match="trust_pickle"):
        registry.load(newest)
    trusting = seed_settings(tmp_path, registry={"trust_pickle": True})
    loaded = open_registry(trusting).load(newest)
    assert loaded.input_columns == ["x"]


def test_train_registers_a_sagemaker_package_from_the_cli(aws: str, tmp_path: Path) -> None:
    from batchscore.cli import main

    create_feature_group(offline_store_rows(demo.generate_churn_data(600, seed=4)))
    data = yaml.safe_load(SEED_CONFIG)
    data.update({"backend": "aws", "workspace": str(tmp_path / "ws")})
    config = tmp_path / "pipeline_config.yaml"
    config.write_text(yaml.safe_dump(data))
    args = ["-c", str(config), "train", "--from", "1", "--to", "600", "--registry", "sagemaker"]
    assert main(args) == 0
    assert main(["-c", str(config), "models", "approve", "1"]) == 0
    packages = boto3.client("sagemaker", region_name=REGION).list_model_packages(
        ModelPackageGroupName=data["model_package_group"]
    )["ModelPackageSummaryList"]
    assert [p["ModelApprovalStatus"] for p in packages] == ["Approved"]
    described = boto3.client("sagemaker", region_name=REGION).describe_model_package(
        ModelPackageName=packages[0]["ModelPackageArn"]
    )
    url = described["InferenceSpecification"]["Containers"][0]["ModelDataUrl"]
    assert url.startswith(f"s3://{BUCKET}/{data['prefix']}/models/") and url.endswith(".tar.gz")


def test_seed_config_as_of_reads_the_same_as_the_reference(sagemaker_world) -> None:
    settings, rows = sagemaker_world
    as_of = dt.datetime(2025, 6, 1)
    latest = open_feature_store(settings).latest_records(
        GROUP, 1, 5000, as_of=as_of, batch_size=1000
    )
    got = latest.to_table().to_pandas()
    expected = reference_latest(rows, 1, 5000, as_of=pd.Timestamp(as_of))
    assert sorted(got.customer_id) == sorted(expected.customer_id)
    assert latest.stats.deleted_records_skipped == 0  # deletes are after the as_of date
    assert os.environ["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")


def test_deploy_sagemaker_definition_is_accepted_by_create_pipeline(
    aws: str, tmp_path: Path
) -> None:
    from batchscore.cli import main

    sns = boto3.client("sns", region_name=REGION)
    topic = sns.create_topic(Name="ml-model-pipeline-failures")["TopicArn"]
    data = yaml.safe_load(SEED_CONFIG)
    data.update({"backend": "aws", "workspace": str(tmp_path / "ws"), "sns_topic_arn": topic})
    config = tmp_path / "pipeline_config.yaml"
    config.write_text(yaml.safe_dump(data))
    image = "123456789012.dkr.ecr.us-west-2.amazonaws.com/batchscore:latest"
    out = tmp_path / "definition.json"
    args = ["-c", str(config), "deploy", "sagemaker", "--image", image, "--output", str(out)]
    assert main(args) == 0
    definition = json.loads(out.read_text())
    assert [s["Name"] for s in definition["Steps"]] == [
        "DataSource", "BatchInference", "Validate", "PublishToAthena",
    ]  # fmt: skip
    assert definition["Steps"][2]["DependsOn"] == ["BatchInference"]
    assert definition["Steps"][3]["DependsOn"] == ["Validate"]
    entry = definition["Steps"][1]["Arguments"]["AppSpecification"]["ContainerEntrypoint"]
    assert entry[-4:-1] == ["step", "batch-inference", "--run-id"]
    assert {p["Name"] for p in definition["Parameters"]} >= {"CustomerIdStart", "CustomerIdEnd"}

    # --apply: the config goes to S3, create_pipeline accepts the definition, a run starts,
    # the seed's notification_email is subscribed to its topic, and the EventBridge rule made.
    schedule = ["--schedule", "0 2 * * *"]  # the seed's cron(0 2 * * ? *)
    assert main([*args, "--apply", *schedule]) == 0
    [subscription] = sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"]
    assert (subscription["Protocol"], subscription["Endpoint"]) == (
        "email", data["notification_email"],
    )  # fmt: skip
    events = boto3.client("events", region_name=REGION)
    rule = events.describe_rule(Name=f"{data['pipeline_name']}-schedule")
    assert rule["ScheduleExpression"] == "cron(0 2 * * ? *)" and rule["State"] == "ENABLED"
    [target] = events.list_targets_by_rule(Rule=rule["Name"])["Targets"]
    assert target["Arn"].endswith(f":pipeline/{data['pipeline_name']}")
    assert target["RoleArn"] == data["role_arn"]
    sagemaker = boto3.client("sagemaker", region_name=REGION)
    pipeline = sagemaker.describe_pipeline(PipelineName=data["pipeline_name"])
    assert json.loads(pipeline["PipelineDefinition"]) == definition
    executions = sagemaker.list_pipeline_executions(PipelineName=data["pipeline_name"])
    assert len(executions["PipelineExecutionSummaries"]) == 1
    key = f"{data['prefix']}/pipeline/{data['pipeline_name']}/pipeline_config.yaml"
    uploaded = boto3.client("s3", region_name=REGION).get_object(Bucket=BUCKET, Key=key)
    assert yaml.safe_load(uploaded["Body"].read())["backend"] == "aws"
    # Applying again updates the pipeline in place and starts a second execution; the
    # e-mail is not subscribed twice.
    assert main([*args, "--apply"]) == 0
    executions = sagemaker.list_pipeline_executions(PipelineName=data["pipeline_name"])
    assert len(executions["PipelineExecutionSummaries"]) == 2
    assert len(sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"]) == 1

    # A topic that does not exist fails the deployment before anything changes.
    wrong = topic.replace("failures", "falures")
    assert main(["--set", f"sns_topic_arn={wrong}", *args, "--apply"]) == 2
    assert len(sagemaker.list_pipeline_executions(PipelineName=data["pipeline_name"])[
        "PipelineExecutionSummaries"]) == 2  # fmt: skip


@pytest.mark.parametrize(
    ("cron", "expected"),
    [
        ("0 2 * * *", "cron(0 2 * * ? *)"),
        ("30 6 * * 1-5", "cron(30 6 ? * MON-FRI *)"),
        ("0 0 1 * *", "cron(0 0 1 * ? *)"),
        ("15 3 * * 0,6", "cron(15 3 ? * SUN,SAT *)"),
        ("0 2 1 * 1", None),  # EventBridge cannot say "the 1st and every Monday"
        ("0 2 * * */2", None),
        ("not cron", None),
    ],
)
def test_schedule_becomes_an_eventbridge_expression(cron: str, expected: str | None) -> None:
    from batchscore.deploy import eventbridge_cron
    from batchscore.errors import ConfigError

    if expected is None:
        with pytest.raises(ConfigError, match="--schedule"):
            eventbridge_cron(cron)
    else:
        assert eventbridge_cron(cron) == expected


def test_iceberg_offline_store_reads_like_the_reference_and_pins_its_snapshot(
    aws: str, tmp_path: Path
) -> None:
    rows = offline_store_rows(demo.generate_churn_data(800, seed=3))
    create_feature_group(rows, table_format="Iceberg")
    store = open_feature_store(seed_settings(tmp_path))
    group = store.describe(GROUP)
    assert group.snapshot_id is not None
    assert group.table_identifier.startswith(f"sagemaker_featurestore.{GROUP}")
    got = store.latest_records(GROUP, 100, 700, batch_size=128).to_table().to_pandas()
    expected = reference_latest(rows, 100, 700)
    assert sorted(got.customer_id) == sorted(expected.customer_id)

    # Records written after the run began do not change what a resumed run reads.
    from pyiceberg.catalog import load_catalog

    from batchscore.aws import glue_catalog_properties

    catalog = load_catalog("offline", **glue_catalog_properties(seed_settings_data()))
    table = catalog.load_table(group.table_identifier)
    table.append(offline_store_table(rows.head(50).assign(is_deleted=True)))
    pinned = store.latest_records(GROUP, 100, 700, snapshot_id=group.snapshot_id).to_table()
    assert pinned.num_rows == len(expected)


def test_s3_workspace_carries_a_run_from_machine_to_machine(
    sagemaker_world, tmp_path: Path
) -> None:
    """Each step on its own 'machine' (its own local copy), the run folder kept in S3."""
    _, rows = sagemaker_world
    workspace = f"s3://{BUCKET}/mlops/batch_inference/workspace"

    def machine(name: str):
        return seed_settings(tmp_path, workspace=workspace, local_workspace=str(tmp_path / name))

    first = Pipeline(machine("a")).run_step("DataSource", "exec-7")
    assert first.steps["DataSource"].status == "succeeded"
    Pipeline(machine("b")).run_step("BatchInference", "exec-7")
    # Validate reads what BatchInference summarised on another machine (summary.json in S3).
    validated = Pipeline(machine("c")).run_step("Validate", "exec-7")
    assert validated.steps["Validate"].outputs["verdict"] == "pass"
    done = Pipeline(machine("d")).run_step("Publish", "exec-7")
    assert done.status == "succeeded"
    assert done.run_dir == str(tmp_path / "d" / "runs" / "exec-7")  # rebased onto machine d

    s3 = boto3.client("s3", region_name=REGION)
    listed = s3.list_objects_v2(
        Bucket=BUCKET, Prefix="mlops/batch_inference/workspace/runs/exec-7/"
    )
    keys = {o["Key"].split("exec-7/", 1)[1] for o in listed["Contents"]}
    assert {
        "run.json",
        "run.log",
        "input/part-00000.parquet",
        "summary.json",
        "checks.json",
    } <= keys
    assert "report.html" in keys
    assert any(k.startswith("predictions/") for k in keys)
    record = json.loads(
        s3.get_object(Bucket=BUCKET, Key="mlops/batch_inference/workspace/runs/exec-7/run.json")[
            "Body"
        ].read()
    )
    assert record["status"] == "succeeded"
    published = glue_table_rows(machine("d"))
    assert published.num_rows == len(reference_latest(rows, 4000, 5000))


def test_seed_config_with_backend_aws_puts_the_workspace_on_s3(tmp_path: Path) -> None:
    data = {**yaml.safe_load(SEED_CONFIG), "backend": "aws"}
    settings = load_settings(None, overrides=data, env={})
    assert settings.remote_workspace == "s3://mlbucket-sagemaker/mlops/batch_inference"
    from batchscore.catalog import catalog_properties

    assert catalog_properties(settings)["warehouse"] == (
        "s3://mlbucket-sagemaker/mlops/batch_inference/warehouse"
    )
    assert settings.registry_type == "sagemaker" and settings.feature_store_type == "sagemaker"
    assert settings.unused_keys() == []
    local = load_settings(None, overrides={**data, "workspace": str(tmp_path)}, env={})
    assert local.remote_workspace is None and local.workspace_path == tmp_path


def queue_athena_result(moto_url: str, table: pa.Table, types: dict[str, str]) -> None:
    """Play Athena's part: moto runs no SQL, so the answer it gives the next query is queued
    here, shaped as Athena sends it (a header row first, every value as text)."""

    def text(value: object) -> dict[str, str]:
        return (
            {}
            if value is None
            else {"VarCharValue": repr(value) if isinstance(value, float) else str(value)}
        )

    rows = [{"Data": [{"VarCharValue": name} for name in table.column_names]}]
    rows += [{"Data": [text(v) for v in row.values()]} for row in table.to_pylist()]
    columns = [{"Name": n, "Label": n, "Type": types[n]} for n in table.column_names]
    body = {"region": REGION, "results": [{"rows": rows, "column_info": columns}]}
    request = urllib.request.Request(
        f"{moto_url}/moto-api/static/athena/query-results",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    urllib.request.urlopen(request).close()


def athena_executions() -> list[dict]:
    athena = boto3.client("athena", region_name=REGION)
    ids = athena.list_query_executions()["QueryExecutionIds"]
    return [athena.get_query_execution(QueryExecutionId=i)["QueryExecution"] for i in ids]


def test_query_goes_through_athena_with_results_in_athena_query_results(
    sagemaker_world, moto_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from batchscore.catalog import open_catalog
    from batchscore.cli import main
    from batchscore.queries import query, run_query

    settings, _ = sagemaker_world
    Pipeline(settings).run()
    config = tmp_path / "pipeline_config.yaml"  # the seed's file plus backend: aws
    sql = (
        "SELECT prediction, count(*) AS customers, round(avg(prediction_probability), 6) AS "
        "mean_probability FROM mlops_poc_daily_inference GROUP BY prediction ORDER BY prediction"
    )
    # The true answer, from the Glue table's own files; Athena (moto) is told to give it back.
    truth = run_query(open_catalog(settings), sql.replace("FROM ", "FROM ml_metrics."))
    assert truth.num_rows == 2
    types = {"prediction": "integer", "customers": "bigint", "mean_probability": "double"}
    queue_athena_result(moto_url, truth, types)

    capsys.readouterr()
    assert main(["-c", str(config), "query", sql, "--format", "json"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out) == truth.to_pylist()
    [execution] = athena_executions()
    assert execution["Query"] == sql
    assert execution["QueryExecutionContext"]["Database"] == "ml_metrics"
    location = execution["ResultConfiguration"]["OutputLocation"]
    seed_results = "s3://mlbucket-sagemaker/athena-query-results/"  # the seed's key
    assert location.startswith(seed_results) and location in " ".join(out.err.split())
    bucket, key = location.removeprefix("s3://").split("/", 1)
    csv = boto3.client("s3", region_name=REGION).get_object(Bucket=bucket, Key=key)
    assert b'"customers"' in csv["Body"].read()

    # Typed from Athena's column metadata; values travel as Athena execution parameters.
    queue_athena_result(moto_url, truth.slice(1), types)
    athena = load_settings(config, overrides={"athena_workgroup": "ml-analytics"}, env={})
    boto3.client("athena", region_name=REGION).create_work_group(Name="ml-analytics")
    one = query(athena, sql.replace("GROUP BY", "WHERE prediction = ? GROUP BY"), [1])
    assert one.table.schema.types == [pa.int32(), pa.int64(), pa.float64()]
    assert one.table.to_pylist() == truth.slice(1).to_pylist()
    newest = max(athena_executions(), key=lambda e: e["Status"]["SubmissionDateTime"])
    assert newest["ExecutionParameters"] == ["1"] and newest["WorkGroup"] == "ml-analytics"
    # The engine's own report of the query travels with the rows.
    assert one.engine == "athena" and one.query_id == newest["QueryExecutionId"]
    assert one.output_location == newest["ResultConfiguration"]["OutputLocation"]
    assert one.bytes_scanned == newest["Statistics"].get("DataScannedInBytes")
    assert one.seconds > 0

    # --via duckdb still reads the Glue table's files on this machine.
    capsys.readouterr()
    assert main(["-c", str(config), "query", sql.replace("FROM ", "FROM ml_metrics."),
                 "--via", "duckdb", "--format", "json"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out) == truth.to_pylist()

    # Anything but a SELECT is refused before Athena sees it; the table is untouched.
    before = len(athena_executions())
    for statement in ("DROP TABLE mlops_poc_daily_inference",
                      "/* report */ INSERT INTO mlops_poc_daily_inference SELECT 1"):  # fmt: skip
        assert main(["-c", str(config), "query", statement]) == 2  # a usage error
        assert "only SELECT" in capsys.readouterr().err
    assert len(athena_executions()) == before
    local = tmp_path / "local.yaml"
    local.write_text(yaml.safe_dump({"workspace": str(tmp_path / "local-ws")}))
    assert main(["-c", str(local), "query", "SELECT 1", "--via", "athena"]) == 1
    assert "Athena reads tables in the Glue catalog" in capsys.readouterr().err
    assert (
        glue_table_rows(settings).num_rows
        == truth.column("customers").to_pylist()[0] + (truth.column("customers").to_pylist()[1])
    )


def test_an_athena_query_that_does_not_finish_is_stopped(aws: str, tmp_path: Path) -> None:
    from batchscore.athena import athena_query
    from batchscore.errors import QueryError

    # Keep every execution QUEUED (moto's state manager), as a congested workgroup would.
    body = {
        "model_name": "athena::execution",
        "transition": {"progression": "manual", "times": 1000},
    }
    request = urllib.request.Request(
        f"{aws}/moto-api/state-manager/set-transition",
        data=json.dumps(body).encode(),
        method="POST",
    )
    urllib.request.urlopen(request).close()
    settings = seed_settings(tmp_path)
    try:
        with pytest.raises(QueryError, match=r"still queued after 1 s; it was stopped.*--timeout"):
            athena_query(settings, "SELECT 1", timeout=1.0)
    finally:
        request = urllib.request.Request(
            f"{aws}/moto-api/state-manager/unset-transition",
            data=json.dumps({"model_name": "athena::execution"}).encode(),
            method="POST",
        )
        urllib.request.urlopen(request).close()
    [execution] = athena_executions()
    assert execution["Status"]["State"] == "CANCELLED"


@pytest.mark.parametrize(
    ("sql", "allowed"),
    [
        # Athena-only syntax DuckDB cannot parse: Iceberg time travel is a read.
        ("SELECT * FROM mlops_poc_daily_inference FOR VERSION AS OF 42", True),
        ("-- yesterday's run\nSELECT * FROM t FOR TIMESTAMP AS OF TIMESTAMP '2026-11-26'", True),
        ("OPTIMIZE mlops_poc_daily_inference REWRITE DATA USING BIN_PACK", False),
        ("UNLOAD (SELECT 1) TO 's3://x/' WITH (format = 'PARQUET')", False),
        ("/* repair */ MSCK REPAIR TABLE t", False),
        ("VACUUM mlops_poc_daily_inference", False),  # DuckDB parses this one: its verdict
        ("CREATE TABLE x WITH (table_type = 'ICEBERG') AS SELECT 1", False),
    ],
)
def test_only_selects_reach_athena(sql: str, allowed: bool) -> None:
    from batchscore.errors import QueryError
    from batchscore.sql import check_select

    if allowed:
        check_select(sql, dialect="athena")
    else:
        with pytest.raises(QueryError, match="only SELECT queries are allowed"):
            check_select(sql, dialect="athena")
    with pytest.raises(QueryError):  # the embedded DuckDB query takes DuckDB's SQL only
        check_select(sql)
