"""A workspace opened for reading or for writing (issue 12, bugs 10 and 11), through the real CLI.

Reading commands work on a read-only workspace and change nothing in it; writing commands say
it is not writable; run from a folder with no workspace, reading commands say where they
looked (exit 2) and create nothing.

Tests run as root, which ignores permission bits, so "read-only" is a read-only bind mount
in a private mount namespace (``unshare -m``: EROFS, as a read-only volume gives); where that
is not allowed, the immutable attribute (``chattr +i``: EPERM even for root).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchscore.config import load_settings
from batchscore.errors import WorkspaceNotFoundError

BIN = Path(sys.executable).parent / "batchscore"
TABLE = "ml_metrics.mlops_poc_daily_inference"
# Bind-mounts the folder ($0) read-only over itself, then runs the command ("$@").
READ_ONLY_MOUNT = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'


def cli(*args: str, cwd: Path, prefix: list[str] | tuple[str, ...] = ()):
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHSCORE_")}
    env["COLUMNS"] = "200"  # Rich wraps tables at 80 columns without a terminal
    return subprocess.run(
        [*prefix, str(BIN), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def listing(root: Path) -> dict[str, tuple]:
    """Every entry under ``root`` (and ``root`` itself): kind, size, mtime, content hash.

    Folder mtimes change when a file is created or removed in them, so a file made and
    deleted again (a -wal, a probe) shows too."""
    found: dict[str, tuple] = {}
    for path in [root, *sorted(root.rglob("*"))]:
        stat = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        found[str(path.relative_to(root))] = (stat.st_mode, stat.st_size, stat.st_mtime_ns, digest)
    return found


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[list[str]]:
    """Make ``folder`` read-only for the commands run with the yielded prefix."""
    probe = ["sh", "-c", f'touch "{folder}/.probe"']
    if shutil.which("unshare") and shutil.which("mount"):
        prefix = ["unshare", "-m", "sh", "-c", READ_ONLY_MOUNT, str(folder)]
        attempt = subprocess.run([*prefix, *probe], capture_output=True, text=True)
        if attempt.returncode != 0 and "Read-only file system" in attempt.stderr:
            yield prefix
            return
        (folder / ".probe").unlink(missing_ok=True)
    if shutil.which("chattr"):
        made = subprocess.run(["chattr", "-R", "+i", str(folder)], capture_output=True)
        try:
            attempt = subprocess.run(probe, capture_output=True, text=True)
            if made.returncode == 0 and attempt.returncode != 0:
                yield []
                return
        finally:
            subprocess.run(["chattr", "-R", "-i", str(folder)], capture_output=True)
        (folder / ".probe").unlink(missing_ok=True)
    pytest.skip(
        "cannot make a folder read-only for root here: needs 'unshare -m' (CAP_SYS_ADMIN) "
        "or 'chattr +i' (a filesystem with the immutable attribute)"
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A project folder where the quickstart made a workspace: its run and row count."""
    folder = tmp_path_factory.mktemp("project")
    done = cli("quickstart", cwd=folder)
    assert done.returncode == 0, done.stderr
    rows = re.search(rf"{TABLE}: (\d+) rows", done.stdout)
    assert rows is not None, done.stdout
    (run_dir,) = (folder / ".batchscore" / "runs").iterdir()
    (folder / "records.csv").write_text("customer_id,event_time\nCUST_000001,2026-01-01\n")
    (folder / "schema.yaml").write_text("customer_id: String\nevent_time: String\nx: Integral\n")
    return {"folder": folder, "run_id": run_dir.name, "rows": int(rows.group(1))}


@pytest.fixture(scope="module")
def read_only_project(project: dict) -> Iterator[dict]:
    workspace = project["folder"] / ".batchscore"
    with read_only(workspace) as prefix:
        yield {**project, "workspace": workspace, "prefix": prefix}


READING = {
    "query": (
        ["query", f"SELECT count(*) AS n FROM {TABLE}", "--format", "csv"],
        lambda p: f'"n"\n{p["rows"]}\n',
    ),
    "features list": (["features", "list"], lambda p: "mlops_poc_churn_classification_feature"),
    "features describe": (["features", "describe"], lambda p: "live_records"),
    "models list": (["models", "list"], lambda p: "Approved"),
    "runs list": (["runs", "list"], lambda p: p["run_id"]),
    "runs show": (["runs", "show", "{run}"], lambda p: "succeeded"),
    "runs logs": (["runs", "logs", "{run}"], lambda p: "Publish: done"),
    "table snapshots": (["table", "snapshots"], lambda p: p["run_id"]),
    "config show": (["config", "show"], lambda p: "# workspace folder: "),
}


@pytest.mark.parametrize("command", list(READING))
def test_reading_commands_work_on_a_read_only_workspace_and_change_nothing(
    read_only_project: dict, command: str
) -> None:
    p = read_only_project
    args, expected = READING[command]
    before = listing(p["workspace"])
    done = cli(*[a.format(run=p["run_id"]) for a in args], cwd=p["folder"], prefix=p["prefix"])
    assert done.returncode == 0, done.stderr
    assert expected(p) in done.stdout
    after = listing(p["workspace"])
    assert after == before
    assert not [name for name in after if name.endswith(("-wal", "-shm", "-journal"))]


