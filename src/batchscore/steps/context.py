"""What a step runs with: the run's record, the settings, the backends, the engine, the model.

The runner builds one :class:`RunContext` per run and hands it to every step's ``run(ctx)``;
a step takes what it needs from it and returns its outputs. The backends open on first use,
so a resumed run that only publishes never opens the feature store or the registry.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from batchscore.progress import NO_PROGRESS, Progress, tracked

if TYPE_CHECKING:
    from batchscore.config import Settings
    from batchscore.engines.base import Engine
    from batchscore.feature_store import FeatureStore
    from batchscore.records import RunRecord
    from batchscore.registry import LoadedModel, ModelRegistry, ModelVersion
    from batchscore.scoring.compiled import ScoringPlan
    from batchscore.sinks import PredictionSink


class Backends:
    """The stores a run reads and writes, each opened from the settings on first use unless
    given (to share or substitute one)."""

    def __init__(
        self,
        settings: Settings,
        *,
        feature_store: FeatureStore | None = None,
        registry: ModelRegistry | None = None,
        sink: PredictionSink | None = None,
    ) -> None:
        self.settings = settings
        self._feature_store = feature_store
        self._registry = registry
        self._sink = sink

    @property
    def feature_store(self) -> FeatureStore:
        if self._feature_store is None:
            from batchscore.feature_store import open_feature_store

            self._feature_store = open_feature_store(self.settings)
        return self._feature_store

    @property
    def registry(self) -> ModelRegistry:
        if self._registry is None:
            from batchscore.registry import open_registry

            self._registry = open_registry(self.settings)
        return self._registry

    def sink(self, table: str) -> PredictionSink:
        """The sink Publish commits to: ``table`` (``database.table``, the run's own)."""
        if self._sink is None or self._sink.identifier != table:
            from batchscore.sinks import open_sink

            self._sink = open_sink(self.settings, table=table)
        return self._sink


class ModelLoad:
    """A model version loading on a background thread; ``result()`` waits for it. With the
    settings, the same thread then chooses how it scores (compiling it, or loading its compiled
    library, while DataSource reads); ``scoring()`` waits for that."""

    def __init__(
        self, registry: ModelRegistry, version: ModelVersion, settings: Settings | None = None
    ) -> None:
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="batchscore-model")
        self._future: Future[LoadedModel] = self._worker.submit(
            self._load, registry, version, settings
        )
        self._scoring: Future[ScoringPlan] | None = None
        if settings is not None:
            self._scoring = self._worker.submit(self._plan, settings)

    def _plan(self, settings: Settings) -> ScoringPlan:
        from batchscore.scoring.compiled import plan_scoring

        model = self._future.result()  # the same thread, after the load: done (or raised)
        return plan_scoring(settings.scoring, model, settings.workspace_path, announce=False)

    def scoring(self) -> ScoringPlan | None:
        """The scoring plan made on the loading thread; None when this load makes none."""
        return None if self._scoring is None else self._scoring.result()

    @staticmethod
    def _load(
        registry: ModelRegistry, version: ModelVersion, settings: Settings | None
    ) -> LoadedModel:
        """The model, its profile completed from its training data when it lacks one."""
        loaded = registry.load(version)
        if settings is not None:
            from batchscore.registry.profiles import complete_profile

            complete_profile(settings, registry, loaded)
        return loaded

    def result(self) -> LoadedModel:
        return self._future.result()

    def ready(self) -> bool:
        return self._future.done()

    def close(self) -> None:
        self._worker.shutdown(wait=False)


@dataclass
class RunContext:
    """One run as its steps see it.

    Attributes:
        record: The run's record (its ids, dates, table, and every earlier step's outputs).
        settings: The settings the run goes by.
        backends: Feature store, registry and prediction sink, opened on first use.
        engine: Where DataSource and BatchInference do their work (local or Ray).
        step: The step running (or being prepared for: an error is put on it).
        model: The run's model version loading in the background; None when no step left
            to run needs it.
        progress: Where steps report what they are doing.
    """

    record: RunRecord
    settings: Settings
    backends: Backends
    engine: Engine
    step: str
    model: ModelLoad | None = None
    progress: Progress = NO_PROGRESS

    def loaded_model(self) -> LoadedModel:
        """The run's model, waiting (with a progress line) while it still loads.

        Raises:
            RuntimeError: the runner resolved no model for this run (no step needs one).
        """
        if self.model is None:
            raise RuntimeError(f"{self.step} needs the model, but no step declares needs_model")
        if self.model.ready():
            return self.model.result()
        with tracked(self.progress, f"{self.step}: loading the model"):
            return self.model.result()

    def scoring_plan(self, model: LoadedModel) -> ScoringPlan:
        """How ``model`` scores (``settings.scoring``), logged in one line: the plan the loading
        thread made while DataSource read, else made now."""
        from batchscore.scoring.compiled import plan_scoring

        if self.model is None or self.model.result() is not model:
            return plan_scoring(self.settings.scoring, model, self.settings.workspace_path)
        with tracked(self.progress, f"{self.step}: preparing the compiled model"):
            plan = self.model.scoring()
        if plan is None:
            return plan_scoring(self.settings.scoring, model, self.settings.workspace_path)
        logging.getLogger("batchscore").info(plan.describe())
        return plan
