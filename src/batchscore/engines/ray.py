"""The Ray engine: DataSource and BatchInference on Ray Data, for when one machine is not enough.

The semantics are the local engine's, step for step:

- DataSource reads the feature group with ``ray.data.read_iceberg`` at the run's pinned
  snapshot, keeps ids in the range and versions up to ``as_of``, hash-partitions by record
  identifier (so every version of an id lands in one block), ranks the versions in each block
  — newest by (event time, ``api_invocation_time``, ``write_time``) — and drops delete markers
  after ranking. The driver writes the snapshot to the run's ``input/``.
- BatchInference reads that snapshot and scores it with ``map_batches`` over an actor pool;
  each actor holds one copy of the model (the :class:`~batchscore.steps.batch_inference.Scorer`
  the local engine uses) for its whole life. Prediction rows stream back to the driver,
  which writes ``predictions/`` (and the rows set aside, ``quarantine/``) and adds up the
  evaluation.
- Publish is the local engine's: one atomic Iceberg commit of the files the driver wrote.

Because the driver writes the run folder, the workspace need not be shared with the cluster;
the feature group's files and the run's ``input/`` must be readable from every node (on one
machine they are; across machines put the warehouse and workspace on shared storage).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batchscore.catalog import choose_catalog
from batchscore.engines.base import Engine
from batchscore.errors import ConfigError
from batchscore.feature_store.base import ReadStats
from batchscore.monitoring.summaries import RunSummary
from batchscore.progress import NO_PROGRESS, Progress, tracked
from batchscore.scoring.compiled import Parity
from batchscore.sinks.schema import PREDICTIONS_SCHEMA
from batchscore.steps.batch_inference import (
    QUARANTINE_DIR,
    BatchInferenceResult,
    Lineage,
    ScoredBatch,
    Scorer,
    ScoringTotals,
    check_inputs,
    snapshot_rows,
)
from batchscore.steps.data_source import DataSourceResult, data_source_result
from batchscore.steps.parts import PartWriter

if TYPE_CHECKING:
    from batchscore.config import Settings
    from batchscore.feature_store import FeatureStore
    from batchscore.feature_store.iceberg import IcebergFeatureStore
    from batchscore.monitoring.summaries import SummaryPlan
    from batchscore.registry import LoadedModel
    from batchscore.scoring.compiled import CompiledModel, ScoringPlan

log = logging.getLogger("batchscore")

LABEL = "__label"
STATS = "__stats"
QUARANTINED = "__quarantined"
VERSIONS = "__versions"
DELETED = "__deleted"
NUMBER = "__number"


def _import_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise ConfigError(
            "engine 'ray' needs Ray, which is not installed: pip install 'batchscore[ray]'."
        ) from exc
    return ray


@contextlib.contextmanager
def ray_session(settings: Settings) -> Iterator[Any]:
    """Connect to ``ray_address`` (a running cluster), else start Ray on this machine.

    Ray started here is shut down on the way out; a cluster joined is only disconnected from.
    """
    ray = _import_ray()
    if ray.is_initialized():
        yield ray
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "logging_level": logging.WARNING,
        "log_to_driver": False,
        # Workers import batchscore from the same environment as the driver.
        "runtime_env": {"env_vars": {"MLFLOW_DISABLE_TELEMETRY": "true"}},
    }
    try:
        if settings.ray_address:
            ray.init(address=settings.ray_address, **kwargs)
        else:
            ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = settings.ray_address or "a local Ray instance"
        if "auth" in f"{exc} {exc.__cause__}".lower():
            raise ConfigError(
                f"the Ray cluster at {where} refused batchscore's authentication token: set "
                "RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the token "
                "the cluster was started with."
            ) from exc
        raise ConfigError(
            f"cannot connect to {where}: {exc}. Check 'ray_address' (host:port of the head "
            "node, as 'ray start --head' printed it), or unset it to start Ray locally."
        ) from exc
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        yield ray
    finally:
        ray.shutdown()


def _actors(settings: Settings, ray: Any) -> int:
    if settings.ray_actors:
        return settings.ray_actors
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return max(1, cpus)


# DataSource ----------------------------------------------------------------------------------


def _in_range(
    batch: pa.Table, *, key: str, event: str, id_start: int, id_end: int, as_of: Any
) -> pa.Table:
    """Rows whose id's number is in the range (and, with as_of, not later), ids trimmed, with
    the number as ``__number``; rows whose id has no number are kept (``__number`` NULL) to be
    counted after ranking. The rule is the local read's, in the same SQL
    (:mod:`batchscore.feature_store.ids`)."""
    import duckdb

    from batchscore.feature_store.ids import id_number_sql, trimmed_id_sql
    from batchscore.feature_store.latest import sql_name

    k, e = sql_name(key), sql_name(event)
    number = id_number_sql(k)
    params: dict[str, Any] = {"id_start": id_start, "id_end": id_end}
    time_filter = ""
    if as_of is not None:
        time_filter = f"AND {e} <= $as_of"
        params["as_of"] = as_of
    con = duckdb.connect(":memory:")
    try:
        con.register("__batch", batch)
        return con.sql(
            f"""SELECT * REPLACE ({trimmed_id_sql(k)} AS {k}), {number} AS {NUMBER}
                FROM __batch
                WHERE ({number} BETWEEN $id_start AND $id_end OR {number} IS NULL) {time_filter}""",
            params=params,
        ).to_arrow_table()
    finally:
        con.close()


def _latest_in_block(block: pa.Table, *, key: str, event: str) -> pa.Table:
    """Per id, the newest version, with how many versions the id had (all of an id's versions
    are in this block: the dataset was hash-partitioned by id)."""
    if block.num_rows == 0:
        return block.append_column(VERSIONS, pa.array([], pa.int64()))
    block = block.sort_by([
        (key, "ascending"),
        (event, "descending"),
        ("api_invocation_time", "descending"),
        ("write_time", "descending"),
    ])  # fmt: skip
    ids = block.column(key).combine_chunks()
    n = block.num_rows
    first = np.ones(n, dtype=bool)
    if n > 1:
        first[1:] = pc.not_equal(ids.slice(1), ids.slice(0, n - 1)).to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(first)
    versions = np.diff(np.append(starts, n))
    return block.take(pa.array(starts)).append_column(VERSIONS, pa.array(versions, pa.int64()))


def ray_data_source(
    settings: Settings,
    store: IcebergFeatureStore,
    feature_group_name: str,
    id_start: int,
    id_end: int,
    output_dir: Path,
    *,
    as_of: dt.datetime | None = None,
    snapshot_id: int | None = None,
    progress: Progress = NO_PROGRESS,
) -> DataSourceResult:
    """The DataSource step on Ray Data; see :func:`batchscore.steps.data_source`."""
    from pyiceberg.expressions import AlwaysTrue, LessThanOrEqual

    from batchscore.feature_store.latest import pinned_snapshot, utc_naive

    ray = _import_ray()
    group = store.describe(feature_group_name)
    key, event = group.record_identifier, group.event_time_feature
    out_columns = [key, event, *group.features]
    table = store.iceberg_table(feature_group_name)
    out_schema = pa.schema([table.schema().as_arrow().field(c) for c in out_columns])
    snapshot_id = pinned_snapshot(table, feature_group_name, snapshot_id, group.snapshot_id)
    as_of = utc_naive(as_of)
    stats = ReadStats()
    catalog = choose_catalog(settings)
    snapshot = PartWriter(output_dir, statistics=False)  # read whole, never pruned
    with tracked(progress, "DataSource", unit="rows"), snapshot as parts:
        if snapshot_id is not None:
            ds = ray.data.read_iceberg(
                table_identifier=group.table_identifier,
                catalog_kwargs={"name": catalog.name, **catalog.properties},
                row_filter=LessThanOrEqual(event, as_of.isoformat()) if as_of else AlwaysTrue(),
                snapshot_id=snapshot_id,
            )
            ds = ds.map_batches(
                _in_range,
                batch_format="pyarrow",
                fn_kwargs={
                    "key": key, "event": event, "id_start": id_start, "id_end": id_end,
                    "as_of": as_of,
                },
            )  # fmt: skip
            partitions = max(2, _actors(settings, ray))
            ds = ds.repartition(partitions, keys=[key]).map_batches(
                _latest_in_block,
                batch_size=None,  # the whole block: every version of an id is in it
                batch_format="pyarrow",
                fn_kwargs={"key": key, "event": event},
            )
            for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
                no_number = pc.is_null(batch.column(NUMBER))
                if pc.any(no_number).as_py():
                    # Counted when live, as the local read does.
                    live = pc.invert(batch.column("is_deleted").fill_null(False))
                    shown = pc.filter(batch.column(key), pc.and_(no_number, live))
                    stats.add_unmatched(shown.to_pylist())
                    batch = batch.filter(pc.invert(no_number))
                versions = pc.sum(batch.column(VERSIONS)).as_py() or 0
                stats.duplicate_versions_skipped += versions - batch.num_rows
                deleted = batch.column("is_deleted").fill_null(False)
                n_deleted = pc.sum(deleted.cast(pa.int64())).as_py() or 0
                stats.deleted_records_skipped += n_deleted
                live = batch.filter(pc.invert(deleted)) if n_deleted else batch
                if live.num_rows:
                    stats.records += live.num_rows
                    live = live.select(out_columns).cast(out_schema)
                    for record_batch in live.to_batches(max_chunksize=settings.batch_size):
                        parts.write(record_batch)
                    progress.advance("DataSource", live.num_rows)
    return data_source_result(
        feature_group_name, id_start, id_end, as_of, stats, parts.files, snapshot_id,
        out_schema.names,
    )  # fmt: skip


# BatchInference ------------------------------------------------------------------------------


class RayScorer:
    """One actor of the pool: loads (receives) the model once, scores batch after batch.

    Each output batch is the prediction rows plus the target column (``__label``) for
    evaluation, then one more row carrying ``__stats`` — this batch's counts as JSON — and
    ``__quarantined`` — the rows it set aside, as an Arrow IPC stream — so the driver can add up
    what the actors noticed (a batch whose every row was set aside still reports them).
    """

    def __init__(
        self,
        model: LoadedModel,
        record_identifier: str,
        lineage: Lineage,
        target_column: str | None,
        summary_plan: SummaryPlan | None = None,
        compiled: CompiledModel | None = None,
    ) -> None:
        import ray

        if compiled is not None:  # this actor's share of the node's CPUs
            compiled.nthread = max(1, int(ray.get_runtime_context().get_assigned_resources()
                                          .get("CPU", 1)))  # fmt: skip
        self.scorer = Scorer(
            model,
            record_identifier=record_identifier,
            lineage=lineage,
            target_column=target_column,
            summary_plan=summary_plan,
            compiled=compiled,
        )
        self.target_column = target_column
        self.node = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: pa.Table) -> pa.Table:
        if batch.num_rows == 0:
            return _empty_scored()
        scored = self.scorer(batch.combine_chunks().to_batches()[0])
        n = scored.predictions.num_rows
        target = self.target_column
        label = (
            batch.column(target).cast(pa.int64())
            if target and target in batch.column_names
            else pa.nulls(n, pa.int64())
        )
        if scored.quarantined is not None:  # the labels of the rows scored (same order)
            ids = batch.column(self.scorer.record_identifier).cast(pa.string())
            set_aside = pc.is_in(ids, value_set=scored.quarantined.column("record_id"))
            label = label.filter(pc.invert(set_aside))
        stats = json.dumps({
            "unseen": scored.unseen_categories,
            "non_finite": scored.non_finite_values,
            "node": self.node,
            "summary": scored.summary.to_dict() if scored.summary else None,
            "parity": scored.parity.to_dict() if scored.parity else None,
        })  # fmt: skip
        rows = (
            pa.Table.from_batches([scored.predictions])
            .append_column(LABEL, label)
            .append_column(STATS, pa.nulls(n, pa.string()))
            .append_column(QUARANTINED, pa.nulls(n, pa.binary()))
        )
        carrier = _carrier_row({STATS: [stats], QUARANTINED: [_ipc_bytes(scored.quarantined)]})
        return pa.concat_tables([rows, carrier])


def _scored_schema() -> pa.Schema:
    return (
        PREDICTIONS_SCHEMA.append(pa.field(LABEL, pa.int64()))
        .append(pa.field(STATS, pa.string()))
        .append(pa.field(QUARANTINED, pa.binary()))
    )


def _carrier_row(values: dict[str, list[Any]]) -> pa.Table:
    """One row of nulls but for the stats and quarantined rows of a batch."""
    schema = _scored_schema()
    return pa.table([pa.array(values.get(f.name, [None]), f.type) for f in schema], schema=schema)


def _ipc_bytes(batch: pa.RecordBatch | None) -> bytes | None:
    if batch is None:
        return None
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def _empty_scored() -> pa.Table:
    return _scored_schema().empty_table()


def _unpack(table: pa.Table, nodes: set[str]) -> ScoredBatch:
    """An actor's output batch as the ScoredBatch the local engine would have made."""
    carriers = table.column(STATS).is_valid()
    carriers_stats = table.column(STATS).drop_null().to_pylist()
    set_aside = [
        pa.ipc.open_stream(value).read_all()
        for value in table.column(QUARANTINED).filter(carriers).drop_null().to_pylist()
    ]
    table = table.filter(pc.invert(carriers))
    predictions = table.select(PREDICTIONS_SCHEMA.names).cast(PREDICTIONS_SCHEMA)
    unseen: dict[str, int] = {}
    non_finite: dict[str, int] = {}
    summary: RunSummary | None = None
    parity: Parity | None = None
    for value in carriers_stats:
        stats = json.loads(value)
        nodes.add(stats["node"])
        if stats.get("parity") is not None:
            parity = parity or Parity()
            parity.merge(Parity.from_dict(stats["parity"]))
        if stats["summary"] is not None:
            part = RunSummary.from_dict(stats["summary"])
            summary = part if summary is None else summary.merge(part)
        for into, counts in ((unseen, stats["unseen"]), (non_finite, stats["non_finite"])):
            for column, count in counts.items():
                into[column] = into.get(column, 0) + count
    label = table.column(LABEL)
    labels = predicted = scores = None
    if label.null_count < len(label):
        mask = label.is_valid().to_numpy(zero_copy_only=False)
        labels = label.filter(label.is_valid()).to_numpy().astype(np.int64)
        predicted = predictions.column("prediction").to_numpy()[mask]
        scores = predictions.column("prediction_probability").to_numpy()[mask]
    merged = predictions.combine_chunks().to_batches()
    # No row scored (every one set aside): an empty batch (an empty table has no batches).
    batch = merged[0] if merged else pa.RecordBatch.from_pylist([], schema=PREDICTIONS_SCHEMA)
    quarantined = pa.concat_tables(set_aside).combine_chunks().to_batches() if set_aside else []
    return ScoredBatch(
        batch, labels, predicted, scores, unseen, non_finite, summary=summary,
        quarantined=quarantined[0] if quarantined else None, parity=parity,
    )  # fmt: skip


