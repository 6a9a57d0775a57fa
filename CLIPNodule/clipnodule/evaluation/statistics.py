"""Statistics across cross-validation folds: mean, SD and t interval, and paired model comparisons.

Two models: Wilcoxon signed-rank test on per-fold metrics. Three or more: Friedman
chi-square test, then pairwise Nemenyi tests on the mean ranks. SciPy only: no torch,
Qt or Slicer imports.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from clipnodule.errors import InputError


@dataclass(frozen=True)
class FoldSummary:
    """Mean, sample SD (ddof=1) and t-distribution interval of one metric over folds."""

    values: tuple[float, ...]
    mean: float
    sd: float
    ci_lower: float
    ci_upper: float

    def as_dict(self) -> dict[str, object]:
        return {"values": list(self.values), "mean": self.mean, "sd": self.sd, "ci_lower": self.ci_lower,
                "ci_upper": self.ci_upper}


@dataclass(frozen=True)
class TestResult:
    """A hypothesis test: its name, statistic and p-value (None with a reason when undefined)."""

    test: str
    statistic: float | None
    p_value: float | None
    note: str = ""

    def as_dict(self) -> dict[str, object]:
        return {"test": self.test, "statistic": self.statistic, "p_value": self.p_value, "note": self.note}


def summarize_folds(values: list[float] | np.ndarray, confidence: float = 0.95) -> FoldSummary:
    """Return mean, SD and the interval mean +- t(n-1) * SD / sqrt(n) over the fold values."""
    array = np.asarray(values, dtype=np.float64)
    if array.size < 2:
        raise InputError(f"a fold summary needs at least 2 folds, got {array.size}")

    mean = float(array.mean())
    sd = float(array.std(ddof=1))
    half_width = float(stats.t.ppf(0.5 + confidence / 2.0, df=array.size - 1)) * sd / math.sqrt(array.size)
    return FoldSummary(values=tuple(array.tolist()), mean=mean, sd=sd, ci_lower=mean - half_width,
                       ci_upper=mean + half_width)


def wilcoxon_signed_rank(first: np.ndarray, second: np.ndarray) -> TestResult:
    """Return the two-sided Wilcoxon signed-rank test of paired per-fold values.

    With five folds the smallest possible two-sided exact p-value is 2/32 = 0.0625.
    """
    first = np.asarray(first, dtype=np.float64)
    second = np.asarray(second, dtype=np.float64)
    if first.shape != second.shape:
        raise InputError(f"paired tests need the same number of folds, got {first.size} and {second.size}")
    if np.allclose(first, second, rtol=0.0, atol=0.0):
        return TestResult("wilcoxon", None, None, "all paired differences are zero")

    result = stats.wilcoxon(first, second, alternative="two-sided")
    return TestResult("wilcoxon", float(result.statistic), float(result.pvalue))


def friedman_test(samples: np.ndarray) -> TestResult:
    """Return the Friedman chi-square test of `samples` (models x folds)."""
    samples = np.asarray(samples, dtype=np.float64)
    if samples.ndim != 2 or samples.shape[0] < 3:
        raise InputError(f"the Friedman test needs at least 3 models, got an array of shape {samples.shape}")
    result = stats.friedmanchisquare(*samples)
    return TestResult("friedman", float(result.statistic), float(result.pvalue))


def mean_ranks(samples: np.ndarray) -> np.ndarray:
    """Return each model's mean rank over folds (rank 1 = highest metric in that fold, ties averaged)."""
    samples = np.asarray(samples, dtype=np.float64)
    ranks = stats.rankdata(-samples, axis=0, method="average")
    return ranks.mean(axis=1)


def nemenyi_critical_difference(n_models: int, n_folds: int, alpha: float = 0.05) -> float:
    """Return the mean-rank difference at which the Nemenyi test reaches `alpha`.

    CD = q_alpha * sqrt(k (k + 1) / (6 N)), where q_alpha is the studentized range
    quantile for k groups and infinite degrees of freedom, divided by sqrt(2).
    """
    q_alpha = stats.studentized_range.ppf(1.0 - alpha, n_models, np.inf) / math.sqrt(2.0)
    return float(q_alpha * math.sqrt(n_models * (n_models + 1) / (6.0 * n_folds)))


def nemenyi_test(samples: np.ndarray) -> np.ndarray:
    """Return the matrix of pairwise Nemenyi p-values for `samples` (models x folds)."""
    samples = np.asarray(samples, dtype=np.float64)
    n_models, n_folds = samples.shape
    ranks = mean_ranks(samples)
    standard_error = math.sqrt(n_models * (n_models + 1) / (6.0 * n_folds))

    p_values = np.ones((n_models, n_models))
    for i, j in itertools.combinations(range(n_models), 2):
        q = abs(ranks[i] - ranks[j]) / standard_error * math.sqrt(2.0)
        p_values[i, j] = p_values[j, i] = float(stats.studentized_range.sf(q, n_models, np.inf))
    return p_values


def compare_models(names: list[str], samples: np.ndarray, alpha: float = 0.05) -> dict[str, object]:
    """Compare per-fold metrics of several models (rows of `samples`) as a JSON-ready dict."""
    samples = np.asarray(samples, dtype=np.float64)
    if samples.shape[0] != len(names) or samples.shape[0] < 2:
        raise InputError(f"model comparison needs at least 2 named models, got {samples.shape[0]}")

    pairs: list[dict[str, object]] = []
    if len(names) == 2:
        result = wilcoxon_signed_rank(samples[0], samples[1])
        pairs.append({"models": names, "p_value": result.p_value, "significant": _significant(result.p_value, alpha),
                      "note": result.note})
        return {"test": "wilcoxon signed-rank", "alpha": alpha, "overall": None, "pairs": pairs}

    overall = friedman_test(samples)
    p_values = nemenyi_test(samples)
    for i, j in itertools.combinations(range(len(names)), 2):
        p_value = float(p_values[i, j])
        pairs.append({"models": [names[i], names[j]], "p_value": p_value,
                      "significant": _significant(p_value, alpha), "note": ""})
    return {"test": "friedman + nemenyi", "alpha": alpha, "overall": overall.as_dict(), "pairs": pairs,
            "mean_ranks": dict(zip(names, mean_ranks(samples).tolist())),
            "critical_difference": nemenyi_critical_difference(len(names), samples.shape[1], alpha)}


def _significant(p_value: float | None, alpha: float) -> bool:
    return p_value is not None and p_value < alpha
