"""The ``batchscore`` command: parse arguments, call one library function, print the result.

One error boundary (``main``) turns a BatchScoreError into one "Error: …" line and its exit
code; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import sys
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import click
import typer
from rich import box
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Column, Table
from rich.text import Text
from typer.core import TyperOption
from typer.exceptions import TyperException

from batchscore.config import Settings, load_settings, resolve_config_path
from batchscore.errors import BatchScoreError, ConfigError
from batchscore.logs import OwnOrWarningFilter, RedactingFormatter
from batchscore.steps import STEPS, by_slug, slugs_text, step_names

if TYPE_CHECKING:
    from batchscore.progress import Progress


def _flag_type(self: Any, ctx: click.Context) -> str | None:
    """No type for a flag: typer 0.29's rich help shows ``--debug <bool>`` as if it took a
    value (its plain help already leaves flags bare)."""
    if self.is_flag or self.count:
        return None
    return _option_type(self, ctx)


_option_type = TyperOption.display_type_rich
TyperOption.display_type_rich = _flag_type  # type: ignore[method-assign]

app = typer.Typer(
    help="Batch inference for classification models: feature store in, latest approved "
    "model, one atomic commit to a SQL table out.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
features_app = typer.Typer(help="Create, fill and inspect feature groups.", no_args_is_help=True)
models_app = typer.Typer(
    help="List registered model versions and set their approval status.", no_args_is_help=True
)
config_app = typer.Typer(help="Show the effective configuration.", no_args_is_help=True)
runs_app = typer.Typer(help="Run history: list, show, logs.", no_args_is_help=True)
table_app = typer.Typer(help="Manage the predictions table.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")
app.add_typer(table_app, name="table")
app.add_typer(features_app, name="features")
app.add_typer(models_app, name="models")
app.add_typer(config_app, name="config")
deploy_app = typer.Typer(help="Deploy the pipeline to an orchestrator.", no_args_is_help=True)
app.add_typer(deploy_app, name="deploy")

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)
log = logging.getLogger("batchscore")


@dataclass
class State:
    config: Path | None = None
    overrides: list[str] = field(default_factory=list)
    debug: bool = False
    terminated: bool = False  # SIGTERM arrived
    _settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.config, self.overrides)
            unused = self._settings.unused_keys()
            if unused:
                log.info("unused by the %s backend: %s", self._settings.backend, ", ".join(unused))
        return self._settings


state = State()


@app.callback()
def _global_options(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="YAML config (default: $BATCHSCORE_CONFIG, else "
            "configs/pipeline_config.yaml when present).",
        ),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a setting: key=value (repeatable)."),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors.")] = False,
) -> None:
    state.config = config
    state.overrides = list(set_ or [])
    state.debug = debug
    state._settings = None
    _setup_logging(logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO)


def _setup_logging(level: int) -> None:
    """One redacting console handler on the root logger: batchscore's records at ``level``,
    other libraries' warnings (which would otherwise reach stderr unredacted through
    logging's last resort) and Python warnings."""
    root = logging.getLogger()
    for logger in (root, log):
        for handler in list(logger.handlers):
            if isinstance(handler, RichHandler):
                logger.removeHandler(handler)
    # rich_tracebacks=False: RichHandler prints self.format(record), traceback included,
    # so the redacting formatter sees all of it.
    handler = RichHandler(
        console=err_console,
        show_path=False,
        markup=False,
        rich_tracebacks=False,
        log_time_format="%H:%M:%S",
    )
    # The console's resume commands carry this command's -c/--set, as its error lines do.
    handler.setFormatter(RedactingFormatter(logging.Formatter("%(message)s"), _for_console))
    handler.addFilter(OwnOrWarningFilter())
    # The console's level is the handler's: the logger stays at INFO (at least) so run.log
    # keeps every step line even with -q.
    handler.setLevel(level)
    root.addHandler(handler)
    log.setLevel(min(level, logging.INFO))
    log.propagate = True
    logging.captureWarnings(True)


def _parse_date(value: str | None, option: str) -> dt.date | None:
    """A YYYY-MM-DD date; ``today`` (or nothing) means the default."""
    if value is None or value == "today":
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"{option} {value!r} is not a date: use YYYY-MM-DD or today.") from None


def _id_range(id_start: int | None, id_end: int | None) -> str:
    """A run's id range as ``runs show`` prints it (``all`` when the config sets none)."""
    from batchscore.records import format_id_range

    return format_id_range(id_start, id_end).replace("-", "–")


def _kv_table(title: str, rows: list[tuple[str, Any]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left", box=None, padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")  # paths and ids whole, folded, never cut with '…'
    for key, value in rows:
        table.add_row(key, "" if value is None else str(value))
    return table


def _print_arrow(result: Any, fmt: str) -> None:
    if fmt == "csv":
        import pyarrow.csv as pacsv

        sink = sys.stdout.buffer
        pacsv.write_csv(result, sink)
        sink.flush()
        return
    rows = result.to_pylist()
    if fmt == "json":
        console.print_json(json.dumps(rows, default=str))
        return
    # Text, not strings: a value such as '[red]x[/red]' or '[/]' is data, never Rich markup.
    table = Table(*(Column(header=Text(name)) for name in result.column_names))
    for row in rows:
        table.add_row(*(Text("NULL" if v is None else str(v)) for v in row.values()))
    console.print(table)
    console.print(f"{result.num_rows} row(s)", style="dim")


FORMATS = ("table", "json", "csv")
FORMAT_HELP = "table, json (plain values) or csv (a header, then rows)."


def _check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r} must be table, json or csv.")
    return fmt


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")
    sys.stdout.flush()


def _print_csv(fields: list[str], rows: list[dict[str, Any]]) -> None:
    """A header and one line per row; a nested value (list, dict) as its JSON."""
    import csv

    writer = csv.DictWriter(sys.stdout, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {k: json.dumps(v, default=str) if isinstance(v, dict | list) else v
             for k, v in row.items()}
        )  # fmt: skip
    sys.stdout.flush()


