"""Classification metrics, the same for training and for evaluation in BatchInference."""

from __future__ import annotations

from typing import Any

import numpy as np


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, y_score: np.ndarray
) -> dict[str, Any]:
    """Accuracy, precision, recall, F1, ROC AUC and the confusion matrix.

    Binary labels give the positive-class figures; more classes give weighted averages.
    ROC AUC is None when only one class is present (it is undefined then).
    """
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        f1_score,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    labels = sorted(set(np.unique(y_true)) | set(np.unique(y_pred)))
    binary = len(labels) <= 2 and set(labels) <= {0, 1}
    average = "binary" if binary else "weighted"
    try:
        auc = float(roc_auc_score(y_true, y_score)) if binary and len(set(y_true)) == 2 else None
    except ValueError:
        auc = None
    return {
        "rows": len(y_true),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "precision": float(precision_score(y_true, y_pred, average=average, zero_division=0)),
        "recall": float(recall_score(y_true, y_pred, average=average, zero_division=0)),
        "f1": float(f1_score(y_true, y_pred, average=average, zero_division=0)),
        "roc_auc": auc,
        "labels": [int(v) for v in labels],
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }
