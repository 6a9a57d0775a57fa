"""Vectorised patient-level bootstrap of AUROC and average precision with percentile intervals.

Numpy only, so 10,000 resamples take seconds (about 1.6 s for 856 patients with 1,300
nodules on 2 CPU cores). Each resample is a row of integer weights (how often each row
was drawn), and both metrics are computed from weighted counts per distinct score. No torch, Qt or Slicer imports.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from clipnodule.errors import InputError

logger = logging.getLogger(__name__)

# Resamples drawn per numpy call. A fixed value keeps the random stream, and so the
# intervals, identical for a given seed.
CHUNK_SIZE = 500

# Stop when this many times the requested resamples were drawn without collecting enough
# resamples that contain both classes.
MAX_DRAW_FACTOR = 100


@dataclass(frozen=True)
class ConfidenceInterval:
    """Point estimate with a two-sided percentile bootstrap interval."""

    estimate: float
    lower: float
    upper: float

    def as_dict(self) -> dict[str, float]:
        return {"estimate": self.estimate, "ci_lower": self.lower, "ci_upper": self.upper}


@dataclass(frozen=True)
class BootstrapResult:
    """AUROC and AUPRC intervals with the resampled values they come from."""

    auroc: ConfidenceInterval
    auprc: ConfidenceInterval
    auroc_samples: np.ndarray
    auprc_samples: np.ndarray
    n_resamples: int
    seed: int
    confidence: float
    redrawn_resamples: int


def _distinct_score_groups(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the ascending sort order of `scores` and the start index of each run of equal scores."""
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    return order, starts


def _group_counts(labels: np.ndarray, scores: np.ndarray,
                  weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return weighted positive and negative counts per distinct score, scores ascending."""
    order, starts = _distinct_score_groups(scores)
    sorted_weights = np.asarray(weights, dtype=np.float64)[:, order]
    sorted_labels = labels[order].astype(np.float64)

    positives = np.add.reduceat(sorted_weights * sorted_labels, starts, axis=1)
    negatives = np.add.reduceat(sorted_weights * (1.0 - sorted_labels), starts, axis=1)
    return positives, negatives


def weighted_auroc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Return the AUROC of each row of `weights` (shape resamples x rows); NaN where a class is absent.

    Equal to sklearn's roc_auc_score on the data with row i repeated weights[r, i] times:
    the Mann-Whitney statistic with ties counted one half.
    """
    positives, negatives = _group_counts(labels, scores, np.atleast_2d(weights))
    return _auroc_from_counts(positives, negatives)


def _auroc_from_counts(positives: np.ndarray, negatives: np.ndarray) -> np.ndarray:
    negatives_below = np.cumsum(negatives, axis=1) - negatives
    concordant = np.sum(positives * (negatives_below + 0.5 * negatives), axis=1)
    pairs = positives.sum(axis=1) * negatives.sum(axis=1)

    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, concordant / pairs, np.nan)


