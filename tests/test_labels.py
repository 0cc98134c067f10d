"""Late labels: ``batchscore evaluate --labels`` joins labels to the published predictions by
customer and inference date and gives each run scikit-learn's metrics on the joined rows,
recorded once in the monitoring table however often it is run; unclear labels are refused with
the column named (exit 2) and record nothing.

The reference join is pandas over the predictions table as it is, independent of the DuckDB
join batchscore does.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

from batchscore.cli import main
from batchscore.feature_store import open_feature_store
from batchscore.monitoring.labels import evaluate_labels
from batchscore.monitoring.table import monitoring_table_name, read_monitoring
from batchscore.pipeline import Pipeline
from tests.helpers import cli, config_for, make_settings, table_rows

DAYS = (dt.date(2026, 5, 1), dt.date(2026, 5, 2))


@pytest.fixture(scope="module")
def scored(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """Two published runs (two dates) of ids 4000-4300, and labels for them: the true churn
    with a fifth flipped, a sample per date, ids never scored and rows without a label."""
    folder = tmp_path_factory.mktemp("labels")
    settings = make_settings(shared_dir, folder / "ws", customer_id_start=4000,
                             customer_id_end=4300)  # fmt: skip
    pipeline = Pipeline(settings)
    runs = [pipeline.run(date=day) for day in DAYS]
    assert all(r.status == "succeeded" for r in runs)

    features = open_feature_store(settings).latest_records(settings.feature_group_name, 4000, 4300)
    truth = features.to_table().to_pandas()[["customer_id", "churn"]]
    rng = np.random.default_rng(7)
    frames = []
    for day in DAYS:
        sample = truth.sample(frac=0.7, random_state=day.day).copy()
        flip = rng.random(len(sample)) < 0.2
        sample["churn"] = np.where(flip, 1 - sample["churn"], sample["churn"])
        sample["inference_date"] = day.isoformat()
        frames.append(sample)
    labels = pd.concat(frames, ignore_index=True)
    never_scored = pd.DataFrame(
        {"customer_id": ["CUST_999999", "CUST_999998"], "churn": [1, 0],
         "inference_date": DAYS[0].isoformat()}
    )  # fmt: skip
    labels = pd.concat([labels, never_scored], ignore_index=True)
    labels["churn"] = labels["churn"].astype("Int64")
    labels.loc[3, "churn"] = pd.NA  # no label yet: skipped
    path = folder / "labels.csv"
    labels.to_csv(path, index=False)
    return settings, runs, labels, path, config_for(settings, folder / "c.yaml")


def reference_metrics(predictions: pd.DataFrame, labels: pd.DataFrame, on: list[str]) -> dict:
    """scikit-learn's metrics per run on a pandas join of the predictions and the labels."""
    labels = labels.dropna(subset=["churn"]).copy()
    if "inference_date" in on:
        labels["inference_date"] = pd.to_datetime(labels["inference_date"]).dt.date
    joined = predictions.merge(labels, on=on)
    found = {}
    for run_id, rows in joined.groupby("run_id"):
        y, p, s = rows["churn"].astype(int), rows["prediction"], rows["prediction_probability"]
        found[run_id] = {
            "labelled": len(rows),
            "accuracy": accuracy_score(y, p),
            "precision": precision_score(y, p, zero_division=0),
            "recall": recall_score(y, p, zero_division=0),
            "f1": f1_score(y, p, zero_division=0),
            "roc_auc": roc_auc_score(y, s),
        }
    return found


def test_metrics_per_run_equal_scikit_learns_on_the_joined_rows(scored) -> None:
    settings, runs, labels, path, _ = scored
    predictions = table_rows(settings)
    predictions["inference_date"] = pd.to_datetime(predictions["inference_date"]).dt.date

    result = evaluate_labels(settings, path)

    expected = reference_metrics(predictions, labels, ["customer_id", "inference_date"])
    assert set(expected) == {r.run_id for r in runs}
    assert [e.run.run_id for e in result.runs] == [r.run_id for r in runs]  # oldest first
    for evaluation in result.runs:
        want = expected[evaluation.run.run_id]
        got = {"labelled": evaluation.labelled, **{m: evaluation.metrics[m] for m in want
                                                    if m != "labelled"}}  # fmt: skip
        assert got == pytest.approx(want, abs=1e-12)
        assert evaluation.predictions == int((predictions["run_id"] == evaluation.run.run_id).sum())
    assert result.date_column == "inference_date"
    assert result.unlabelled == 1
    assert result.unmatched == 2  # the two ids never scored
    assert result.labels == len(labels) - 1

    recorded = read_monitoring(settings, check="late_labels").to_pandas()
    for evaluation in result.runs:
        mine = recorded[recorded["run_id"] == evaluation.run.run_id]
        values = dict(zip(mine["statistic"], mine["value"], strict=True))
        assert values == pytest.approx(
            {**{m: evaluation.metrics[m] for m in ("accuracy", "precision", "recall", "f1",
                                                   "roc_auc")},
             "labelled_rows": float(evaluation.labelled)}
        )  # fmt: skip
        assert set(mine["status"]) == {"info"}
        assert set(mine["inference_date"]) == {evaluation.run.inference_date}


