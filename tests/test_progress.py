"""Progress: what the steps report (a recording Progress), the log lines the CLI prints when
stderr is not a terminal, and the Rich bars it draws when it is (under a pseudo-terminal)."""

from __future__ import annotations

import logging
import os
import re
import subprocess
from pathlib import Path

import pytest

from batchscore.errors import ConfigError
from batchscore.pipeline import Pipeline
from batchscore.progress import LoggingProgress, interval_from_environment
from tests.helpers import BIN, RecordingProgress, cli, config_for

PERCENT_LINE = re.compile(r"BatchInference: (\d+)% \(([\d,]+) of ([\d,]+) rows")


def test_the_steps_report_rows_per_batch_adding_up_to_the_rows(make) -> None:
    settings = make(batch_size=100, customer_id_end=4500)
    progress = RecordingProgress()
    record = Pipeline(settings, progress=progress).run()
    rows = record.steps["BatchInference"].rows
    assert rows and record.steps["DataSource"].rows == rows

    for task, total in (("DataSource", None), ("BatchInference", rows)):
        calls = progress.of(task)
        assert calls[0] == ("start", task, total, "rows"), calls[0]
        assert calls[-1] == ("done", task)
        steps = [c[2] for c in calls[1:-1]]
        assert all(c[0] == "advance" for c in calls[1:-1])
        assert all(0 < n <= 100 for n in steps)  # per batch, never more than a batch
        assert len(steps) >= rows // 100  # per batch, not once at the end
        assert sum(steps) == rows
    # DataSource ends before BatchInference starts.
    assert progress.calls.index(("done", "DataSource")) < progress.calls.index(
        ("start", "BatchInference", rows, "rows")
    )


def test_log_lines_come_at_most_every_interval_and_once_at_the_end(caplog) -> None:
    caplog.set_level(logging.INFO, logger="batchscore")
    quiet = LoggingProgress(interval=3600)
    quiet.start("BatchInference", 1000, "rows")
    for _ in range(10):
        quiet.advance("BatchInference", 100)
    quiet.done("BatchInference")
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == ["BatchInference: 100%"]

    caplog.clear()
    every = LoggingProgress(interval=0)
    every.start("BatchInference", 1000, "rows")
    for _ in range(4):
        every.advance("BatchInference", 100)
    every.done("BatchInference")
    lines = [r.getMessage() for r in caplog.records]
    assert [PERCENT_LINE.match(line).group(1) for line in lines] == ["10", "20", "30", "40", "40"]
    assert "ETA" in lines[0] and lines[-1].startswith("BatchInference: 40% (400 of 1,000 rows")
    assert " in " in lines[-1]

    caplog.clear()
    every.start("train: fitting", None)  # a phase: one line when it starts
    every.done("train: fitting")
    assert [r.getMessage() for r in caplog.records] == ["train: fitting"]


@pytest.mark.parametrize("value", ["soon", "-1", "nan"])
def test_a_bad_interval_names_its_variable(value: str) -> None:
    assert interval_from_environment({}) == 10
    assert interval_from_environment({"BATCHSCORE_PROGRESS_INTERVAL": "0.5"}) == 0.5
    with pytest.raises(ConfigError, match="BATCHSCORE_PROGRESS_INTERVAL"):
        interval_from_environment({"BATCHSCORE_PROGRESS_INTERVAL": value})


def test_run_logs_progress_without_a_terminal_and_not_with_quiet(make, tmp_path: Path) -> None:
    settings = make(batch_size=100, customer_id_end=4500)
    config = config_for(settings, tmp_path / "c.yaml", batch_size=100, customer_id_end=4500)
    env = {"BATCHSCORE_PROGRESS_INTERVAL": "0"}
    result = cli("-c", str(config), "run", env=env)
    assert result.returncode == 0, result.stderr
    found = [tuple(int(g.replace(",", "")) for g in m) for m in PERCENT_LINE.findall(result.stderr)]
    assert len(found) >= 3, result.stderr
    percents = [p for p, _, _ in found]
    done = [d for _, d, _ in found]
    assert percents == sorted(percents) and done == sorted(done)
    rows = int(re.search(r"rows scored\s+(\d+)", result.stdout).group(1))
    assert found[-1][1:] == (rows, rows) and percents[-1] == 100
    assert {total for _, _, total in found} == {rows}
    assert not PERCENT_LINE.search(result.stdout)  # stderr only

    quiet = cli("-q", "-c", str(config), "run", env=env)
    assert quiet.returncode == 0, quiet.stderr
    assert not PERCENT_LINE.search(quiet.stderr) and "DataSource: " not in quiet.stderr
    run_log = Path(re.search(r"run folder\s+(\S+)", quiet.stdout).group(1), "run.log")
    assert PERCENT_LINE.search(run_log.read_text())  # the run's own log keeps them


def _under_a_terminal(*args: str, env: dict[str, str]) -> tuple[int, str]:
    """Run the CLI with stdout and stderr on a pseudo-terminal; its output, escapes removed."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHSCORE_")}
    full_env.pop("COLUMNS", None)
    full_env.update(TERM="xterm-256color", **env)
    proc = subprocess.Popen(
        [str(BIN), *args], stdin=slave, stdout=slave, stderr=slave, env=full_env
    )
    os.close(slave)
    output = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(master)
    code = proc.wait(timeout=300)
    text = output.decode(errors="replace")
    return code, re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\r", "\n", text)


def test_a_terminal_gets_a_progress_bar_and_quiet_none(make, tmp_path: Path) -> None:
    settings = make(batch_size=50, customer_id_end=4500)
    config = config_for(settings, tmp_path / "c.yaml", batch_size=50, customer_id_end=4500)
    code, shown = _under_a_terminal("-c", str(config), "run", env={})
    assert code == 0, shown
    rows = int(re.search(r"rows scored\s+(\d+)", shown).group(1))
    bar = re.findall(r"BatchInference\s+━+\S*\s+([\d,]+) of ([\d,]+) rows\s+(\d+)%", shown)
    assert bar, shown
    assert {int(total.replace(",", "")) for _, total, _ in bar} == {rows}
    assert (f"{rows:,}", f"{rows:,}", "100") in bar  # the bar's last state: all rows
    assert not PERCENT_LINE.search(shown)  # bars, not log lines

    code, shown = _under_a_terminal("-q", "-c", str(config), "run", env={})
    assert code == 0, shown
    assert "rows scored" in shown and not re.search(r"\d of [\d,]+ rows", shown)
