"""The one notion of "now": UTC, as the naive timestamps the stores and run records keep."""

from __future__ import annotations

import datetime as dt


def utcnow() -> dt.datetime:
    """Now, in UTC, without tzinfo (how event times, write times and run times are stored)."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def seconds_since_process_start() -> float | None:
    """Wall seconds since this process started (interpreter start-up and imports included),
    from Linux's ``/proc``; None where there is no ``/proc`` (macOS, Windows).

    The kernel counts a process' start in clock ticks since boot (``/proc/self/stat``, field
    22) on the clock ``/proc/uptime`` reads, so the difference is exact to a tick (10 ms).
    """
    import os

    try:
        with open("/proc/self/stat") as stat:
            # Fields after the command name, which is in parentheses and may hold spaces.
            start_ticks = int(stat.read().rpartition(")")[2].split()[19])
        with open("/proc/uptime") as uptime:
            since_boot = float(uptime.read().split()[0])
        return max(0.0, round(since_boot - start_ticks / os.sysconf("SC_CLK_TCK"), 3))
    except (OSError, ValueError, IndexError, AttributeError):
        return None
