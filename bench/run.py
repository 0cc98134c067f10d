"""batchscore against the alternatives, on the same rows and the same model, in one run.

    make bench                       # SIZES=1e5,1e6 by default
    make bench SIZES=1e5,1e6,1e7 REPEAT=3

For each size N it builds a feature group of N customers with two record versions each (2N
rows to deduplicate) and 20 features, trains and approves a model, then times, each in its own
process, each REPEAT times (the median is reported):

- batchscore: `batchscore run`, end to end (DataSource + BatchInference + Validate + Publish),
  local engine, `scoring: auto` (the compiled trees when the model allows);
- batchscore-ray: the same on the Ray engine (Ray started by the run on this machine);
- floor: the same model's predict_proba on the already-deduplicated rows, preloaded in memory;
- compiled-floor: the same model compiled to native code (and its preprocessing vectorised where
  batchscore can) on the same preloaded rows — the new limit;
- seed: the proof of concept's way: pandas reads the whole offline table, sorts, drops
  duplicates, predicts, writes CSV;
- mlflow: `mlflow models predict` on the same deduplicated rows (CSV), `--env-manager local`.

Optional contenders: batchscore-library (`scoring: library`: the model's own predict_proba) and
batchscore-nochecks (`checks: {enabled: false}`: what the checks cost).

Wall seconds are the whole process for batchscore, the seed's way and mlflow (imports included),
and the scoring calls alone for the two floors. Peak RSS is the process's VmHWM. The harness
checks that every contender produced the same probabilities for the same customers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

import data  # noqa: E402  (bench/data.py, beside this file)

BIN = Path(sys.executable).parent


def _high_water_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None
    return None


def measure(command: list[str], env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MiB, stdout) of one process.

    Peak RSS is the child's VmHWM (its own address space's high-water mark), read every 20 ms
    until it exits. Not ru_maxrss: Linux carries that across exec from the spawning process,
    so every child would report this harness's size.
    """
    import tempfile

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        process = subprocess.Popen(
            command, stdout=out, stderr=err, env={**os.environ, **(env or {})}
        )
        peak = 0.0
        while process.poll() is None:
            peak = max(peak, _high_water_mib(process.pid) or 0.0)
            time.sleep(0.02)
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        if process.returncode != 0:
            raise RuntimeError(
                f"{command[:3]} failed ({process.returncode}):\n{err.read()[-3000:]}"
            )
        return wall, peak, out.read()


def setup_size(customers: int, root: Path, reuse: bool = False) -> dict:
    """Feature group, approved model, the deduplicated rows: everything the contenders share.

    With ``reuse``, a workspace set up by an earlier run of the harness is used as it is."""
    from batchscore.config import load_settings
    from batchscore.feature_store import open_feature_store
    from batchscore.pipeline import Pipeline
    from batchscore.registry import open_registry
    from batchscore.training import train_model

    workspace = root / f"n{customers}"
    if reuse and (workspace / "setup.json").exists():
        import pyarrow.parquet as pq

        setup = json.loads((workspace / "setup.json").read_text())
        if not Path(setup["model_file"]).exists():  # set up before the content-keyed cache
            setup["model_file"] = _model_file(workspace, setup["model_uri"].rsplit("/", 1)[1])
        setup.update(_outputs(workspace))  # the contenders read setup.json, not this dict
        (workspace / "setup.json").write_text(json.dumps(setup))
        ids = pq.read_table(setup["dedup_dir"], columns=["customer_id"]).column(0)
        print(f"  reusing {workspace}", flush=True)
        _write_variant_configs(Path(setup["config"]))
        return {**setup, "ids": ids.to_pylist(), "setup_file": str(workspace / "setup.json")}
    if workspace.exists():
        shutil.rmtree(workspace)
    overrides = {
        "workspace": str(workspace), "feature_group_name": "bench_features",
        "model_package_group": "bench-model", "customer_id_start": 1,
        "customer_id_end": customers, "target_column": None, "batch_size": 200_000,
        "athena_output_table": "bench_predictions",
    }  # fmt: skip
    settings = load_settings(overrides=overrides, env={})
    config = workspace / "bench.yaml"
    workspace.mkdir(parents=True)
    import yaml

    config.write_text(yaml.safe_dump(overrides))
    _write_variant_configs(config)
    store = open_feature_store(settings)
    began = time.perf_counter()
    data.fill_feature_group(store, "bench_features", customers)
    print(
        f"  feature group: {2 * customers:,} rows in {time.perf_counter() - began:.1f}s", flush=True
    )
    registry = open_registry(settings.model_copy(update={"target_column": "label"}))
    trained = train_model(
        settings.model_copy(update={"target_column": "label"}),
        store,
        registry,
        id_start=1,
        id_end=min(customers, 50_000),
    )
    version = registry.set_status("bench-model", trained.version.version, "Approved")
    warm = Pipeline(settings).run()  # also caches the model; its snapshot is the dedup input
    dedup_dir = Path(warm.run_dir) / "input"
    table = store.iceberg_table("bench_features")  # type: ignore[attr-defined]
    offline = [t.file.file_path.removeprefix("file://") for t in table.scan().plan_files()]
    numeric, categorical = data.NUMERIC, data.CATEGORICAL
    # mlflow's input: the deduplicated rows as CSV, numbers written as floats (its schema
    # enforcement refuses int64 where the signature says double).
    import pyarrow.parquet as pq

    frame = pq.read_table(dedup_dir).to_pandas()
    csv = workspace / "dedup.csv"
    frame[[*numeric, *categorical]].astype({c: "float64" for c in numeric}).to_csv(
        csv, index=False, float_format="%.17g"
    )
    setup = {
        "config": str(config), "workspace": str(workspace), "dedup_dir": str(dedup_dir),
        "model_file": _model_file(workspace, version.version), "numeric": numeric,
        "categorical": categorical, "offline_files": offline, "id_start": 1,
        "id_end": customers, **_outputs(workspace), "mlflow_in": str(csv),
        "tracking_uri": settings.tracking_uri,
        "model_uri": f"models:/bench-model/{version.version}",
        "rows": len(frame), "ids": frame["customer_id"].tolist(),
    }  # fmt: skip
    (workspace / "setup.json").write_text(
        json.dumps({k: v for k, v in setup.items() if k != "ids"})
    )
    setup["setup_file"] = str(workspace / "setup.json")
    return setup


