"""Schedules — the seed's EventBridge rule — in the foreground, or as units for cron,
systemd or Kubernetes.

The foreground scheduler starts one run at each cron time with that time's date as the
logical date, never starts a run while the previous one is still going (it logs the skip),
keeps going after a failed run, and stops cleanly on SIGTERM/SIGINT: it starts nothing new
and waits for a run in progress to finish.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import shlex
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from batchscore.clock import utcnow
from batchscore.config import ENV_PREFIX, VAR_REFERENCE, Settings, read_yaml, validate_cron
from batchscore.errors import BatchScoreError, ConfigError
from batchscore.pipeline import Pipeline
from batchscore.records import PipelineHooks

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
#
# A unit runs exactly the configuration it was printed with: the config file (``-c``, or
# $BATCHSCORE_CONFIG, or the default file) as ``-c``, every ``--set`` pair as ``--set``, and the
# environment the run reads - every BATCHSCORE_* variable and every ``${VAR}`` that the config
# file or a ``--set`` value names. Those variables are *named*, never copied: any of them may
# hold a secret, so the unit reads them from a file the user fills (crontab, systemd) or from a
# Kubernetes Secret.

CONTAINER_CONFIG = "/config/pipeline_config.yaml"
CONTAINER_WORKSPACE = "/workspace"


def unit_variables(
    config: Path | None, overrides: Sequence[str] = (), env: Mapping[str, str] | None = None
) -> list[str]:
    """The environment variables a scheduled run needs, by name (values are never read).

    Args:
        config: the config file the unit runs with.
        overrides: the ``--set key=value`` pairs the unit carries.
        env: the environment the unit was printed from; ``os.environ`` by default.

    Returns:
        Every BATCHSCORE_* variable in ``env`` except BATCHSCORE_CONFIG (the unit names the
        file with ``-c``), and every ``${VAR}`` in the config file's values or in ``overrides``.
    """
    env = os.environ if env is None else env
    names = {n for n in env if n.startswith(ENV_PREFIX) and n != "BATCHSCORE_CONFIG"}
    texts = list(overrides)
    if config is not None:
        texts += _strings(read_yaml(Path(config)))
    for text in texts:
        names.update(VAR_REFERENCE.findall(text))
    return sorted(names)


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _executable() -> str:
    exe = Path(sys.argv[0])
    return str(exe.resolve()) if exe.name == "batchscore" else "batchscore"


def _arguments(config: str | None, overrides: Sequence[str]) -> list[str]:
    """batchscore's arguments after the executable: ``-c FILE --set k=v ... run``."""
    args = ["-c", config] if config is not None else []
    for pair in overrides:
        args += ["--set", pair]
    return [*args, "run"]


