"""The PredictionSink behaviour suite, run against every implementation (today: Iceberg on a
SQLite catalog under tmp_path). No pipeline runs: each run's prediction file is written
directly in PREDICTIONS_SCHEMA and published through the interface alone.

A second implementation is one more entry in ``IMPLEMENTATIONS``: how to open another handle
on one fresh target, how a reader sees its rows, and how to make a conflict reach the caller.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchscore.config import load_settings
from batchscore.errors import (
    CommitConflictError,
    ConfigError,
    InvalidIdentifierError,
    PublishRefusedError,
)
from batchscore.records import LogicalRun
from batchscore.sinks import PredictionSink, open_sink
from batchscore.sinks.schema import PREDICTIONS_SCHEMA
from batchscore.steps.publish import publish

DAY = dt.date(2026, 3, 2)
PIPELINE = "nightly"
T0 = dt.datetime(2026, 3, 2, 2, 0)  # a run starts T0 + `minute` and scores a minute later


@dataclass
class Target:
    """One fresh target (not created yet) of one sink implementation."""

    open: Callable[[], PredictionSink]  # another handle on the target, its own connection
    read: Callable[[], pa.Table | None]  # what a reader sees now; None: there is no target
    no_commit_retries: Callable[[], None]  # the store's own retries off: conflicts surface


def _iceberg(tmp_path: Path) -> Target:
    from batchscore.catalog import load_table, open_catalog

    settings = load_settings(
        path=None,
        overrides={"workspace": str(tmp_path / "ws"), "athena_output_table": "predictions"},
        env={},
    )

    def read() -> pa.Table | None:
        table = load_table(open_catalog(settings), settings.output_table)
        return None if table is None else table.scan().to_arrow()

    def no_commit_retries() -> None:
        # pyiceberg retries a conflicting commit itself (commit.retry.num-retries, 4).
        table = open_catalog(settings).load_table(settings.output_table)
        with table.transaction() as tx:
            tx.set_properties({"commit.retry.num-retries": "0"})

    return Target(lambda: open_sink(settings), read, no_commit_retries)


IMPLEMENTATIONS: dict[str, Callable[[Path], Target]] = {"iceberg": _iceberg}


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    return IMPLEMENTATIONS[request.param](tmp_path)


@pytest.fixture
def sink(target: Target) -> PredictionSink:
    opened = target.open()
    opened.ensure()
    return opened


@dataclass(frozen=True)
class Run:
    """One run's predictions: what ``commit`` takes, and the customers its file holds."""

    run_id: str
    logical_run: LogicalRun
    started: dt.datetime
    files: list[Path]
    customers: list[str]

    def commit(self, sink: PredictionSink, write_mode: str = "replace") -> int:
        return sink.commit(
            self.files,
            run_id=self.run_id,
            logical_run=self.logical_run,
            write_mode=write_mode,
            started=self.started,
        )


@pytest.fixture
def make_run(tmp_path: Path) -> Callable[..., Run]:
    """``make_run("a", 4000, 4099, minute=5)``: a run's prediction files, written directly."""

    def make(
        run_id: str,
        start: int,
        end: int,
        *,
        minute: int = 0,
        day: dt.date = DAY,
        pipeline: str = PIPELINE,
        files: int = 1,
    ) -> Run:
        started = T0 + dt.timedelta(minutes=minute)
        customers = [f"CUST_{i:06d}" for i in range(start, end + 1)]
        folder = tmp_path / "runs" / run_id
        folder.mkdir(parents=True)
        paths = []
        for part in range(files):
            ids = customers[part::files]
            n = len(ids)
            rows = pa.table(
                {
                    "customer_id": ids,
                    "prediction": [i % 2 for i in range(n)],
                    "prediction_probability": [0.25 + 0.5 * (i % 2) for i in range(n)],
                    "timestamp": [started + dt.timedelta(minutes=1)] * n,
                    "model_name": ["churn"] * n,
                    "model_version": [3] * n,
                    "run_id": [run_id] * n,
                    "pipeline_name": [pipeline] * n,
                    "id_range": [f"{start}-{end}"] * n,
                    "inference_date": [day] * n,
                },
                schema=PREDICTIONS_SCHEMA,
            )
            paths.append(folder / f"part-{part:05d}.parquet")
            pq.write_table(rows, paths[-1])
        return Run(run_id, LogicalRun(pipeline, day, f"{start}-{end}"), started, paths, customers)

    return make


