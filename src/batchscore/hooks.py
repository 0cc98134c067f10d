"""The hooks every run has: the run report, the S3 mirror (for an ``s3://`` workspace), run
history and notifications. The runner calls them first, in that order, then the caller's own."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from batchscore.config import Settings
    from batchscore.records import PipelineHooks
    from batchscore.runs import RunHistory


def default_hooks(settings: Settings, history: RunHistory) -> list[PipelineHooks]:
    """The hooks a run of ``settings`` always has.

    Args:
        settings: Decide the notifications and whether runs are mirrored to S3.
        history: The run history the runs are recorded in.

    Returns:
        The report writer first (so the mirror uploads the report and the notification names
        it), then the mirror, the history hook and the notifier.
    """
    from batchscore.monitoring.report import ReportHook
    from batchscore.notify import Notifier
    from batchscore.runs import RunHistoryHook

    hooks: list[PipelineHooks] = [RunHistoryHook(history), Notifier(settings)]
    if settings.remote_workspace:  # s3:// workspace: keep every run folder in S3
        from batchscore.mirror import RunMirror

        hooks.insert(0, RunMirror(settings))
    hooks.insert(0, ReportHook(settings))
    return hooks
