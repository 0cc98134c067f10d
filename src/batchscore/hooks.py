"""The hooks every run has: the run report, the S3 mirror (for an ``s3://`` workspace), run
history, the monitoring table, MLflow tracking (where there is an MLflow store) and
notifications. The runner calls them first, in that order, then the caller's own."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from batchscore.config import Settings
    from batchscore.records import PipelineHooks
    from batchscore.runs import RunHistory


def default_hooks(settings: Settings, history: RunHistory) -> list[PipelineHooks]:
    """The hooks a run of ``settings`` always has.

    Args:
        settings: Decide the notifications, MLflow tracking and whether runs are mirrored
            to S3.
        history: The run history the runs are recorded in.

    Returns:
        The report writer first (so the mirror uploads the report and the notification names
        it), then the mirror, the history hook, the monitoring recorder, the MLflow tracker,
        then the notifier.
    """
    from batchscore.monitoring.report import ReportHook
    from batchscore.monitoring.table import MonitoringRecorder
    from batchscore.monitoring.tracking import MlflowTracker, tracking_uri
    from batchscore.notify import Notifier
    from batchscore.runs import RunHistoryHook

    hooks: list[PipelineHooks] = [
        RunHistoryHook(history),
        MonitoringRecorder(settings),
        Notifier(settings),
    ]
    uri = tracking_uri(settings)
    if uri is not None:  # tracking: false, or the SageMaker registry without tracking.uri
        hooks.insert(2, MlflowTracker(settings, uri))
    if settings.remote_workspace:  # s3:// workspace: keep every run folder in S3
        from batchscore.mirror import RunMirror

        hooks.insert(0, RunMirror(settings))
    hooks.insert(0, ReportHook(settings))
    return hooks
