"""The one notion of "now": UTC, as the naive timestamps the stores and run records keep."""

from __future__ import annotations

import datetime as dt


def utcnow() -> dt.datetime:
    """Now, in UTC, without tzinfo (how event times, write times and run times are stored)."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)