def published(target: Target) -> dict[str, list[str]]:
    """run id -> its customers, sorted, as a reader sees the target now."""
    table = target.read()
    assert table is not None
    found: dict[str, list[str]] = {}
    for row in table.select(["run_id", "customer_id"]).to_pylist():
        found.setdefault(row["run_id"], []).append(row["customer_id"])
    return {run: sorted(ids) for run, ids in found.items()}


def current_commit(sink: PredictionSink) -> int | None:
    return next((s.snapshot_id for s in sink.snapshots() if s.current), None)


# Ensure, commit, find_commit -------------------------------------------------------------------


def test_ensure_creates_the_target_once(target: Target) -> None:
    assert target.read() is None
    first, second = target.open(), target.open()
    first.ensure()
    first.ensure()
    second.ensure()  # made by another handle: found, not made again
    table = target.read()
    assert table is not None and table.num_rows == 0
    assert table.schema.names == PREDICTIONS_SCHEMA.names
    assert first.snapshots() == [] and first.find_commit("anything") is None


def test_a_commit_publishes_its_files_and_find_commit_finds_it(
    target: Target, sink: PredictionSink, make_run
) -> None:
    run = make_run("r1", 4000, 4099, files=3)
    assert sink.find_commit("r1") is None
    commit_id = run.commit(sink)
    assert published(target) == {"r1": run.customers}
    assert sink.find_commit("r1") == commit_id
    assert target.open().find_commit("r1") == commit_id  # another process sees it too
    assert target.open().find_commit("r2") is None
    [only] = sink.snapshots()  # three files, one commit
    assert (only.snapshot_id, only.run_id, only.current) == (commit_id, "r1", True)
    assert only.added_rows == len(run.customers)


def test_publish_commits_a_run_exactly_once(target: Target, make_run) -> None:
    run = make_run("once", 4000, 4049)

    def publish_it() -> object:
        return publish(
            target.open(),  # not created yet: publish creates it
            [str(p) for p in run.files],
            len(run.customers),
            run_id=run.run_id,
            logical_run=run.logical_run,
            write_mode="append",  # even appending, a run's rows land once
            started=run.started,
        )

    first, again = publish_it(), publish_it()
    assert not first.already_published and again.already_published
    assert again.snapshot_id == first.snapshot_id and again.table == "ml_metrics.predictions"
    assert published(target) == {"once": run.customers}


def test_an_unknown_write_mode_is_refused(sink: PredictionSink, make_run) -> None:
    with pytest.raises(ConfigError, match="write_mode 'upsert' must be one of"):
        make_run("r", 4000, 4009).commit(sink, "upsert")
    assert sink.snapshots() == []


# Write modes -----------------------------------------------------------------------------------


def test_replace_replaces_the_same_range_and_ranges_inside_it(
    target: Target, sink: PredictionSink, make_run
) -> None:
    other_day = make_run("other-day", 4000, 4099, day=DAY - dt.timedelta(days=1))
    other_pipeline = make_run("other-pipeline", 4000, 4099, pipeline="weekly")
    for run in (other_day, other_pipeline):
        run.commit(sink)
    low = make_run("low", 4000, 4099, minute=1)
    high = make_run("high", 4100, 4199, minute=2)
    low.commit(sink)
    high.commit(sink)  # another range of the same pipeline and date: kept
    assert set(published(target)) == {"other-day", "other-pipeline", "low", "high"}

    rerun = make_run("low-again", 4000, 4099, minute=3)
    rerun.commit(sink)
    assert set(published(target)) == {"other-day", "other-pipeline", "low-again", "high"}

    covering = make_run("covering", 4000, 4199, minute=4)
    covering.commit(sink)  # both earlier ranges lie inside it
    assert published(target) == {
        "other-day": other_day.customers,
        "other-pipeline": other_pipeline.customers,
        "covering": covering.customers,
    }


def test_overwrite_replaces_only_this_pipelines_rows_for_the_date(
    target: Target, sink: PredictionSink, make_run
) -> None:
    # Moved from test_integrity.py, where four pipeline runs made these rows.
    other_day = make_run("other-day", 4000, 4100, day=DAY - dt.timedelta(days=1))
    other_pipeline = make_run("other-pipeline", 4000, 4100, pipeline="other-pipeline")
    mine = make_run("mine", 4101, 4200, minute=1)
    for run in (other_day, other_pipeline, mine):
        run.commit(sink)
    overwrite = make_run("overwrite", 4050, 4150, minute=2)
    overwrite.commit(sink, "overwrite")  # overlaps "mine" partly: overwrite does not mind
    assert published(target) == {
        "other-day": other_day.customers,
        "other-pipeline": other_pipeline.customers,
        "overwrite": overwrite.customers,
    }


