"""Run history (``runs.db`` in the workspace), the per-run lock, and cleaning up old runs.

The history is a SQLite mirror of each run's ``run.json``, kept current by a pipeline hook,
so runs can be listed and filtered like SageMaker's ``list-pipeline-executions``.

A run killed outright (SIGKILL, a lost machine) never records its end: its row still says
``running``. Reading the history tells the two apart through the run lock — a running run
holds its logical run's lock — and shows such a run as ``abandoned``, with how to resume it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import re
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from batchscore.clock import utcnow
from batchscore.config import Settings
from batchscore.errors import ConfigError, RunNotFoundError, StorageError, did_you_mean
from batchscore.monitoring.files import REPORT_FILE
from batchscore.records import PipelineHooks, RunRecord
from batchscore.workspace import ensure_writable_workspace, readonly_sqlite_uri, require_workspace

log = logging.getLogger("batchscore")

# Shown instead of 'running' when the run's process is gone (computed, never stored).
ABANDONED = "abandoned"
# What ``runs list --status`` can filter on: the statuses a run record holds, and abandoned.
RUN_STATUSES = ("running", "succeeded", "failed", "nothing_to_score", ABANDONED)

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    pipeline_name TEXT NOT NULL,
    logical_date TEXT NOT NULL,
    as_of TEXT,
    status TEXT NOT NULL,
    config_fingerprint TEXT,
    model_name TEXT,
    model_version INTEGER,
    id_start INTEGER,
    id_end INTEGER,
    output_table TEXT,
    write_mode TEXT,
    started TEXT,
    ended TEXT,
    seconds REAL,
    rows INTEGER,
    failed_step TEXT,
    error_type TEXT,
    error_message TEXT,
    run_dir TEXT,
    log_path TEXT,
    outputs_removed INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS runs_by_start ON runs (started);
CREATE TABLE IF NOT EXISTS steps (
    run_id TEXT NOT NULL REFERENCES runs (run_id),
    step TEXT NOT NULL,
    position INTEGER NOT NULL,
    status TEXT NOT NULL,
    started TEXT,
    ended TEXT,
    seconds REAL,
    rows INTEGER,
    rows_per_second REAL,
    attempts INTEGER,
    error_type TEXT,
    error_message TEXT,
    PRIMARY KEY (run_id, step)
);
"""


@dataclass(frozen=True)
class RunSummary:
    """One row of ``batchscore runs list``."""

    run_id: str
    pipeline_name: str
    logical_date: str
    status: str
    model_name: str | None
    model_version: int | None
    rows: int | None
    seconds: float | None
    failed_step: str | None
    started: str | None
    note: str | None = None  # e.g. how to resume an abandoned run

    @property
    def model(self) -> str | None:
        return f"{self.model_name} v{self.model_version}" if self.model_name else None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> RunSummary:
        return cls(**{f: row.get(f) for f in cls.__dataclass_fields__})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StepSummary:
    """One step of a run as the history holds it."""

    step: str
    status: str
    seconds: float | None
    rows: int | None
    rows_per_second: float | None
    attempts: int | None
    error_type: str | None
    error_message: str | None

    @property
    def error(self) -> str | None:
        return f"{self.error_type}: {self.error_message}" if self.error_type else None


