"""The local engine (the default): this process, DuckDB for the read, a batch loop to score."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from batchscore.engines.base import Engine
from batchscore.progress import NO_PROGRESS, Progress

if TYPE_CHECKING:
    from batchscore.feature_store import FeatureStore
    from batchscore.monitoring.summaries import SummaryPlan
    from batchscore.registry import LoadedModel
    from batchscore.scoring.compiled import ScoringPlan
    from batchscore.steps.results import BatchInferenceResult, DataSourceResult, Lineage


class LocalEngine(Engine):
    """Both steps in this process, ``batch_size`` rows at a time."""

    name = "local"

    def data_source(
        self,
        store: FeatureStore,
        feature_group_name: str,
        id_start: int | None,
        id_end: int | None,
        output_dir: Path,
        *,
        as_of: dt.datetime | None,
        snapshot_id: int | None,
        progress: Progress = NO_PROGRESS,
    ) -> DataSourceResult:
        from batchscore.steps.data_source import data_source

        return data_source(
            store, feature_group_name, id_start, id_end, output_dir, as_of=as_of,
            snapshot_id=snapshot_id, batch_size=self.settings.batch_size, progress=progress,
        )  # fmt: skip

    def batch_inference(
        self,
        input_files: Sequence[str],
        model: LoadedModel,
        output_dir: Path,
        *,
        record_identifier: str,
        lineage: Lineage,
        summary_plan: SummaryPlan | None = None,
        target_column: str | None,
        source_label: str,
        progress: Progress = NO_PROGRESS,
        scoring: ScoringPlan | None = None,
    ) -> BatchInferenceResult:
        from batchscore.steps.batch_inference import batch_inference

        return batch_inference(
            input_files, model, output_dir, record_identifier=record_identifier,
            lineage=lineage, summary_plan=summary_plan, target_column=target_column,
            source_label=source_label, batch_size=self.settings.batch_size, progress=progress,
            scoring=scoring,
        )  # fmt: skip
