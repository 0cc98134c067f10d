"""Failpoints: named places where a test can have the process killed (SIGKILL) on purpose,
or held there until other processes arrive.

``BATCHSCORE_FAILPOINT=Publish:files-placed batchscore run`` dies right after Publish has put
its files in the table folder and before it commits. The fault-injection suite uses these to
kill at exact step boundaries; without the variable a failpoint costs one dictionary lookup.

``BATCHSCORE_FAILPOINT=Publish:files-placed=barrier:/some/dir:2`` does not kill: the process
puts a file named after its pid in ``/some/dir`` and waits there until the folder holds 2 such
files (at most 60 s), then goes on. Two processes given the same barrier both reach the point
before either passes it — the concurrency tests use this to make two publishes load the table
before either commits, so one of them meets a real commit conflict. A process that reaches the
point again (a retry) finds the barrier already full and passes at once.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path

from batchscore.steps import STEPS, Step

ENV = "BATCHSCORE_FAILPOINT"
BARRIER_TIMEOUT_SECONDS = 60.0


def points(steps: Sequence[Step] = STEPS) -> tuple[str, ...]:
    """Every failpoint a run of ``steps`` passes, in order: the run's start, then each step's
    (``<step>:start``, the points inside it, its end)."""
    return ("run:started", *(point for step in steps for point in step.failpoints))


POINTS = points()


def failpoint(name: str) -> None:
    """Act if ``$BATCHSCORE_FAILPOINT`` names this point: SIGKILL, or wait at its barrier."""
    value = os.environ.get(ENV)
    if not value:
        return
    point, _, action = value.partition("=")
    if point != name:
        return
    if not action:
        os.kill(os.getpid(), signal.SIGKILL)
    elif action.startswith("barrier:"):
        folder, _, count = action.removeprefix("barrier:").rpartition(":")
        _barrier(Path(folder), int(count))
    else:
        raise ValueError(f"{ENV}={value!r}: the action after '=' must be barrier:<dir>:<n>")


def _barrier(folder: Path, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{os.getpid()}.arrived").touch()
    deadline = time.monotonic() + BARRIER_TIMEOUT_SECONDS
    while len(list(folder.glob("*.arrived"))) < count and time.monotonic() < deadline:
        time.sleep(0.02)