@dataclass(frozen=True)
class RunDetails(RunSummary):
    """``batchscore runs show``: the history row, its steps and what the run record holds
    (evaluation, output files, counts noticed while scoring)."""

    as_of: str | None = None
    ended: str | None = None
    output_table: str | None = None
    write_mode: str | None = None
    config_fingerprint: str | None = None
    run_dir: str | None = None
    log_path: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    outputs_removed: bool = False
    steps: list[StepSummary] = field(default_factory=list)
    # From run.json (None/empty once 'batchscore clean' removed the folder):
    evaluation: dict[str, Any] | None = None
    input_files: list[str] = field(default_factory=list)
    prediction_files: list[str] = field(default_factory=list)
    evaluation_path: str | None = None
    table_snapshot: int | None = None
    duplicate_versions_skipped: int | None = None
    deleted_records_skipped: int | None = None
    unmatched_ids: int | None = None
    ignored_columns: list[str] = field(default_factory=list)
    unseen_categories: dict[str, int] = field(default_factory=dict)
    non_finite_values: dict[str, int] = field(default_factory=dict)
    scoring: dict[str, Any] | None = None  # which path scored, why, parity (scoring.compiled)
    # Validate: the verdict of its checks, the violations, who accepted a blocked run.
    verdict: str | None = None
    violations: list[str] = field(default_factory=list)
    checks_path: str | None = None
    accepted: dict[str, str] | None = None
    report_path: str | None = None  # the run report, while it exists
    # Seconds from process start to the first step's start (run.json's startup_seconds).
    startup_seconds: float | None = None

    @property
    def error(self) -> str | None:
        if not self.error_type:
            return None
        return f"{self.failed_step}: {self.error_type}: {self.error_message}"

    @classmethod
    def from_history(
        cls,
        row: dict[str, Any],
        steps: list[dict[str, Any]],
        record: dict[str, Any] | None,
    ) -> RunDetails:
        """From the run's ``runs.db`` row, its step rows and its ``run.json`` (None once its
        folder is gone)."""
        outputs = {name: (step.get("outputs") or {})
                   for name, step in ((record or {}).get("steps") or {}).items()}  # fmt: skip
        data = outputs.get("DataSource", {})
        scored = outputs.get("BatchInference", {})
        published = outputs.get("Publish", {})
        validated = outputs.get("Validate") or {}
        if "verdict" not in validated:  # it blocked: the outputs hold at most the report's path
            validated = {**_blocked_checks(record), **validated}
        report = Path(row.get("run_dir") or "") / REPORT_FILE if row.get("run_dir") else None
        names = set(RunSummary.__dataclass_fields__) | {
            "as_of", "ended", "output_table", "write_mode", "config_fingerprint", "run_dir",
            "log_path", "error_type", "error_message",
        }  # fmt: skip
        return cls(
            **{f: row.get(f) for f in names},
            outputs_removed=bool(row.get("outputs_removed")),
            steps=[
                StepSummary(**{f: s.get(f) for f in StepSummary.__dataclass_fields__})
                for s in steps
            ],
            evaluation=scored.get("evaluation"),
            input_files=list(data.get("files") or []),
            prediction_files=list(scored.get("files") or []),
            evaluation_path=scored.get("evaluation_path"),
            table_snapshot=published.get("snapshot_id"),
            duplicate_versions_skipped=data.get("duplicate_versions_skipped"),
            deleted_records_skipped=data.get("deleted_records_skipped"),
            unmatched_ids=data.get("unmatched_ids"),
            ignored_columns=list(scored.get("ignored_columns") or []),
            unseen_categories=dict(scored.get("unseen_categories") or {}),
            non_finite_values=dict(scored.get("non_finite_values") or {}),
            scoring=scored.get("scoring"),
            verdict=validated.get("verdict"),
            violations=list(validated.get("violations") or []),
            checks_path=validated.get("checks_path"),
            accepted=(record or {}).get("accepted"),
            report_path=str(report) if report is not None and report.is_file() else None,
            startup_seconds=(record or {}).get("startup_seconds"),
        )


def _blocked_checks(record: dict[str, Any] | None) -> dict[str, Any]:
    """Validate's verdict and violations from ``checks.json`` when the step has no outputs
    (it blocked the run, so the record holds only its error)."""
    if not record or not record.get("run_dir"):
        return {}
    path = Path(record["run_dir"]) / "checks.json"
    if not path.is_file():
        return {}
    from batchscore.monitoring.checks import describe_violation
    from batchscore.monitoring.results import CheckResult

    document = json.loads(path.read_text())
    results = [CheckResult.from_dict(r) for r in document.get("results", [])]
    return {
        "verdict": document.get("verdict"),
        "violations": [describe_violation(r) for r in results if r.violated],
        "checks_path": str(path),
    }