def _flatten(value: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: one object as one CSV row."""
    flat: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(item, dict) and item:
            flat |= _flatten(item, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = item
    return flat


def _fitting_table(
    columns: list[tuple[Column, int]],
    rows: list[list[Any]],
    hide: list[str] | tuple[str, ...] = (),
    **options: Any,
) -> tuple[Table, list[str]]:
    """A table of the columns that fit the console, dropping the lowest priority first
    (priority 0: never dropped); the names of those dropped. ``hide``: headers left out."""
    from rich.measure import Measurement

    keep = [i for i, (c, _) in enumerate(columns) if str(c.header) not in hide]
    while True:
        # Fresh copies: a Column keeps the cells of the table it was added to.
        table = Table(*(replace(columns[i][0], _cells=[]) for i in keep), **options)
        for row in rows:
            table.add_row(*(row[i] for i in keep))
        # Measured unbounded: the width the table needs to show every cell whole.
        unbounded = console.options.update(width=10_000)
        width = Measurement.get(console, unbounded, table).maximum
        droppable = [i for i in keep if columns[i][1] > 0]
        if width <= console.width or not droppable:
            dropped = [
                str(c.header)
                for i, (c, _) in enumerate(columns)
                if i not in keep and str(c.header) not in hide
            ]
            return table, dropped
        keep.remove(max(droppable, key=lambda i: columns[i][1]))


def _print_fitted(table: Table, dropped: list[str]) -> None:
    console.print(table)
    if dropped:
        console.print(
            f"hidden at this width: {', '.join(dropped)} (--format json shows all)",
            style="dim",
            soft_wrap=False,
        )


# Pipeline -------------------------------------------------------------------------------------


def _scoring_text(facts: dict[str, Any]) -> str:
    """BatchInference's scoring facts in one line: the path, and why or how it was checked."""
    parity = facts.get("parity") or {}
    if facts["path"] == "compiled":
        compiled = "compiled in {:.1f} s".format(facts["compile_seconds"] or 0)
        how = "cache hit" if facts.get("cache") == "hit" else compiled
        return (
            f"compiled ({how}; parity: {parity.get('rows_checked', 0)} rows checked, "
            f"max difference {parity.get('max_abs_diff', 0):.1e})"
        )
    return f"library — {facts['reason']}"


def _print_run(record: Any) -> None:
    steps = Table(
        "step",
        "status",
        "seconds",
        "rows",
        "rows/s",
        title=f"run {record.run_id}",
        title_justify="left",
    )
    for step in record.steps.values():
        steps.add_row(
            step.name, step.status, _fmt(step.seconds), _fmt(step.rows), _fmt(step.rows_per_second)
        )
    console.print(steps)
    data = record.steps["DataSource"].outputs
    scored = record.steps["BatchInference"].outputs
    published = record.steps["Publish"].outputs
    rows = [
        ("status", record.status),
        ("logical date", record.logical_date),
        ("features as of", record.as_of),
        ("ids", f"{_id_range(record.id_start, record.id_end)} of {record.feature_group}"),
        ("model", f"{record.model_name} v{record.model_version}" if record.model_name else None),
        ("rows scored", scored.get("rows")),
        *([("scoring", _scoring_text(scored["scoring"]))] if scored.get("scoring") else []),
        (
            "skipped",
            f"{data.get('duplicate_versions_skipped', 0)} older versions, "
            f"{data.get('deleted_records_skipped', 0)} deleted records"
            if data
            else None,
        ),
        *([("ids not matching", _unmatched(data))] if data and data.get("unmatched_ids") else []),
        (
            "table",
            f"{record.output_table} ({record.write_mode}, snapshot {published.get('snapshot_id')})"
            if published
            else record.output_table,
        ),
        ("run folder", record.run_dir),
    ]
    validated = record.steps["Validate"].outputs if "Validate" in record.steps else {}
    if validated:
        rows.insert(-2, ("checks", _verdict_text(validated, record.accepted)))
    from batchscore.monitoring.files import REPORT_FILE

    report = Path(record.run_dir) / REPORT_FILE
    if report.is_file():
        rows.append(("report", str(report)))
    evaluation = scored.get("evaluation")
    if evaluation:
        auc = evaluation["roc_auc"]
        text = (
            f"accuracy {evaluation['accuracy']:.3f}  precision {evaluation['precision']:.3f}  "
            f"recall {evaluation['recall']:.3f}  F1 {evaluation['f1']:.3f}"
        )
        if auc is not None:
            text += f"  ROC AUC {auc:.3f}"
        rows.append(("evaluation", text))
    console.print(_kv_table("summary", rows))


def _verdict_text(validated: dict[str, Any], accepted: dict[str, str] | None) -> str:
    """``warn: 2 violation(s): psi age: …; …`` — Validate's verdict in one line."""
    if validated.get("note"):
        return str(validated["note"])
    violations = validated.get("violations") or []
    text = str(validated.get("verdict"))
    if violations:
        text += f": {len(violations)} violation(s): " + "; ".join(violations[:5])
        text += " …" if len(violations) > 5 else ""
    if accepted:
        text += f" (accepted by {accepted.get('by')} at {accepted.get('at')})"
    return text


def _unmatched(data: dict[str, Any]) -> str:
    examples = ", ".join(data.get("unmatched_id_examples") or [])
    return f"{data['unmatched_ids']} (never scored; e.g. {examples})"


def _round(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.2f}" if value < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


@contextlib.contextmanager
def _progress() -> Iterator[Progress]:
    """Where a command's progress goes: Rich bars on stderr when it is a terminal (and the
    console shows INFO: not with -q); else log lines at most every
    $BATCHSCORE_PROGRESS_INTERVAL seconds, which -q keeps off the console (a run's own log
    keeps them). Results are printed after the block, when the bars are gone."""
    from batchscore.progress import LoggingProgress, RichProgress

    shown = [h.level for h in logging.getLogger().handlers if isinstance(h, RichHandler)]
    if err_console.is_terminal and min(shown, default=logging.INFO) <= logging.INFO:
        with RichProgress(err_console) as bars:
            yield bars
    else:
        yield LoggingProgress()


@app.command(help=f"Run {' → '.join(step_names())} once.")
def run(
    date: Annotated[
        str | None,
        typer.Option(
            help="Logical date YYYY-MM-DD: score features "
            "as of the end of that day (default: today, now)."
        ),
    ] = None,
) -> None:
    from batchscore.pipeline import Pipeline

    with _progress() as progress:
        record = Pipeline(state.settings, progress=progress).run(date=_parse_date(date, "--date"))
    _print_run(record)


FORCE_HELP = "Continue even though the config differs from the run's (recorded in the run)."


@app.command()
def resume(
    run_id: Annotated[str, typer.Argument(help="The failed run's id.")],
    force: Annotated[bool, typer.Option("--force", help=FORCE_HELP)] = False,
    accept: Annotated[
        bool,
        typer.Option(
            "--accept",
            help="Publish a run Validate blocked, after a person looked (recorded with "
            "who and when).",
        ),
    ] = False,
    by: Annotated[
        str | None,
        typer.Option("--by", help="Who accepts (with --accept; default: $USER)."),
    ] = None,
) -> None:
    """Continue a failed run at its failed step, with the model version it first used."""
    from batchscore.pipeline import Pipeline

    if by is not None and not accept:
        raise ConfigError("--by names who accepts a blocked run: give it with --accept.")
    with _progress() as progress:
        record = Pipeline(state.settings, progress=progress).resume(
            run_id, force=force, accept=accept, by=by
        )
    _print_run(record)


@app.command()
def step(
    name: Annotated[str, typer.Argument(help=f"{slugs_text()}.", metavar="STEP")],
    run_id: Annotated[str, typer.Option("--run-id", help="The run this step belongs to.")],
    date: Annotated[
        str | None,
        typer.Option(
            help=f"Logical date YYYY-MM-DD ({STEPS[0].slug} only, when it starts the run)."
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help=FORCE_HELP)] = False,
) -> None:
    """Run one step of a run, as its own job (SageMaker Processing, Airflow, Kubernetes)."""
    from batchscore.pipeline import Pipeline

    chosen = by_slug(name)
    with _progress() as progress:
        record = Pipeline(state.settings, progress=progress).run_step(
            chosen.name, run_id, date=_parse_date(date, "--date"), force=force
        )
    _print_run(record)


@deploy_app.command("sagemaker")
def deploy_sagemaker(
    image: Annotated[
        str, typer.Option(help="ECR image with batchscore installed (runs each step).")
    ],
    output: Annotated[
        Path, typer.Option(help="Where to write the pipeline definition JSON.")
    ] = Path("sagemaker-pipeline.json"),
    apply: Annotated[
        bool,
        typer.Option(help="Upload the config, create or update the pipeline, start a run."),
    ] = False,
    schedule: Annotated[
        str | None,
        typer.Option(help="Cron in UTC, e.g. '0 2 * * *': with --apply, an EventBridge rule."),
    ] = None,
    schedule_role: Annotated[
        str | None,
        typer.Option(help="Role EventBridge starts the pipeline as (default: role_arn)."),
    ] = None,
) -> None:
    """Write the SageMaker Pipeline definition: a Processing job per step."""
    from batchscore.deploy import deploy_sagemaker as deploy

    config = resolve_config_path(state.config)
    done = deploy(
        state.settings,
        config,
        image_uri=image,
        output=output,
        apply=apply,
        schedule=schedule,
        schedule_role_arn=schedule_role,
    )
    rows = [
        ("pipeline", done.pipeline_name),
        ("definition", str(done.definition_path)),
        ("steps", " → ".join(s["Name"] for s in done.definition["Steps"])),
        ("config", done.config_uri + "pipeline_config.yaml"),
    ]
    if done.pipeline_arn:
        rows += [("pipeline arn", done.pipeline_arn), ("execution", done.execution_arn)]
    if done.schedule_expression:
        where = f"rule {done.schedule_rule}" if done.schedule_rule else "with --apply"
        rows.append(("schedule", f"{done.schedule_expression} ({where})"))
    if done.email_subscription:
        email = state.settings.notification_email
        note = {"subscribed": "subscribed: confirm the e-mail AWS sent"}
        rows.append(
            (
                "failure e-mail",
                f"{email}: {note.get(done.email_subscription, done.email_subscription)}",
            )
        )
    console.print(_kv_table("deploy sagemaker", rows))


@app.command()
def quickstart(
    customers: Annotated[int, typer.Option(help="Synthetic customers to generate.")] = 5000,
    yes: Annotated[
        bool,
        typer.Option(
            "--yes",
            "-y",
            help="Set up the demo even in a configured (non-embedded) catalog or registry.",
        ),
    ] = False,
) -> None:
    """Set up the demo from nothing (feature group, approved model) and run the pipeline."""
    from batchscore.demo import quickstart as run_quickstart

    settings = state.settings
    with _progress() as progress:
        summary = run_quickstart(
            settings, n_customers=customers, allow_external=yes, progress=progress
        )
    _print_run(summary.run)
    rows = [
        ("workspace", summary.workspace),
        (
            "feature group",
            f"feature_store.{summary.feature_group} ({summary.feature_rows} rows, "
            f"{'created now' if summary.created_feature_group else 'existing'})",
        ),
        (
            "model",
            f"{summary.model_name} v{summary.model_version} Approved "
            f"({'trained now' if summary.trained_model else 'existing'})",
        ),
        ("MLflow registry", settings.tracking_uri),
        ("Iceberg catalog", summary.catalog.get("uri", summary.catalog)),
        (
            "predictions",
            f"{summary.table}: {summary.table_rows} rows ({summary.run_rows} from this run)",
        ),
    ]
    console.print(_kv_table("quickstart", rows))
    command = invoked_as()
    console.print(
        "\nQuery the predictions:\n"
        f'  {command} query "SELECT prediction, count(*) AS customers, '
        f"round(avg(prediction_probability), 3) AS mean_probability FROM {summary.table} "
        'GROUP BY prediction ORDER BY prediction"\n'
        f"Look at models:   {command} models list\n"
        f"Run again:        {command} run   (replaces this run's rows for today)"
    )


def invoked_as(argv0: str | None = None) -> str:
    """How to run this batchscore again from here: ``batchscore`` when the shell finds this
    one on PATH, else the path it was started by (relative to this folder when inside it)."""
    import shutil

    started = Path(argv0 if argv0 is not None else sys.argv[0])
    if started.name != "batchscore":  # python -m batchscore, an embedding program
        return "batchscore"
    found = shutil.which("batchscore")
    if found and Path(found).resolve() == started.resolve():
        return "batchscore"
    try:
        return str(started.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:  # started from elsewhere: the full path works from anywhere
        return str(started.resolve())


@app.command()
def train(
    id_from: Annotated[int, typer.Option("--from", help="First customer id to train on.")] = 1,
    id_to: Annotated[int, typer.Option("--to", help="Last customer id to train on.")] = 4000,
    target: Annotated[
        str | None, typer.Option(help="Target column (default: target_column).")
    ] = None,
    approve: Annotated[bool, typer.Option(help="Approve the new version right away.")] = False,
    registry_type: Annotated[
        str | None,
        typer.Option("--registry", help="Register in mlflow or sagemaker (default: the config's)."),
    ] = None,
) -> None:
    """Train the reference model on an id range and register it (PendingManualApproval)."""
    from batchscore.feature_store import open_feature_store
    from batchscore.registry import open_registry
    from batchscore.training import train_model

    settings = state.settings
    if registry_type is not None:
        if registry_type not in ("mlflow", "sagemaker"):
            raise ConfigError(f"--registry {registry_type!r} must be mlflow or sagemaker.")
        registry_settings = settings.registry.model_copy(update={"type": registry_type})
        settings = settings.model_copy(update={"registry": registry_settings})
    if id_from > id_to:
        raise ConfigError(f"--from ({id_from}) is greater than --to ({id_to}).")
    from batchscore.progress import tracked

    with _progress() as progress:
        with tracked(progress, "train: opening the model registry and feature store"):
            registry = open_registry(settings)
            store = open_feature_store(settings)
        result = train_model(
            settings,
            store,
            registry,
            id_start=id_from,
            id_end=id_to,
            target_column=target,
            progress=progress,
        )
        version = result.version
        if approve:
            version = registry.set_status(version.group, version.version, "Approved")
    m = result.metrics
    console.print(
        _kv_table(
            "trained",
            [
                ("model", f"{version.group} v{version.version}"),
                ("status", version.status),
                ("rows", result.rows),
                ("features", ", ".join(result.features)),
                (
                    "validation",
                    f"accuracy {m['accuracy']:.3f}  F1 {m['f1']:.3f}"
                    + (f"  ROC AUC {m['roc_auc']:.3f}" if m["roc_auc"] is not None else ""),
                ),
            ],
        )
    )
    if not approve:
        from batchscore.registry.base import approve_command

        console.print(f"Approve it with: {approve_command(version.group, version.version)}")


@app.command()
def query(
    sql: Annotated[str, typer.Argument(help="One SELECT over namespace.table names.")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="table, csv or json.")] = "table",
    via: Annotated[
        str | None,
        typer.Option(help="duckdb (this machine) or athena (default with backend aws)."),
    ] = None,
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait before stopping the query.")
    ] = 600.0,
) -> None:
    """Run a read-only SQL query over the catalog's tables (DuckDB here, or Athena on AWS)."""
    from batchscore.queries import query as run_sql

    if fmt not in ("table", "csv", "json"):
        raise ConfigError(f"--format {fmt!r} must be table, csv or json.")
    result = run_sql(state.settings, sql, via=via, timeout=timeout)
    _print_arrow(result.table, fmt)
    if result.query_id is not None:  # Athena's: where its result CSV stays
        err_console.print(
            f"Athena query {result.query_id}; result CSV: {result.output_location}",
            style="dim",
            markup=False,
            highlight=False,
        )