def weighted_average_precision(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Return the average precision of each row of `weights`; NaN where no positive was drawn.

    Equal to sklearn's average_precision_score on the data with row i repeated
    weights[r, i] times: the sum over descending thresholds of the recall increase times
    the precision at that threshold.
    """
    positives, negatives = _group_counts(labels, scores, np.atleast_2d(weights))
    return _average_precision_from_counts(positives, negatives)


def _average_precision_from_counts(positives: np.ndarray, negatives: np.ndarray) -> np.ndarray:
    true_positives = np.cumsum(positives[:, ::-1], axis=1)
    false_positives = np.cumsum(negatives[:, ::-1], axis=1)
    total_positives = true_positives[:, -1:]

    # A threshold with no drawn rows repeats the previous point, so its recall increase
    # is zero and the placeholder precision of 0 never counts.
    predicted = true_positives + false_positives
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, true_positives / predicted, 0.0)
        recall = true_positives / total_positives
    recall_increase = np.diff(recall, axis=1, prepend=0.0)
    average_precision = np.sum(recall_increase * precision, axis=1)
    return np.where(total_positives[:, 0] > 0, average_precision, np.nan)


def patient_resample_weights(patient_codes: np.ndarray, rng: np.random.Generator,
                             n_resamples: int) -> np.ndarray:
    """Draw `n_resamples` patient bootstrap samples and return per-row weights (resamples x rows).

    Each resample draws as many patients as there are, with replacement. Every row of a
    drawn patient (all its nodules at nodule level) gets that patient's draw count.
    """
    n_patients = int(patient_codes.max()) + 1
    drawn = rng.integers(0, n_patients, size=(n_resamples, n_patients))
    offsets = np.arange(n_resamples)[:, None] * n_patients
    patient_counts = np.bincount((drawn + offsets).ravel(), minlength=n_resamples * n_patients)
    return patient_counts.reshape(n_resamples, n_patients)[:, patient_codes]


def _valid_weight_chunks(labels: np.ndarray, patient_codes: np.ndarray, n_resamples: int,
                         seed: int) -> Iterator[tuple[np.ndarray, int]]:
    """Yield chunks of resample weights that contain both classes, and how many were redrawn."""
    rng = np.random.default_rng(seed)
    collected = 0
    drawn = 0
    while collected < n_resamples:
        if drawn >= MAX_DRAW_FACTOR * n_resamples:
            raise InputError(f"only {collected} of {drawn} bootstrap resamples contained both classes; "
                             "the data have too few benign or malignant patients for a bootstrap")

        weights = patient_resample_weights(patient_codes, rng, CHUNK_SIZE)
        drawn += CHUNK_SIZE
        positive_weight = weights @ labels
        negative_weight = weights.sum(axis=1) - positive_weight
        valid = (positive_weight > 0) & (negative_weight > 0)

        # In the chunk that completes the set, count only the discards before the last one kept.
        needed = n_resamples - collected
        valid_positions = np.flatnonzero(valid)[:needed]
        used = int(valid_positions[-1]) + 1 if valid_positions.size == needed else CHUNK_SIZE
        collected += valid_positions.size
        yield weights[valid_positions], used - valid_positions.size


def bootstrap_auroc_auprc(labels: np.ndarray, scores: np.ndarray, patient_codes: np.ndarray,
                          n_resamples: int = 10_000, seed: int = 0,
                          confidence: float = 0.95) -> BootstrapResult:
    """Bootstrap AUROC and AUPRC by patient and return percentile intervals.

    Resamples that lack benign or malignant cases are discarded and replaced by new
    draws, so exactly `n_resamples` resamples contribute; `redrawn_resamples` counts the
    discarded ones. With the same patients and seed, every model gets the same resamples.
    """
    labels = np.asarray(labels, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    patient_codes = np.asarray(patient_codes, dtype=np.int64)
    if n_resamples < 1:
        raise InputError(f"bootstrap resamples must be at least 1, got {n_resamples}")
    if not 0.0 < confidence < 1.0:
        raise InputError(f"confidence level must be between 0 and 1, got {confidence}")

    auroc_parts: list[np.ndarray] = []
    auprc_parts: list[np.ndarray] = []
    redrawn = 0
    for weights, discarded in _valid_weight_chunks(labels, patient_codes, n_resamples, seed):
        redrawn += discarded
        positives, negatives = _group_counts(labels, scores, weights)
        auroc_parts.append(_auroc_from_counts(positives, negatives))
        auprc_parts.append(_average_precision_from_counts(positives, negatives))

    if redrawn:
        logger.info("Redrew %d bootstrap resamples that lacked benign or malignant cases", redrawn)

    unit_weights = np.ones((1, labels.size))
    auroc_samples = np.concatenate(auroc_parts)
    auprc_samples = np.concatenate(auprc_parts)
    return BootstrapResult(
        auroc=_percentile_interval(float(weighted_auroc(labels, scores, unit_weights)[0]), auroc_samples,
                                   confidence),
        auprc=_percentile_interval(float(weighted_average_precision(labels, scores, unit_weights)[0]),
                                   auprc_samples, confidence),
        auroc_samples=auroc_samples,
        auprc_samples=auprc_samples,
        n_resamples=n_resamples,
        seed=seed,
        confidence=confidence,
        redrawn_resamples=redrawn,
    )


def _percentile_interval(estimate: float, samples: np.ndarray, confidence: float) -> ConfidenceInterval:
    tail = 100.0 * (1.0 - confidence) / 2.0
    lower, upper = np.percentile(samples, [tail, 100.0 - tail])
    return ConfidenceInterval(estimate=estimate, lower=float(lower), upper=float(upper))


@dataclass(frozen=True)
class PairedDifference:
    """Difference of a metric between two models bootstrapped on the same resamples."""

    estimate: float
    lower: float
    upper: float
    p_value: float

    def as_dict(self) -> dict[str, float]:
        return {"estimate": self.estimate, "ci_lower": self.lower, "ci_upper": self.upper,
                "p_value": self.p_value}


def paired_bootstrap_difference(first_estimate: float, second_estimate: float, first_samples: np.ndarray,
                                second_samples: np.ndarray, confidence: float = 0.95) -> PairedDifference:
    """Return first minus second with a percentile interval and a two-sided bootstrap p-value.

    Valid only when resample r of both sample arrays drew the same patients, which is true
    for the same patients, labels and seed. The p-value is twice the smaller share of
    resampled differences on either side of zero, capped at 1.
    """
    differences = np.asarray(first_samples) - np.asarray(second_samples)
    interval = _percentile_interval(first_estimate - second_estimate, differences, confidence)
    share_not_above = float(np.mean(differences <= 0.0))
    share_not_below = float(np.mean(differences >= 0.0))
    p_value = min(1.0, 2.0 * min(share_not_above, share_not_below))
    return PairedDifference(estimate=interval.estimate, lower=interval.lower, upper=interval.upper, p_value=p_value)
