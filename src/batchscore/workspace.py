"""The workspace on this machine, opened for reading or for writing.

Read-only commands (``query``, ``features list|describe``, ``models list``, ``runs
list|show|logs``, ``table snapshots``) open what they read with ``writable=False``: they
need an existing workspace (``require_workspace``), never create a folder or a file in it,
and open its SQLite files read-only (``readonly_sqlite_url``) — so they work on a read-only
workspace, and run from the wrong folder they say where they looked instead of answering
from a new empty one. Write commands open with ``writable=True``: the workspace is created
if missing and checked writable first (``ensure_writable_workspace``), so a read-only one
fails with one message naming it.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import uuid
import weakref
from pathlib import Path
from typing import Any
from urllib.parse import quote

from batchscore.config import Settings
from batchscore.errors import StorageError, WorkspaceNotFoundError

POINT_AT_ONE = (
    "Point at an existing workspace with --set workspace=PATH (or 'workspace:' in the file "
    "given with --config), or run from the project folder that holds it."
)


def require_workspace(settings: Settings) -> Path:
    """The local workspace folder, which must exist: reading never creates one.

    Raises:
        WorkspaceNotFoundError: no folder at ``settings.workspace_path``.
    """
    path = settings.workspace_path
    if path.is_dir():
        return path
    if settings.remote_workspace:
        where = (
            f"no local copy of the workspace {settings.remote_workspace} at {str(path)!r} "
            "(runs on this machine make one). Set local_workspace to where it is."
        )
    else:
        relative = "" if Path(settings.workspace).expanduser().is_absolute() else (
            f" ('workspace: {settings.workspace}' is relative to the current folder, "
            f"{os.getcwd()})"
        )  # fmt: skip
        where = f"no batchscore workspace at {str(path)!r}{relative}. {POINT_AT_ONE}"
    raise WorkspaceNotFoundError(where)


def ensure_writable_workspace(settings: Settings) -> Path:
    """The local workspace folder, created if missing and proven writable.

    Raises:
        StorageError: the folder cannot be created or written (read-only, permissions).
    """
    path = settings.workspace_path
    probe = path / f".write-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise StorageError(
            f"workspace {str(path)!r} is not writable ({exc.strerror}): this command writes "
            "to it. Make it writable, or set 'workspace' to a folder this user can write "
            "(--set workspace=PATH). Reading commands (query, runs list, …) work on it as it is."
        ) from exc
    return path


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///path`` URL (SQLAlchemy, MLflow, pyiceberg), else None."""
    if not url.startswith("sqlite:///"):
        return None
    path = url.removeprefix("sqlite:///").split("?", 1)[0]
    if not path or path == ":memory:" or path.startswith("file:"):
        return None
    return Path(path)


def readonly_sqlite_uri(path: Path) -> str:
    """A ``sqlite3`` URI (``uri=True``) that opens ``path`` read-only and writes nothing.

    ``mode=ro`` reads a WAL database only where its ``-shm`` file exists or can be made;
    in a read-only folder with no writer connected (no ``-shm``), ``immutable=1`` reads the
    file as it is — nothing can be changing it then, as a writer needs that ``-shm`` too.
    """
    uri = f"file:{quote(str(path.resolve()))}?mode=ro"
    try:
        con = sqlite3.connect(uri, uri=True)
        try:
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            con.close()
    except sqlite3.OperationalError as exc:
        if "unable to open" not in str(exc):
            raise
        uri += "&immutable=1"
    return uri


def readonly_sqlite_url(path: Path) -> str:
    """``readonly_sqlite_uri`` as a SQLAlchemy URL (pyiceberg's SqlCatalog, MLflow).

    ``sqlite+pysqlite://``, not ``sqlite://``: MLflow makes the parent folder of whatever
    follows ``sqlite:///`` — here ``file:…``, a junk folder in the current directory.
    """
    uri, _, options = readonly_sqlite_uri(path).partition("?")
    # SQLAlchemy unquotes the database part once; SQLite unquotes the URI's path again.
    return f"sqlite+pysqlite:///{quote(uri, safe='/:')}?{options}&uri=true"


def require_sqlite_file(path: Path, what: str, create_with: str) -> None:
    """Reading needs the database to exist: opening a missing one would create it.

    Raises:
        WorkspaceNotFoundError: no file at ``path``.
    """
    if not path.is_file():
        raise WorkspaceNotFoundError(
            f"no {what} at {str(path)!r}: nothing has made it yet ({create_with}). {POINT_AT_ONE}"
        )


# The SQLAlchemy engines this process opened on the catalog database (pyiceberg's SQL catalog,
# the run locks), so the console script can close their pooled connections before it exits.
_ENGINES: weakref.WeakSet[Any] = weakref.WeakSet()


def track_engine(engine: Any) -> None:
    """Remember ``engine`` (weakly) for :func:`dispose_engines`."""
    _ENGINES.add(engine)


def dispose_engines() -> None:
    """Close the pooled connections of every engine still alive. The console script exits
    without the interpreter's last garbage collection (``cli._skip_final_collection``), which
    would otherwise be what closes them; SQLite then checkpoints its WAL and removes the
    ``-wal`` and ``-shm`` files, so a workspace is left as a reader (or a read-only copy)
    expects it."""
    for engine in list(_ENGINES):
        # Exiting anyway: a connection that will not close is the OS's to close.
        with contextlib.suppress(Exception):
            engine.dispose()
