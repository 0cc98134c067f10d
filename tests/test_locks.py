"""Run locks across machines: two workspaces sharing one SQL catalog stand for two machines;
moto's S3 server stands for an ``s3://`` workspace. And abandoned runs: a run killed outright
is shown as abandoned, its log stops following, and resume completes it."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import boto3
import pytest

from batchscore.config import load_settings
from batchscore.errors import ConfigError, RunLockedError
from batchscore.leases import Lease, S3LeaseStore, SqlLeaseStore, iso, open_lease_store
from batchscore.locks import lock_holder, lock_key, run_lock
from batchscore.pipeline import Pipeline
from batchscore.records import RunRecord
from batchscore.runs import RunHistory
from tests.aws_fixtures import BUCKET, REGION
from tests.helpers import (
    BIN,
    PROCESS_RUN_DATE,
    cli,
    config_for,
    expected_latest,
    forkserver,
    overrides_of,
    start_run_process,
    table_rows,
)

DAY = PROCESS_RUN_DATE  # the date start_run_process runs
DAY_KEY = ("classification-model-batch-inference-pipeline", DAY.isoformat(), "4000-4300")


def _child(overrides: dict, run_id: str, pause: float | str, result: str) -> None:
    """Run DAY; pause before DataSource (seconds, or until the file ``pause`` exists)."""
    from batchscore.errors import BatchScoreError
    from batchscore.records import PipelineHooks

    class Pause(PipelineHooks):
        def before_step(self, record, step):
            if step != "DataSource":
                return
            if isinstance(pause, str):
                while not Path(pause).exists():
                    time.sleep(0.05)
            else:
                time.sleep(pause)

    try:
        Pipeline(load_settings(overrides=overrides, env={}), hooks=[Pause()]).run(
            date=DAY, run_id=run_id
        )
    except BatchScoreError as exc:
        Path(result).write_text(f"{type(exc).__name__}: {exc}")
        os._exit(exc.exit_code)


def two_machines(make, tmp_path: Path, **extra: object):
    """Settings of two 'machines': private workspaces, one catalog, one output table."""
    a = make(workspace=tmp_path / "a", customer_id_end=4300, **extra)
    b = make(
        workspace=tmp_path / "b",
        customer_id_end=4300,
        athena_output_table=a.athena_output_table,
        **extra,
    )
    return a, b


def foreign_lease(run_id: str, seconds: float) -> Lease:
    """A lease as another machine would hold it (its pid means nothing here)."""
    now = time.time()
    return Lease(run_id, "elsewhere", 4242, "elsewhere/boot/pid:[1]", "t" * 32, now, now + seconds)


# The SQL catalog ------------------------------------------------------------------------------


def test_two_workspaces_sharing_a_catalog_run_a_logical_run_once(make, tmp_path: Path) -> None:
    a, b = two_machines(make, tmp_path)
    for trial in range(2):
        jobs = [
            (
                overrides_of(s, customer_id_end=4300),
                f"{name}{trial}",
                1.5,
                str(tmp_path / f"{name}.out"),
            )
            for s, name in ((a, "a"), (b, "b"))
        ]
        processes = [forkserver.Process(target=_child, args=job) for job in jobs]
        for p in processes:
            p.start()
        for p in processes:
            p.join(180)
        codes = [p.exitcode for p in processes]
        assert sorted(codes) == [0, 4], codes
        winner, loser = ("a", "b") if codes[0] == 0 else ("b", "a")
        message = (tmp_path / f"{loser}.out").read_text()
        assert message.startswith("RunLockedError: ")
        assert f"run {winner}{trial} on host " in message and "(pid " in message
        assert "lease expires at " in message and "batchscore_run_locks" in message
        rows = table_rows(a)
        rows = rows[rows.inference_date == DAY]
        assert len(rows) == len(expected_latest(a, 4000, 4300))
        assert set(rows.run_id) == {f"{winner}{trial}"}


def test_the_shared_lock_is_released_after_a_run(make, tmp_path: Path) -> None:
    a, b = two_machines(make, tmp_path)
    store = open_lease_store(a)
    assert isinstance(store, SqlLeaseStore)
    Pipeline(a).run(date=DAY, run_id="first")
    assert store.read(lock_key(*DAY_KEY)) is None
    assert lock_holder(b, *DAY_KEY) is None
    assert Pipeline(b).run(date=DAY, run_id="second").status == "succeeded"
    assert store.read(lock_key(*DAY_KEY)) is None
    store.close()


def test_a_killed_holders_lock_is_taken_over_at_once_on_its_machine(make, tmp_path) -> None:
    # A long lease: only the holder's death (its pid gone on this machine) frees it.
    a, b = two_machines(make, tmp_path, lock_lease_seconds=600)
    process = start_run_process(
        overrides_of(a, customer_id_end=4300, lock_lease_seconds=600),
        "killed",
        failpoint="BatchInference:start",
    )
    process.join(120)
    assert process.exitcode == -signal.SIGKILL
    store = open_lease_store(a)
    left = store.read(lock_key(*DAY_KEY))
    assert left is not None and left.run_id == "killed" and left.expires > time.time() + 300
    assert lock_holder(b, *DAY_KEY) is None  # its process is gone
    assert Pipeline(b).run(date=DAY, run_id="taker").status == "succeeded"
    assert store.read(lock_key(*DAY_KEY)) is None
    store.close()


def test_another_machines_lease_holds_until_it_expires(make, tmp_path: Path) -> None:
    a, b = two_machines(make, tmp_path)
    store = open_lease_store(a)
    held = store.insert(lock_key(*DAY_KEY), foreign_lease("far-run", seconds=3))
    assert held is not None
    with pytest.raises(RunLockedError) as refused:
        Pipeline(b).run(date=DAY, run_id="too-early")
    message = str(refused.value)
    assert "run far-run on host elsewhere (pid 4242)" in message
    assert f"the lease expires at {iso(held.expires)}" in message
    assert lock_holder(b, *DAY_KEY).run_id == "far-run"
    while time.time() <= held.expires:  # no heartbeat: the lease runs out
        time.sleep(0.2)
    assert lock_holder(b, *DAY_KEY) is None
    assert Pipeline(b).run(date=DAY, run_id="after").status == "succeeded"
    assert store.read(lock_key(*DAY_KEY)) is None  # released; the old holder's row is gone
    store.close()


def test_a_locked_catalog_database_is_waited_for_not_a_failure(make, tmp_path: Path) -> None:
    a, _ = two_machines(make, tmp_path)
    store = open_lease_store(a)
    store.read("warm-up")  # the table exists
    holding, held = threading.Event(), threading.Event()

    def hold_the_write_lock() -> None:
        con = sqlite3.connect(a.catalog["uri"].removeprefix("sqlite:///"), timeout=30)
        con.execute("BEGIN EXCLUSIVE")
        holding.set()
        time.sleep(1.0)
        con.rollback()
        con.close()
        held.set()

    thread = threading.Thread(target=hold_the_write_lock)
    thread.start()
    holding.wait()
    mine, holder = store.acquire("busy-key", Lease.mine("patient", 60))
    assert held.is_set()  # it got in only once the other writer let go
    thread.join()
    assert holder is None and mine.run_id == "patient"
    store.delete("busy-key", mine)
    store.close()


def test_lock_lease_seconds_must_be_positive() -> None:
    assert load_settings(overrides={"lock_lease_seconds": 2.5}, env={}).lock_lease_seconds == 2.5
    with pytest.raises(ConfigError, match="lock_lease_seconds"):
        load_settings(overrides={"lock_lease_seconds": 0}, env={})


# S3 -------------------------------------------------------------------------------------------


@pytest.fixture
def s3_settings(aws: str, tmp_path: Path):
    def machine(name: str, **extra: object):
        return load_settings(
            overrides={
                "workspace": f"s3://{BUCKET}/team/ws",
                "local_workspace": str(tmp_path / name),
                **extra,
            },
            env={},
        )

    return machine


def test_s3_lease_two_acquirers_one_wins(s3_settings) -> None:
    store = open_lease_store(s3_settings("a"))
    assert isinstance(store, S3LeaseStore)
    for trial in range(5):
        key = f"k{trial}"
        barrier = threading.Barrier(2)
        results: list[tuple] = []

        def acquire(run_id: str, key: str, barrier: threading.Barrier, results: list) -> None:
            barrier.wait()
            results.append(store.acquire(key, Lease.mine(run_id, 60)))

        threads = [
            threading.Thread(target=acquire, args=(r, key, barrier, results)) for r in ("x", "y")
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        won = [mine for mine, _ in results if mine is not None]
        refused = [holder for _, holder in results if holder is not None]
        assert len(won) == 1 and len(refused) == 1
        assert refused[0].run_id == won[0].run_id
        stored = boto3.client("s3", region_name=REGION).get_object(
            Bucket=BUCKET, Key=f"team/ws/locks/{key}.json"
        )
        assert json.loads(stored["Body"].read())["token"] == won[0].token


def test_s3_lease_expired_is_taken_over_and_the_old_holder_loses_it(s3_settings) -> None:
    store = open_lease_store(s3_settings("a"))
    old, _ = store.acquire("k", foreign_lease("far-run", seconds=1))
    assert old is not None
    mine, holder = store.acquire("k", Lease.mine("near-run", 60))
    assert mine is None and holder.run_id == "far-run"
    while time.time() <= old.expires:
        time.sleep(0.1)
    mine, holder = store.acquire("k", Lease.mine("near-run", 60))
    assert holder is None and mine.run_id == "near-run"
    assert store.renew("k", old, 60) is None  # the old holder's heartbeat finds it gone
    store.delete("k", old)  # and its release leaves the new holder's lease alone
    assert store.read("k").token == mine.token
    store.delete("k", mine)
    assert store.read("k") is None


def test_s3_run_lock_heartbeat_renews_and_names_the_holder(s3_settings) -> None:
    a = s3_settings("a", lock_lease_seconds=1.5)
    b = s3_settings("b", lock_lease_seconds=1.5)
    store = open_lease_store(a)
    key = lock_key("p", "2026-06-30", "1-2")
    with run_lock(a, "p", "2026-06-30", "holder-run", "1-2"):
        first = store.read(key)
        deadline = time.time() + 30
        while store.read(key).expires == first.expires and time.time() < deadline:
            time.sleep(0.1)
        renewed = store.read(key)
        assert renewed.expires > first.expires and renewed.token == first.token
        with pytest.raises(RunLockedError) as refused, run_lock(b, "p", "2026-06-30", "x", "1-2"):
            pass
        message = str(refused.value)
        assert f"run holder-run on host {first.host} (pid {os.getpid()})" in message
        assert f"s3://{BUCKET}/team/ws/locks/" in message and "lease expires at" in message
        assert lock_holder(b, "p", "2026-06-30", "1-2").run_id == "holder-run"
    assert store.read(key) is None
    with run_lock(b, "p", "2026-06-30", "second-run", "1-2"):
        assert lock_holder(a, "p", "2026-06-30", "1-2").run_id == "second-run"


# Abandoned runs -------------------------------------------------------------------------------


def test_a_killed_run_is_abandoned_its_log_stops_and_resume_completes_it(
    make, tmp_path: Path
) -> None:
    settings = make(customer_id_end=4300, batch_size=50)
    overrides = overrides_of(settings, customer_id_end=4300, batch_size=50)
    process = start_run_process(overrides, "doomed", failpoint="BatchInference:batch")
    process.join(120)
    assert process.exitcode == -signal.SIGKILL
    assert RunRecord.load(settings.runs_path / "doomed").status == "running"  # as it died

    config = config_for(settings, tmp_path / "c.yaml", customer_id_end=4300, batch_size=50)
    listed = cli("-c", str(config), "runs", "list")
    assert listed.returncode == 0, listed.stderr
    assert "abandoned" in listed.stdout
    assert "doomed: abandoned: " in listed.stdout and "batchscore resume doomed" in listed.stdout
    assert "abandoned" in cli("-c", str(config), "runs", "list", "--status", "abandoned").stdout
    assert "doomed" not in cli("-c", str(config), "runs", "list", "--status", "running").stdout

    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHSCORE_")}
    followed = subprocess.run(
        [str(BIN), "-c", str(config), "runs", "logs", "doomed", "--follow"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert followed.returncode == 1
    assert "BatchInference: started" in followed.stdout
    assert "run doomed is no longer running (abandoned)" in followed.stderr

    resumed = cli("-c", str(config), "resume", "doomed")
    assert resumed.returncode == 0, resumed.stderr
    run = RunHistory.for_settings(settings).get("doomed")
    assert run.status == "succeeded" and run.note is None


def test_a_live_run_is_running_not_abandoned(make, tmp_path: Path) -> None:
    settings = make(customer_id_end=4300)
    history = RunHistory.for_settings(settings)
    gate = tmp_path / "go"
    process = forkserver.Process(
        target=_child,
        args=(
            overrides_of(settings, customer_id_end=4300),
            "alive",
            str(gate),
            str(tmp_path / "r"),
        ),
    )
    process.start()
    try:
        deadline = time.time() + 120
        while not history.list_runs() and time.time() < deadline:
            time.sleep(0.1)
        run = history.get("alive")  # paused before DataSource until the gate opens
        assert run.status == "running" and run.note is None
        assert [r["run_id"] for r in history.list_runs(status="running")] == ["alive"]
        assert history.list_runs(status="abandoned") == []
    finally:
        gate.touch()
        process.join(180)
    assert process.exitcode == 0
    assert history.get("alive").status == "succeeded"


def test_history_without_settings_shows_runs_as_recorded(make, tmp_path: Path) -> None:
    settings = make(customer_id_end=4300)
    record = Pipeline(settings).run(date=DAY, run_id="done")
    record = dataclasses.replace(record, status="running")
    bare = RunHistory(settings.workspace_path / "runs.db")
    bare.record(record)
    assert bare.get("done").status == "running"  # cannot tell without the locks
    assert RunHistory.for_settings(settings).get("done").status == "abandoned"


def test_the_shared_lock_lives_where_runs_meet(aws: str, tmp_path: Path) -> None:
    local = load_settings(overrides={"workspace": str(tmp_path / "ws")}, env={})
    assert open_lease_store(local) is None  # the default catalog is inside the workspace
    glue = load_settings(
        overrides={"backend": "aws", "bucket": BUCKET, "workspace": str(tmp_path / "ws")}, env={}
    )
    assert open_lease_store(glue).where == f"s3://{BUCKET}/batchscore/locks/"
    remote = load_settings(overrides={"workspace": f"s3://{BUCKET}/w"}, env={})
    assert open_lease_store(remote).where == f"s3://{BUCKET}/w/locks/"
