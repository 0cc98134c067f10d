"""The step list is the one place steps are defined: the runner, run records, run history,
``runs show``, the failpoints, the CLI and ``deploy sagemaker`` all follow it — a step added to
the list runs, is recorded, fails and resumes like the others without touching the runner."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from batchscore.deploy import pipeline_definition
from batchscore.engines import ENGINES, open_engine
from batchscore.errors import BatchScoreError, ConfigError
from batchscore.faults import ENV, POINTS, points
from batchscore.pipeline import Pipeline
from batchscore.records import RunRecord
from batchscore.runs import RunHistory
from batchscore.steps import STEPS, Step, by_name, by_slug, step_names
from batchscore.steps.context import RunContext
from tests.helpers import cli, config_for

FAIL_VALIDATION = "BATCHSCORE_TEST_FAIL_VALIDATION"


def count_predictions(ctx: RunContext) -> dict[str, object]:
    """A step that is not in batchscore: checks BatchInference's files hold every row."""
    import os

    scored = ctx.record.outputs("BatchInference")
    rows = sum(pq.ParquetFile(path).metadata.num_rows for path in scored["files"])
    if os.environ.get(FAIL_VALIDATION):
        raise BatchScoreError("validation refused the predictions (on purpose)")
    return {"rows": rows, "matches": rows == scored["rows"]}


# Not batchscore's own Validate: a step of the test's, between Validate and Publish.
COUNT = Step(
    "CountPredictions",
    "count-predictions",
    "checks the predictions files hold every row before they are published",
    "tests.test_steps:count_predictions",
)
WITH_COUNT = (*STEPS[:3], COUNT, STEPS[3])


def test_an_added_step_runs_is_recorded_and_has_failpoints(
    settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    barrier = tmp_path / "barrier"
    monkeypatch.setenv(ENV, f"CountPredictions:start=barrier:{barrier}:1")  # leaves a file
    record = Pipeline(settings, steps=WITH_COUNT).run()

    assert record.status == "succeeded"
    assert list(record.steps) == [
        "DataSource", "BatchInference", "Validate", "CountPredictions", "Publish",
    ]  # fmt: skip
    counted = RunRecord.load(Path(record.run_dir)).steps["CountPredictions"]
    assert counted.status == "succeeded"
    assert counted.outputs == {"rows": record.steps["BatchInference"].rows, "matches": True}
    assert list(barrier.glob("*.arrived")), "the runner passed CountPredictions:start"
    assert points(WITH_COUNT)[8:11] == (
        "CountPredictions:start", "CountPredictions:end", "Publish:start",
    )  # fmt: skip

    details = RunHistory.for_settings(settings).get(record.run_id)
    assert [s.step for s in details.steps] == list(record.steps)
    shown = cli("-c", str(config_for(settings, tmp_path / "c.yaml")), "runs", "show", record.run_id)
    assert shown.returncode == 0, shown.stderr
    assert "CountPredictions" in shown.stdout and "succeeded" in shown.stdout


def test_an_added_step_that_fails_skips_the_rest_and_resumes(
    settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(FAIL_VALIDATION, "1")
    with pytest.raises(BatchScoreError, match="on purpose"):
        Pipeline(settings, steps=WITH_COUNT).run()
    history = RunHistory.for_settings(settings)
    run_id = history.list_runs(limit=1)[0]["run_id"]
    failed = RunRecord.load(settings.runs_path / run_id)
    assert failed.failed_step == "CountPredictions"
    assert {n: s.status for n, s in failed.steps.items()} == {
        "DataSource": "succeeded",
        "BatchInference": "succeeded",
        "Validate": "succeeded",
        "CountPredictions": "failed",
        "Publish": "skipped",
    }

    monkeypatch.delenv(FAIL_VALIDATION)
    resumed = Pipeline(settings, steps=WITH_COUNT).resume(run_id)
    assert resumed.status == "succeeded"
    assert resumed.steps["CountPredictions"].attempts == 2  # once failed, once now
    assert resumed.steps["Validate"].attempts == 1
    assert resumed.steps["DataSource"].attempts == 1  # reused, not run again


def test_the_cli_deploy_and_failpoints_follow_the_list(make) -> None:
    assert step_names() == ("DataSource", "BatchInference", "Validate", "Publish")
    assert points(STEPS) == POINTS
    assert POINTS[0] == "run:started" and "Publish:committed" in POINTS
    assert by_slug("batch-inference") is by_name("BatchInference") is STEPS[1]
    with pytest.raises(ConfigError, match=r"not one of data-source, .*Did you mean 'publish'"):
        by_slug("publsh")

    help_text = cli("step", "--help").stdout
    assert "data-source, batch-inference, validate or publish" in help_text
    assert (
        "Run DataSource → BatchInference → Validate → Publish once." in cli("run", "--help").stdout
    )

    settings = make(role_arn="arn:aws:iam::123456789012:role/batchscore", bucket="bucket")
    definition = pipeline_definition(
        settings, image_uri="image", config_uri="s3://bucket/c", steps=WITH_COUNT
    )
    jobs = definition["Steps"]
    assert [job["Name"] for job in jobs] == [
        "DataSource", "BatchInference", "Validate", "CountPredictions", "PublishToAthena",
    ]  # fmt: skip
    entrypoint = jobs[3]["Arguments"]["AppSpecification"]["ContainerEntrypoint"]
    assert entrypoint[entrypoint.index("step") + 1] == "count-predictions"
    assert jobs[4]["DependsOn"] == ["CountPredictions"]
    assert jobs[3]["DependsOn"] == ["Validate"]
    assert "--date" in jobs[0]["Arguments"]["AppSpecification"]["ContainerEntrypoint"]
    assert "--date" not in entrypoint


def test_engines_come_from_the_registry(make) -> None:
    assert set(ENGINES) == {"local", "ray"}
    for name in ENGINES:
        engine = open_engine(make(engine=name))
        assert engine.name == name
        with engine.session():  # Ray is joined only when a step needs it: nothing starts here
            pass
    spark = make().model_copy(update={"engine": "spark"})  # past the settings' own check
    with pytest.raises(
        ConfigError, match=r"engine 'spark' is not a known engine type.*Known types: local, ray"
    ):
        open_engine(spark)


def test_the_ray_engine_refuses_a_feature_store_it_cannot_read(make, tmp_path: Path) -> None:
    """The config refuses engine: ray with a non-Iceberg store; a store handed to the engine
    directly gets the same answer, not an AttributeError from inside the Ray read."""
    import boto3

    from batchscore.feature_store.sagemaker import SageMakerFeatureStore

    settings = make(engine="ray")
    client = boto3.client(
        "sagemaker", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    store = SageMakerFeatureStore(settings, sagemaker_client=client)
    with pytest.raises(ConfigError, match="engine 'ray' reads Iceberg feature groups only"):
        open_engine(settings).data_source(
            store, "churn", 4000, 5000, tmp_path / "input", as_of=None, snapshot_id=None
        )