# Features -------------------------------------------------------------------------------------


def _store(*, writable: bool = True) -> Any:
    from batchscore.feature_store import open_feature_store

    return open_feature_store(state.settings, writable=writable)


@features_app.command("create")
def features_create(
    schema: Annotated[
        Path | None,
        typer.Option(help="YAML/JSON mapping feature -> Integral | Fractional | String."),
    ] = None,
    sample: Annotated[
        Path | None, typer.Option(help="CSV or Parquet file to infer types from.")
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Feature group (default: feature_group_name).")
    ] = None,
) -> None:
    """Create a feature group from a schema or a sample file."""
    import yaml

    settings = state.settings
    if (schema is None) == (sample is None):
        raise ConfigError("give exactly one of --schema FILE or --sample FILE.")
    if schema is not None:
        try:
            definition: Any = yaml.safe_load(schema.read_text())
        except OSError as exc:
            raise ConfigError(f"--schema {str(schema)!r} cannot be read: {exc.strerror}.") from exc
        if not isinstance(definition, dict):
            raise ConfigError(f"--schema {str(schema)!r} must map feature names to types.")
    else:
        assert sample is not None
        definition = _sample_schema(sample)
    group = _store().create_feature_group(
        name or settings.feature_group_name,
        definition,
        record_identifier=settings.record_identifier,
        event_time_feature=settings.event_time_feature,
    )
    console.print(f"created feature group {group.name} ({len(group.features)} features)")


def _sample_schema(path: Path) -> Any:
    import pyarrow.parquet as pq
    from pyarrow import csv

    if not path.exists():
        raise ConfigError(f"--sample {str(path)!r} does not exist.")
    if path.suffix.lower() in (".parquet", ".pq"):
        return pq.read_schema(path)
    return csv.read_csv(path).schema


@features_app.command("ingest")
def features_ingest(
    file: Annotated[Path, typer.Argument(help="CSV or Parquet file of records.")],
    name: Annotated[str | None, typer.Option(help="Feature group.")] = None,
    allow_missing_columns: Annotated[
        bool,
        typer.Option(
            help="Write records lacking some features (stored NULL; as the newest version, "
            "those NULLs win)."
        ),
    ] = False,
    ignore_extra_columns: Annotated[
        bool, typer.Option(help="Drop columns the feature group has no feature for.")
    ] = False,
    delimiter: Annotated[
        str | None, typer.Option(help="CSV field separator (default ',').")
    ] = None,
) -> None:
    """Append records; write_time and api_invocation_time are stamped now."""
    if not file.is_file():
        raise ConfigError(f"ingest file {str(file)!r} does not exist.")
    group = name or state.settings.feature_group_name
    result = _store().ingest(
        group,
        file,
        allow_missing_columns=allow_missing_columns,
        ignore_extra_columns=ignore_extra_columns,
        delimiter=delimiter,
    )
    console.print(f"ingested {result.rows} record(s) into {group}")
    if result.missing_columns:
        console.print(
            f"{result.rows} record(s) lack {', '.join(result.missing_columns)}: stored NULL"
        )
    if result.ignored_columns:
        console.print(f"ignored column(s) {', '.join(result.ignored_columns)}")
    if result.future_event_times:
        console.print(
            f"{result.future_event_times} record(s) have event times in the future "
            f"(latest {result.max_event_time})"
        )


@features_app.command("delete")
def features_delete(
    record_ids: Annotated[list[str], typer.Argument(help="Record identifiers to delete.")],
    name: Annotated[str | None, typer.Option(help="Feature group.")] = None,
    event_time: Annotated[
        str | None, typer.Option(help="Event time of the deletion (ISO 8601, default now).")
    ] = None,
) -> None:
    """Delete records the SageMaker way: append a delete marker for each id."""
    when = None
    if event_time is not None:
        try:
            when = dt.datetime.fromisoformat(event_time)
        except ValueError:
            raise ConfigError(f"--event-time {event_time!r} is not ISO 8601.") from None
    group = name or state.settings.feature_group_name
    result = _store().delete_records(group, record_ids, event_time=when)

    def some(ids: list[str]) -> str:
        return ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")

    parts = [f"deleted {result.deleted} record(s) from {group}"]
    if result.unknown_ids:
        parts.append(f"{len(result.unknown_ids)} id(s) unknown: {some(result.unknown_ids)}")
    if result.stale_ids:
        parts.append(
            f"{len(result.stale_ids)} marker(s) older than the record's newest version: "
            f"{some(result.stale_ids)} (nothing deleted)"
        )
    if result.already_deleted_ids:
        parts.append(
            f"{len(result.already_deleted_ids)} already deleted: {some(result.already_deleted_ids)}"
        )
    console.print("; ".join(parts))


@features_app.command("describe")
def features_describe(
    name: Annotated[str | None, typer.Argument(help="Feature group.")] = None,
) -> None:
    """Show a feature group's definition, offline store, live records and their ranges."""
    store = _store(writable=False)
    group = store.describe(name or state.settings.feature_group_name)
    info = group.describe()
    features = info.pop("features")
    rows = list(info.items())
    # How DataSource will read it: the latest-record rule's columns (feature_store/latest.py).
    rows += [
        ("event_time_type", group.event_time_kind),
        ("tie_breaks", ", ".join(group.tie_breaks) or "none"),
        ("delete_marker", group.delete_marker or "none"),
        (
            "definition",
            "the feature group's own"
            if group.managed
            else "record_identifier / event_time_feature from the config (read only)",
        ),
    ]
    summary = store.record_summary(group.name)
    if summary is not None:
        rows += [
            ("live_records", summary.live_records),
            (
                "id_range",
                f"{summary.id_min}–{summary.id_max}" if summary.id_min is not None else None,
            ),
            (
                "event_time_range",
                f"{summary.event_time_min} – {summary.event_time_max}"
                if summary.event_time_min is not None
                else None,
            ),
        ]
        if summary.unmatched_ids:
            rows.append(("ids_not_matching", f"{summary.unmatched_ids} (never scored)"))
    console.print(_kv_table(f"feature group {group.name}", rows))
    table = Table("feature", "type")
    for feature, kind in features.items():
        table.add_row(feature, kind)
    console.print(table)


@features_app.command("list")
def features_list(
    fmt: Annotated[str, typer.Option("--format", "-f", help=FORMAT_HELP)] = "table",
) -> None:
    """List feature groups."""
    names = _store(writable=False).list_feature_groups()
    if _check_format(fmt) == "json":
        _print_json([{"name": name} for name in names])
    elif fmt == "csv":
        _print_csv(["name"], [{"name": name} for name in names])
    else:
        for name in names:
            console.print(name)


# Models ---------------------------------------------------------------------------------------


def _registry(*, writable: bool = True) -> Any:
    from batchscore.registry import open_registry

    return open_registry(state.settings, writable=writable)