def test_undated_labels_apply_to_each_prediction_of_the_customer_in_the_window(scored) -> None:
    settings, runs, labels, _, _ = scored
    undated = labels[labels["inference_date"] == DAYS[0].isoformat()].drop(columns="inference_date")
    path = Path(settings.workspace) / "undated.parquet"
    undated.to_parquet(path)
    predictions = table_rows(settings)

    both = evaluate_labels(settings, path, record=False)
    assert [e.run.run_id for e in both.runs] == [r.run_id for r in runs]
    expected = reference_metrics(predictions, undated, ["customer_id"])
    for evaluation in both.runs:
        assert evaluation.metrics["f1"] == pytest.approx(expected[evaluation.run.run_id]["f1"])

    second = evaluate_labels(settings, path, date_from=DAYS[1], record=False)
    assert [e.run.run_id for e in second.runs] == [runs[1].run_id]


def test_the_cli_records_once_however_often_it_runs_and_query_shows_them(scored, capsys) -> None:
    settings, runs, _, path, config = scored
    assert main(["-c", str(config), "evaluate", "--labels", str(path)]) == 0
    first = capsys.readouterr().out
    for run in runs:
        assert run.run_id in first
    assert "12 row(s) recorded" in first  # 2 runs × (5 metrics + labelled rows)
    assert "2 matched no prediction" in first and "1 row(s) without a label" in first

    again = ["-c", str(config), "evaluate", "--labels", str(path), "--from", "2026-05-01",
             "--to", "2026-05-02"]  # fmt: skip
    assert main(again) == 0

    shown = cli(
        "-c", str(config), "query", "--format", "json",
        f'SELECT run_id, statistic, value FROM {monitoring_table_name(settings)} '
        "WHERE \"check\" = 'late_labels' ORDER BY run_id, statistic",
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    rows = json.loads(shown.stdout)
    assert len(rows) == 12  # not 24: the second evaluate replaced the first's rows
    assert {r["run_id"] for r in rows} == {r.run_id for r in runs}
    assert [r["statistic"] for r in rows[:6]] == [
        "accuracy", "f1", "labelled_rows", "precision", "recall", "roc_auc"
    ]  # fmt: skip


def test_labels_from_an_iceberg_table_written_by_plain_pyiceberg(scored) -> None:
    import pyarrow as pa
    from pyiceberg.catalog import load_catalog

    settings, _, labels, path, _ = scored
    # The name the catalog is opened under (a SqlCatalog keeps it with each table).
    catalog = load_catalog("batchscore", **settings.catalog)
    table_name = f"labels.{settings.athena_output_table}"
    catalog.create_namespace_if_not_exists("labels")
    frame = labels.dropna(subset=["churn"]).astype({"churn": "int64"})
    arrow = pa.Table.from_pandas(frame, preserve_index=False)
    catalog.create_table(table_name, schema=arrow.schema).append(arrow)

    from_table = evaluate_labels(settings, table_name, record=False)
    from_file = evaluate_labels(settings, path, record=False)
    assert [e.to_dict() for e in from_table.runs] == [e.to_dict() for e in from_file.runs]


@pytest.mark.parametrize(
    ("change", "options", "message"),
    [
        (lambda f: f.drop(columns="churn"), [],
         r"have no column 'churn' \(the config's target_column\); their columns: customer_id, "
         "inference_date"),
        (lambda f: f.rename(columns={"customer_id": "id"}), [], "have no column 'customer_id'"),
        (lambda f: f.rename(columns={"inference_date": "churn_date"}), [],
         "no 'inference_date' column but have 'churn_date'"),
        (lambda f: f.assign(churn="maybe"), [], "labels' 'churn' in "),
        (lambda f: f.assign(inference_date="first of May"), [],
         "labels' 'inference_date' in .* must be dates"),
        (lambda f: pd.concat([f.head(1), f.head(1).assign(churn=1 - f.head(1)["churn"])]), [],
         "different labels, e.g. customer_id"),
        (lambda f: f, ["--date-column", "labelled_on"], "--date-column 'labelled_on' is not"),
    ],
    ids=["no-target", "no-id", "unclear-date", "not-classes", "bad-dates", "disagree",
         "no-such-date-column"],
)  # fmt: skip
def test_unclear_labels_are_refused_naming_the_column(
    scored, tmp_path, capsys, change, options, message
) -> None:
    settings, _, labels, _, config = scored
    before = read_monitoring(settings).num_rows
    path = tmp_path / "labels.csv"
    change(labels.dropna(subset=["churn"])).to_csv(path, index=False)

    assert main(["-c", str(config), "evaluate", "--labels", str(path), *options]) == 2
    error = capsys.readouterr().err.replace("\n", "")
    assert error.startswith("Error: "), error
    assert re.search(message, error), error
    assert read_monitoring(settings).num_rows == before


def test_no_such_labels_and_no_match_are_errors(scored, tmp_path, capsys) -> None:
    _, _, labels, _, config = scored
    assert main(["-c", str(config), "evaluate", "--labels", str(tmp_path / "nope.csv")]) == 2
    assert "no such file, folder or table" in capsys.readouterr().err

    path = tmp_path / "later.csv"
    labels.assign(inference_date="2026-06-01").dropna(subset=["churn"]).drop_duplicates(
        ["customer_id"]
    ).to_csv(path, index=False)
    assert main(["-c", str(config), "evaluate", "--labels", str(path)]) == 2
    assert "matched a published prediction" in capsys.readouterr().err.replace("\n", " ")
