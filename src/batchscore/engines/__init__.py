"""Engines run the DataSource and BatchInference steps.

``local`` (the default) is this process: DuckDB for the latest-record read, a batch loop for
scoring (``batchscore.steps``). ``ray`` runs the same steps on Ray Data across a cluster
(``batchscore.engines.ray``; ``pip install 'batchscore[ray]'``). Publish is the same for both:
one atomic Iceberg commit from the driver.
"""

ENGINES = ("local", "ray")
