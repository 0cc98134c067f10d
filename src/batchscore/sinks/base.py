"""The sink interface: where Publish commits a run's predictions, exactly once.

A publish is three calls, in the spirit of Ray's ``Datasink`` and dlt's ``Destination``::

    sink.ensure()                         # the target exists (created when missing)
    if sink.find_commit(run_id) is None:  # exactly once: did this run commit already?
        sink.commit(files, run_id=…, logical_run=…, write_mode=…, started=…)

``commit`` is the only call that changes what readers see, and it is atomic: readers see the
target before or after it, never between. The run id travels inside the commit, so a resume
whose last commit's fate is unknown finds it with ``find_commit`` and never publishes twice.

The sink reads the target's state once per publish (in ``ensure``, or the first call that
needs it) and ``commit`` commits on top of that state: a commit anyone made since is a
conflict (``CommitConflictError``, transient: the runner retries the whole publish), never a
silent overwrite. After ``commit`` — done or failed — the next call reads the target afresh.

The files handed to ``commit`` are Parquet in ``PREDICTIONS_SCHEMA``
(``batchscore.sinks.schema``), one run's rows each.
"""

from __future__ import annotations

import abc
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Self

    from batchscore.config import Settings
    from batchscore.records import LogicalRun


@dataclass(frozen=True)
class SnapshotInfo:
    """One commit of the target, as ``batchscore table snapshots`` lists it."""

    snapshot_id: int
    committed: dt.datetime  # UTC
    operation: str
    run_id: str | None  # the run that made it, if a run did
    added_rows: int | None
    deleted_rows: int | None
    current: bool


class PredictionSink(abc.ABC):
    """A target for predictions with atomic, idempotent commits (one per run)."""

    #: The target's name as users see it (``database.table`` for a table).
    identifier: str

    @classmethod
    @abc.abstractmethod
    def from_settings(cls, settings: Settings, identifier: str, *, writable: bool = True) -> Self:
        """The sink for ``identifier`` in the stores the settings point at.

        Args:
            settings: the store settings (catalog, workspace, backend).
            identifier: the target, ``database.table``.
            writable: False to only read (``snapshots``): the workspace must exist already
                and nothing is created or written.

        Raises:
            ConfigError: the store cannot be opened with these settings.
            WorkspaceNotFoundError: reading, and no workspace where the settings point.
            StorageError: writing, and the workspace is not writable.
        """

    @abc.abstractmethod
    def ensure(self) -> None:
        """Create the target when it is missing; an existing one is brought up to date.

        Another process creating it at the same moment is not an error.

        Raises:
            InvalidIdentifierError: the identifier is not a safe name.
            TransientStoreError: the store was busy (transient).
        """

    @abc.abstractmethod
    def find_commit(self, run_id: str) -> int | None:
        """The id of a commit ``run_id`` made earlier, or None (also when there is no target).

        This is the exactly-once check: a publish that finds one is already done.
        """

    @abc.abstractmethod
    def commit(
        self,
        files: Sequence[Path],
        *,
        run_id: str,
        logical_run: LogicalRun,
        write_mode: str,
        started: dt.datetime | None = None,
    ) -> int:
        """Commit ``files`` as one atomic commit carrying ``run_id``; return the commit's id.

        Args:
            files: Parquet files in ``PREDICTIONS_SCHEMA``, this run's rows.
            run_id: recorded in the commit, for ``find_commit``.
            logical_run: the pipeline, date and id range the rows belong to.
            write_mode: ``replace`` removes earlier runs' rows of the same pipeline and date
                whose id range lies inside this run's; ``overwrite`` all of the pipeline's rows
                for the date; ``append`` none.
            started: when the run started (default now): an older run never replaces the
                rows of a run that started after it.

        Raises:
            ConfigError: ``write_mode`` is none of the three.
            PublishRefusedError: an earlier run's id range overlaps this one without lying
                inside it, or the rows to remove came from a run that started later; the
                target is unchanged.
            CommitConflictError: another writer committed since this sink read the target
                (transient: publish again).
            TransientStoreError: the store was busy (transient).
            PublishError: any other failure; the target is unchanged.
        """

    @abc.abstractmethod
    def drop(self) -> None:
        """Delete the target and its data.

        Raises:
            ConfigError: there is no such target.
        """

    @abc.abstractmethod
    def snapshots(self) -> list[SnapshotInfo]:
        """The target's commits in its current history, newest first.

        Raises:
            ConfigError: there is no such target.
        """

    @abc.abstractmethod
    def rollback(self, snapshot_id: int) -> None:
        """Make commit ``snapshot_id`` current again, in one commit.

        Raises:
            ConfigError: there is no such target, or no such commit in its history.
        """
