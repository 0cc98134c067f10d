"""Engines run the DataSource and BatchInference steps (``batchscore.engines.base.Engine``).

``local`` (the default) is this process: DuckDB for the latest-record read, a batch loop for
scoring (``batchscore.steps``). ``ray`` runs the same steps on Ray Data across a cluster
(``batchscore.engines.ray``; ``pip install 'batchscore[ray]'``). Publish is the same for both:
one atomic Iceberg commit from the driver.

Adding an engine: a module with an ``Engine`` subclass and one entry in ``ENGINES``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from batchscore.loaders import Loader, load_implementation

if TYPE_CHECKING:
    from batchscore.config import Settings
    from batchscore.engines.base import Engine

# The ``engine`` setting's values and the classes they choose, imported on first use.
ENGINES: dict[str, Loader] = {
    "local": Loader("batchscore.engines.local:LocalEngine"),
    "ray": Loader("batchscore.engines.ray:RayEngine", extra="ray", requires=("ray",)),
}


def open_engine(settings: Settings) -> Engine:
    """The engine the settings choose.

    Raises:
        ConfigError: no engine has that name, or its extra is not installed (the error names
            ``pip install 'batchscore[ray]'``).
    """
    engine_class: type[Engine] = load_implementation(
        ENGINES, settings.engine, kind="engine", key="engine"
    )
    return engine_class(settings)
