"""Fault injection with real processes: SIGKILL at every step boundary, inside Publish between
placing data files and committing, and at random moments. After every kill the table holds a
run's complete predictions or none of them; resume completes the run; the row count is exact.

Runs are started from a forkserver that has batchscore and its libraries imported already, so
each killed process is a fresh, real process that starts in milliseconds. BATCHSCORE_SOAK=500
(``make soak``) raises the number of random kills.
"""

from __future__ import annotations

import os
import random
import signal
import time

import pytest

from batchscore.faults import POINTS
from batchscore.records import RunRecord
from tests.helpers import (
    PROCESS_RUN_DATE,
    expected_latest,
    overrides_of,
    start_run_process,
    table_rows,
)
from tests.reliability import record

DAY = PROCESS_RUN_DATE
REPEATS = int(os.environ.get("BATCHSCORE_KILL_REPEATS", "3"))  # kills per failpoint
RANDOM_KILLS = int(os.environ.get("BATCHSCORE_SOAK", "12"))


def check_table(settings, expected: int) -> tuple[int, int]:
    """(partial runs, duplicate rows) in the table for DAY: both must be 0."""
    rows = table_rows(settings)
    if rows.empty:
        return 0, 0
    rows = rows[rows.inference_date == DAY]
    partial = sum(1 for _, group in rows.groupby("run_id") if len(group) != expected)
    duplicates = len(rows) - rows.customer_id.nunique()
    return partial, duplicates


@pytest.fixture
def fault_settings(make):
    settings = make(customer_id_end=4300, batch_size=50)
    overrides = overrides_of(
        settings, customer_id_end=4300, batch_size=50, retry_backoff_seconds=0.1
    )
    # Warm the model cache once, so children spend their time in the pipeline.
    from batchscore.pipeline import Pipeline

    Pipeline(settings).run(date=DAY)
    return settings, overrides


def kill_and_resume(settings, overrides, run_id, expected, *, failpoint="", delay=None) -> dict:
    process = start_run_process(overrides, run_id, failpoint=failpoint)
    if delay is not None:
        time.sleep(delay)
        if process.is_alive():
            os.kill(process.pid, signal.SIGKILL)
    process.join(120)
    killed = process.exitcode == -signal.SIGKILL
    if failpoint:
        assert killed, f"failpoint {failpoint} did not kill (exit {process.exitcode})"
    partial, duplicates = check_table(settings, expected)
    after_kill = (partial, duplicates)
    if (settings.runs_path / run_id / "run.json").exists():
        status = RunRecord.load(settings.runs_path / run_id).status
        if status != "succeeded":
            resumed = start_run_process(overrides, run_id, resume=True)
            resumed.join(120)
            assert resumed.exitcode == 0, f"resume of {run_id} failed ({failpoint or delay})"
    else:  # killed before the run existed: a rerun under the same id
        rerun = start_run_process(overrides, run_id)
        rerun.join(120)
        assert rerun.exitcode == 0
    rows = table_rows(settings)
    rows = rows[rows.inference_date == DAY]
    final_ok = len(rows) == expected and rows.customer_id.is_unique and set(rows.run_id) == {run_id}
    return {"killed": killed, "after_kill": after_kill, "final_ok": final_ok}


def test_sigkill_at_every_failpoint_then_resume(fault_settings) -> None:
    settings, overrides = fault_settings
    expected = len(expected_latest(settings, 4000, 4300))
    for point in POINTS:
        kills = partial = duplicates = 0
        for repeat in range(REPEATS):
            result = kill_and_resume(
                settings,
                overrides,
                f"kill-{point.replace(':', '-')}-{repeat}",
                expected,
                failpoint=point,
            )
            kills += result["killed"]
            partial += result["after_kill"][0]
            duplicates += result["after_kill"][1]
            assert result["after_kill"] == (0, 0), f"partial or duplicate rows after {point}"
            assert result["final_ok"], f"resume after {point} did not leave exactly one run"
        record(
            "SIGKILL at a failpoint",
            point,
            trials=kills,
            outcome="table whole after every kill; resume completed; row count exact",
            partial_runs=partial,
            duplicate_runs=duplicates,
        )


def test_sigkill_at_random_moments_then_resume(fault_settings) -> None:
    settings, overrides = fault_settings
    expected = len(expected_latest(settings, 4000, 4300))
    # How long a whole run takes here, to spread the kills over it.
    began = time.perf_counter()
    process = start_run_process(overrides, "timing-run")
    process.join(120)
    duration = time.perf_counter() - began
    rng = random.Random(20261127)
    kills = partial = duplicates = 0
    for i in range(RANDOM_KILLS):
        result = kill_and_resume(
            settings, overrides, f"random-{i}", expected, delay=rng.uniform(0, duration * 1.1)
        )
        kills += result["killed"]
        partial += result["after_kill"][0]
        duplicates += result["after_kill"][1]
        assert result["after_kill"] == (0, 0)
        assert result["final_ok"]
    record(
        "SIGKILL at a random moment",
        f"uniform over a {duration:.1f}s run",
        trials=kills,
        outcome=f"{kills} of {RANDOM_KILLS} landed before the run ended; "
        "table whole after each; resume completed; row count exact",
        partial_runs=partial,
        duplicate_runs=duplicates,
    )
    assert kills >= RANDOM_KILLS // 2
