"""One run at a time: a lock per logical run — pipeline, logical date and id range — held
while a run executes (two id ranges of one pipeline may run side by side).

An ``flock`` on a file in the workspace: released by the OS when the process dies, so a
killed run never leaves a stale lock behind. The file names the holder for the error message.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from collections.abc import Iterator

from batchscore.clock import utcnow
from batchscore.config import Settings
from batchscore.errors import RunLockedError


@contextlib.contextmanager
def run_lock(
    settings: Settings, pipeline_name: str, logical_date: str, run_id: str, id_range: str = ""
) -> Iterator[None]:
    """Hold the lock of one logical run (pipeline, logical date, id range) while it executes.

    Raises:
        RunLockedError: another process (or thread) holds it; the message names its run.
    """
    folder = settings.workspace_path / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", pipeline_name)
    path = folder / f"{safe}__{logical_date}__{id_range or 'all'}.lock"
    handle = open(path, "a+")  # noqa: SIM115 - held open for the lock's lifetime
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            try:
                holder = json.loads(handle.read() or "{}")
            except json.JSONDecodeError:
                holder = {}
            raise RunLockedError(
                f"pipeline {pipeline_name!r} for {logical_date}"
                f"{f' (ids {id_range})' if id_range else ''} is already running: run "
                f"{holder.get('run_id', '?')} (pid {holder.get('pid', '?')}, started "
                f"{holder.get('started', '?')}). Wait for it to finish; "
                f"'batchscore runs show {holder.get('run_id', 'RUN_ID')}' shows its progress."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(
            json.dumps(
                {
                    "run_id": run_id,
                    "pid": os.getpid(),
                    "started": utcnow().isoformat(),
                }
            )
        )
        handle.flush()
        yield
    finally:
        handle.close()  # closing releases the lock