def _model_file(workspace: Path, version: int | str) -> str:
    """The approved model's file in the workspace's model cache (the run just fetched it)."""
    for manifest in (workspace / "models").glob("*/manifest.json"):
        key = json.loads(manifest.read_text())["key"]
        if key["group"] == "bench-model" and str(key["version"]) == str(version):
            return str(manifest.parent / "model" / "model.skops")
    raise FileNotFoundError(f"bench-model version {version} is not in {workspace / 'models'}")


def _outputs(workspace: Path) -> dict[str, str]:
    """Where the contenders that do not publish write their probabilities."""
    return {
        "floor_out": str(workspace / "floor.parquet"),
        "compiled_floor_out": str(workspace / "compiled-floor.parquet"),
        "seed_out": str(workspace / "seed.csv"),
        "mlflow_out": str(workspace / "mlflow.json"),
    }


# batchscore's variants: the config beside bench.yaml each runs with, and its predictions table
# (each its own, so every variant's rows stay to be checked against the others).
VARIANTS = {
    "batchscore": {},
    "batchscore-ray": {"engine": "ray", "athena_output_table": "bench_predictions_ray"},
    "batchscore-library": {"scoring": "library", "athena_output_table": "bench_predictions_lib"},
    "batchscore-nochecks": {
        "checks": {"enabled": False}, "athena_output_table": "bench_predictions_nochecks",
    },
}  # fmt: skip


def _variant_config(config: Path, name: str) -> Path:
    return config if name == "batchscore" else config.with_name(f"{name}.yaml")


def _write_variant_configs(config: Path) -> None:
    """``batchscore-ray.yaml`` … beside ``config``: the same settings but the variant's."""
    import yaml

    settings = yaml.safe_load(config.read_text())
    for name, updates in VARIANTS.items():
        if name != "batchscore":
            _variant_config(config, name).write_text(yaml.safe_dump({**settings, **updates}))


def run_contender(name: str, setup: dict) -> dict:
    env = {"MLFLOW_DISABLE_TELEMETRY": "true"}
    if name in VARIANTS:
        config = str(_variant_config(Path(setup["config"]), name))
        wall, rss, _ = measure([str(BIN / "batchscore"), "-q", "-c", config, "run"], env)
        from batchscore.runs import RunHistory

        run = RunHistory(Path(setup["workspace"]) / "runs.db").list_runs(limit=1)[0]
        history = RunHistory(Path(setup["workspace"]) / "runs.db")
        details = history.get(run["run_id"])
        steps = {s.step: s.seconds for s in details.steps}
        assert details.status == "succeeded", f"{name}: run {run['run_id']} {details.status}"
        return {
            "wall": wall,
            "rss": rss,
            "rows": run["rows"],
            "run_id": run["run_id"],
            "steps": steps,
            "config": config,
        }
    if name in ("floor", "compiled-floor", "seed"):
        wall, rss, out = measure(
            [sys.executable, str(HERE / "contenders.py"), name, setup["setup_file"]], env
        )
        inner = json.loads(out.strip().splitlines()[-1])
        return {
            "wall": inner["seconds"] if name.endswith("floor") else wall,
            "rss": rss,
            "rows": inner["rows"],
        }
    if name == "mlflow":
        env.update(
            {
                "MLFLOW_TRACKING_URI": setup["tracking_uri"],
                "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true",
            }
        )
        wall, rss, _ = measure(
            [
                str(BIN / "mlflow"),
                "models",
                "predict",
                "-m",
                setup["model_uri"],
                "-i",
                setup["mlflow_in"],
                "-t",
                "csv",
                "-o",
                setup["mlflow_out"],
                "--env-manager",
                "local",
            ],
            env,
        )
        return {"wall": wall, "rss": rss, "rows": setup["rows"]}
    raise ValueError(name)


