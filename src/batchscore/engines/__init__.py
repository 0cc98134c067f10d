"""Engines run the DataSource and BatchInference steps (``batchscore.engines.base.Engine``).

``local`` (the default) is this process: DuckDB for the latest-record read, a batch loop for
scoring (``batchscore.steps``). ``ray`` runs the same steps on Ray Data across a cluster
(``batchscore.engines.ray``; ``pip install 'batchscore[ray]'``). Publish is the same for both:
one atomic Iceberg commit from the driver.

Adding an engine: a module with an ``Engine`` subclass and one entry in ``ENGINES``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from batchscore.errors import ConfigError, did_you_mean

if TYPE_CHECKING:
    from batchscore.config import Settings
    from batchscore.engines.base import Engine

# The ``engine`` setting's values and the classes they choose, imported on first use.
ENGINES = {
    "local": "batchscore.engines.local:LocalEngine",
    "ray": "batchscore.engines.ray:RayEngine",
}


def open_engine(settings: Settings) -> Engine:
    """The engine the settings choose.

    Raises:
        ConfigError: no engine has that name, or its module cannot be imported (the error
            names the extra to install).
    """
    name = settings.engine
    if name not in ENGINES:
        raise ConfigError(
            f"engine {name!r} is not one of {', '.join(ENGINES)}.{did_you_mean(name, ENGINES)}"
        )
    module, _, attribute = ENGINES[name].partition(":")
    try:
        engine_class: type[Engine] = getattr(importlib.import_module(module), attribute)
    except ImportError as exc:
        raise ConfigError(
            f"engine {name!r} cannot be loaded ({exc}): pip install 'batchscore[{name}]'."
        ) from exc
    return engine_class(settings)
