"""Watching what a run scores: streamed summaries, the checks Validate runs on them against a
reference (the model's training profile, the previous run), the monitoring and quarantine
tables, and the run report.

- :mod:`~batchscore.monitoring.summaries`: mergeable per-batch summaries of the features,
  event times and predictions, computed while BatchInference streams (no second pass).
- :mod:`~batchscore.monitoring.results`: what a check returns (:class:`CheckResult`) and the
  monitoring table's schema — a leaf, so the CLI, the report and the hooks can name them.
- :mod:`~batchscore.monitoring.tracking`: every run as an MLflow run in the experiment named
  after the pipeline (a hook; ``mlflow ui`` is the dashboard).
"""
