"""The engine interface: where DataSource and BatchInference do their work.

An engine reads the latest records into the run's ``input/`` and scores them into
``predictions/``; both implementations take the same arguments and return the same results,
so the steps never ask which one they were handed. Publish is the same for every engine (one
commit from the driver), so it is not part of the interface.
"""

from __future__ import annotations

import abc
import contextlib
import datetime as dt
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from batchscore.progress import NO_PROGRESS, Progress

if TYPE_CHECKING:
    from batchscore.config import Settings
    from batchscore.feature_store import FeatureStore
    from batchscore.monitoring.summaries import SummaryPlan
    from batchscore.registry import LoadedModel
    from batchscore.scoring.compiled import ScoringPlan
    from batchscore.steps.results import BatchInferenceResult, DataSourceResult, Lineage


class Engine(abc.ABC):
    """Runs the reading and scoring steps; built from the settings by ``open_engine``."""

    name: str  # the value of the ``engine`` setting that chooses it

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Whatever the engine holds for one run (Ray: the connection, made on first use),
        released on the way out. The runner wraps each run in it."""
        yield

    @abc.abstractmethod
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
        """Write the latest live records of ids ``id_start``–``id_end`` (as of ``as_of``, at
        the feature group's snapshot ``snapshot_id``) to ``output_dir`` as Parquet parts.

        Raises:
            FeatureGroupError: the feature group (or the snapshot) does not exist.
            NothingToScoreError: no live record in the range; nothing is written.
        """

    @abc.abstractmethod
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
        """Score every row of ``input_files`` into ``output_dir`` (the output table's schema)
        and, when the target column is present, write ``evaluation.json`` beside it; with a
        ``summary_plan``, summarise every batch into ``summary.json`` beside it.

        Raises:
            SchemaMismatchError: the snapshot lacks a column the model needs, or a value does
                not fit the type the model was trained on.
            ModelError: ``scoring`` is compiled-only and its parity check failed.

        With a compiled ``scoring`` plan, the compiled trees score and a sample of every batch
        is checked against the library; when the check fails every row is scored again by the
        library (the plan switches to it) and the result's ``scoring`` says so.
        """
