"""What the DataSource and BatchInference steps return, whichever engine ran them.

A leaf module (dataclasses only), so the engine interface can name these types without
importing the steps that produce them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class DataSourceResult:
    rows: int
    files: list[str]
    snapshot_id: int | None
    duplicate_versions_skipped: int
    deleted_records_skipped: int
    columns: list[str]
    # Ids without a number (feature_store.ids): never scored; how many, and up to five.
    unmatched_ids: int = 0
    unmatched_id_examples: list[str] = field(default_factory=list)
    # Data files and row groups whose feature columns were never decoded (ReadStats).
    files_skipped: int = 0
    row_groups_skipped: int = 0

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Lineage:
    """What every prediction row carries about where it came from."""

    run_id: str
    pipeline_name: str
    id_range: str
    inference_date: dt.date
    timestamp: dt.datetime


@dataclass(frozen=True)
class BatchInferenceResult:
    rows: int
    files: list[str]
    evaluation: dict[str, Any] | None
    evaluation_path: str | None
    ignored_columns: list[str]
    unseen_categories: dict[str, int] = field(default_factory=dict)
    non_finite_values: dict[str, int] = field(default_factory=dict)
    quarantined: int = 0  # rows that could not be scored (monitoring.quarantine)
    quarantine_path: str | None = None  # the run's quarantine/ folder, when any
    engine: str = "local"
    nodes: list[str] = field(default_factory=list)  # Ray nodes that scored (engine: ray)
    summary_path: str | None = None  # summary.json (None: checks disabled)
    # How the rows were scored (scoring.compiled.ScoringPlan.record): path, reason, parity.
    scoring: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)
