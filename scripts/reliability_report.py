"""Render docs/reliability.md from build/reliability.json (written by the test suite).

make reliability     # runs the suites, then this
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).parents[1]
SOURCE = ROOT / "build" / "reliability.json"
TARGET = ROOT / "docs" / "reliability.md"

ORDER = [
    "SIGKILL at a failpoint",
    "SIGKILL at a random moment",
    "concurrency",
    "integrity",
    "config",
    "data",
    "model",
    "infrastructure",
    "security",
]


def main() -> int:
    if not SOURCE.exists():
        print(f"{SOURCE} is missing: run the test suite first (make reliability)", file=sys.stderr)
        return 1
    rows = json.loads(SOURCE.read_text())
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    kills = [r for r in rows if r["category"].startswith("SIGKILL")]
    total_kills = sum(r["trials"] for r in kills)
    partial = sum(r["partial_runs"] for r in rows)
    duplicates = sum(r["duplicate_runs"] for r in rows)
    out = [
        "# Reliability",
        "",
        "Every fault and bad input the test suite tries, how many times, and what happened.",
        "This page is generated from the suite's own output (`build/reliability.json`) by",
        "`scripts/reliability_report.py`; regenerate it with `make reliability` (or",
        "`make soak` for 500 random kills).",
        "",
        f"Generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC at commit `{commit}` on "
        f"{platform.system()} {platform.machine()}, Python {platform.python_version()}.",
        "",
        f"**{total_kills} SIGKILLs; {partial} partial runs and {duplicates} duplicate rows "
        "found in the table after them.**",
        "",
        "What is checked after every kill: the table's rows for the logical run come from one",
        "run and are complete (all of its customers) or absent; no customer appears twice;",
        "`resume` (or, when the kill came before the run record existed, a rerun) then",
        "completes, and the row count equals the expected number exactly.",
        "",
    ]
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        groups[row["category"]].append(row)
    for category in sorted(groups, key=lambda c: ORDER.index(c) if c in ORDER else 99):
        out += [
            f"## {category}",
            "",
            "| case | trials | outcome | partial runs | duplicates |",
            "|---|---|---|---|---|",
        ]
        for row in groups[category]:
            case = row["case"].replace("|", "\\|")
            outcome = row["outcome"].replace("|", "\\|")
            out.append(
                f"| {case} | {row['trials']} | {outcome} | {row['partial_runs']} | "
                f"{row['duplicate_runs']} |"
            )
        out.append("")
    TARGET.write_text("\n".join(out))
    print(f"wrote {TARGET} ({len(rows)} cases, {total_kills} kills)")
    return 0 if partial == 0 and duplicates == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
