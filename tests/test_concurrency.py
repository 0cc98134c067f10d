"""Concurrency with real processes: two pipelines publishing into one table at the same
moment, the same run started twice at once, and readers during publishes."""

from __future__ import annotations

import datetime as dt
import os
import threading
import time

from batchscore.catalog import load_table, open_catalog
from batchscore.config import load_settings
from batchscore.queries import run_query
from batchscore.records import RunRecord
from batchscore.sinks.iceberg import ensure_predictions_table
from tests.helpers import expected_latest, forkserver, overrides_of, table_rows
from tests.reliability import record

DAY = dt.date(2026, 7, 1)


def _child(
    overrides: dict, run_id: str, pause: float, failpoint: str = "", publish_after: str = ""
) -> None:
    """One pipeline run; ``pause`` s before DataSource, Publish only once ``publish_after``
    exists (when given; at most 60 s), ``failpoint`` as ``$BATCHSCORE_FAILPOINT``."""
    from batchscore.errors import BatchScoreError
    from batchscore.faults import ENV
    from batchscore.pipeline import Pipeline
    from batchscore.records import PipelineHooks

    os.environ[ENV] = failpoint

    class Pause(PipelineHooks):
        def before_step(self, record, step):
            if step == "DataSource":
                time.sleep(pause)
            if step == "Publish" and publish_after:
                deadline = time.monotonic() + 60
                while not os.path.exists(publish_after) and time.monotonic() < deadline:
                    time.sleep(0.02)

    try:
        Pipeline(load_settings(overrides=overrides, env={}), hooks=[Pause()]).run(
            date=DAY, run_id=run_id
        )
    except BatchScoreError as exc:
        print(f"{type(exc).__name__}: {exc}", flush=True)
        os._exit(exc.exit_code)


def run_together(*jobs: tuple[dict, str, float]) -> list[int]:
    processes = [forkserver.Process(target=_child, args=job) for job in jobs]
    for p in processes:
        p.start()
    for p in processes:
        p.join(180)
    return [p.exitcode for p in processes]


def test_two_pipelines_publish_into_one_table_at_once(make, tmp_path) -> None:
    settings = make(retry_backoff_seconds=0.1)
    # pyiceberg retries a conflicting commit itself (commit.retry.num-retries, 4 by default) and
    # would absorb the conflict before batchscore sees it: switched off on this table, so the
    # conflict reaches the Publish step's own retry, which is what this test checks.
    table = ensure_predictions_table(
        open_catalog(settings), settings.athena_database, settings.athena_output_table
    )
    with table.transaction() as tx:
        tx.set_properties({"commit.retry.num-retries": "0"})
    ranges = [(4000, 4400), (4401, 5000)]
    trials = 3
    for trial in range(trials):
        # Both processes wait at the barrier after loading the table and placing their files,
        # so both commits start from the same table version: one of them must conflict.
        barrier = f"Publish:files-placed=barrier:{tmp_path / f'barrier-{trial}'}:2"
        codes = run_together(
            *(
                (
                    overrides_of(
                        settings, customer_id_start=a, customer_id_end=b, retry_backoff_seconds=0.1
                    ),
                    f"r{trial}-{a}",
                    0.0,
                    barrier,
                )
                for a, b in ranges
            )
        )
        assert codes == [0, 0]
        attempts = sorted(
            RunRecord.load(settings.runs_path / f"r{trial}-{a}").steps["Publish"].attempts
            for a, _ in ranges
        )
        assert attempts == [1, 2], attempts  # one won the race, the other was retried once
        rows = table_rows(settings)
        rows = rows[rows.inference_date == DAY]
        for a, b in ranges:
            mine = rows[rows.id_range == f"{a}-{b}"]
            assert sorted(mine.customer_id) == sorted(expected_latest(settings, a, b).customer_id)
            assert set(mine.run_id) == {f"r{trial}-{a}"}
    record(
        "concurrency",
        "two id ranges publishing into one table at the same moment",
        trials=trials,
        outcome="a commit conflict every time (both loaded the table before either committed); "
        "the loser's Publish retried (2 attempts); both landed, rows exact",
    )


def test_the_same_run_started_twice_publishes_once(make) -> None:
    settings = make(customer_id_end=4300)
    trials = 3
    for trial in range(trials):
        overrides = overrides_of(settings, customer_id_end=4300)
        codes = run_together((overrides, f"a{trial}", 1.5), (overrides, f"b{trial}", 1.5))
        assert sorted(codes) == [0, 4], codes  # one published, one refused (RunLockedError)
        rows = table_rows(settings)
        rows = rows[rows.inference_date == DAY]
        assert len(rows) == len(expected_latest(settings, 4000, 4300))
        assert rows.run_id.nunique() == 1
    record(
        "concurrency",
        "the same pipeline and date started twice at once",
        trials=trials,
        outcome="one publish (one run's rows, count exact), one refusal (exit 4)",
    )


def test_readers_see_before_or_after_never_half(make, tmp_path) -> None:
    settings = make()
    a, b = (4000, 4500), (4501, 5000)
    n_a = len(expected_latest(settings, *a))
    n_b = len(expected_latest(settings, *b))
    trials = 3
    # Trial 0 fills an empty table: range b publishes only after the reader has seen range a's
    # rows alone, so the reads are sure to cross both commits. Later trials replace both ranges
    # in place (same row counts): every read then must see the whole table.
    allowed = {0: {0, n_a, n_a + n_b}} | {t: {n_a + n_b} for t in range(1, trials)}
    a_seen = tmp_path / "reader-saw-a"
    trial = 0
    seen: list[tuple[int, int]] = []  # (trial the read started in, rows)
    errors: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        try:
            catalog = open_catalog(settings)
            while not stop.is_set():
                started_in = trial
                # Before the first publish the table does not exist: the one state not queried.
                if load_table(catalog, settings.output_table) is None:
                    time.sleep(0.02)
                    continue
                result = run_query(
                    catalog,
                    f"SELECT count(*) AS n FROM {settings.output_table} WHERE inference_date = ?",
                    [DAY],
                )
                n = result.to_pylist()[0]["n"]
                seen.append((started_in, n))
                if n == n_a:
                    a_seen.touch()
                time.sleep(0.02)
        except BaseException as exc:  # re-raised in the test's own thread below
            errors.append(exc)
            a_seen.touch()  # so range b does not wait for a reader that is gone

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for trial in range(trials):  # the reader reads `trial`
            codes = run_together(
                (
                    overrides_of(settings, customer_id_start=a[0], customer_id_end=a[1]),
                    f"ra{trial}",
                    0.0,
                ),
                (
                    overrides_of(settings, customer_id_start=b[0], customer_id_end=b[1]),
                    f"rb{trial}",
                    0.0,
                    "",
                    str(a_seen),
                ),
            )
            assert codes == [0, 0]
            if errors:
                break
    finally:
        stop.set()
        reader.join()
    if errors:
        raise errors[0]
    half = [(t, n) for t, n in seen if n not in allowed[t]]
    assert not half, f"reads saw half a publish (trial, rows): {half}"
    counts = {t: sorted({n for u, n in seen if u == t}) for t in range(trials)}
    assert n_a in counts[0] and n_a + n_b in counts[0] + counts[1], counts
    assert all(counts[t] for t in range(1, trials)), f"no reads during a trial: {counts}"
    record(
        "concurrency",
        "readers querying during publishes",
        trials=len(seen),
        outcome=f"every read saw a whole state ({sorted({n for _, n in seen})} rows), never half",
    )
