"""The workspace's model cache: keyed by registry and artifact, verified before reuse, safe
for two processes fetching the same model at once. Real MLflow stores under tmp_path."""

from __future__ import annotations

import logging
import multiprocessing
from pathlib import Path

import pandas as pd
import pytest

from batchscore.config import Settings, load_settings
from batchscore.registry import open_registry
from batchscore.registry.mlflow import MlflowRegistry
from tests.reliability import record

GROUP = "cache-test"


def registry_settings(stores: Path, workspace: Path) -> Settings:
    return load_settings(
        None,
        overrides={
            "workspace": str(workspace),
            "registry": {
                "tracking_uri": f"sqlite:///{stores / 'mlflow.db'}",
                "artifact_location": (stores / "mlartifacts").as_uri(),
            },
        },
        env={},
    )


def register_small_model(settings: Settings, columns: list[str], classes: list[int]) -> None:
    """Register and approve a tiny classifier taking ``columns`` and predicting ``classes``."""
    from sklearn.linear_model import LogisticRegression

    frame = pd.DataFrame({c: [0.0, 1.0, 2.0, 3.0, 4.0, 5.0] for c in columns})
    target = [classes[0]] * 3 + [classes[1]] * 3
    registry = open_registry(settings)
    version = registry.register_sklearn(
        GROUP, LogisticRegression().fit(frame, target), frame, profile={}
    )
    registry.set_status(GROUP, version.version, "Approved")


def load_latest(settings: Settings):
    registry = open_registry(settings)
    return registry.load(registry.resolve(GROUP))


def test_a_recreated_registry_s_v1_is_not_the_cached_v1(tmp_path: Path) -> None:
    stores, workspace = tmp_path / "stores", tmp_path / "ws"
    settings = registry_settings(stores, workspace)
    register_small_model(settings, ["a"], [0, 1])
    first = load_latest(settings)
    assert (first.version.version, first.input_columns) == (1, ["a"])

    # The model is deleted and registered again: MLflow numbers from 1 again. (Deleting the
    # SQLite file instead leaves MLflow's cached engine writing to the deleted file.)
    open_registry(settings).client.delete_registered_model(GROUP)
    register_small_model(settings, ["b", "c"], [3, 7])
    second = load_latest(settings)
    assert second.version.version == 1
    assert (second.input_columns, second.classes) == (["b", "c"], [3, 7])
    record("model", "a recreated registry's v1 vs the cached v1", outcome="the new model loads")


def test_two_registries_sharing_a_workspace_each_get_their_own_model(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    one = registry_settings(tmp_path / "one", workspace)
    two = registry_settings(tmp_path / "two", workspace)
    register_small_model(one, ["a"], [0, 1])
    register_small_model(two, ["b"], [5, 6])
    assert load_latest(one).input_columns == ["a"]
    assert load_latest(two).input_columns == ["b"]
    assert load_latest(one).classes == [0, 1]  # and again, from the cache
    record("model", "two registries, one workspace cache", outcome="each loads its own v1")


def test_a_tampered_cache_is_detected_and_downloaded_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = registry_settings(tmp_path / "stores", tmp_path / "ws")
    register_small_model(settings, ["a"], [0, 1])
    registry = open_registry(settings)
    version = registry.resolve(GROUP)
    folder = registry._download(version)
    original = (folder / "model.skops").read_bytes()
    (folder / "model.skops").write_bytes(b"not the model")

    with caplog.at_level(logging.WARNING, logger="batchscore.registry.cache"):
        loaded = registry.load(version)
    assert loaded.input_columns == ["a"]
    assert "is corrupt or was changed" in caplog.text and "'model.skops'" in caplog.text
    assert (registry._download(version) / "model.skops").read_bytes() == original
    record("model", "a tampered cached model file", outcome="warning logged; downloaded again")


def _load_in_step(settings_json: str, cache_root: str, trials: int, barrier, results) -> None:
    """A worker process: for each trial, wait for the other worker, then load the model
    into that trial's empty cache at the same moment."""
    import json

    settings = load_settings(None, overrides=json.loads(settings_json), env={})
    for trial in range(trials):
        registry = MlflowRegistry(
            tracking_uri=settings.tracking_uri,
            artifact_location=settings.artifact_location,
            cache_dir=Path(cache_root) / f"trial-{trial}",
        )
        version = registry.resolve(GROUP)
        barrier.wait(timeout=120)
        try:
            loaded = registry.load(version)
            results.put((trial, "ok", loaded.input_columns))
        except Exception as exc:  # reported to the test, which fails on it
            results.put((trial, "error", f"{type(exc).__name__}: {exc}"))


def test_two_processes_loading_the_same_new_model_both_succeed(tmp_path: Path) -> None:
    import json

    trials = 12
    settings = registry_settings(tmp_path / "stores", tmp_path / "ws")
    register_small_model(settings, ["a", "b"], [0, 1])
    overrides = {"workspace": settings.workspace, "registry": settings.registry.model_dump()}
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    workers = [
        context.Process(
            target=_load_in_step,
            args=(json.dumps(overrides), str(tmp_path / "caches"), trials, barrier, results),
        )
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=300) for _ in range(2 * trials)]
    for worker in workers:
        worker.join(timeout=60)
    failures = [o for o in outcomes if o[1] != "ok"]
    assert failures == []
    assert all(o[2] == ["a", "b"] for o in outcomes)
    record(
        "concurrency",
        "two processes fetch the same new model into an empty cache",
        trials=trials,
        outcome="both load it every time",
    )


def test_a_model_in_use_is_never_deleted_by_a_slower_second_download(tmp_path: Path) -> None:
    """B starts downloading first; A asks for the same model meanwhile. A must reuse B's copy
    (waiting for B's lock), never have its folder deleted under it when B finishes."""
    import os
    import threading

    from batchscore.registry.cache import ModelCache

    cache = ModelCache(tmp_path / "models")
    key = {"registry": "test", "source": "s3://bucket/model.tar.gz"}
    b_downloading, go_b = threading.Event(), threading.Event()
    a_downloaded = threading.Event()

    def download(staging: Path, content: bytes) -> Path:
        (staging / "m").mkdir()
        (staging / "m" / "model.skops").write_bytes(content)
        return staging / "m"

    def slow_b(staging: Path) -> Path:
        b_downloading.set()
        go_b.wait(timeout=60)
        return download(staging, b"B")

    def fast_a(staging: Path) -> Path:
        a_downloaded.set()
        return download(staging, b"A")

    got: dict[str, Path] = {}
    b = threading.Thread(target=lambda: got.setdefault("b", cache.fetch(key, slow_b, label="B")))
    b.start()
    assert b_downloading.wait(timeout=60)
    a_result: dict[str, object] = {}

    def fetch_a() -> None:
        folder = cache.fetch(key, fast_a, label="A")
        a_result["fd"] = os.open(folder / "model.skops", os.O_RDONLY)  # A is reading it

    a = threading.Thread(target=fetch_a)
    a.start()
    # Without the lock A downloads and returns at once; with it, A waits for B. Give A a
    # moment either way (this only decides whether a broken cache is caught, never a pass).
    a.join(timeout=2)
    go_b.set()
    b.join(timeout=60)
    a.join(timeout=60)
    fd = a_result["fd"]
    assert os.fstat(fd).st_nlink == 1  # the file A holds open was not deleted under it
    os.close(fd)
    assert not a_downloaded.is_set()  # A reused B's copy instead of downloading again
    assert (got["b"] / "model.skops").read_bytes() == b"B"
