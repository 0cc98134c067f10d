"""The synthetic churn data is realistic enough to mean something."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc

from batchscore import demo


def test_shape_ids_versions_missing_and_deletes() -> None:
    data = demo.generate_churn_data(5000, seed=42)
    t = data.records
    ids = t.column("customer_id").to_pylist()
    assert min(ids) == "CUST_000001" and max(ids) == "CUST_005000"
    assert len(set(ids)) == 5000
    versions = t.num_rows / 5000
    assert 1.2 < versions < 1.6  # some customers have two or three versions
    assert max(np.unique(ids, return_counts=True)[1]) == 3
    features = [c for c in t.column_names if c not in ("customer_id", "event_time", "churn")]
    assert len(features) == 12
    numeric = [c for c in features if demo.FEATURES[c] != "String"]
    assert len(numeric) >= 6 and len(features) - len(numeric) >= 4
    missing = {c: t.column(c).null_count / t.num_rows for c in features}
    assert 0.01 < max(missing.values()) < 0.06
    assert len(data.deleted_ids) == 50  # 1%
    assert 0.15 < pc.mean(t.column("churn")).as_py() < 0.5


def test_deterministic_for_a_seed() -> None:
    a = demo.generate_churn_data(300, seed=7).records
    b = demo.generate_churn_data(300, seed=7).records
    assert a.equals(b)
    assert not a.equals(demo.generate_churn_data(300, seed=8).records)


def test_labels_are_learnable_but_noisy() -> None:
    from sklearn.metrics import roc_auc_score

    from batchscore.training import build_pipeline, training_frame

    t = demo.generate_churn_data(5000, seed=42).records
    numbers = np.array([int(i[5:]) for i in t.column("customer_id").to_pylist()])
    numeric = [c for c, k in demo.FEATURES.items() if k != "String" and c != "churn"]
    categorical = [
        c
        for c, k in demo.FEATURES.items()
        if k == "String" and c not in ("customer_id", "event_time")
    ]
    train, test = t.filter(numbers <= 4000), t.filter(numbers > 4000)
    model = build_pipeline(numeric, categorical).fit(
        training_frame(train, numeric, categorical), train.column("churn").to_numpy()
    )
    score = model.predict_proba(training_frame(test, numeric, categorical))[:, 1]
    auc = roc_auc_score(test.column("churn").to_numpy(), score)
    assert 0.75 < auc < 0.9
