"""``batchscore deploy sagemaker``: the pipeline as a SageMaker Pipeline, one Processing job per
step — the proof of concept's DataSource → BatchInference → PublishToAthena.

Each job runs ``batchscore step <name> --run-id <PipelineExecutionId>`` in the batchscore
image, with the config file as a processing input. The run folder travels between the jobs
through S3: each job downloads the execution's workspace prefix
(``s3://bucket/prefix/executions/<execution id>/``) into ``/opt/ml/processing/workspace`` and
uploads it again when it ends, so BatchInference finds DataSource's snapshot and Publish finds
BatchInference's predictions — SageMaker's own input/output mechanism, no shared disk.

Failure handling: each step retries SageMaker's transient job errors (capacity, internal
errors) with backoff; batchscore itself retries transient store errors and, with
``sns_topic_arn``, publishes the failure (step, error, resume command) to SNS before the job
fails, which stops the execution.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchscore.errors import ConfigError
from batchscore.steps import STEPS, Step

if TYPE_CHECKING:
    from batchscore.config import Settings

SCHEMA_VERSION = "2020-12-01"
CONFIG_DIR = "/opt/ml/processing/config"
WORKSPACE_DIR = "/opt/ml/processing/workspace"
TRANSIENT_JOB_ERRORS = ["SageMaker.JOB_INTERNAL_ERROR", "SageMaker.CAPACITY_ERROR"]


@dataclass(frozen=True)
class Deployment:
    pipeline_name: str
    definition: dict[str, Any]
    definition_path: Path
    config_uri: str
    pipeline_arn: str | None = None
    execution_arn: str | None = None
    # notification_email on sns_topic_arn: "confirmed", "pending confirmation" or "subscribed".
    email_subscription: str | None = None
    schedule_rule: str | None = None
    schedule_expression: str | None = None


def _get(name: str) -> dict[str, str]:
    return {"Get": name}


def _join(*values: Any) -> dict[str, Any]:
    return {"Std:Join": {"On": "", "Values": list(values)}}


def pipeline_definition(
    settings: Settings, *, image_uri: str, config_uri: str, steps: Sequence[Step] = STEPS
) -> dict[str, Any]:
    """The SageMaker Pipeline definition (JSON schema 2020-12-01) for ``settings``: one
    Processing job per step of ``steps``, each after the one before."""
    if not settings.role_arn:
        raise ConfigError(
            "deploy sagemaker needs 'role_arn': the IAM role the processing jobs run as "
            "(see docs/aws.md for the policy each step needs)."
        )
    workspace_uri = _join(
        f"{settings.s3_prefix}/executions/", _get("Execution.PipelineExecutionId")
    )
    parameters = [
        {"Name": "CustomerIdStart", "Type": "Integer", "DefaultValue": settings.customer_id_start},
        {"Name": "CustomerIdEnd", "Type": "Integer", "DefaultValue": settings.customer_id_end},
        {"Name": "LogicalDate", "Type": "String", "DefaultValue": "today"},
        {
            "Name": "ProcessingInstanceType",
            "Type": "String",
            "DefaultValue": settings.processing_instance_type or "ml.m5.xlarge",
        },
    ]
    jobs: list[dict[str, Any]] = []
    for i, step in enumerate(steps):
        entrypoint: list[Any] = [
            "batchscore", "--config", f"{CONFIG_DIR}/pipeline_config.yaml",
            "--set", f"workspace={WORKSPACE_DIR}",
            "--set", _join("customer_id_start=", _get("Parameters.CustomerIdStart")),
            "--set", _join("customer_id_end=", _get("Parameters.CustomerIdEnd")),
            "step", step.slug, "--run-id", _get("Execution.PipelineExecutionId"),
        ]  # fmt: skip
        if i == 0:  # the first step starts the run
            entrypoint += ["--date", _get("Parameters.LogicalDate")]
        job: dict[str, Any] = {
            "Name": step.sagemaker_name,
            "Type": "Processing",
            "Arguments": {
                "ProcessingResources": {
                    "ClusterConfig": {
                        "InstanceType": _get("Parameters.ProcessingInstanceType"),
                        "InstanceCount": 1,
                        "VolumeSizeInGB": 30,
                    }
                },
                "AppSpecification": {"ImageUri": image_uri, "ContainerEntrypoint": entrypoint},
                "RoleArn": settings.role_arn,
                "Environment": {
                    "AWS_REGION": settings.region or "",
                    "MLFLOW_DISABLE_TELEMETRY": "true",
                },
                "ProcessingInputs": [
                    {
                        "InputName": "config",
                        "S3Input": {
                            "S3Uri": config_uri,
                            "LocalPath": CONFIG_DIR,
                            "S3DataType": "S3Prefix",
                            "S3InputMode": "File",
                        },
                    },
                    *(
                        [
                            {
                                "InputName": "workspace",
                                "S3Input": {
                                    "S3Uri": workspace_uri,
                                    "LocalPath": WORKSPACE_DIR,
                                    "S3DataType": "S3Prefix",
                                    "S3InputMode": "File",
                                },
                            }
                        ]
                        if i > 0
                        else []
                    ),
                ],
                "ProcessingOutputConfig": {
                    "Outputs": [
                        {
                            "OutputName": "workspace",
                            "S3Output": {
                                "S3Uri": workspace_uri,
                                "LocalPath": WORKSPACE_DIR,
                                "S3UploadMode": "EndOfJob",
                            },
                        }
                    ]
                },
                "StoppingCondition": {"MaxRuntimeInSeconds": 86_400},
            },
            "RetryPolicies": [
                {
                    "ExceptionType": TRANSIENT_JOB_ERRORS,
                    "IntervalSeconds": 60,
                    "BackoffRate": 2.0,
                    "MaxAttempts": 3,
                }
            ],
        }
        if i > 0:
            job["DependsOn"] = [steps[i - 1].sagemaker_name]
        jobs.append(job)
    return {
        "Version": SCHEMA_VERSION,
        "Metadata": {"GeneratedBy": "batchscore deploy sagemaker"},
        "Parameters": parameters,
        "Steps": jobs,
    }


WEEKDAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")


def eventbridge_cron(expression: str) -> str:
    """A five-field cron expression (UTC) as EventBridge's ``cron(min hour dom month dow year)``.

    EventBridge wants ``?`` in one of day-of-month and day-of-week, counts weekdays from 1
    (names avoid the off-by-one) and has no seconds.

    Raises:
        ConfigError: naming the field EventBridge cannot express.
    """
    from batchscore.config import validate_cron

    validate_cron(expression, "--schedule")
    fields = expression.split()
    if len(fields) == 6:
        if fields[5] != "0":
            raise ConfigError(
                f"--schedule {expression!r}: EventBridge schedules have no seconds field; "
                "use five fields, e.g. '0 2 * * *'."
            )
        fields = fields[:5]
    minute, hour, dom, month, dow = fields
    if dow == "*":
        dow = "?"
    elif dom == "*":
        dom = "?"
        if "/" in dow:
            raise ConfigError(
                f"--schedule {expression!r}: EventBridge takes no step ('/') in day-of-week; "
                "list the days instead, e.g. MON,WED,FRI."
            )
        dow = re.sub(r"\d+", lambda m: WEEKDAYS[int(m.group()) % 7], dow)
    else:
        raise ConfigError(
            f"--schedule {expression!r}: EventBridge cannot combine a day of the month with a "
            "day of the week; keep one and make the other '*'."
        )
    return f"cron({minute} {hour} {dom} {month} {dow} *)"


def ensure_email_subscription(settings: Settings) -> str | None:
    """Subscribe ``notification_email`` to ``sns_topic_arn`` unless it already is (the seed's
    failure e-mails). Returns the subscription's state, or None when either key is unset.

    Raises:
        ConfigError: the topic does not exist (its ARN is wrong, or it was never created).
    """
    from batchscore import aws

    topic, email = settings.sns_topic_arn, settings.notification_email
    if not (topic and email):
        return None
    sns = aws.client("sns", settings)
    try:
        sns.get_topic_attributes(TopicArn=topic)
    except sns.exceptions.NotFoundException as exc:
        name = topic.rsplit(":", 1)[-1]
        raise ConfigError(
            f"sns_topic_arn {topic!r} does not exist: create it (aws sns create-topic --name "
            f"{name}) or fix the ARN."
        ) from exc
    for page in sns.get_paginator("list_subscriptions_by_topic").paginate(TopicArn=topic):
        for subscription in page["Subscriptions"]:
            if subscription["Protocol"] == "email" and subscription["Endpoint"].lower() == (
                email.lower()
            ):
                confirmed = subscription["SubscriptionArn"].startswith("arn:")
                return "confirmed" if confirmed else "pending confirmation"
    sns.subscribe(TopicArn=topic, Protocol="email", Endpoint=email)
    return "subscribed"


def deploy_sagemaker(
    settings: Settings,
    config_path: Path | None,
    *,
    image_uri: str,
    output: Path,
    apply: bool = False,
    schedule: str | None = None,
    schedule_role_arn: str | None = None,
) -> Deployment:
    """Write the definition to ``output``; with ``apply``, upload the config, subscribe
    ``notification_email`` to ``sns_topic_arn``, create or update the pipeline, put the
    EventBridge rule for ``schedule`` (a cron expression in UTC) and start an execution."""
    from batchscore import aws

    if config_path is None or not config_path.exists():
        raise ConfigError(
            "deploy sagemaker needs the config file the jobs will read: pass --config "
            "pipeline_config.yaml."
        )
    config_uri = f"{settings.s3_prefix}/pipeline/{settings.pipeline_name}/"
    definition = pipeline_definition(settings, image_uri=image_uri, config_uri=config_uri)
    expression = eventbridge_cron(schedule) if schedule else None
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(definition, indent=2))
    if not apply:
        return Deployment(
            settings.pipeline_name,
            definition,
            output,
            config_uri,
            schedule_expression=expression,
        )

    email = ensure_email_subscription(settings)  # a wrong topic fails before anything changes
    bucket, key = aws.split_s3(config_uri + "pipeline_config.yaml")
    aws.client("s3", settings).upload_file(str(config_path), bucket, key)
    sagemaker = aws.client("sagemaker", settings)
    arguments = {
        "PipelineName": settings.pipeline_name,
        "PipelineDefinition": json.dumps(definition),
        "RoleArn": settings.role_arn,
        "PipelineDescription": f"batchscore: {settings.project_name}",
    }
    existing = {
        p["PipelineName"]
        for p in sagemaker.list_pipelines(PipelineNamePrefix=settings.pipeline_name).get(
            "PipelineSummaries", []
        )
    }
    if settings.pipeline_name in existing:
        arn = sagemaker.update_pipeline(**arguments)["PipelineArn"]
    else:
        arn = sagemaker.create_pipeline(**arguments)["PipelineArn"]
    rule = None
    if expression:
        rule = _put_schedule(settings, arn, expression, schedule_role_arn or settings.role_arn)
    execution = sagemaker.start_pipeline_execution(PipelineName=settings.pipeline_name)
    return Deployment(
        settings.pipeline_name,
        definition,
        output,
        config_uri,
        pipeline_arn=arn,
        execution_arn=execution["PipelineExecutionArn"],
        email_subscription=email,
        schedule_rule=rule,
        schedule_expression=expression,
    )


def _put_schedule(settings: Settings, pipeline_arn: str, expression: str, role: str | None) -> str:
    """The seed's EventBridge rule: ``expression`` starts the pipeline (created or updated)."""
    from batchscore import aws

    name = f"{settings.pipeline_name}-schedule"[:64]
    events = aws.client("events", settings)
    events.put_rule(
        Name=name,
        ScheduleExpression=expression,
        State="ENABLED",
        Description=f"batchscore: runs {settings.pipeline_name}",
    )
    events.put_targets(
        Rule=name,
        Targets=[
            {
                "Id": "batchscore-pipeline",
                "Arn": pipeline_arn,
                "RoleArn": role,
                "SageMakerPipelineParameters": {"PipelineParameterList": []},
            }
        ],
    )
    return name