def ray_batch_inference(
    settings: Settings,
    input_files: list[str],
    model: LoadedModel,
    output_dir: Path,
    *,
    record_identifier: str,
    lineage: Lineage,
    summary_plan: SummaryPlan | None = None,
    target_column: str | None,
    source_label: str,
    progress: Progress = NO_PROGRESS,
    scoring: ScoringPlan | None = None,
) -> BatchInferenceResult:
    """The BatchInference step on Ray Data; see :func:`batchscore.steps.batch_inference`.
    Progress advances per scored block as it reaches the driver. Actors report their parity
    checks with their stats; a failed check stops the pass and the library scores again."""
    import pyarrow.parquet as pq

    ray = _import_ray()
    columns = pq.read_schema(input_files[0]).names if input_files else []
    ignored = check_inputs(
        columns,
        model,
        record_identifier=record_identifier,
        target_column=target_column,
        source_label=source_label,
    )
    actors = _actors(settings, ray)
    while True:
        totals, nodes, parts, quarantine = _score_on_actors(
            ray, settings, input_files, model, output_dir, actors,
            record_identifier=record_identifier, lineage=lineage, summary_plan=summary_plan,
            target_column=target_column, progress=progress,
            compiled=scoring.compiled if scoring else None,
        )  # fmt: skip
        if scoring is None or not totals.parity.failed:
            break
        scoring.parity_failed(totals.parity)  # raises with scoring: compiled
    log.info("BatchInference: scored by %d actor(s) on %d node(s)", actors, len(nodes))
    result = totals.result(
        parts.files, ignored, target_column, output_dir.parent, quarantine.output_dir
    )
    if scoring is not None and scoring.fallback is None:
        scoring.parity = totals.parity
    return dataclasses.replace(
        result, engine="ray", nodes=sorted(nodes),
        scoring=scoring.record() if scoring is not None else None,
    )  # fmt: skip


