"""Collects what the fault, concurrency and bad-input tests tried, for docs/reliability.md.

Each test calls ``record(...)``; at the end of the session the rows are written to
``build/reliability.json`` (``scripts/reliability_report.py`` turns that into the doc).
"""

from __future__ import annotations

import json
from pathlib import Path

ROWS: list[dict] = []
OUTPUT = Path(__file__).parents[1] / "build" / "reliability.json"


def record(
    category: str,
    case: str,
    *,
    trials: int = 1,
    outcome: str,
    partial_runs: int = 0,
    duplicate_runs: int = 0,
) -> None:
    ROWS.append(
        {
            "category": category,
            "case": case,
            "trials": trials,
            "outcome": outcome,
            "partial_runs": partial_runs,
            "duplicate_runs": duplicate_runs,
        }
    )


def write() -> None:
    if ROWS:
        OUTPUT.parent.mkdir(exist_ok=True)
        OUTPUT.write_text(json.dumps(ROWS, indent=2))
