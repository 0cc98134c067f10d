"""The pipeline's steps, defined once: DataSource → BatchInference → Validate → Publish.

``STEPS`` is the one ordered list every part of batchscore derives its steps from: the runner
walks it, run records and run history hold a record per entry, the CLI's ``step`` command takes
its slugs, ``deploy sagemaker`` makes a Processing job of each, and the failpoints are named
after it. A step is one module here with a ``run(ctx)`` function of the run context
(:class:`batchscore.steps.context.RunContext`) returning the step's outputs; adding a step is
that module plus one entry below (plus its settings).

This module imports nothing heavy: ``batchscore --help`` and the run history read it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from batchscore.errors import ConfigError, did_you_mean

# A step's function: the run context in, the step's outputs (JSON-able, with "rows") out.
StepFunction = Callable[[Any], dict[str, Any]]


@dataclass(frozen=True)
class Step:
    """One step of the pipeline.

    Attributes:
        name: What records, logs, hooks and the run history call it (``DataSource``).
        slug: Its name on the command line (``batchscore step data-source``).
        description: One line for help texts.
        run: ``"module:function"``, the function running the step from a run context and
            returning its outputs; imported only when the step runs.
        job_name: The SageMaker Pipeline step running it (default: ``name``).
        reads_features: It reads the feature group: the runner checks the group exists and
            pins its snapshot before the first step, and puts an error doing so on this step.
        needs_model: It scores with the run's model: the runner resolves the version and
            checks its columns before the first step (an error goes on this step), then loads
            the model on a background thread while the earlier steps run.
        inner_failpoints: Failpoints the step reaches between its start and end (the suffix
            after ``"<name>:"``); the runner itself passes ``<name>:start`` and the end point.
        end_failpoint: The suffix of the failpoint the runner passes once the step's work is
            done, before its record says so.
    """

    name: str
    slug: str
    description: str
    run: str
    job_name: str = ""
    reads_features: bool = False
    needs_model: bool = False
    inner_failpoints: tuple[str, ...] = ()
    end_failpoint: str = "end"

    @property
    def sagemaker_name(self) -> str:
        return self.job_name or self.name

    @property
    def failpoints(self) -> tuple[str, ...]:
        """Every failpoint of the step, in the order a run reaches them."""
        suffixes = ("start", *self.inner_failpoints, self.end_failpoint)
        return tuple(f"{self.name}:{suffix}" for suffix in suffixes)

    def function(self) -> StepFunction:
        """The function running the step (imports its module)."""
        module, _, attribute = self.run.partition(":")
        function: StepFunction = getattr(importlib.import_module(module), attribute)
        return function


STEPS: tuple[Step, ...] = (
    Step(
        "DataSource",
        "data-source",
        "the latest live record per id in the range, as of the run's time, to input/",
        "batchscore.steps.data_source:run",
        reads_features=True,
    ),
    Step(
        "BatchInference",
        "batch-inference",
        "the snapshot scored by the run's model version, to predictions/",
        "batchscore.steps.batch_inference:run",
        needs_model=True,
        inner_failpoints=("batch",),
    ),
    Step(
        "Validate",
        "validate",
        "the run's summary checked against the training profile and the previous run",
        "batchscore.steps.validate:run",
        needs_model=True,  # the model's training profile is the reference
    ),
    Step(
        "Publish",
        "publish",
        "the predictions committed to the output table, once",
        "batchscore.steps.publish:run",
        job_name="PublishToAthena",  # the seed's name for it
        inner_failpoints=("files-placed",),
        end_failpoint="committed",
    ),
)


def step_names(steps: Sequence[Step] = STEPS) -> tuple[str, ...]:
    """The steps' names, in order."""
    return tuple(step.name for step in steps)


def by_name(name: str, steps: Sequence[Step] = STEPS) -> Step:
    """The step called ``name``.

    Raises:
        ConfigError: no step has that name (the error lists them).
    """
    for step in steps:
        if step.name == name:
            return step
    names = step_names(steps)
    raise ConfigError(f"step {name!r} is not one of {', '.join(names)}.{did_you_mean(name, names)}")


def by_slug(slug: str, steps: Sequence[Step] = STEPS) -> Step:
    """The step whose command-line name is ``slug``.

    Raises:
        ConfigError: no step has that slug (the error lists them).
    """
    for step in steps:
        if step.slug == slug:
            return step
    slugs = [step.slug for step in steps]
    raise ConfigError(f"step {slug!r} is not one of {', '.join(slugs)}.{did_you_mean(slug, slugs)}")


def slugs_text(steps: Sequence[Step] = STEPS) -> str:
    """``"data-source, batch-inference, validate or publish"``: the slugs as a help text says
    them."""
    slugs = [step.slug for step in steps]
    return " or ".join([", ".join(slugs[:-1]), slugs[-1]]) if len(slugs) > 1 else slugs[0]
