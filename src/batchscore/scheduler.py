"""Schedules — the seed's EventBridge rule — in the foreground, or as units for cron,
systemd or Kubernetes.

The foreground scheduler starts one run at each cron time with that time's date as the
logical date, never starts a run while the previous one is still going (it logs the skip),
keeps going after a failed run, and stops cleanly on SIGTERM/SIGINT: it starts nothing new
and waits for a run in progress to finish.
"""

from __future__ import annotations

import datetime as dt
import logging
import shlex
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from batchscore.clock import utcnow
from batchscore.config import Settings, validate_cron
from batchscore.errors import BatchScoreError, ConfigError
from batchscore.pipeline import Pipeline, PipelineHooks

log = logging.getLogger("batchscore")


@dataclass
class ScheduleReport:
    started: list[str] = field(default_factory=list)  # run ids
    failed: list[str] = field(default_factory=list)
    skipped: list[dt.datetime] = field(default_factory=list)  # ticks skipped for overlap


class Scheduler:
    """Runs the pipeline at each time of a cron expression (UTC) until stopped.

    Args:
        cron: five fields (minute hour day-of-month month day-of-week), or six with seconds last.
        max_runs: stop after starting this many runs (None: run until stopped).
    """

    def __init__(
        self,
        settings: Settings,
        cron: str,
        *,
        max_runs: int | None = None,
        hooks: Sequence[PipelineHooks] = (),
    ) -> None:
        self.settings = settings
        self.cron = validate_cron(cron)
        self.max_runs = max_runs
        self.hooks = list(hooks)
        self.report = ScheduleReport()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None

    def stop(self, *_: object) -> None:
        """Start nothing new; the run in progress (if any) finishes. Safe from a signal handler."""
        self._stop.set()

    def next_times(self, count: int, start: dt.datetime | None = None) -> list[dt.datetime]:
        from croniter import croniter

        it = croniter(self.cron, start or utcnow())
        return [it.get_next(dt.datetime) for _ in range(count)]

    def _run_once(self, tick: dt.datetime) -> None:
        try:
            record = Pipeline(self.settings, hooks=self.hooks).run(date=tick.date(), as_of=tick)
            self.report.started.append(record.run_id)
        except BatchScoreError as exc:
            self.report.failed.append(str(tick))
            log.error("scheduled run for %s failed: %s", tick.isoformat(sep=" "), exc)
        except Exception:
            self.report.failed.append(str(tick))
            log.exception("scheduled run for %s failed unexpectedly", tick.isoformat(sep=" "))

    def run_forever(self) -> ScheduleReport:
        """Block, starting runs on schedule, until ``stop()`` or ``max_runs`` runs started."""
        from croniter import croniter

        it = croniter(self.cron, utcnow())
        launched = 0
        log.info("schedule %r (UTC): next run at %s", self.cron, self.next_times(1)[0])
        while not self._stop.is_set():
            tick = it.get_next(dt.datetime)
            wait = (tick - utcnow()).total_seconds()
            if wait > 0 and self._stop.wait(wait):
                break
            if self._worker is not None and self._worker.is_alive():
                self.report.skipped.append(tick)
                log.warning(
                    "skipping the run due at %s: the previous run is still going",
                    tick.isoformat(sep=" "),
                )
                continue
            log.info("starting the run due at %s", tick.isoformat(sep=" "))
            self._worker = threading.Thread(
                target=self._run_once, args=(tick,), name=f"batchscore-run-{tick:%H%M%S}"
            )
            self._worker.start()
            launched += 1
            if self.max_runs is not None and launched >= self.max_runs:
                break
        if self._worker is not None and self._worker.is_alive():
            log.info("waiting for the run in progress to finish")
            self._worker.join()
        log.info(
            "schedule stopped: %d run(s) started, %d failed, %d skipped",
            launched, len(self.report.failed), len(self.report.skipped),
        )  # fmt: skip
        return self.report


# Units for external schedulers ---------------------------------------------------------------


def _command(config: Path | None) -> list[str]:
    exe = Path(sys.argv[0]).resolve() if Path(sys.argv[0]).name == "batchscore" else None
    command = [str(exe) if exe else "batchscore"]
    if config is not None:
        command += ["--config", str(config.resolve())]
    return [*command, "run"]


_DOW = {"0": "Sun", "1": "Mon", "2": "Tue", "3": "Wed", "4": "Thu", "5": "Fri", "6": "Sat",
        "7": "Sun"}  # fmt: skip


def _systemd_field(value: str, first: int, *, dow: bool = False) -> str:
    parts = []
    for part in value.split(","):
        base, _, step = part.partition("/")
        if base == "*":
            text = f"{first:02d}/{step}" if step else "*"
        elif "-" in base:
            low, high = base.split("-")
            if step:
                raise ConfigError(f"cron field {value!r} (range with a step) has no systemd form")
            text = (
                f"{_DOW.get(low, low)}..{_DOW.get(high, high)}"
                if dow
                else f"{low.zfill(2)}..{high.zfill(2)}"
            )
        else:
            text = (_DOW.get(base, base) if dow else base.zfill(2)) + (f"/{step}" if step else "")
        parts.append(text)
    return ",".join(parts)


def systemd_on_calendar(cron: str) -> str:
    """A five-field cron expression as a systemd ``OnCalendar=`` value (UTC)."""
    fields = validate_cron(cron).split()
    if len(fields) != 5:
        raise ConfigError("systemd units take five-field cron expressions (no seconds).")
    minute, hour, day, month, weekday = fields
    date = f"*-{_systemd_field(month, 1)}-{_systemd_field(day, 1)}"
    time = f"{_systemd_field(hour, 0)}:{_systemd_field(minute, 0)}:00"
    prefix = "" if weekday == "*" else _systemd_field(weekday, 0, dow=True) + " "
    return f"{prefix}{date} {time} UTC"


def schedule_unit(kind: str, cron: str, settings: Settings, config: Path | None) -> str:
    """A ready unit for an external scheduler: ``crontab``, ``systemd`` or ``kubernetes``."""
    validate_cron(cron)
    command = _command(config)
    workdir = str(Path.cwd())
    name = settings.pipeline_name
    if kind == "crontab":
        log_file = settings.workspace_path / "schedule.log"
        return (
            f"# {name}: batchscore run on '{cron}' (the machine's time zone; CRON_TZ=UTC to pin)\n"
            f"CRON_TZ=UTC\n{cron} cd {shlex.quote(workdir)} && {shlex.join(command)} "
            f">> {shlex.quote(str(log_file))} 2>&1\n"
        )
    if kind == "systemd":
        return (
            f"# /etc/systemd/system/{name}.service\n"
            f"[Unit]\nDescription=batchscore run of {name}\n\n"
            f"[Service]\nType=oneshot\nWorkingDirectory={workdir}\n"
            f"ExecStart={shlex.join(command)}\n\n"
            f"# /etc/systemd/system/{name}.timer\n"
            f"[Unit]\nDescription=Schedule of {name}\n\n"
            f"[Timer]\nOnCalendar={systemd_on_calendar(cron)}\nPersistent=true\n"
            f"Unit={name}.service\n\n[Install]\nWantedBy=timers.target\n"
            f"# then: systemctl daemon-reload && systemctl enable --now {name}.timer\n"
        )
    if kind == "kubernetes":
        args = ", ".join(f'"{a}"' for a in ["batchscore", *command[1:]])
        return (
            "apiVersion: batch/v1\nkind: CronJob\nmetadata:\n"
            f"  name: {name}\nspec:\n"
            f'  schedule: "{cron}"\n  timeZone: "Etc/UTC"\n'
            "  concurrencyPolicy: Forbid   # like batchscore's own scheduler: no overlapping runs\n"
            "  jobTemplate:\n    spec:\n      backoffLimit: 0\n      template:\n        spec:\n"
            "          restartPolicy: Never\n          containers:\n"
            "            - name: batchscore\n"
            "              image: your-registry/batchscore:latest\n"
            f"              command: [{args}]\n"
        )
    raise ConfigError(f"--print {kind!r} must be crontab, systemd or kubernetes.")