def _systemd_quote(arg: str) -> str:
    """One ExecStart= word: systemd expands $VAR and %-specifiers and has its own quoting."""
    arg = arg.replace("$", "$$").replace("%", "%%")
    if arg and re.fullmatch(r"[A-Za-z0-9_@+=:,./$%-]+", arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _fill_in(path: str, names: list[str]) -> list[str]:
    """Comment lines telling the user which variables to put in ``path``."""
    return [
        f"# {path} - fill in and chmod 600; the unit names these variables, never their values:",
        *(f"#   {name}=" for name in names),
    ]


def _k8s_name(name: str) -> str:
    # DNS-1123 labels; a CronJob name is at most 52 characters (its Jobs add 11).
    return name.lower().replace("_", "-")[:52].strip("-")


def schedule_unit(
    kind: str,
    cron: str,
    settings: Settings,
    config: Path | None,
    *,
    overrides: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    image: str | None = None,
) -> str:
    """A ready unit for an external scheduler: ``crontab``, ``systemd`` or ``kubernetes``.

    The unit runs the configuration these arguments make: ``config`` as ``-c``, each of
    ``overrides`` as ``--set``, and the variables of :func:`unit_variables` read from an
    environment file (crontab, systemd) or a Secret named after the pipeline (kubernetes).

    Args:
        kind: ``crontab``, ``systemd`` or ``kubernetes``.
        cron: five cron fields, UTC.
        settings: the settings the unit runs with (its pipeline name, workspace).
        config: the config file, or None for the defaults alone.
        overrides: ``--set key=value`` pairs, carried as given.
        env: the environment printed from; ``os.environ`` by default. Only names are used.
        image: the container image (kubernetes); default ``batchscore:<version>``.

    Raises:
        ConfigError: an unknown kind or a bad cron expression.
    """
    validate_cron(cron)
    if kind not in ("crontab", "systemd", "kubernetes"):
        raise ConfigError(f"--print {kind!r} must be crontab, systemd or kubernetes.")
    if image is not None and kind != "kubernetes":
        raise ConfigError("--image names the container of --print kubernetes only.")
    overrides = list(overrides)
    names = unit_variables(config, overrides, env)
    name = settings.pipeline_name
    if kind == "kubernetes":
        return _kubernetes_unit(cron, settings, config, overrides, names, image)
    config_arg = str(Path(config).resolve()) if config is not None else None
    command = [_executable(), *_arguments(config_arg, overrides)]
    workdir = str(Path.cwd())
    if kind == "crontab":
        log_file = settings.workspace_path / "schedule.log"
        env_file = Path.home() / ".config" / "batchscore" / f"{name}.env"
        source = (
            f"set -a && . {shlex.quote(str(env_file))} && set +a && " if names else ""
        )  # set -a: export what the file sets
        line = (
            # mkdir: the log's folder must exist before the first run makes the workspace
            f"{cron} mkdir -p {shlex.quote(str(log_file.parent))} && cd {shlex.quote(workdir)} "
            f"&& {source}{shlex.join(command)} "
            f">> {shlex.quote(str(log_file))} 2>&1"
        )
        return "\n".join(
            [
                f"# {name}: batchscore run on '{cron}' UTC (CRON_TZ: cronie; elsewhere the "
                "machine's time zone)",
                *(_fill_in(str(env_file), names) if names else []),
                "CRON_TZ=UTC",
                line.replace("%", "\\%"),  # cron turns a bare % into a newline
                "",
            ]
        )
    env_file = f"/etc/batchscore/{name}.env"
    return "\n".join(
        [
            f"# /etc/systemd/system/{name}.service",
            *(_fill_in(env_file, names) if names else []),
            "[Unit]",
            f"Description=batchscore run of {name}",
            "",
            "[Service]",
            "Type=oneshot",
            f"WorkingDirectory={workdir.replace('%', '%%')}",  # taken literally: no quotes
            *([f"EnvironmentFile={env_file}"] if names else []),
            "ExecStart=" + " ".join(_systemd_quote(a) for a in command),
            "",
            f"# /etc/systemd/system/{name}.timer",
            "[Unit]",
            f"Description=Schedule of {name}",
            "",
            "[Timer]",
            f"OnCalendar={systemd_on_calendar(cron)}",
            "Persistent=true",
            f"Unit={name}.service",
            "",
            "[Install]",
            "WantedBy=timers.target",
            f"# then: systemctl daemon-reload && systemctl enable --now {name}.timer",
            "",
        ]
    )


def _kubernetes_unit(
    cron: str,
    settings: Settings,
    config: Path | None,
    overrides: list[str],
    names: list[str],
    image: str | None,
) -> str:
    from batchscore import __version__

    q = json.dumps  # a JSON string is a YAML double-quoted scalar
    name = _k8s_name(settings.pipeline_name)
    image = image or f"batchscore:{__version__}"
    local_workspace = settings.remote_workspace is None
    args = _arguments(
        CONTAINER_CONFIG if config is not None else None,
        [*overrides, f"workspace={CONTAINER_WORKSPACE}"] if local_workspace else overrides,
    )
    head = [
        f"# {settings.pipeline_name}: batchscore run on '{cron}' UTC as a Kubernetes CronJob.",
        "# Before 'kubectl apply -f' on this file:",
        f"#   image: docker build -t {image} . (the repository's Dockerfile), push it where the",
        "#     cluster pulls from; --image names another (REGISTRY/batchscore:TAG).",
    ]
    if config is not None:
        head.append(
            f"#   config: kubectl create configmap {name}-config "
            f"--from-file=pipeline_config.yaml={Path(config).resolve()}"
        )
    if names:
        head += [
            f"#   secret: kubectl create secret generic {name} --from-env-file={name}.env",
            f"#     where {name}.env (chmod 600, never committed) sets "
            + ", ".join(f"{n}=" for n in names),
        ]
    if local_workspace:
        head.append(
            "#   paths in the config (catalog, registry) must exist in the pod: the workspace"
            f" is the volume at {CONTAINER_WORKSPACE}."
        )
    docs = []
    if local_workspace:
        docs.append(
            "\n".join(
                [
                    "apiVersion: v1",
                    "kind: PersistentVolumeClaim",
                    "metadata:",
                    f"  name: {name}-workspace",
                    "spec:",
                    "  accessModes: [ReadWriteOnce]",
                    "  resources:",
                    "    requests:",
                    "      storage: 10Gi  # run folders, runs.db; the embedded catalog, registry",
                ]
            )
        )
    env_lines = []
    for n in names:
        env_lines += [
            f"                - name: {n}",
            "                  valueFrom:",
            f"                    secretKeyRef: {{name: {name}, key: {n}}}",
        ]
    mounts, volumes = [], []
    if config is not None:
        mounts.append(
            f"                - {{name: config, mountPath: {os.path.dirname(CONTAINER_CONFIG)}, "
            "readOnly: true}"
        )
        volumes.append(f"            - {{name: config, configMap: {{name: {name}-config}}}}")
    if local_workspace:
        mounts.append(f"                - {{name: workspace, mountPath: {CONTAINER_WORKSPACE}}}")
        volumes.append(
            "            - {name: workspace, persistentVolumeClaim: "
            f"{{claimName: {name}-workspace}}}}"
        )
    job = [
        "apiVersion: batch/v1",
        "kind: CronJob",
        "metadata:",
        f"  name: {name}",
        "spec:",
        f"  schedule: {q(cron)}",
        '  timeZone: "Etc/UTC"',
        "  concurrencyPolicy: Forbid  # like batchscore's own scheduler: no overlapping runs",
        "  jobTemplate:",
        "    spec:",
        "      backoffLimit: 2  # a pod lost to its node (evicted, OOM-killed) is retried",
        "      podFailurePolicy:",
        "        rules:  # batchscore's own failures (exit 1-4) are final: resume, not rerun",
        "          - action: FailJob",
        "            onExitCodes: {containerName: batchscore, operator: In, values: [1, 2, 3, 4]}",
        "          - action: Ignore",
        "            onPodConditions: [{type: DisruptionTarget}]",
        "      template:",
        "        spec:",
        "          restartPolicy: Never",
        "          securityContext: {runAsNonRoot: true, runAsUser: 10001, fsGroup: 10001}",
        "          containers:",
        "            - name: batchscore",
        f"              image: {q(image)}",
        f"              args: [{', '.join(q(a) for a in args)}]",
        *(["              env:", *env_lines] if env_lines else []),
        *(["              volumeMounts:", *mounts] if mounts else []),
        *(["          volumes:", *volumes] if volumes else []),
    ]
    docs.append("\n".join(job))
    return "\n".join(head) + "\n" + "\n---\n".join(docs) + "\n"


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
