"""Every error batchscore raises on purpose, each saying what went wrong and how to fix it.

The tree::

    BatchScoreError                  root; `str(err)` is the whole message for a person
    ├── ConfigError                  a setting is missing, unknown, mistyped or inconsistent
    │   └── WorkspaceNotFoundError   a reading command found no workspace (or database) there
    ├── InvalidIdentifierError       a name that would reach SQL, a catalog or a path is unsafe
    ├── FeatureGroupError            a feature group is missing or exists, or data does not fit it
    ├── NothingToScoreError          the id range holds no live record (distinct exit status)
    ├── ModelError
    │   ├── NoApprovedModelError     the model group has no version with the wanted status
    │   ├── UnknownVersionError      no version with that number in the group (a usage error)
    │   └── ModelLoadError           an artifact is missing, corrupt, untrusted or not a classifier
    ├── SchemaMismatchError          the model needs a column the features do not have
    ├── QueryError                   the query engine failed the SQL (a missing table, …)
    │   └── QueryRefusedError        SQL batchscore will not run: not one SELECT (usage error)
    ├── RunLockedError               another process is running the same pipeline and date
    ├── ValidationBlockedError       a check with action 'block' failed at Validate: nothing
    │                                published until a person accepts (exit status 5)
    ├── RunNotFoundError             no run with that id in the workspace
    ├── StorageError                 the workspace is not writable, or the disk is full
    └── PublishError                 the predictions could not be committed
        ├── CommitConflictError      another writer committed first (transient)
        └── PublishRefusedError      committing would publish a customer twice or replace a
                                     newer run's rows (resuming cannot help)
    TransientStoreError              a locked SQLite file or a registry I/O hiccup (transient)

Errors marked ``transient = True`` may succeed when retried (a commit conflict, a locked file);
the runner retries those and nothing else.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class BatchScoreError(Exception):
    """Root of batchscore's errors. The message names the offending thing and the fix."""

    transient: bool = False
    exit_code: int = 1
    resumable: bool = True  # whether 'batchscore resume' can get past it


class ConfigError(BatchScoreError):
    """A configuration file or value is invalid."""

    exit_code = 2


class WorkspaceNotFoundError(ConfigError):
    """A command that only reads found no workspace (or no database in it) where it looked;
    reading never creates one."""


class InvalidIdentifierError(ConfigError):
    """A database, table or feature group name is not a plain identifier."""


class FeatureGroupError(BatchScoreError):
    """A feature group is missing, exists already, or data does not match its definition."""


class NothingToScoreError(BatchScoreError):
    """The requested id range holds no live record: nothing is scored and nothing committed."""

    exit_code = 3


class ModelError(BatchScoreError):
    """A problem with the model registry or a registered model."""


class NoApprovedModelError(ModelError):
    """The model group has no version with the requested approval status."""


class UnknownVersionError(ModelError):
    """The model group has no version with the given number."""

    exit_code = 2


class ModelLoadError(ModelError):
    """A model version's artifact cannot be loaded safely, or cannot score probabilities."""


class SchemaMismatchError(BatchScoreError):
    """The features handed to a model do not have the columns it needs."""


class QueryError(BatchScoreError):
    """A SQL query failed in the engine (a missing table, a type error, a timeout)."""


class QueryRefusedError(QueryError):
    """A SQL query batchscore will not run: not exactly one SELECT, or it does not parse."""

    exit_code = 2


class RunLockedError(BatchScoreError):
    """Another process holds the lock of this pipeline and logical date."""

    exit_code = 4


class ValidationBlockedError(BatchScoreError):
    """Validate found a violation of a check whose action is ``block``: Publish did not run
    and the output table is untouched. The message lists the violations; after a person
    looked, ``batchscore resume RUN_ID --accept`` publishes the run (or loosen the check under
    ``checks:`` and resume it: Validate runs again).

    Attributes:
        run_id: The blocked run.
        violations: One short line per check beyond its threshold.
    """

    exit_code = 5

    def __init__(self, message: str, *, run_id: str = "", violations: list[str] | None = None):
        super().__init__(message)
        self.run_id = run_id
        self.violations = list(violations or [])


class RunNotFoundError(BatchScoreError):
    """No run with the given id."""


class StorageError(BatchScoreError):
    """The workspace cannot be written: not a writable folder, or the disk is full."""


class TransientStoreError(BatchScoreError):
    """A store was busy (a locked SQLite file, a registry I/O error); a retry can succeed."""

    transient = True


class PublishError(BatchScoreError):
    """Predictions could not be committed to the output table."""


class PublishRefusedError(PublishError):
    """The commit was refused on purpose: an overlapping id range, or a newer run's rows.
    Resuming the same run would be refused again; a new run (or another range) is the fix."""

    resumable = False


class CommitConflictError(PublishError):
    """Another writer committed to the table first; retrying the publish can succeed."""

    transient = True


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ' Did you mean 'x'?' for the closest choice, or '' when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def is_busy_error(exc: BaseException) -> bool:
    """A database that was locked or busy (SQLite, through sqlite3 or SQLAlchemy)."""
    text = str(exc).lower()
    if "database is locked" in text:  # also when wrapped, e.g. by MLflow's registry store
        return True
    return type(exc).__name__ == "OperationalError" and ("locked" in text or "busy" in text)
