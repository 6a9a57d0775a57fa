"""Point estimates of discrimination metrics (AUROC, AUPRC) and the curves behind them.

Wraps scikit-learn so every number matches it. No torch, Qt or Slicer imports.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from clipnodule.errors import InputError


@dataclass(frozen=True)
class Curve:
    """Points of a ROC curve (x = FPR, y = recall) or PR curve (x = recall, y = precision)."""

    x: np.ndarray
    y: np.ndarray


def check_binary_inputs(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return labels as int64 and scores as float64 after checking shape, values and classes."""
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.ndim != 1 or labels.shape != scores.shape:
        raise InputError(f"labels {labels.shape} and scores {scores.shape} must be 1-D arrays of equal length")
    if not np.all(np.isin(labels, (0, 1))):
        raise InputError(f"labels must be 0 or 1, found {sorted(set(np.unique(labels).tolist()) - {0, 1})}")
    if not np.all(np.isfinite(scores)):
        raise InputError(f"scores contain {int((~np.isfinite(scores)).sum())} NaN or infinite values")
    if np.unique(labels).size < 2:
        raise InputError("AUROC and AUPRC need both classes, but all labels are equal")
    return labels.astype(np.int64), scores


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Return the area under the ROC curve (ties count one half)."""
    labels, scores = check_binary_inputs(labels, scores)
    return float(roc_auc_score(labels, scores))


def auprc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Return the area under the precision-recall curve as average precision (step-wise, no interpolation)."""
    labels, scores = check_binary_inputs(labels, scores)
    return float(average_precision_score(labels, scores))


def roc_points(labels: np.ndarray, scores: np.ndarray) -> Curve:
    """Return the ROC curve with every distinct threshold kept."""
    labels, scores = check_binary_inputs(labels, scores)
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    return Curve(x=fpr, y=tpr)


def pr_points(labels: np.ndarray, scores: np.ndarray) -> Curve:
    """Return the precision-recall curve, recall decreasing to 0 as sklearn orders it."""
    labels, scores = check_binary_inputs(labels, scores)
    precision, recall, _ = precision_recall_curve(labels, scores)
    return Curve(x=recall, y=precision)