def _score_on_actors(
    ray: Any,
    settings: Settings,
    input_files: list[str],
    model: LoadedModel,
    output_dir: Path,
    actors: int,
    *,
    record_identifier: str,
    lineage: Lineage,
    summary_plan: SummaryPlan | None,
    target_column: str | None,
    progress: Progress,
    compiled: CompiledModel | None,
) -> tuple[ScoringTotals, set[str], PartWriter, PartWriter]:
    """One pass of the actor pool over the snapshot; stops early when a compiled batch fails
    its parity check (the caller then scores again with the library)."""
    # Reads take a quarter CPU, actors ray_cpus_per_actor: on a node of one CPU an actor and
    # a read task fit side by side (whole CPUs for both starve one or the other: Ray hangs).
    ds = ray.data.read_parquet([str(Path(f).resolve()) for f in input_files], num_cpus=0.25)
    # Blocks of batch_size rows, so the work spreads over the pool (one file = one block).
    ds = ds.repartition(target_num_rows_per_block=settings.batch_size).map_batches(
        RayScorer,
        fn_constructor_kwargs={
            "model": model,
            "record_identifier": record_identifier,
            "lineage": lineage,
            "target_column": target_column,
            "summary_plan": summary_plan,
            "compiled": compiled,  # carries the library's bytes: actors may be on other nodes
        },
        batch_size=settings.batch_size,
        batch_format="pyarrow",
        concurrency=actors,
        num_cpus=settings.ray_cpus_per_actor,
        scheduling_strategy="SPREAD",
    )
    totals = ScoringTotals()
    nodes: set[str] = set()
    with (
        tracked(progress, "BatchInference", snapshot_rows(input_files), "rows"),
        PartWriter(output_dir) as parts,
        PartWriter(output_dir.parent / QUARANTINE_DIR) as quarantine,
    ):
        for table in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            if table.num_rows == 0:
                continue
            scored = _unpack(table, nodes)
            totals.add(scored)
            if compiled is not None and totals.parity.failed:
                break
            if scored.predictions.num_rows:
                parts.write(scored.predictions)
            if scored.quarantined is not None:
                quarantine.write(scored.quarantined)
            set_aside = 0 if scored.quarantined is None else scored.quarantined.num_rows
            progress.advance("BatchInference", scored.predictions.num_rows + set_aside)
    return totals, nodes, parts, quarantine


