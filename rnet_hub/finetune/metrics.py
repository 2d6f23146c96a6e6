"""Validation and test metrics of a fine-tune, with scikit-learn, for the three tasks.

* single-label: accuracy, balanced accuracy, weighted and macro F1, macro one-vs-rest AUROC (softmax scores);
* multi-label: subset accuracy, weighted and macro F1 (threshold 0.5 on the sigmoid), macro AUROC over labels;
* regression: MAE, MSE, RMSE, R² (R² only with two or more targets that differ).

AUROC is the mean over the classes (labels) whose targets hold both positives and negatives: a class
absent from the split (or present in every sample) has no ROC curve and is left out of the mean; with
none left it is ``nan``. Every value is a plain ``float``; :func:`json_safe` turns ``nan`` into ``None``
for JSON.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

__all__ = ["auroc_macro", "compute", "json_safe", "metrics_function", "scores_of"]


def scores_of(task: str, logits: np.ndarray) -> np.ndarray:
    """The scores the metrics read: softmax (single-label), sigmoid (multi-label), the value (regression)."""
    logits = np.asarray(logits, dtype=np.float64)
    if task == "single_label":
        shifted = logits - logits.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        return exp / exp.sum(axis=1, keepdims=True)
    if task == "multi_label":
        return 1.0 / (1.0 + np.exp(-logits))
    return logits.reshape(-1)


def auroc_macro(onehot: np.ndarray, scores: np.ndarray) -> float:
    """Mean one-vs-rest AUROC over the columns of ``onehot`` that hold both 0 and 1 (``nan`` if none)."""
    from sklearn.metrics import roc_auc_score

    values = [roc_auc_score(onehot[:, k], scores[:, k]) for k in range(onehot.shape[1])
              if 0 < onehot[:, k].sum() < onehot.shape[0]]
    return float(np.mean(values)) if values else math.nan


def _single_label(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    labels = labels.astype(np.int64).reshape(-1)
    predicted = scores.argmax(axis=1)
    classes = list(range(scores.shape[1]))
    onehot = np.eye(scores.shape[1])[labels]
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "balanced_accuracy": float(balanced_accuracy_score(labels, predicted)),
        "f1_weighted": float(f1_score(labels, predicted, labels=classes, average="weighted", zero_division=0)),
        "f1_macro": float(f1_score(labels, predicted, labels=classes, average="macro", zero_division=0)),
        "auroc_macro": auroc_macro(onehot, scores),
    }


def _multi_label(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    truth = (labels >= 0.5).astype(np.int64)
    predicted = (scores >= 0.5).astype(np.int64)
    return {
        "accuracy": float(accuracy_score(truth, predicted)),  # subset accuracy: every label right
        "f1_weighted": float(f1_score(truth, predicted, average="weighted", zero_division=0)),
        "f1_macro": float(f1_score(truth, predicted, average="macro", zero_division=0)),
        "auroc_macro": auroc_macro(truth, scores),
    }


def _regression(labels: np.ndarray, values: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    labels = labels.astype(np.float64).reshape(-1)
    mse = float(mean_squared_error(labels, values))
    r2 = float(r2_score(labels, values)) if len(labels) > 1 and np.ptp(labels) > 0 else math.nan
    return {"mae": float(mean_absolute_error(labels, values)), "mse": mse, "rmse": math.sqrt(mse), "r2": r2}


def compute(task: str, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The task's metrics of ``logits`` (rows: samples) against ``labels`` (see the module docstring)."""
    scores = scores_of(task, logits)
    labels = np.asarray(labels)
    if task == "single_label":
        return _single_label(labels, scores)
    if task == "multi_label":
        return _multi_label(labels, scores)
    return _regression(labels, scores)


def metrics_function(task: str) -> Callable[[Any], dict[str, float]]:
    """The ``compute_metrics`` callable a ``Trainer`` calls with an ``EvalPrediction``."""

    def compute_metrics(prediction: Any) -> dict[str, float]:
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        return compute(task, logits, prediction.label_ids)

    return compute_metrics


def json_safe(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """``metrics`` with ``nan``/``inf`` as ``None`` and numpy scalars as Python numbers (valid JSON)."""
    result: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        result[key] = value
    return result