class RunHistory:
    """The workspace's ``runs.db``."""

    def __init__(
        self, path: Path, settings: Settings | None = None, *, writable: bool = True
    ) -> None:
        """``settings`` locate the run locks; without them, runs are shown as recorded.

        ``writable=False`` only reads: the file is opened read-only and nothing is created
        (a workspace with no ``runs.db`` yet has no runs), so a read-only workspace works.

        Raises:
            StorageError: writable, and the history cannot be created or written.
        """
        self.path = path
        self.settings = settings
        self.writable = writable
        if not writable:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with self._connect() as con:
                con.executescript(SCHEMA)
        except (OSError, sqlite3.OperationalError) as exc:
            raise StorageError(
                f"cannot write the run history {str(path)!r}: {exc}. Free disk space or fix "
                "the workspace's permissions."
            ) from exc

    @classmethod
    def for_settings(cls, settings: Settings, *, writable: bool = True) -> RunHistory:
        """The workspace's history. Reading (``writable=False``) needs the workspace to
        exist; writing creates it and checks it is writable.

        Raises:
            WorkspaceNotFoundError: reading, and there is no workspace.
            StorageError: writing, and the workspace is not writable.
        """
        if writable:
            ensure_writable_workspace(settings)
        else:
            require_workspace(settings)
        return cls(settings.workspace_path / "runs.db", settings, writable=writable)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        empty = False
        if self.writable:
            con = sqlite3.connect(self.path, timeout=30)
        elif self.path.is_file():
            con = sqlite3.connect(readonly_sqlite_uri(self.path), uri=True, timeout=30)
        else:  # nothing recorded yet: an empty history, in memory
            con, empty = sqlite3.connect(":memory:"), True
        con.row_factory = sqlite3.Row
        try:
            if self.writable:
                con.execute("PRAGMA journal_mode=WAL")
            if empty:
                con.executescript(SCHEMA)
            with con:
                yield con
        finally:
            con.close()

    def record(self, run: RunRecord) -> None:
        """Insert or update a run and its steps from its record."""
        seconds = None
        if run.ended:
            start = dt.datetime.fromisoformat(run.started)
            seconds = round((dt.datetime.fromisoformat(run.ended) - start).total_seconds(), 3)
        error = run.error or {}
        with self._connect() as con:
            con.execute(
                """INSERT INTO runs (run_id, pipeline_name, logical_date, as_of, status,
                       config_fingerprint, model_name, model_version, id_start, id_end,
                       output_table, write_mode, started, ended, seconds, rows, failed_step,
                       error_type, error_message, run_dir, log_path)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (run_id) DO UPDATE SET
                       status = excluded.status, model_name = excluded.model_name,
                       model_version = excluded.model_version, ended = excluded.ended,
                       seconds = excluded.seconds, rows = excluded.rows,
                       failed_step = excluded.failed_step, error_type = excluded.error_type,
                       error_message = excluded.error_message""",
                (
                    run.run_id, run.pipeline_name, run.logical_date, run.as_of, run.status,
                    run.config_fingerprint, run.model_name, run.model_version, run.id_start,
                    run.id_end, run.output_table, run.write_mode, run.started, run.ended,
                    seconds, run.steps["BatchInference"].rows, run.failed_step,
                    error.get("type"), error.get("message"), run.run_dir, run.log_path,
                ),
            )  # fmt: skip
            for position, (name, step) in enumerate(run.steps.items()):  # in the run's order
                step_error = step.error or {}
                con.execute(
                    """INSERT OR REPLACE INTO steps VALUES
                       (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                    (
                        run.run_id, name, position, step.status, step.started, step.ended,
                        step.seconds, step.rows, step.rows_per_second, step.attempts,
                        step_error.get("type"), step_error.get("message"),
                    ),
                )  # fmt: skip

    def list_runs(
        self, *, status: str | None = None, pipeline: str | None = None, limit: int = 20
    ) -> list[dict[str, Any]]:
        """Runs, newest first, optionally only those with a status or of a pipeline.

        A run recorded as running whose process is gone has status ``abandoned`` and a
        ``note`` saying how to resume it.

        Raises:
            ConfigError: ``status`` is none of ``RUN_STATUSES``.
        """
        if status is not None and status not in RUN_STATUSES:
            raise ConfigError(
                f"--status {status!r} is not a run status: use one of {', '.join(RUN_STATUSES)}."
                + did_you_mean(status, RUN_STATUSES)
            )
        where, params = [], []
        if status:
            where.append("status = ?")
            params.append("running" if status == ABANDONED else status)
        if pipeline:
            where.append("pipeline_name = ?")
            params.append(pipeline)
        sql = "SELECT * FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY started DESC, run_id DESC"
        if status not in ("running", ABANDONED):  # those are told apart after reading
            sql += " LIMIT ?"
            params.append(limit)
        with self._connect() as con:
            runs = [self._with_liveness(dict(row)) for row in con.execute(sql, params)]
        if status in ("running", ABANDONED):
            runs = [run for run in runs if run["status"] == status]
        return runs[:limit]

    def summaries(
        self, *, status: str | None = None, pipeline: str | None = None, limit: int = 20
    ) -> list[RunSummary]:
        """``list_runs`` as typed records."""
        return [
            RunSummary.from_row(r)
            for r in self.list_runs(status=status, pipeline=pipeline, limit=limit)
        ]

    def get(self, run_id: str) -> RunDetails:
        """One run: its history row (a run whose process is gone shows as abandoned), its
        steps in order and, while its folder exists, what its ``run.json`` holds.

        Args:
            run_id: the run's id, as ``batchscore runs list`` shows it.

        Returns:
            The run as a typed record; its ``steps`` are in pipeline order.

        Raises:
            RunNotFoundError: the history has no such run; the message says how to list runs.
        """
        with self._connect() as con:
            row = con.execute("SELECT * FROM runs WHERE run_id = ?", [run_id]).fetchone()
            if row is None:
                raise RunNotFoundError(
                    f"no run {run_id!r} in {self.path}. List runs with 'batchscore runs list'."
                )
            steps = con.execute(
                "SELECT * FROM steps WHERE run_id = ? ORDER BY position", [run_id]
            ).fetchall()
        run = self._with_liveness(dict(row))
        record_path = Path(run["run_dir"]) / "run.json"
        record = json.loads(record_path.read_text()) if record_path.exists() else None
        return RunDetails.from_history(run, [dict(s) for s in steps], record)

    def previous_success(self, run: RunRecord) -> dict[str, Any] | None:
        """The latest succeeded run before ``run`` of the same pipeline, id range and table
        (logical date at most ``run``'s): what Validate compares a run with.

        Returns:
            Its history row (``run_id``, ``run_dir`` …), or None when there is none.
        """
        with self._connect() as con:
            row = con.execute(
                """SELECT * FROM runs
                   WHERE pipeline_name = ? AND id_start IS ? AND id_end IS ?
                     AND output_table = ? AND status = 'succeeded' AND run_id != ?
                     AND logical_date <= ? AND started < ?
                   ORDER BY logical_date DESC, started DESC LIMIT 1""",
                [
                    run.pipeline_name, run.id_start, run.id_end, run.output_table,
                    run.run_id, run.logical_date, run.started,
                ],
            ).fetchone()  # fmt: skip
        return dict(row) if row is not None else None

    def _with_liveness(self, run: dict[str, Any]) -> dict[str, Any]:
        """Mark a run recorded as running whose lock it does not hold as abandoned: a running
        run holds its logical run's lock until it has recorded its end."""
        run.setdefault("note", None)
        if run["status"] != "running" or self.settings is None:
            return run
        from batchscore.locks import lock_holder

        try:
            holder = lock_holder(
                self.settings,
                run["pipeline_name"],
                run["logical_date"],
                f"{run['id_start']}-{run['id_end']}",
            )
        except Exception as exc:  # cannot tell: show it as recorded
            log.warning("cannot tell whether run %s is alive: %s", run["run_id"], exc)
            return run
        if holder is not None and holder.run_id == run["run_id"]:
            return run
        run["status"] = ABANDONED
        taken = f"; run {holder.run_id} holds the lock now" if holder is not None else ""
        run["note"] = (
            f"its process is gone (it holds no lock{taken}); resume it: "
            f"batchscore resume {run['run_id']}"
        )
        return run

    def mark_outputs_removed(self, run_id: str) -> None:
        with self._connect() as con:
            con.execute("UPDATE runs SET outputs_removed = 1 WHERE run_id = ?", [run_id])


class RunHistoryHook(PipelineHooks):
    """Keeps ``runs.db`` in step with every run."""

    def __init__(self, history: RunHistory) -> None:
        self.history = history

    def before_pipeline_run(self, record: RunRecord) -> None:
        self.history.record(record)

    def before_step(self, record: RunRecord, step: str) -> None:
        self.history.record(record)

    def after_step(self, record: RunRecord, step: str) -> None:
        self.history.record(record)

    def on_pipeline_error(self, record: RunRecord, step: str, error: BaseException) -> None:
        self.history.record(record)

    def after_pipeline_run(self, record: RunRecord) -> None:
        self.history.record(record)


# Cleaning up -------------------------------------------------------------------------------

_AGE = re.compile(r"^\s*(\d+)\s*([dhm])\s*$")


def parse_age(text: str) -> dt.timedelta:
    """'30d' -> 30 days; also hours ('12h') and minutes ('90m')."""
    match = _AGE.match(text)
    if not match:
        raise ConfigError(f"--older-than {text!r} must look like 30d, 12h or 90m.")
    amount, unit = int(match.group(1)), match.group(2)
    return {"d": dt.timedelta(days=amount), "h": dt.timedelta(hours=amount),
            "m": dt.timedelta(minutes=amount)}[unit]  # fmt: skip


@dataclass(frozen=True)
class CleanResult:
    removed: list[str]
    bytes_freed: int


def clean_runs(settings: Settings, older_than: dt.timedelta) -> CleanResult:
    """Remove the folders of finished runs started before now - ``older_than``.

    Their rows in ``runs.db`` stay (marked ``outputs_removed``), so history is kept. Running
    runs are never touched. The predictions table does not depend on run folders.
    """
    history = RunHistory.for_settings(settings)
    cutoff = utcnow() - older_than
    removed: list[str] = []
    freed = 0
    if not settings.runs_path.exists():
        return CleanResult(removed, freed)
    for run_dir in sorted(settings.runs_path.iterdir()):
        record_path = run_dir / "run.json"
        if not record_path.exists():
            continue
        record = json.loads(record_path.read_text())
        if record["status"] == "running" or dt.datetime.fromisoformat(record["started"]) >= cutoff:
            continue
        freed += sum(f.stat().st_size for f in run_dir.rglob("*") if f.is_file())
        shutil.rmtree(run_dir)
        history.mark_outputs_removed(record["run_id"])
        removed.append(record["run_id"])
    return CleanResult(removed, freed)