# The engine -----------------------------------------------------------------------------------


class RayEngine(Engine):
    """Both steps on Ray Data. Ray is joined (or started) when a run first needs it, once per
    ``session()``: a run resumed at Publish never starts it."""

    name = "ray"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._session: contextlib.ExitStack | None = None
        self._connected = False  # joined Ray in this session

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        self._session = contextlib.ExitStack()
        try:
            yield
        finally:
            session, self._session = self._session, None
            self._connected = False
            session.close()

    @contextlib.contextmanager
    def _joined(self) -> Iterator[None]:
        """Ray, for one step: the session's connection (made now if not yet), or, outside a
        session, a connection for this call only."""
        if self._session is None:
            with ray_session(self.settings):
                yield
            return
        if not self._connected:
            self._session.enter_context(ray_session(self.settings))
            self._connected = True
        yield

    def data_source(
        self,
        store: FeatureStore,
        feature_group_name: str,
        id_start: int,
        id_end: int,
        output_dir: Path,
        *,
        as_of: dt.datetime | None,
        snapshot_id: int | None,
        progress: Progress = NO_PROGRESS,
    ) -> DataSourceResult:
        from batchscore.feature_store.iceberg import IcebergFeatureStore

        if not isinstance(store, IcebergFeatureStore):  # the config refuses this; an injected
            raise ConfigError(  # store may not
                f"engine 'ray' reads Iceberg feature groups only, not a {type(store).__name__}: "
                "use engine: local with this feature store."
            )
        with self._joined():
            return ray_data_source(
                self.settings, store, feature_group_name, id_start, id_end, output_dir,
                as_of=as_of, snapshot_id=snapshot_id, progress=progress,
            )  # fmt: skip

    def batch_inference(
        self,
        input_files: Sequence[str],
        model: LoadedModel,
        output_dir: Path,
        *,
        record_identifier: str,
        lineage: Lineage,
        summary_plan: SummaryPlan | None = None,
        target_column: str | None,
        source_label: str,
        progress: Progress = NO_PROGRESS,
        scoring: ScoringPlan | None = None,
    ) -> BatchInferenceResult:
        with self._joined():
            return ray_batch_inference(
                self.settings, list(input_files), model, output_dir,
                record_identifier=record_identifier, lineage=lineage, summary_plan=summary_plan,
                target_column=target_column, source_label=source_label, progress=progress,
                scoring=scoring,
            )  # fmt: skip