def test_append_keeps_every_run(target: Target, sink: PredictionSink, make_run) -> None:
    first = make_run("first", 4000, 4019)
    second = make_run("second", 4000, 4019, minute=1)
    first.commit(sink, "append")
    second.commit(sink, "append")
    assert published(target) == {"first": first.customers, "second": second.customers}


# Refusals: the target unchanged ----------------------------------------------------------------


def test_a_partly_overlapping_range_is_refused(
    target: Target, sink: PredictionSink, make_run
) -> None:
    narrow = make_run("narrow", 4000, 4500)
    narrow.commit(sink)
    before = (current_commit(sink), published(target))
    with pytest.raises(PublishRefusedError) as refused:
        make_run("overlapping", 4400, 5000, minute=1).commit(sink)
    message = str(refused.value)
    assert "run narrow published ids 4000-4500" in message and "overlap" in message
    assert "The table is unchanged" in message
    assert (current_commit(sink), published(target)) == before
    assert sink.find_commit("overlapping") is None


@pytest.mark.parametrize("write_mode", ["replace", "overwrite"])
def test_an_older_run_never_replaces_a_newer_runs_rows(
    target: Target, sink: PredictionSink, make_run, write_mode: str
) -> None:
    older = make_run("older", 4000, 4099, minute=0)  # started first, publishes last
    newer = make_run("newer", 4000, 4099, minute=30)
    newer.commit(sink)
    before = current_commit(sink)
    with pytest.raises(PublishRefusedError, match=r"run newer .* after this run started"):
        older.commit(sink, write_mode)
    assert current_commit(sink) == before
    assert published(target) == {"newer": newer.customers}


# Drop, snapshots, rollback ---------------------------------------------------------------------


def test_drop_removes_the_target(target: Target, sink: PredictionSink, make_run) -> None:
    make_run("r", 4000, 4009).commit(sink)
    target.open().drop()
    assert target.read() is None
    assert target.open().find_commit("r") is None
    with pytest.raises(ConfigError, match="does not exist"):
        target.open().snapshots()
    with pytest.raises(ConfigError, match="does not exist"):
        target.open().drop()
    fresh = target.open()
    fresh.ensure()  # made again, empty
    assert target.read().num_rows == 0 and fresh.snapshots() == []


def test_snapshots_newest_first_and_rollback(
    target: Target, sink: PredictionSink, make_run
) -> None:
    good = make_run("good", 4000, 4099)
    good_id = good.commit(sink)
    wipe_id = make_run("wipe", 4000, 4009, minute=1).commit(sink, "overwrite")
    listed = sink.snapshots()
    assert (listed[0].snapshot_id, listed[0].run_id, listed[0].current) == (wipe_id, "wipe", True)
    assert (listed[-1].snapshot_id, listed[-1].run_id) == (good_id, "good")
    assert [s.current for s in listed].count(True) == 1
    # One entry per publish: Iceberg's delete-then-append pair is one commit, listed once.
    assert [s.run_id for s in listed] == ["wipe", "good"]
    assert (listed[0].deleted_rows, listed[0].added_rows) == (len(good.customers), 10)

    target.open().rollback(good_id)
    assert published(target) == {"good": good.customers}
    assert current_commit(sink) == good_id
    with pytest.raises(ConfigError, match=r"snapshot 12345.*table snapshots"):
        sink.rollback(12345)
    sink.rollback(wipe_id)  # and forward again: the later commit stayed in the history
    assert set(published(target)) == {"wipe"}


