"""Making files durable before something refers to them (a run record, an Iceberg commit).

A rename or a write is in the page cache until fsynced: after a power cut, a commit could name
a prediction file whose bytes never reached the disk.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def fsync_file(path: str | Path) -> None:
    """Flush a closed file's data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """Flush a folder's entries (new files, renames); a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
