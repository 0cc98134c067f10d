"""Failpoints: named places where a test can have the process killed (SIGKILL) on purpose.

``BATCHSCORE_FAILPOINT=Publish:files-placed batchscore run`` dies right after Publish has put
its files in the table folder and before it commits. The fault-injection suite uses these to
kill at exact step boundaries; without the variable a failpoint costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "BATCHSCORE_FAILPOINT"

POINTS = (
    "run:started",
    "DataSource:start",
    "DataSource:end",
    "BatchInference:start",
    "BatchInference:batch",
    "BatchInference:end",
    "Publish:start",
    "Publish:files-placed",
    "Publish:committed",
)


def failpoint(name: str) -> None:
    """Kill this process with SIGKILL if ``$BATCHSCORE_FAILPOINT`` names this point."""
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