def check_equal(setup: dict, runs: dict[str, list[dict]]) -> list[str]:
    """Every contender gave the same probability for the same customer as ``batchscore`` (or
    the first batchscore variant that ran): within 1e-12 for what keeps binary floats, to the
    text's precision for the seed's CSV and mlflow's JSON. Returns the contenders compared."""
    import pandas as pd

    from batchscore.catalog import open_catalog
    from batchscore.config import load_settings
    from batchscore.queries import run_query

    def published(result: dict) -> pd.Series:
        settings = load_settings(result["config"], env={})
        table = run_query(
            open_catalog(settings),
            "SELECT customer_id, prediction_probability AS p "
            f"FROM {settings.output_table} WHERE run_id = ?",
            [result["run_id"]],
        )
        return table.to_pandas().set_index("customer_id").p.sort_index()

    def output(name: str) -> pd.Series:
        if name in VARIANTS:
            return published(runs[name][-1])
        if name in ("floor", "compiled-floor"):
            path = setup["floor_out" if name == "floor" else "compiled_floor_out"]
            return pd.read_parquet(path).set_index("customer_id").p.sort_index()
        if name == "seed":
            seed = pd.read_csv(setup["seed_out"]).set_index("customer_id")
            return seed.prediction_probability.sort_index()
        predictions = json.loads(Path(setup["mlflow_out"]).read_text())["predictions"]
        return pd.Series(
            [row[-1] if isinstance(row, list) else row for row in predictions], index=setup["ids"]
        ).sort_index()

    names = list(runs)
    base = next((n for n in names if n in VARIANTS), names[0])
    ours = output(base)
    for name in names:
        if name == base:
            continue
        other = output(name)
        assert list(other.index) == list(ours.index), f"{name}: different customers"
        as_text = name in ("seed", "mlflow")
        np.testing.assert_allclose(
            other.to_numpy(), ours.to_numpy(), rtol=1e-7 if as_text else 0,
            atol=1e-9 if as_text else 1e-12, err_msg=f"{name}: different probabilities from {base}",
        )  # fmt: skip
    return names


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default=os.environ.get("SIZES", "1e5,1e6"))
    parser.add_argument("--repeat", type=int, default=int(os.environ.get("REPEAT", "3")))
    parser.add_argument("--workdir", default=os.environ.get("BENCH_DIR", "/tmp/batchscore-bench"))
    parser.add_argument(
        "--contenders", default="batchscore,batchscore-ray,floor,compiled-floor,seed,mlflow"
    )
    parser.add_argument(
        "--reuse", action="store_true", help="use a size's workspace from an earlier run as is"
    )
    args = parser.parse_args()
    contenders = args.contenders.split(",")
    root = Path(args.workdir)
    results = []
    for size in (int(float(s)) for s in args.sizes.split(",")):
        print(f"N = {size:,} customers ({2 * size:,} rows)", flush=True)
        setup = setup_size(size, root, reuse=args.reuse)
        runs: dict[str, list[dict]] = {name: [] for name in contenders}
        for repeat in range(args.repeat):
            for name in contenders:
                result = run_contender(name, setup)
                runs[name].append(result)
                print(
                    f"  {name:<12} run {repeat + 1}: {result['wall']:8.2f}s  "
                    f"{result['rss']:8.0f} MiB",
                    flush=True,
                )
        compared = check_equal(setup, runs)
        print(f"  results checked equal across {', '.join(compared)}", flush=True)

        against = {
            key: statistics.median(r["wall"] for r in runs[name]) if name in runs else None
            for key, name in (
                ("floor", "floor"), ("compiled_floor", "compiled-floor"), ("seed", "seed")
            )
        }  # fmt: skip
        for name in contenders:
            wall = statistics.median(r["wall"] for r in runs[name])
            rss = statistics.median(r["rss"] for r in runs[name])
            row = {
                "customers": size,
                "contender": name,
                "wall_s": round(wall, 3),
                "rows_per_s": round(setup["rows"] / wall),
                "peak_rss_mib": round(rss),
                **{f"x_{k}": round(wall / v, 2) if v else None for k, v in against.items()},
                "runs_s": [round(r["wall"], 2) for r in runs[name]],
            }
            if name.startswith("batchscore"):
                row["steps_s"] = {
                    k: statistics.median(r["steps"][k] for r in runs[name])
                    for k in runs[name][0]["steps"]
                }
            results.append(row)
    print()
    print(
        "| customers | contender | wall s (median) | rows/s | peak RSS MiB | × floor "
        "| × compiled floor | × seed |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        ratios = " | ".join(
            "–" if r[k] is None else f"{r[k]:.2f}"
            for k in ("x_floor", "x_compiled_floor", "x_seed")
        )
        print(
            f"| {r['customers']:,} | {r['contender']} | {r['wall_s']:.2f} | "
            f"{r['rows_per_s']:,} | {r['peak_rss_mib']:,} | {ratios} |"
        )
    for r in results:
        if "steps_s" in r:
            steps = ", ".join(f"{k} {v:.2f}s" for k, v in r["steps_s"].items())
            print(f"{r['contender']} steps at {r['customers']:,}: {steps}")
    out = root / "results.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
