"""The Ray engine: same tables as the local engine, and a real two-node cluster.

Ray runs for real: a local instance in this process for the comparison, and a cluster of two
``ray start`` nodes on 127.0.0.1 (token-authenticated, as Ray 2.60 sets up by default) that a
``batchscore run`` subprocess joins with ``ray_address``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import ray

from batchscore.catalog import load_table, open_catalog
from batchscore.pipeline import Pipeline
from tests.helpers import RecordingProgress, cli, config_for

RAY = Path(sys.executable).parent / "ray"
DAY = dt.date(2025, 6, 1)  # mid-data: as_of excludes later versions, some deletes are past
COMPARED = [
    "customer_id", "prediction", "prediction_probability", "model_name", "model_version",
    "pipeline_name", "id_range", "inference_date",
]  # fmt: skip

pytestmark = pytest.mark.timeout(600)  # a Ray that cannot schedule waits forever


def table_rows(settings) -> pa.Table:
    table = load_table(open_catalog(settings), settings.output_table)
    assert table is not None
    return table.scan().to_arrow().sort_by("customer_id")


@pytest.fixture
def local_ray():
    """Ray on this machine for one test; the pipeline joins it instead of starting its own."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield
    ray.shutdown()


def test_ray_engine_gives_the_local_engines_table(make, local_ray) -> None:
    local = make(customer_id_start=1, customer_id_end=5000)
    on_ray = make(
        customer_id_start=1, customer_id_end=5000, engine="ray", ray_actors=2, batch_size=700
    )
    first = Pipeline(local).run(date=DAY)
    progress = RecordingProgress()
    second = Pipeline(on_ray, progress=progress).run(date=DAY)
    assert second.status == "succeeded"
    # Progress per block reaching the driver, adding up to the rows.
    for task in ("DataSource", "BatchInference"):
        steps = [c[2] for c in progress.of(task) if c[0] == "advance"]
        assert len(steps) > 1 and sum(steps) == second.steps[task].rows, task

    # Same records chosen: latest version as of the date, deletes dropped after ranking.
    ds_local, ds_ray = first.outputs("DataSource"), second.outputs("DataSource")
    for key in ("rows", "duplicate_versions_skipped", "deleted_records_skipped", "snapshot_id"):
        assert ds_ray[key] == ds_local[key], key
    assert ds_local["deleted_records_skipped"] > 0 and ds_local["duplicate_versions_skipped"] > 0

    # Same predictions and lineage, row for row; each row carries its own run's id.
    expected, got = table_rows(local), table_rows(on_ray)
    assert got.num_rows == expected.num_rows == ds_local["rows"]
    assert got.select(COMPARED).equals(expected.select(COMPARED))
    assert set(got.column("run_id").to_pylist()) == {second.run_id}

    # Same evaluation, and the Ray facts in the run record.
    bi_local, bi_ray = first.outputs("BatchInference"), second.outputs("BatchInference")
    assert bi_ray["evaluation"] == bi_local["evaluation"]
    assert bi_ray["evaluation"]["rows"] > 0
    assert bi_ray["unseen_categories"] == bi_local["unseen_categories"]
    assert bi_ray["engine"] == "ray" and len(bi_ray["nodes"]) == 1
    # The same summary.json, merged from the actors' batches (sums to rounding).
    summaries = [json.loads(Path(bi["summary_path"]).read_text()) for bi in (bi_local, bi_ray)]
    for summary in summaries:
        for numeric in summary["numeric"].values():
            numeric["total"] = round(numeric["total"], 6)
        summary["predictions"]["total_probability"] = round(
            summary["predictions"]["total_probability"], 6
        )
    assert summaries[1] == summaries[0]
    assert summaries[0]["rows"] == ds_local["rows"]

    # Write modes are Publish's, the same code for both engines (tests/test_pipeline.py).


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_node_cluster():
    """A head and a worker node started with ``ray start`` on 127.0.0.1."""
    port = _free_port()
    env = {
        **os.environ,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
    }
    # Two logical CPUs per node: an actor (half a CPU) and a read task (one CPU by Ray's
    # default for some internal tasks) must fit on a node side by side.
    common = ["--num-cpus=2", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    address = f"127.0.0.1:{port}"
    try:
        subprocess.run(
            [str(RAY), "start", "--head", f"--port={port}", "--include-dashboard=false", *common],
            env=env, check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        subprocess.run(
            [str(RAY), "start", f"--address={address}", *common],
            env=env, check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        yield address, env
    finally:
        subprocess.run([str(RAY), "stop", "--force"], env=env, capture_output=True, timeout=120)


def test_pipeline_runs_across_a_two_node_cluster(make, two_node_cluster, tmp_path: Path) -> None:
    address, env = two_node_cluster
    settings = make(customer_id_start=1, customer_id_end=5000)
    config = config_for(
        settings, tmp_path / "ray.yaml", engine="ray", ray_address=address, ray_actors=2,
        batch_size=500, customer_id_start=1, customer_id_end=5000,
    )  # fmt: skip
    auth = {k: env[k] for k in ("RAY_USAGE_STATS_ENABLED", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    done = cli("-c", str(config), "run", "--date", DAY.isoformat(), env=auth)
    assert done.returncode == 0, done.stdout + done.stderr

    run_dir = next((settings.runs_path).iterdir())
    record = json.loads((run_dir / "run.json").read_text())
    scoring = record["steps"]["BatchInference"]["outputs"]
    assert len(scoring["nodes"]) == 2, scoring["nodes"]  # both nodes scored
    rows = table_rows(settings)
    assert rows.num_rows == record["steps"]["DataSource"]["rows"] > 0
    assert len(rows.column("customer_id").unique()) == rows.num_rows


def test_wrong_ray_token_is_a_clear_error(make, two_node_cluster, tmp_path: Path) -> None:
    address, _ = two_node_cluster
    settings = make()
    config = config_for(settings, tmp_path / "ray.yaml", engine="ray", ray_address=address)
    # Ray retries the connection once a second for 30 s; 3 tries show the same error sooner.
    wrong = {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": "0" * 32,
        "RAY_gcs_server_port_wait_time_s": "3",
    }
    done = cli("-c", str(config), "run", env=wrong)
    assert done.returncode != 0
    assert "RAY_AUTH_TOKEN" in done.stderr + done.stdout
    assert load_table(open_catalog(settings), settings.output_table) is None