def test_rollback_refuses_a_state_readers_never_saw(tmp_path: Path, make_run) -> None:
    """Iceberg: an overwrite commits a delete and an append as two snapshots of one commit;
    rolling back to the delete alone would publish a table without the date's rows."""
    from batchscore.sinks.iceberg import IcebergSink

    target = _iceberg(tmp_path)
    sink = target.open()
    sink.ensure()
    good_id = make_run("good", 4000, 4099).commit(sink)
    wipe_id = make_run("wipe", 4000, 4009, minute=1).commit(sink, "overwrite")
    assert isinstance(sink, IcebergSink)
    table = sink.catalog.load_table(sink.identifier)
    halfway = next(s for s in table.snapshots() if s.parent_snapshot_id == good_id)
    assert halfway.snapshot_id != wipe_id
    with pytest.raises(ConfigError, match=rf"first half of run wipe.*{good_id}.*{wipe_id}"):
        sink.rollback(halfway.snapshot_id)
    assert set(published(target)) == {"wipe"}  # unchanged


# Conflicts: two writers, one target ------------------------------------------------------------


def test_a_commit_after_another_writers_commit_conflicts_and_a_retry_lands(
    target: Target, sink: PredictionSink, make_run
) -> None:
    target.no_commit_retries()
    slow, fast = target.open(), target.open()
    slow.ensure()
    fast.ensure()
    assert slow.find_commit("slow") is None  # slow has read the target: no commit yet
    fast_run, slow_run = make_run("fast", 4100, 4199), make_run("slow", 4000, 4099)
    fast_id = fast_run.commit(fast)  # lands between slow's read and slow's commit

    with pytest.raises(CommitConflictError) as conflict:
        slow_run.commit(slow)
    assert conflict.value.transient  # the runner retries it
    assert published(target) == {"fast": fast_run.customers}  # unchanged by the loser
    assert current_commit(fast) == fast_id

    slow_id = slow_run.commit(slow)  # the retry reads the target afresh
    assert slow_id != fast_id
    assert published(target) == {"fast": fast_run.customers, "slow": slow_run.customers}


def test_the_same_run_racing_itself_publishes_once(
    target: Target, sink: PredictionSink, make_run
) -> None:
    target.no_commit_retries()
    mine, twin = target.open(), target.open()
    mine.ensure()
    run = make_run("twice", 4000, 4049)
    assert mine.find_commit("twice") is None
    landed = publish(
        twin,
        [str(p) for p in run.files],
        len(run.customers),
        run_id="twice",
        logical_run=run.logical_run,
        write_mode="replace",
        started=run.started,
    )
    with pytest.raises(CommitConflictError):
        run.commit(mine)  # checked before the twin committed: the commit cannot land
    retried = publish(
        mine,
        [str(p) for p in run.files],
        len(run.customers),
        run_id="twice",
        logical_run=run.logical_run,
        write_mode="replace",
        started=run.started,
    )
    assert retried.already_published and retried.snapshot_id == landed.snapshot_id
    assert published(target) == {"twice": run.customers}


# The factory and the Iceberg table itself ------------------------------------------------------


def test_open_sink_refuses_an_unknown_kind(tmp_path: Path) -> None:
    settings = load_settings(path=None, overrides={"workspace": str(tmp_path / "ws")}, env={})
    with pytest.raises(
        ConfigError, match=r"sink 'icebrg' is not a known sink type. Did you mean 'iceberg'"
    ):
        open_sink(settings, kind="icebrg")


def test_iceberg_table_schema_partitioning_and_full_bounds(tmp_path: Path, make_run) -> None:
    # Moved from test_pipeline.py, where a whole pipeline run made the table.
    from batchscore.catalog import open_catalog
    from batchscore.sinks.iceberg import TABLE_PROPERTIES, IcebergSink

    settings = load_settings(path=None, overrides={"workspace": str(tmp_path / "ws")}, env={})
    catalog = open_catalog(settings)
    sink = IcebergSink(catalog, "ml_metrics.predictions")
    sink.ensure()
    make_run("r", 4000, 4009).commit(sink)
    table = sink.table()
    assert table.schema().as_arrow().names == PREDICTIONS_SCHEMA.names
    assert [f.name for f in table.spec().fields] == ["inference_date"]
    assert table.current_snapshot().summary.additional_properties["batchscore.run_id"] == "r"
    assert TABLE_PROPERTIES.items() <= table.properties.items()
    # A table made before the full-bounds properties existed gets them on ensure.
    with table.transaction() as tx:
        tx.remove_properties(*TABLE_PROPERTIES)
    IcebergSink(catalog, "ml_metrics.predictions").ensure()
    assert TABLE_PROPERTIES.items() <= sink.table().properties.items()
    with pytest.raises(InvalidIdentifierError, match="athena_output_table"):
        IcebergSink(catalog, "ml_metrics.bad-name").ensure()
