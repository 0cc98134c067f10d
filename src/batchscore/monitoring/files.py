"""The names of the files monitoring keeps in a run's folder (a leaf: the run history, the
notifier and the CLI name them without importing what writes them)."""

REPORT_FILE = "report.html"  # the run report (monitoring.report)
CHECKS_FILE = "checks.json"  # Validate's verdict, reference and results
EVALUATION_FILE = "evaluation.json"  # metrics on labelled rows