WRITING = {
    "run": ["run"],
    "quickstart": ["quickstart"],
    "train": ["train"],
    "features create": ["features", "create", "--schema", "schema.yaml", "--name", "other"],
    "features ingest": ["features", "ingest", "records.csv"],
    "models approve": ["models", "approve", "1"],
    "table drop": ["table", "drop", "--yes"],
    "table rollback": ["table", "rollback", "--to-snapshot", "1"],
    "clean": ["clean", "--older-than", "0m"],
}


@pytest.mark.parametrize("command", list(WRITING))
def test_writing_commands_say_a_read_only_workspace_is_not_writable(
    read_only_project: dict, command: str
) -> None:
    p = read_only_project
    before = listing(p["workspace"])
    done = cli(*WRITING[command], cwd=p["folder"], prefix=p["prefix"])
    assert done.returncode == 1, done.stdout + done.stderr
    error = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(error) == 1, done.stderr
    assert error[0].startswith(f"Error: workspace '{p['workspace']}' is not writable (")
    assert "--set workspace=PATH" in error[0]
    assert "Traceback" not in done.stderr
    assert listing(p["workspace"]) == before


@pytest.mark.parametrize("command", [c for c in READING if c != "config show"])
def test_reading_commands_from_a_folder_without_a_workspace_exit_2_and_create_nothing(
    tmp_path: Path, command: str
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    args, _ = READING[command]
    done = cli(*[a.format(run="20261127T000000-abcdef") for a in args], cwd=elsewhere)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip() == (
        f"Error: no batchscore workspace at '{elsewhere / '.batchscore'}' ('workspace: "
        f".batchscore' is relative to the current folder, {elsewhere}). Point at an existing "
        "workspace with --set workspace=PATH (or 'workspace:' in the file given with --config), "
        "or run from the project folder that holds it."
    )
    assert list(elsewhere.iterdir()) == []


def test_config_show_without_a_workspace_names_the_folder_and_creates_nothing(
    tmp_path: Path,
) -> None:
    """It reads no workspace: it shows where one is looked for, which is what to check."""
    done = cli("config", "show", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (
        f"# workspace folder: {tmp_path / '.batchscore'} (does not exist: reading commands "
        "need one, writing commands create it)"
    ) in done.stdout
    assert list(tmp_path.iterdir()) == []


def test_library_readers_need_a_workspace_and_create_nothing(tmp_path: Path) -> None:
    """The Python calls behind the reading commands behave as the commands do."""
    from batchscore import open_catalog, open_feature_store, open_registry, query
    from batchscore.runs import RunHistory

    workspace = tmp_path / "ws"
    settings = load_settings(None, {"workspace": str(workspace)}, env={})
    readers = {
        "open_catalog": lambda: open_catalog(settings, writable=False),
        "open_feature_store": lambda: open_feature_store(settings, writable=False),
        "open_registry": lambda: open_registry(settings, writable=False),
        "RunHistory": lambda: RunHistory.for_settings(settings, writable=False),
        "query": lambda: query(settings, "SELECT 1"),
    }
    for name, reader in readers.items():
        with pytest.raises(WorkspaceNotFoundError, match="no batchscore workspace at"):
            reader()
        assert not workspace.exists(), name

    # An empty workspace folder: no runs yet; no catalog or registry file, said by name.
    workspace.mkdir()
    assert RunHistory.for_settings(settings, writable=False).list_runs() == []
    with pytest.raises(WorkspaceNotFoundError) as no_catalog:
        open_catalog(settings, writable=False)
    assert str(no_catalog.value).startswith(
        f"no Iceberg catalog at '{workspace / 'catalog.db'}': nothing has made it yet "
        "('batchscore quickstart' or 'batchscore features create' makes one). Point at"
    )
    with pytest.raises(WorkspaceNotFoundError) as no_registry:
        open_registry(settings, writable=False)
    assert str(no_registry.value).startswith(
        f"no MLflow model registry at '{workspace / 'mlflow.db'}': nothing has made it yet "
        "('batchscore train' registers a model). Point at"
    )
    assert list(workspace.iterdir()) == []
    assert list(tmp_path.iterdir()) == [workspace]  # no junk 'file:' folder from MLflow


def test_readers_open_a_workspace_whose_path_needs_quoting(tmp_path: Path) -> None:
    """The read-only SQLite URL is unquoted twice (SQLAlchemy, then SQLite): '#' survives."""
    from batchscore import open_catalog, open_registry

    settings = load_settings(None, {"workspace": str(tmp_path / "project #1" / "ws")}, env={})
    open_catalog(settings).create_namespace("ml_metrics")
    open_registry(settings).client.create_registered_model("churn")
    assert open_catalog(settings, writable=False).list_namespaces() == [("ml_metrics",)]
    models = open_registry(settings, writable=False).client.search_registered_models()
    assert [m.name for m in models] == ["churn"]
