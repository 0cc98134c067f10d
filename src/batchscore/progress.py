"""Progress reporting: what the library says while it works, however it is shown.

The library reports through a :class:`Progress` it is given — a *task* is started, advanced
and done — and never decides how that looks. A task with a ``unit`` counts (rows scored of
the rows in the snapshot); a task without one is a phase (fitting a model), shown with its
elapsed time. Three implementations:

- :data:`NO_PROGRESS`: reports nothing (the default everywhere).
- :class:`LoggingProgress`: an INFO line on the ``batchscore`` logger when a phase starts,
  and for a counting task at most one line every ``interval`` seconds plus a final one —
  for logs and non-terminal output (a 10M-row run has 100 batches: not 100 lines).
- :class:`RichProgress`: Rich bars (rows, %, rate, ETA) on a console, refreshed on Rich's own
  thread, so ``advance`` stays cheap (report per batch, never per row).

Implementations are called from the thread that does the work; they must be cheap.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from batchscore.errors import ConfigError

if TYPE_CHECKING:
    from rich.console import Console

log = logging.getLogger("batchscore")

INTERVAL_VARIABLE = "BATCHSCORE_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 10.0  # seconds between two progress log lines of one task


@runtime_checkable
class Progress(Protocol):
    """Receives progress reports. Task names are unique among running tasks; starting a
    task again (a retry, the next run of a backfill) begins it anew."""

    def start(self, task: str, total: int | None = None, unit: str | None = None) -> None:
        """Begin ``task``: counting ``unit`` (of ``total``, when known), or a phase if no unit."""

    def advance(self, task: str, n: int) -> None:
        """``n`` more units of ``task`` are done."""

    def done(self, task: str) -> None:
        """``task`` ended (finished or failed)."""


class NoProgress:
    """Reports nothing."""

    def start(self, task: str, total: int | None = None, unit: str | None = None) -> None:
        pass

    def advance(self, task: str, n: int) -> None:
        pass

    def done(self, task: str) -> None:
        pass


NO_PROGRESS: Progress = NoProgress()


@contextlib.contextmanager
def tracked(
    progress: Progress, task: str, total: int | None = None, unit: str | None = None
) -> Iterator[None]:
    """``task`` started for the block and done when it ends, also when it fails (a phase
    when there is no ``unit``)."""
    progress.start(task, total, unit)
    try:
        yield
    finally:
        progress.done(task)


def interval_from_environment(env: dict[str, str] | None = None) -> float:
    """Seconds between progress log lines: ``$BATCHSCORE_PROGRESS_INTERVAL``, else 10.

    Raises:
        ConfigError: the variable is not a number of seconds, zero or more.
    """
    value = (os.environ if env is None else env).get(INTERVAL_VARIABLE)
    if value is None or value.strip() == "":
        return DEFAULT_INTERVAL
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigError(
            f"{INTERVAL_VARIABLE}={value!r} must be a number of seconds, zero or more "
            f"(0 logs every batch; the default is {DEFAULT_INTERVAL:g})."
        )
    return seconds


def _clock(seconds: float) -> str:
    """``0:01:05``, as Rich shows times."""
    whole = max(0, round(seconds))
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


@dataclass
class _Count:
    total: int | None
    unit: str | None
    started: float
    last_line: float
    done: int = 0

    def line(self, task: str, now: float, final: bool) -> str:
        """``BatchInference: 40% (400 of 1,000 rows, 2,150 rows/s, ETA 0:00:00)``."""
        elapsed = now - self.started
        unit = self.unit or ""
        count = f"{self.done:,} {unit}"
        if self.total is not None:
            count = f"{self.done:,} of {self.total:,} {unit}"
        rate = self.done / elapsed if elapsed > 0 else 0.0
        facts = [f"{rate:,.0f} {unit}/s"] if rate else []
        if final:
            facts.append(f"in {elapsed:.1f}s")
        elif rate and self.total is not None:
            facts.append(f"ETA {_clock(max(0, self.total - self.done) / rate)}")
        if self.total:
            percent = 100 * self.done // self.total  # floored: 100% only when all are done
            return f"{task}: {percent}% ({', '.join([count, *facts])})"
        return f"{task}: {count}" + (f" ({', '.join(facts)})" if facts else "")


class LoggingProgress:
    """Progress as INFO lines on the ``batchscore`` logger: a line when a phase starts; for a
    counting task at most one line every ``interval`` seconds while it runs (none when it is
    quicker than that) and a final one with the count when it is done.

    ``BatchInference: 40% (400 of 1,000 rows, 2,150 rows/s, ETA 0:00:00)``

    Args:
        interval: seconds between two lines of one task; None reads
            ``$BATCHSCORE_PROGRESS_INTERVAL`` (default 10). 0 logs every advance.
        logger: where the lines go.
    """

    def __init__(self, interval: float | None = None, logger: logging.Logger = log) -> None:
        self.interval = interval_from_environment() if interval is None else interval
        self.logger = logger
        self._counts: dict[str, _Count] = {}
        self._lock = threading.Lock()

    def start(self, task: str, total: int | None = None, unit: str | None = None) -> None:
        now = time.monotonic()
        with self._lock:
            if unit is None:
                self._counts.pop(task, None)
                self.logger.info("%s", task)
                return
            self._counts[task] = _Count(total, unit, now, now)

    def advance(self, task: str, n: int) -> None:
        now = time.monotonic()
        with self._lock:
            count = self._counts.get(task)
            if count is None:
                return
            count.done += n
            if now - count.last_line >= self.interval:
                count.last_line = now
                self.logger.info("%s", count.line(task, now, final=False))

    def done(self, task: str) -> None:
        now = time.monotonic()
        with self._lock:
            count = self._counts.pop(task, None)
            if count is not None:
                self.logger.info("%s", count.line(task, now, final=True))


class RichProgress:
    """Rich progress bars on ``console`` (stderr in the CLI): spinner, task, bar, count,
    percentage, rate and ETA for counting tasks; spinner and elapsed time for phases. A task
    leaves the display when done, after one last refresh shows where it ended. Use it as a
    context manager: the display lives between enter and exit.
    """

    def __init__(self, console: Console) -> None:
        from rich.progress import Progress as Bars

        self._bars = Bars(
            *_rich_columns(),
            console=console,
            transient=True,
            redirect_stdout=False,  # stdout is for results, never for the display
        )
        self._ids: dict[str, Any] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> RichProgress:
        self._bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bars.stop()

    def start(self, task: str, total: int | None = None, unit: str | None = None) -> None:
        with self._lock:
            old = self._ids.pop(task, None)
            if old is not None:
                self._bars.remove_task(old)
            self._ids[task] = self._bars.add_task(task, total=total, unit=unit)

    def advance(self, task: str, n: int) -> None:
        task_id = self._ids.get(task)
        if task_id is not None:
            self._bars.advance(task_id, n)

    def done(self, task: str) -> None:
        with self._lock:
            task_id = self._ids.pop(task, None)
            if task_id is None:
                return
            if self._bars.tasks[self._bars.task_ids.index(task_id)].fields.get("unit"):
                self._bars.refresh()  # the final count is shown at least once
            self._bars.remove_task(task_id)


def _rich_columns() -> list[Any]:
    """Spinner, task name, bar (counting tasks), and the facts: built on first use, so the
    library does not import Rich unless it shows bars."""
    from rich.progress import BarColumn, ProgressColumn, SpinnerColumn, Task, TextColumn
    from rich.text import Text

    class BarForCounts(BarColumn):
        """The bar, for counting tasks only (a pulse while the total is unknown)."""

        def render(self, task: Task) -> Any:
            return super().render(task) if task.fields.get("unit") else Text("")

    class FactsColumn(ProgressColumn):
        """``400 of 1,000 rows  40%  2,150 rows/s  ETA 0:00:01``, or a phase's elapsed time."""

        def render(self, task: Task) -> Text:
            unit = task.fields.get("unit")
            elapsed = task.finished_time if task.finished else task.elapsed
            if not unit:
                return Text(_clock(elapsed or 0), style="progress.elapsed")
            done = int(task.completed)
            parts = [
                f"{done:,} of {int(task.total):,} {unit}" if task.total else f"{done:,} {unit}"
            ]
            if task.total:
                parts.append(f"{100 * done // int(task.total)}%")
            if task.speed:
                parts.append(f"{task.speed:,.0f} {unit}/s")
            if task.total and not task.finished and task.time_remaining is not None:
                parts.append(f"ETA {_clock(task.time_remaining)}")
            else:
                parts.append(_clock(elapsed or 0))
            return Text("  ".join(parts), style="progress.download")

    return [SpinnerColumn(), TextColumn("{task.description}"), BarForCounts(bar_width=30),
            FactsColumn()]  # fmt: skip
