"""Secrets never reach an error message, a log line, a traceback or `config show` — in any of
the shapes libraries print them: whole, in URL pieces, URL-encoded, inside a traceback."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
from rich.logging import RichHandler

from batchscore.cli import main
from batchscore.config import load_settings
from batchscore.errors import BatchScoreError, ConfigError
from batchscore.pipeline import Pipeline
from batchscore.records import PipelineHooks, RunRecord
from tests.helpers import cli, config_for, overrides_of
from tests.reliability import record

# A webhook URL shaped like the real ones: a password, tokens in the path and the query.
HOOK_URL = (
    "chatty://batch:pa%40ss-9f3e@127.0.0.1/services/T0A1B2C3D/xY9zQ8wV7uT6sR5p?token=abc123def456"
)
# Every piece of HOOK_URL that gives it away, as libraries print them.
HOOK_PIECES = [
    HOOK_URL,
    quote(HOOK_URL, safe=""),
    quote_plus(HOOK_URL),
    "pa%40ss-9f3e",
    "pa@ss-9f3e",
    "T0A1B2C3D",
    "xY9zQ8wV7uT6sR5p",
    "abc123def456",
]

# An Apprise plugin, loaded into the CLI's process through sitecustomize, that logs the URL
# it was given in pieces through Apprise's own logger and fails (as a chatty library would).
CHATTY_PLUGIN = """\
import logging
from urllib.parse import quote_plus, unquote

from apprise.decorators import notify


@notify(on="chatty")
def chatty(body, title, notify_type, meta, *args, **kwargs):
    log = logging.getLogger("apprise")
    log.warning("chatty: POST %s", quote_plus(meta["url"]))
    log.warning("chatty: auth %s:%s", meta["user"], unquote(meta["password"]))
    log.warning("chatty: path %s token=%s", meta["fullpath"], meta["qsd"]["token"])
    return False
