"""The quarantine table: the rows a run could not score, committed once per run at Publish.

``<athena_database>.<athena_output_table>_quarantine`` is an Iceberg table in the predictions'
catalog, with :data:`~batchscore.sinks.schema.QUARANTINE_SCHEMA`, partitioned by
``inference_date``. BatchInference's ``quarantine/`` files already have that schema, so they are
placed in the table's data folder and registered as they are (``add_files``), in one commit
carrying the run id: a resume or a retry finds that commit and adds nothing twice. The table
is created by the first run that quarantines a row; a run that quarantines none writes nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pyiceberg.exceptions import (
    CommitFailedException,
    TableAlreadyExistsError,
    ValidationException,
)

from batchscore.catalog import RUN_ID_PROPERTY, ensure_namespace, load_table
from batchscore.config import validate_identifier
from batchscore.errors import (
    BatchScoreError,
    CommitConflictError,
    PublishError,
    TransientStoreError,
    is_busy_error,
)
from batchscore.monitoring.results import QUARANTINE_SUFFIX
from batchscore.sinks.iceberg import find_run_commit, iceberg_schema, partition_spec, place_file
from batchscore.sinks.schema import PARTITION_COLUMN, QUARANTINE_SCHEMA

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog
    from pyiceberg.table import Table


def quarantine_table_name(output_table: str) -> str:
    """``database.table_quarantine`` for the predictions table ``database.table``."""
    return f"{output_table}{QUARANTINE_SUFFIX}"


def ensure_quarantine_table(catalog: Catalog, identifier: str) -> Table:
    """The quarantine table ``identifier``, created (partitioned by date) when missing."""
    database, _, name = identifier.partition(".")
    validate_identifier(database, "athena_database")
    validate_identifier(name, "athena_output_table")
    table = load_table(catalog, identifier)
    if table is not None:
        return table
    ensure_namespace(catalog, database)
    try:
        return catalog.create_table(
            identifier,
            schema=iceberg_schema(QUARANTINE_SCHEMA),
            partition_spec=partition_spec(QUARANTINE_SCHEMA),
        )
    except TableAlreadyExistsError:  # another process created it first
        return catalog.load_table(identifier)


def publish_quarantine(
    catalog: Catalog,
    identifier: str,
    files: Sequence[Path],
    *,
    run_id: str,
    inference_date: dt.date,
) -> tuple[int, bool]:
    """Commit a run's quarantine files to ``identifier`` in one commit, once per run.

    Args:
        catalog: the predictions' catalog.
        identifier: ``database.table_quarantine`` (:func:`quarantine_table_name`).
        files: Parquet files in ``QUARANTINE_SCHEMA`` (``runs/<run_id>/quarantine/*.parquet``).
        run_id: recorded in the commit; a commit it made earlier means nothing to do.
        inference_date: the run's date (the partition the files go to).

    Returns:
        The commit's snapshot id, and whether the run had committed it before.

    Raises:
        CommitConflictError: another writer committed first (transient: Publish is retried).
        TransientStoreError: the catalog database was locked (transient).
        PublishError: any other failure; the table is unchanged.
    """
    table = ensure_quarantine_table(catalog, identifier)
    earlier = find_run_commit(table, run_id)
    if earlier is not None:
        return earlier, True
    data_dir = (
        f"{table.location().rstrip('/')}/data/{PARTITION_COLUMN}={inference_date.isoformat()}"
    )
    try:
        uris = [
            place_file(path, data_dir, f"{run_id}-{i:05d}.parquet", table.io)
            for i, path in enumerate(files)
        ]
        with table.transaction() as tx:
            tx.add_files(uris, snapshot_properties={RUN_ID_PROPERTY: run_id})
    except (CommitFailedException, ValidationException) as exc:
        raise CommitConflictError(
            f"another writer committed to {identifier} first: {exc}. The table is unchanged; "
            "the publish is retried."
        ) from exc
    except BatchScoreError:
        raise
    except Exception as exc:
        if is_busy_error(exc):
            raise TransientStoreError(
                f"the catalog database was locked while committing to {identifier}: {exc}. "
                "The table is unchanged; the publish is retried."
            ) from exc
        raise PublishError(
            f"committing {len(files)} quarantine file(s) to {identifier} failed: "
            f"{type(exc).__name__}: {exc}. The table is unchanged; nothing was published."
        ) from exc
    snapshot = table.current_snapshot()
    assert snapshot is not None
    return snapshot.snapshot_id, False