@models_app.command("list")
def models_list(
    group: Annotated[str | None, typer.Option(help="Model package group.")] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help=FORMAT_HELP)] = "table",
) -> None:
    """List versions, newest first, with their approval status."""
    _check_format(fmt)
    name = group or state.settings.model_package_group
    versions = _registry(writable=False).list_versions(name)
    fields = ["group", "version", "status", "created", "description", "source", "run_id"]
    records = [
        {"group": v.group, "version": v.version, "status": v.status,
         "created": v.created.isoformat(), "description": v.description, "source": v.source,
         "run_id": v.run_id}
        for v in versions
    ]  # fmt: skip
    if fmt == "json":
        _print_json(records)
        return
    if fmt == "csv":
        _print_csv(fields, records)
        return
    table = Table(
        Column("version", no_wrap=True, justify="right"),
        Column("status", no_wrap=True),
        Column("created (UTC)", no_wrap=True),
        Column("description", overflow="fold"),
        title=f"model package group {name}",
        title_justify="left",
    )
    for v in versions:
        table.add_row(
            str(v.version), v.status, f"{v.created:%Y-%m-%d %H:%M:%S}", Text(v.description)
        )
    console.print(table)
    if not versions:
        console.print("no versions yet: batchscore train", style="dim")
    else:
        console.print(f"details: batchscore models show VERSION --group {name}", style="dim")


@models_app.command("show")
def models_show(
    version: Annotated[int, typer.Argument(help="Version number.")],
    group: Annotated[str | None, typer.Option(help="Model package group.")] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table or json.")] = "table",
) -> None:
    """A version's signature (input columns and types), metrics, training data, status
    and its history."""
    if fmt not in ("table", "json"):
        raise ConfigError(f"--format {fmt!r} must be table or json.")
    from batchscore.registry.profiles import describe_source

    registry = _registry(writable=False)
    details = registry.describe_version(group or state.settings.model_package_group, version)
    profile_source = describe_source(state.settings, registry, details.version, details.profile)
    if fmt == "json":
        _print_json({**details.to_dict(), "profile_source": profile_source})
        return
    v = details.version
    training = details.training
    rows: list[tuple[str, Any]] = [
        ("status", v.status),
        ("created", f"{v.created:%Y-%m-%d %H:%M:%S} UTC"),
        ("source", v.source),
        ("run", v.run_id),
        ("description", v.description or None),
    ]
    if training:
        ids = training.get("id_range")
        rows += [
            ("trained on", f"{training.get('feature_group')} ids "
                           f"{ids[0]}–{ids[1]}" if ids else training.get("feature_group")),
            ("training rows", training.get("rows")),
            ("target", f"{training.get('target_column')} "
                       f"{json.dumps(training.get('target_distribution'))}"),
            ("trained at", training.get("trained_at")),
        ]  # fmt: skip
    rows.append(("profile", profile_source))
    if details.status_history is None:
        rows.append(("status history", "not recorded for this version"))
    else:
        history = " → ".join(f"{c.status} ({c.at[:19]})" for c in details.status_history)
        rows.append(("status history", history))
    console.print(_kv_table(f"model {v.group} v{v.version}", rows))
    if details.metrics:
        metrics = [(k, _round(m)) for k, m in sorted(details.metrics.items())]
        console.print(_kv_table("metrics", metrics))
    signature = Table(
        Column("input column", no_wrap=True),
        Column("type", no_wrap=True),
        Column("categories seen in training", overflow="fold"),
        title="signature",
        title_justify="left",
    )
    vocabularies = (details.profile or {}).get("category_vocabularies", {})
    for column, kind in (details.input_types or {}).items():
        signature.add_row(column, kind, Text(", ".join(vocabularies.get(column, []))))
    if details.input_types:
        console.print(signature)
    else:
        console.print("signature: none declared (columns come from the fitted model)")


def _set_status(version: int, status: str, group: str | None) -> None:
    name = group or state.settings.model_package_group
    registry = _registry()
    before = registry.get_version(name, version).status
    mv = registry.set_status(name, version, status)
    where = "" if group else " (the config's model_package_group; --group to choose another)"
    console.print(
        f"model package group {mv.group!r} v{mv.version}: {before} → {mv.status}{where}",
        markup=False,
        highlight=False,
    )


@models_app.command("approve")
def models_approve(
    version: Annotated[int, typer.Argument(help="Version number.")],
    group: Annotated[str | None, typer.Option(help="Model package group.")] = None,
) -> None:
    """Set a version's status to Approved (the pipeline scores with the newest Approved)."""
    _set_status(version, "Approved", group)


@models_app.command("reject")
def models_reject(
    version: Annotated[int, typer.Argument(help="Version number.")],
    group: Annotated[str | None, typer.Option(help="Model package group.")] = None,
) -> None:
    """Set a version's status to Rejected."""
    _set_status(version, "Rejected", group)


# Config ---------------------------------------------------------------------------------------


@config_app.command("show")
def config_show() -> None:
    """Print the effective settings (values read from ${VAR} are hidden)."""
    import yaml

    from batchscore.catalog import catalog_properties

    settings = state.settings
    shown = settings.redacted_dict(catalog=catalog_properties(settings))
    console.print(
        yaml.safe_dump(shown, sort_keys=False).rstrip(),
        markup=False,
        highlight=False,
    )
    unused = settings.unused_keys()
    if unused:
        console.print(
            f"# unused by the {settings.backend} backend: {', '.join(unused)}", style="dim"
        )
    # Shown, not required: this is where to look when another command finds no workspace.
    where = settings.workspace_path
    missing = (
        ""
        if where.is_dir()
        else " (does not exist: reading commands need one, writing commands create it)"
    )
    console.print(
        f"# workspace folder: {where}{missing}", style="dim", markup=False, highlight=False
    )


# Monitoring ---------------------------------------------------------------------------------


@app.command()
def evaluate(
    labels: Annotated[
        str,
        typer.Option(
            "--labels",
            help="Labels: a .parquet or .csv file, a folder of Parquet files, or a catalog "
            "table namespace.table.",
        ),
    ],
    date_from: Annotated[
        str | None, typer.Option("--from", help="First inference date, YYYY-MM-DD.")
    ] = None,
    date_to: Annotated[
        str | None, typer.Option("--to", help="Last inference date, YYYY-MM-DD.")
    ] = None,
    id_column: Annotated[
        str | None,
        typer.Option(help="The labels' customer column (default: record_identifier)."),
    ] = None,
    label_column: Annotated[
        str | None, typer.Option(help="The labels' outcome column (default: target_column).")
    ] = None,
    date_column: Annotated[
        str,
        typer.Option(
            help="The labels' column giving each label's inference date; auto: "
            "inference_date when present; none: a label applies to every prediction of its "
            "customer in the window."
        ),
    ] = "auto",
    fmt: Annotated[str, typer.Option("--format", "-f", help=FORMAT_HELP)] = "table",
) -> None:
    """Join late labels to the published predictions; record each run's realized metrics."""
    from batchscore.monitoring.labels import METRICS, evaluate_labels
    from batchscore.monitoring.table import monitoring_table_name

    _check_format(fmt)
    result = evaluate_labels(
        state.settings,
        labels,
        _parse_date(date_from, "--from"),
        _parse_date(date_to, "--to"),
        id_column=id_column,
        label_column=label_column,
        date_column=None if date_column.lower() == "none" else date_column,
    )
    runs = [run.to_dict() for run in result.runs]
    if fmt == "json":
        _print_json(result.to_dict())
        return
    if fmt == "csv":
        _print_csv(list(runs[0]) if runs else ["run_id"], runs)
        return
    # Dropped first when the console is narrow: the model, then precision and recall.
    metric_columns = [("accuracy", 0), ("precision", 3), ("recall", 3), ("F1", 0), ("ROC AUC", 0)]
    table, dropped = _fitting_table(
        [
            (Column("run", no_wrap=True), 0),
            (Column("date", no_wrap=True), 0),
            (Column("model", no_wrap=True), 4),
            (Column("labelled", no_wrap=True, justify="right"), 0),
            *((Column(name, no_wrap=True, justify="right"), p) for name, p in metric_columns),
        ],
        [
            [
                run.run.run_id,
                run.run.inference_date.isoformat(),
                f"v{run.run.model_version}",
                f"{run.labelled:,}/{run.predictions:,}",
                *("–" if run.metrics.get(m) is None else f"{run.metrics[m]:.3f}" for m in METRICS),
            ]
            for run in result.runs
        ],
        title=f"late labels: {result.source}",
        title_justify="left",
    )
    _print_fitted(table, dropped)
    joined_on = f"customer and {result.date_column}" if result.date_column else "customer"
    notes = [f"{result.labels:,} label(s) joined on {joined_on}"]
    if result.unmatched:
        notes.append(f"{result.unmatched:,} matched no prediction")
    if result.unlabelled:
        notes.append(f"{result.unlabelled:,} row(s) without a label skipped")
    console.print("; ".join(notes), style="dim", markup=False)
    console.print(
        f"{result.recorded} row(s) recorded in {monitoring_table_name(state.settings)} "
        "(check = 'late_labels')",
        style="dim",
        markup=False,
    )