"""


def assert_hidden(text: str, pieces: list[str] = HOOK_PIECES) -> None:
    shown = [piece for piece in pieces if piece in text]
    assert not shown, f"secret pieces shown: {shown}\n{text}"


@pytest.fixture
def restore_logging():
    """In-process main() puts its console handler on the root logger: take it off again."""
    yield
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, RichHandler):
            root.removeHandler(handler)
    logging.captureWarnings(False)


@pytest.mark.parametrize(
    ("yaml_text", "origin"),
    [
        ("notification_urls: ${HOOK_URL}\n", "${HOOK_URL}"),  # a string, not a list
        ("athena_database: ${HOOK_URL}\n", None),  # refused by the identifier check
        ("ray_cpus_per_actor: ${HOOK_URL}\n", "${HOOK_URL}"),
    ],
)
def test_a_validation_error_never_echoes_a_var_value(
    tmp_path: Path, yaml_text: str, origin: str | None
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as err:
        load_settings(path, env={"HOOK_URL": HOOK_URL})
    assert_hidden(str(err.value))
    if origin:
        assert f"(value from {origin} hidden)" in str(err.value)
    record("security", f"a ${{VAR}} value refused by validation: {yaml_text.strip()}",
           outcome="the error names the key and the variable, never the value")  # fmt: skip


def test_url_secrets_are_hidden_in_pieces_and_encoded_forms() -> None:
    settings = load_settings(overrides={"notification_urls": ["${HOOK_URL}"]},
                             env={"HOOK_URL": HOOK_URL})  # fmt: skip
    for piece in HOOK_PIECES:
        assert settings.redact(f"<{piece}>") == "<***>", piece
    # Short and common pieces stay: the host, the user, a word of the path.
    kept = "sending to 127.0.0.1 as batch, /services/"
    assert settings.redact(kept) == kept
    assert settings.redact("/services/T0A1B2C3D/xY9zQ8wV7uT6sR5p") == "/***"


def test_a_librarys_own_logger_is_redacted_on_the_console_and_in_run_log(
    make, tmp_path: Path
) -> None:
    plugin_dir = tmp_path / "site"
    plugin_dir.mkdir()
    (plugin_dir / "sitecustomize.py").write_text(CHATTY_PLUGIN)
    python_path = os.pathsep.join(filter(None, [str(plugin_dir), os.environ.get("PYTHONPATH")]))
    base = make(model_package_group="missing-model")
    config = config_for(base, tmp_path / "c.yaml", model_package_group="missing-model",
                        notification_urls=["${HOOK_URL}"])  # fmt: skip
    env = {"HOOK_URL": HOOK_URL, "PYTHONPATH": python_path}
    result = cli("-c", str(config), "run", env=env)
    assert result.returncode == 1
    console = result.stdout + result.stderr
    assert_hidden(console)
    # The library's lines were printed (not dropped), with the secret hidden.
    assert "chatty: POST ***" in console and "chatty: auth ***" in console
    assert "chatty: path /*** token=***" in console
    (run_log,) = base.runs_path.glob("*/run.log")
    (run_jsonl,) = base.runs_path.glob("*/run.jsonl")
    for path in (run_log, run_jsonl):
        text = path.read_text()
        assert_hidden(text)
        assert "chatty: auth ***" in text, path
    record("security", "a library logging a ${VAR} URL in pieces and URL-encoded, own logger",
           outcome="*** on the console, in run.log and run.jsonl")  # fmt: skip


class FailingHook(PipelineHooks):
    """A hook whose library raises with the secret in the message and in the cause."""

    def before_pipeline_run(self, record: RunRecord) -> None:
        try:
            raise ConnectionError(f"refused: {HOOK_URL}")
        except ConnectionError as exc:
            raise RuntimeError(f"POST {quote_plus(HOOK_URL)} failed") from exc


def test_a_logged_traceback_is_redacted_in_run_log_and_jsonl(make) -> None:
    base = make(model_package_group="missing-model")
    settings = load_settings(
        overrides=overrides_of(
            base, model_package_group="missing-model", notification_urls=["${HOOK_URL}"]
        ),
        env={"HOOK_URL": HOOK_URL},
    )
    with pytest.raises(BatchScoreError, match="no versions"):
        Pipeline(settings, hooks=[FailingHook()]).run()
    (run_log,) = base.runs_path.glob("*/run.log")
    text = run_log.read_text()
    assert "Traceback (most recent call last)" in text
    assert "ConnectionError: refused: ***" in text and "RuntimeError: POST *** failed" in text
    assert_hidden(text)
    entries = [json.loads(line) for line in run_log.with_suffix(".jsonl").read_text().splitlines()]
    (failed,) = [e for e in entries if "FailingHook" in e["message"]]
    assert "RuntimeError: POST *** failed" in failed["exception"]
    assert_hidden(json.dumps(entries))
    record("security", "log.exception with a ${VAR} URL in the exception and its cause",
           outcome="the traceback is in run.log and run.jsonl with ***")  # fmt: skip


def test_debug_tracebacks_on_the_console_are_redacted(
    make, tmp_path: Path, capsys, monkeypatch, restore_logging
) -> None:
    config = config_for(make(), tmp_path / "c.yaml", notification_urls=["${HOOK_URL}"])
    monkeypatch.setenv("HOOK_URL", HOOK_URL)

    def run(self, **kwargs):
        try:
            FailingHook().before_pipeline_run(None)  # type: ignore[arg-type]
        except RuntimeError as exc:
            logging.getLogger("batchscore").exception("notifying failed")
            logging.getLogger("urllib3").error("retrying", exc_info=True)
            raise BatchScoreError(f"cannot reach {HOOK_URL}") from exc

    monkeypatch.setattr(Pipeline, "run", run)
    assert main(["--debug", "-c", str(config), "run"]) == 1
    err = capsys.readouterr().err
    assert err.count("ConnectionError: refused: ***") == 3  # two logged, one --debug traceback
    assert "BatchScoreError: cannot reach ***" in err and "Error: cannot reach ***" in err
    assert_hidden(err)
    record("security", "--debug traceback and log.exception on the console, secret in the cause",
           outcome="printed with ***")  # fmt: skip


CATALOG_URI = "postgresql://batch:Sup3rS3cret9@127.0.0.1:1/iceberg"


def test_batchscore_env_credentials_are_secrets(make, tmp_path: Path) -> None:
    env = {
        "BATCHSCORE_CATALOG__URI": CATALOG_URI,
        "BATCHSCORE_CATALOG__TOKEN": "tok-91ab",
        "BATCHSCORE_WRITE_MODE": "append",
    }
    settings = load_settings(env=env)
    assert settings.redact(f"{CATALOG_URI} tok-91ab Sup3rS3cret9 append") == "*** *** *** append"
    base = make()
    config = config_for(base, tmp_path / "c.yaml")
    shown = cli("-c", str(config), "config", "show", env=env)
    assert shown.returncode == 0, shown.stderr
    assert "uri: '***'" in shown.stdout and "write_mode: append" in shown.stdout
    result = cli("-c", str(config), "run", env=env)
    assert result.returncode == 2  # the run's lock lives in that catalog: nothing starts
    assert "Error: cannot open the Iceberg catalog database *** for the run" in result.stderr
    # A run that starts, fails, and logs where its failure notice could not go.
    hook = {"BATCHSCORE_NOTIFICATION_URLS": '["json://batch:Sup3rS3cret9@127.0.0.1:1/tok-91ab"]'}
    missing = config_for(base, tmp_path / "m.yaml", model_package_group="no-such-model")
    failed = cli("-c", str(missing), "run", env=hook)
    assert failed.returncode == 1 and "could not be delivered" in failed.stderr
    texts = [shown.stdout + shown.stderr, result.stdout + result.stderr]
    texts += [failed.stdout + failed.stderr]
    texts += [p.read_text() for p in base.runs_path.glob("*/run.*")]
    assert len(texts) == 6  # the console three times, run.log, run.jsonl, run.json
    for text in texts:
        assert "Sup3rS3cret9" not in text and "tok-91ab" not in text
    with pytest.raises(ConfigError) as err:  # a string where a list belongs
        load_settings(env={"BATCHSCORE_NOTIFICATION_URLS": "json://u:Sup3rS3cret9@host/x"})
    assert "Sup3rS3cret9" not in str(err.value)
    assert "(value from BATCHSCORE_NOTIFICATION_URLS hidden)" in str(err.value)
    record("security", "a password in BATCHSCORE_CATALOG__URI",
           outcome="*** in config show, the error, run.log, run.jsonl, run.json")  # fmt: skip
