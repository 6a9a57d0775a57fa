"""Calibration metrics of malignancy probabilities: Brier score, expected calibration error, reliability bins.

Numpy and scikit-learn only: no torch, Qt or Slicer imports.

Binning: `n_bins` equal-width bins on [0, 1]. Bin b contains the probabilities p with
b/n_bins <= p < (b+1)/n_bins, and the last bin also contains p = 1. The expected
calibration error is sum over bins of (rows in bin / all rows) * |fraction malignant in
bin - mean probability in bin|; empty bins add nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import brier_score_loss

from clipnodule.errors import InputError

DEFAULT_BINS = 10


@dataclass(frozen=True)
class ReliabilityBins:
    """Per-bin counts, mean probability and observed fraction malignant (NaN in empty bins)."""

    edges: np.ndarray
    counts: np.ndarray
    mean_probability: np.ndarray
    fraction_positive: np.ndarray

    def as_dict(self) -> dict[str, list]:
        return {
            "edges": self.edges.tolist(),
            "counts": self.counts.tolist(),
            "mean_probability": [None if np.isnan(value) else float(value) for value in self.mean_probability],
            "fraction_positive": [None if np.isnan(value) else float(value) for value in self.fraction_positive],
        }


def check_probabilities(labels: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return labels and probabilities as arrays after checking values are 0/1 and in [0, 1]."""
    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if labels.shape != probabilities.shape or labels.ndim != 1:
        raise InputError(f"labels {labels.shape} and probabilities {probabilities.shape} must be 1-D arrays "
                         "of equal length")
    if not np.all(np.isin(labels, (0, 1))):
        raise InputError("labels must be 0 or 1")
    outside = ~((probabilities >= 0.0) & (probabilities <= 1.0))
    if outside.any():
        raise InputError(f"{int(outside.sum())} scores lie outside [0, 1] (for example "
                         f"{probabilities[outside][0]:.4g}); Brier score and calibration error need "
                         "probabilities, so evaluate a calibrated or ensemble probability column")
    return labels.astype(np.int64), probabilities


def brier_score(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Return the mean squared difference between probability and label."""
    labels, probabilities = check_probabilities(labels, probabilities)
    return float(brier_score_loss(labels, probabilities))


def reliability_bins(labels: np.ndarray, probabilities: np.ndarray, n_bins: int = DEFAULT_BINS) -> ReliabilityBins:
    """Group probabilities into equal-width bins and return the per-bin statistics."""
    labels, probabilities = check_probabilities(labels, probabilities)
    if n_bins < 1:
        raise InputError(f"number of calibration bins must be at least 1, got {n_bins}")

    edges = np.arange(n_bins + 1) / n_bins
    bin_index = np.clip(np.searchsorted(edges, probabilities, side="right") - 1, 0, n_bins - 1)
    counts = np.bincount(bin_index, minlength=n_bins)
    probability_sums = np.bincount(bin_index, weights=probabilities, minlength=n_bins)
    positive_sums = np.bincount(bin_index, weights=labels.astype(np.float64), minlength=n_bins)

    with np.errstate(invalid="ignore", divide="ignore"):
        mean_probability = np.where(counts > 0, probability_sums / counts, np.nan)
        fraction_positive = np.where(counts > 0, positive_sums / counts, np.nan)
    return ReliabilityBins(edges=edges, counts=counts, mean_probability=mean_probability,
                           fraction_positive=fraction_positive)


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray, n_bins: int = DEFAULT_BINS) -> float:
    """Return the count-weighted mean absolute gap between observed and predicted risk per bin."""
    bins = reliability_bins(labels, probabilities, n_bins)
    filled = bins.counts > 0
    gaps = np.abs(bins.fraction_positive[filled] - bins.mean_probability[filled])
    return float(np.sum(bins.counts[filled] * gaps) / bins.counts.sum())