# Operations ---------------------------------------------------------------------------------


@app.command()
def backfill(
    date_from: Annotated[str, typer.Option("--from", help="First logical date, YYYY-MM-DD.")],
    date_to: Annotated[str, typer.Option("--to", help="Last logical date, YYYY-MM-DD.")],
) -> None:
    """One run per date, each scoring features as of the end of its date."""
    from batchscore.pipeline import Pipeline

    start, end = _parse_date(date_from, "--from"), _parse_date(date_to, "--to")
    assert start is not None and end is not None
    with _progress() as progress:
        report = Pipeline(state.settings, progress=progress).backfill(start, end)
    errors = any(date.error for date in report.dates)
    table = Table("date", "run", "status", "rows", title="backfill", title_justify="left")
    if errors:
        table.add_column("error", overflow="fold")
    for date in report.dates:
        run = date.run
        row = [
            date.date.isoformat(),
            run.run_id if run else "–",
            date.status,
            _fmt(run.steps["BatchInference"].rows if run else None),
        ]
        table.add_row(*row, *([Text(date.error or "")] if errors else []))
    console.print(table)
    if report.failed:
        raise BatchScoreError(
            f"{report.failed} of {report.asked} date(s) did not succeed; "
            "see 'batchscore runs list --status failed'."
        )


@app.command()
def schedule(
    cron: Annotated[
        str | None,
        typer.Option(help="Cron expression in UTC, e.g. '0 2 * * *' (default: schedule_cron)."),
    ] = None,
    print_: Annotated[
        str | None,
        typer.Option(
            "--print", help="Print a unit for crontab, systemd or kubernetes instead of running."
        ),
    ] = None,
    max_runs: Annotated[int | None, typer.Option(help="Stop after this many runs.")] = None,
    image: Annotated[
        str | None,
        typer.Option(help="Container image for --print kubernetes (default: batchscore:VERSION)."),
    ] = None,
) -> None:
    """Run the pipeline on a cron schedule in the foreground (SIGTERM/SIGINT stop it).

    A printed unit runs the same configuration: -c and --set are carried, BATCHSCORE_* and
    ${VAR} variables are named (read from an env file or a Secret), never copied.
    """
    import signal

    from batchscore.scheduler import Scheduler, schedule_unit

    settings = state.settings
    expression = cron or settings.schedule_cron
    if expression is None:
        raise ConfigError("give --cron '0 2 * * *' or set schedule_cron in the config.")
    if print_ is not None:
        console.print(
            schedule_unit(
                print_,
                expression,
                settings,
                resolve_config_path(state.config),
                overrides=state.overrides,
                image=image,
            ),
            markup=False,
            highlight=False,
            end="",
        )
        return
    scheduler = Scheduler(settings, expression, max_runs=max_runs)
    signal.signal(signal.SIGTERM, scheduler.stop)
    signal.signal(signal.SIGINT, scheduler.stop)
    report = scheduler.run_forever()
    console.print(
        f"runs started: {len(report.started)}, failed: {len(report.failed)}, "
        f"skipped (previous run still going): {len(report.skipped)}"
    )


@app.command()
def clean(
    older_than: Annotated[str, typer.Option(help="Age, e.g. 30d, 12h, 90m.")] = "30d",
) -> None:
    """Remove run folders older than the given age (their history rows stay)."""
    from batchscore.runs import clean_runs, parse_age

    result = clean_runs(state.settings, parse_age(older_than))
    console.print(
        f"removed {len(result.removed)} run folder(s), {result.bytes_freed / 1e6:.1f} MB freed"
    )


@app.command()
def report(
    run_id: Annotated[str, typer.Argument(help="Run id.")],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Where to write (default: the run folder's report.html)."
        ),
    ] = None,
    runs: Annotated[
        int, typer.Option("--runs", help="Runs of the pipeline the trend charts show.")
    ] = 20,
) -> None:
    """Write a run's HTML report: check verdicts, drift, predictions, trends (opens offline)."""
    from batchscore.monitoring.report import write_report

    path = write_report(state.settings, run_id, output=output, trend_runs=runs)
    console.print(f"report: {path}", markup=False, highlight=False)


@runs_app.command("list")
def runs_list(
    status: Annotated[str | None, typer.Option(help="Only runs with this status.")] = None,
    pipeline: Annotated[str | None, typer.Option(help="Only runs of this pipeline.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 20,
    fmt: Annotated[str, typer.Option("--format", "-f", help=FORMAT_HELP)] = "table",
) -> None:
    """Runs, newest first (like list-pipeline-executions)."""
    from batchscore.runs import RunHistory, RunSummary

    _check_format(fmt)
    runs = RunHistory.for_settings(state.settings, writable=False).summaries(
        status=status, pipeline=pipeline, limit=limit
    )
    if fmt == "json":
        _print_json([r.to_dict() for r in runs])
        return
    if fmt == "csv":
        _print_csv(list(RunSummary.__dataclass_fields__), [r.to_dict() for r in runs])
        return
    # Run id, date, status and rows are never cut; the others go, last first, when narrow.
    table, dropped = _fitting_table(
        [
            (Column("run", no_wrap=True), 0),
            (Column("date", no_wrap=True), 0),
            (Column("status", no_wrap=True), 0),
            (Column("rows", no_wrap=True, justify="right"), 0),
            (Column("model", no_wrap=True), 2),
            (Column("seconds", no_wrap=True, justify="right"), 3),
            (Column("pipeline", overflow="fold"), 4),
            (Column("failed step", no_wrap=True), 1),
        ],
        [
            [
                r.run_id,
                r.logical_date,
                r.status,
                _fmt(r.rows),
                r.model or "",
                _fmt(r.seconds),
                r.pipeline_name,
                r.failed_step or "",
            ]
            for r in runs
        ],
        # Not a column of blanks when no run failed.
        hide=[] if any(r.failed_step for r in runs) else ["failed step"],
    )
    _print_fitted(table, dropped)
    for r in runs:
        if r.note:
            console.print(f"{r.run_id}: {r.status}: {r.note}", markup=False, highlight=False)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{column} {n:,}" for column, n in counts.items()) or "none"


@runs_app.command("show")
def runs_show(
    run_id: Annotated[str, typer.Argument(help="Run id.")],
    fmt: Annotated[str, typer.Option("--format", "-f", help=FORMAT_HELP)] = "table",
) -> None:
    """A run's steps, timings, metrics, what scoring noticed, and outputs."""
    from dataclasses import asdict

    from batchscore.runs import RunHistory

    _check_format(fmt)
    run = RunHistory.for_settings(state.settings, writable=False).get(run_id)
    if fmt == "json":
        _print_json(asdict(run))
        return
    if fmt == "csv":
        flat = _flatten(asdict(run) | {"steps": {s.step: asdict(s) for s in run.steps}})
        _print_csv(list(flat), [flat])
        return
    rows: list[tuple[str, Any]] = [
        ("status", run.status),
        ("pipeline_name", run.pipeline_name),
        ("logical_date", run.logical_date),
        ("as_of", run.as_of),
        ("model", run.model),
        ("output_table", run.output_table),
        ("write_mode", run.write_mode),
        ("config_fingerprint", run.config_fingerprint),
        ("started", run.started),
        ("ended", run.ended),
        ("seconds", run.seconds),
        ("startup_seconds", run.startup_seconds),
        ("run_dir", run.run_dir),
        ("log_path", run.log_path),
    ]
    if run.error:
        rows.append(("error", run.error))
    if run.verdict:
        rows.append(("checks", run.verdict))
    if run.accepted:
        rows.append(("accepted", f"by {run.accepted.get('by')} at {run.accepted.get('at')}"))
    if run.outputs_removed:
        rows.append(("outputs", "removed by 'batchscore clean'"))
    if run.note:
        rows.append(("note", run.note))
    console.print(_kv_table(f"run {run.run_id}", rows))
    steps = Table(
        Column("step", no_wrap=True),
        Column("status", no_wrap=True),
        Column("seconds", justify="right", no_wrap=True),
        Column("rows", justify="right", no_wrap=True),
        Column("rows/s", justify="right", no_wrap=True),
        Column("attempts", justify="right", no_wrap=True),
        Column("error", overflow="fold"),
    )
    for st in run.steps:
        steps.add_row(
            st.step, st.status, _fmt(st.seconds), _fmt(st.rows), _fmt(st.rows_per_second),
            _fmt(st.attempts), Text(st.error or ""),
        )  # fmt: skip
    console.print(steps)
    if run.duplicate_versions_skipped is not None or run.prediction_files:
        scoring = [
            *([("path", _scoring_text(run.scoring))] if run.scoring else []),
            ("skipped", f"{_fmt(run.duplicate_versions_skipped)} older versions, "
                        f"{_fmt(run.deleted_records_skipped)} deleted records"),
            ("unseen categories", f"{_counts(run.unseen_categories)} (scored as missing)"
             if run.unseen_categories else "none"),
            ("non-finite values", f"{_counts(run.non_finite_values)} (±inf scored as missing)"
             if run.non_finite_values else "none"),
        ]  # fmt: skip
        if run.unmatched_ids:
            scoring.append(("ids not matching", f"{run.unmatched_ids} (never scored)"))
        if run.ignored_columns:
            scoring.append(("ignored columns", ", ".join(run.ignored_columns)))
        console.print(_kv_table("scoring", scoring))
    if run.violations:
        violations = Table(Column("violation", overflow="fold"), title="checks beyond threshold",
                           title_justify="left")  # fmt: skip
        for line in run.violations:
            violations.add_row(Text(line))
        console.print(violations)
    if run.evaluation:
        keys = ("rows", "accuracy", "precision", "recall", "f1", "roc_auc", "confusion_matrix")
        console.print(_kv_table("evaluation", [(k, _round(run.evaluation.get(k))) for k in keys]))
    files = [
        ("input", ", ".join(run.input_files)),
        ("predictions", ", ".join(run.prediction_files)),
        ("evaluation", run.evaluation_path),
        ("checks", run.checks_path),
        ("table snapshot", run.table_snapshot),
        ("report", run.report_path),
    ]
    console.print(_kv_table("outputs", [(k, v) for k, v in files if v]))


@runs_app.command("logs")
def runs_logs(
    run_id: Annotated[str, typer.Argument(help="Run id.")],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing until the run ends.")
    ] = False,
    json_lines: Annotated[bool, typer.Option("--json", help="The JSON-lines log.")] = False,
) -> None:
    """Print a run's log; with --follow, until the run ends (exit 1 if its process died)."""
    import time

    from batchscore.runs import ABANDONED, RunHistory

    history = RunHistory.for_settings(state.settings, writable=False)
    run = history.get(run_id)
    path = Path(run.log_path)
    if json_lines:
        path = path.with_suffix(".jsonl")
    if not path.exists():
        raise BatchScoreError(
            f"the log of run {run_id} is gone ({path}); 'batchscore clean' may have removed it."
        )
    status = run.status
    with path.open() as handle:
        while True:
            line = handle.readline()
            if line:
                sys.stdout.write(line)
                continue
            if not follow or status != "running":
                break
            sys.stdout.flush()
            time.sleep(0.5)
            status = history.get(run_id).status  # then read what it wrote meanwhile
    sys.stdout.flush()
    if follow and status == ABANDONED:
        raise BatchScoreError(
            f"run {run_id} is no longer running (abandoned): its process is gone. Resume it: "
            f"batchscore resume {run_id}"
        )


@table_app.command("drop")
def table_drop(
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Drop the predictions table and delete its files (asks first)."""
    from batchscore.sinks import open_sink

    settings = state.settings
    if not yes:
        if not sys.stdin.isatty():
            raise ConfigError(
                f"dropping {settings.output_table} needs confirmation: "
                "pass --yes when running without a terminal."
            )
        if not typer.confirm(f"Drop {settings.output_table} and delete all its predictions?"):
            # Declining is an answer, not an interruption (130 is for Ctrl-C).
            err_console.print(f"{settings.output_table} was not dropped.", markup=False)
            raise typer.Exit(1)
    open_sink(settings).drop()
    console.print(f"dropped {settings.output_table}")


@table_app.command("list")
def table_list(
    fmt: Annotated[str, typer.Option("--format", "-f", help=FORMAT_HELP)] = "table",
) -> None:
    """Tables in the catalog (feature groups and predictions): rows, current snapshot, last
    commit."""
    from batchscore.catalog import list_tables, open_catalog

    _check_format(fmt)
    tables = list_tables(open_catalog(state.settings, writable=False))
    records = [t.to_dict() for t in tables]
    if fmt == "json":
        _print_json(records)
        return
    if fmt == "csv":
        _print_csv(["table", "rows", "snapshot_id", "last_commit", "last_run_id"], records)
        return
    table, dropped = _fitting_table(
        [
            (Column("table", overflow="fold"), 0),
            (Column("rows", justify="right", no_wrap=True), 0),
            (Column("last commit (UTC)", no_wrap=True), 0),
            (Column("snapshot", no_wrap=True), 1),
            (Column("by run", no_wrap=True), 2),
        ],
        [
            [
                Text(t.identifier),
                _fmt(t.rows),
                t.last_commit.isoformat(sep=" ", timespec="seconds") if t.last_commit else "never",
                str(t.snapshot_id or ""),
                t.last_run_id or "",
            ]
            for t in tables
        ],
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
        show_edge=False,
    )
    _print_fitted(table, dropped)
    if not tables:
        console.print("no tables yet: batchscore quickstart, or features create", style="dim")


@table_app.command("snapshots")
def table_snapshots(
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
) -> None:
    """The predictions table's snapshots (commits), newest first: the ids rollback takes."""
    from batchscore.sinks import open_sink

    settings = state.settings
    snapshots = open_sink(settings, writable=False).snapshots()[:limit]
    table = Table(
        Column("snapshot", no_wrap=True),
        Column("committed (UTC)", no_wrap=True),
        Column("run", no_wrap=True),
        Column("+rows", justify="right", min_width=5),
        Column("-rows", justify="right", min_width=5),
        title=f"{settings.output_table} (* = current)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    for snap in snapshots:
        table.add_row(
            f"{snap.snapshot_id}{'*' if snap.current else ''}",
            snap.committed.isoformat(sep=" ", timespec="seconds"),
            snap.run_id or snap.operation,
            _fmt(snap.added_rows),
            _fmt(snap.deleted_rows),
        )
    console.print(table)


@table_app.command("rollback")
def table_rollback(
    to_snapshot: Annotated[
        int, typer.Option("--to-snapshot", help="Snapshot id (see 'batchscore table snapshots').")
    ],
) -> None:
    """Make an earlier snapshot of the predictions table current again (one commit)."""
    from batchscore.sinks import open_sink

    settings = state.settings
    open_sink(settings).rollback(to_snapshot)
    console.print(f"{settings.output_table} rolled back to snapshot {to_snapshot}")


# Entry point ----------------------------------------------------------------------------------


def _redact(text: str) -> str:
    return state._settings.redact(text) if state._settings is not None else text


def _print_traceback(exc: BaseException) -> None:
    """The traceback as plain text, redacted (Rich's own rendering would escape the filter)."""
    text = "".join(traceback.format_exception(exc)).rstrip()
    err_console.print(_redact(text), markup=False, highlight=False)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so a stopped pod ends a run the way Ctrl-C does:
    the step recorded as failed (interrupted), the exit code 143."""


def _on_sigterm(signum: int, frame: Any) -> None:
    state.terminated = True
    raise Terminated("SIGTERM")


def _last_run() -> Any:
    """The run this process executed last, if any — without importing the runner (and
    pandas, pyiceberg, MLflow with it) when no command needed it: ``--help`` stays fast."""
    pipeline = sys.modules.get("batchscore.pipeline")
    return pipeline.last_run() if pipeline is not None else None


def _interrupted() -> int:
    """Say what was interrupted and how to continue; the exit code (130 SIGINT, 143 SIGTERM)."""
    signal_name = "SIGTERM" if state.terminated else "Ctrl-C"
    err_console.print(f"Interrupted ({signal_name}).", markup=False, highlight=False)
    record = _last_run()
    if record is not None and record.status != "succeeded":
        step = record.failed_step or "its first step"
        err_console.print(
            _for_console(
                f"Run {record.run_id} stopped at {step}; continue it with: "
                f"batchscore resume {record.run_id}"
            ),
            markup=False,
            highlight=False,
        )
    return 143 if state.terminated else 130


def _for_console(text: str) -> str:
    """``text`` as the console shows it: its resume commands with this command's options
    (:func:`_with_options`), then secrets redacted."""
    return _redact(_with_options(text))


def _with_options(text: str) -> str:
    """``text`` with each ``batchscore resume`` command in it given this command's global
    options (``-c FILE``, ``--set KEY=VALUE``): a resume must read the configuration the run
    was started with, so the command shown is one that can be pasted as it is."""
    import shlex

    options = [*(["-c", str(state.config)] if state.config else [])]
    for override in state.overrides:
        options += ["--set", override]
    if not options:
        return text
    return text.replace("batchscore resume ", f"batchscore {shlex.join(options)} resume ")


def _resume_hint(before: Any, exc: BaseException) -> str:
    """' Resume it: batchscore resume ID' when the error failed a run this command executed
    and resuming can get past it (not a refusal such as an overlapping id range)."""
    record = _last_run()
    message = str(exc)
    if record is None or record is before or record.status != "failed":
        return ""
    if not getattr(exc, "resumable", True):
        return ""
    command = f"batchscore resume {record.run_id}"
    return "" if command in message else f" Resume it: {command}"


# The options of ``batchscore`` itself, which go before the command.
GLOBAL_OPTIONS = ("-c", "--config", "--set", "-q", "--quiet", "--debug")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return (and, as a console script, exit with) the exit code."""
    import signal

    state.terminated = False
    before = _last_run()  # a run this command executes replaces it
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        # standalone_mode=False: an interrupted command *returns* 130 (typer turns Ctrl-C
        # into Exit(130)); an explicit typer.Exit returns its code.
        returned = app(args=argv, prog_name="batchscore", standalone_mode=False)
        code = returned if isinstance(returned, int) else 0
        if code == 130 or state.terminated:
            code = _interrupted()
    except BatchScoreError as exc:
        if state.debug:
            _print_traceback(exc)
        message = _for_console(str(exc) + _resume_hint(before, exc))
        err_console.print(f"Error: {message}", markup=False, highlight=False)
        code = exc.exit_code
    except (typer.Exit, click.exceptions.Exit) as exc:
        code = exc.exit_code
    except (typer.Abort, click.exceptions.Abort):
        err_console.print("Aborted.")
        code = 130
    except (TyperException, click.ClickException) as exc:
        # Usage errors (typer vendors its own click, so both kinds are caught).
        exc.show()  # type: ignore[union-attr]
        misplaced = getattr(exc, "option_name", None)
        if misplaced in GLOBAL_OPTIONS:
            context = getattr(exc, "ctx", None)
            command = context.command_path.removeprefix("batchscore ") if context else "COMMAND"
            err_console.print(
                f"{misplaced} is a global option: put it before the command: "
                f"batchscore {misplaced}{' KEY=VALUE' if misplaced == '--set' else ''} "
                f"{command} …",
                markup=False,
                highlight=False,
            )
        code = getattr(exc, "exit_code", 2)
    except KeyboardInterrupt:
        code = _interrupted()
    except Exception as exc:
        if state.debug:
            _print_traceback(exc)
        hint = "" if state.debug else " (--debug shows the traceback)"
        err_console.print(
            f"Error: {type(exc).__name__}: "
            f"{_for_console(str(exc) + _resume_hint(before, exc))}{hint}",
            markup=False,
            highlight=False,
        )
        code = 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    if argv is None:
        _skip_final_collection()
        sys.exit(code)
    return code


def _skip_final_collection() -> None:
    """Let the interpreter exit without garbage-collecting every object of every module one
    last time: with MLflow, scikit-learn and pyiceberg loaded, that final collection took
    1.2–1.8 s of ``batchscore run``'s wall time, after its last line was printed. The
    catalog's database connections, which that collection would have closed, are closed here
    first (SQLite then folds its WAL back and removes the ``-wal``/``-shm`` files); other
    objects still go away with the process, only the scan of millions of them is skipped."""
    import gc

    if "batchscore.workspace" in sys.modules:  # else no engine was opened
        sys.modules["batchscore.workspace"].dispose_engines()
    gc.disable()
    gc.freeze()


if __name__ == "__main__":
    main()
