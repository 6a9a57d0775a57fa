"""False-positive rate and precision at the operating point whose recall is closest to a target.

Numpy only: no torch, Qt or Slicer imports.

Rule: every distinct score is a threshold (score >= threshold is called malignant). For a
target recall, the candidates are the thresholds whose recall is closest to it (ties within
1e-9). Among them the lowest FPR wins, then the highest threshold. So with recalls 0.6
and 0.8 available, a target of 0.7 picks the 0.6 point, which has the lower FPR.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clipnodule.evaluation.metrics import check_binary_inputs

RECALL_TARGETS = (0.6, 0.7, 0.8, 0.9)

# Recall distances that differ by less than this count as ties (0.7 - 0.6 and 0.8 - 0.7
# differ by about 1e-16 in floating point).
TIE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class OperatingPoint:
    """Confusion counts and rates when scores >= `threshold` are called malignant."""

    threshold: float
    true_positives: int
    false_positives: int
    recall: float
    fpr: float
    precision: float


@dataclass(frozen=True)
class RecallRow:
    """The operating point chosen for one target recall."""

    target_recall: float
    point: OperatingPoint

    def as_dict(self) -> dict[str, float]:
        return {"target_recall": self.target_recall, "recall": self.point.recall, "fpr": self.point.fpr,
                "precision": self.point.precision, "threshold": self.point.threshold,
                "true_positives": self.point.true_positives, "false_positives": self.point.false_positives}


def operating_points(labels: np.ndarray, scores: np.ndarray) -> list[OperatingPoint]:
    """Return one operating point per distinct score, thresholds descending."""
    labels, scores = check_binary_inputs(labels, scores)
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores = scores[order]
    sorted_labels = labels[order]

    # The last row of each run of equal scores closes that threshold.
    run_ends = np.flatnonzero(np.r_[sorted_scores[1:] != sorted_scores[:-1], True])
    true_positives = np.cumsum(sorted_labels)[run_ends]
    false_positives = np.cumsum(1 - sorted_labels)[run_ends]
    n_positive = int(labels.sum())
    n_negative = labels.size - n_positive

    return [
        OperatingPoint(threshold=float(sorted_scores[end]), true_positives=int(tp), false_positives=int(fp),
                       recall=tp / n_positive, fpr=fp / n_negative, precision=tp / (tp + fp))
        for end, tp, fp in zip(run_ends, true_positives, false_positives)
    ]


def point_at_recall(points: list[OperatingPoint], target: float) -> OperatingPoint:
    """Return the point with recall closest to `target`; ties go to lower FPR, then higher threshold."""
    distances = np.array([abs(point.recall - target) for point in points])
    closest = distances <= distances.min() + TIE_TOLERANCE
    candidates = [point for point, keep in zip(points, closest) if keep]
    return min(candidates, key=lambda point: (point.fpr, -point.threshold))


def recall_table(labels: np.ndarray, scores: np.ndarray,
                 targets: tuple[float, ...] = RECALL_TARGETS) -> list[RecallRow]:
    """Return FPR and precision at the recall closest to each target."""
    points = operating_points(labels, scores)
    return [RecallRow(target_recall=target, point=point_at_recall(points, target)) for target in targets]
