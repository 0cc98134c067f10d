"""Concurrency with real processes: two pipelines publishing into one table at the same
moment, the same run started twice at once, and readers during publishes."""

from __future__ import annotations

import datetime as dt
import os
import threading
import time

from batchscore.config import load_settings
from batchscore.tables import open_catalog, run_query
from tests.conftest import overrides_of
from tests.reliability import record
from tests.test_faults import _context
from tests.test_pipeline import expected_latest, table_rows

DAY = dt.date(2026, 7, 1)


def _child(overrides: dict, run_id: str, pause: float) -> None:
    from batchscore.errors import BatchScoreError
    from batchscore.pipeline import Pipeline, PipelineHooks

    class Pause(PipelineHooks):
        def before_step(self, record, step):
            if step == "DataSource":
                time.sleep(pause)

    try:
        Pipeline(load_settings(overrides=overrides, env={}), hooks=[Pause()]).run(
            date=DAY, run_id=run_id
        )
    except BatchScoreError as exc:
        print(f"{type(exc).__name__}: {exc}", flush=True)
        os._exit(exc.exit_code)


def run_together(*jobs: tuple[dict, str, float]) -> list[int]:
    processes = [_context.Process(target=_child, args=job) for job in jobs]
    for p in processes:
        p.start()
    for p in processes:
        p.join(180)
    return [p.exitcode for p in processes]


def test_two_pipelines_publish_into_one_table_at_once(make) -> None:
    settings = make()
    ranges = [(4000, 4400), (4401, 5000)]
    trials = 3
    for trial in range(trials):
        codes = run_together(
            *(
                (
                    overrides_of(settings, customer_id_start=a, customer_id_end=b),
                    f"r{trial}-{a}",
                    0.3,
                )
                for a, b in ranges
            )
        )
        assert codes == [0, 0]
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
        outcome="both landed every time (commit conflicts retried)",
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
        outcome="one publish, one refusal naming the running run (exit 4)",
    )


def test_readers_see_before_or_after_never_half(make) -> None:
    settings = make()
    a, b = (4000, 4500), (4501, 5000)
    n_a = len(expected_latest(settings, *a))
    n_b = len(expected_latest(settings, *b))
    allowed = {0, n_a, n_b, n_a + n_b}
    seen: list[int] = []
    stop = threading.Event()

    def read() -> None:
        catalog = open_catalog(settings)
        while not stop.is_set():
            try:
                result = run_query(
                    catalog,
                    f"SELECT count(*) AS n FROM {settings.output_table} WHERE inference_date = ?",
                    [DAY],
                )
                seen.append(result.to_pylist()[0]["n"])
            except Exception as exc:  # the table may not exist before the first publish
                if "Tables in the catalog" not in str(exc):
                    raise

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for trial in range(3):
            codes = run_together(
                (
                    overrides_of(settings, customer_id_start=a[0], customer_id_end=a[1]),
                    f"ra{trial}",
                    0.0,
                ),
                (
                    overrides_of(settings, customer_id_start=b[0], customer_id_end=b[1]),
                    f"rb{trial}",
                    0.2,
                ),
            )
            assert codes == [0, 0]
    finally:
        stop.set()
        reader.join()
    assert seen and set(seen) <= allowed, sorted(set(seen) - allowed)
    record(
        "concurrency",
        "readers querying during publishes",
        trials=len(seen),
        outcome=f"every read saw a whole state ({sorted(set(seen))} rows), never half",
    )
