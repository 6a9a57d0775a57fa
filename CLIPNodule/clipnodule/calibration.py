"""Beta calibration (Kull et al., AISTATS 2017) with three parameters, as betacal's 'abm' model.

Maps a fold's raw malignancy probability to a calibrated one. Needs numpy, scipy and
scikit-learn only: no torch, no betacal at run time, no Qt or Slicer imports.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import expit

from .errors import InputError

logger = logging.getLogger(__name__)

CALIBRATION_TYPE = "beta-abm"

# Scores are clipped to [EPS, 1 - EPS] before taking logarithms, as betacal 1.1.0 does
# with the float64 machine epsilon.
EPS = float(np.finfo(np.float64).eps)

# betacal fits an effectively unregularised logistic regression with this inverse
# regularisation strength; keeping the same value keeps fits comparable.
UNREGULARISED_C = 99999999999.0


@dataclass(frozen=True)
class BetaCalibration:
    """Beta calibration map p = sigmoid(a * ln(s) - b * ln(1 - s) + c) for a score s in [0, 1].

    a and b are non-negative after a fit (one of them is 0 when its feature was dropped).
    The midpoint m of betacal's map [a, b, m] is the score that maps to 0.5.
    """

    a: float
    b: float
    c: float

    def predict(self, scores: np.ndarray) -> np.ndarray:
        """Calibrate raw probabilities and return float64 probabilities of the same shape.

        Scores are clipped to [EPS, 1 - EPS], so 0 and 1 map to finite values.
        Raises InputError for NaN, infinite or out-of-range scores.
        """
        values = _validated_scores(scores, "scores to calibrate")
        clipped = np.clip(values, EPS, 1.0 - EPS)

        # np.log(1 - s) rather than np.log1p(-s) matches betacal's output to the last bit.
        logit = self.a * np.log(clipped) - self.b * np.log(1.0 - clipped) + self.c
        return expit(logit)

    @property
    def midpoint(self) -> float:
        """Score m with predict(m) = 0.5, the third entry of betacal's map_ [a, b, m].

        Returns NaN when no score in (0, 1) maps to 0.5 (for example a = b = 0).
        """
        return _solve_midpoint(self.a, self.b, self.c)

    @classmethod
    def from_map(cls, a: float, b: float, m: float) -> "BetaCalibration":
        """Build the calibration from betacal's map_ [a, b, m], using c = b * ln(1 - m) - a * ln(m)."""
        if not 0.0 < m < 1.0:
            raise InputError(
                f"Beta calibration midpoint m={m!r} is outside (0, 1); "
                "pass the third entry of a fitted betacal map_ [a, b, m]"
            )
        c = b * math.log(1.0 - m) - a * math.log(m)
        return cls(a=float(a), b=float(b), c=float(c))

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form {"type": "beta-abm", "a": ..., "b": ..., "c": ...}."""
        return {"type": CALIBRATION_TYPE, "a": self.a, "b": self.b, "c": self.c}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BetaCalibration":
        """Read the JSON form written by to_dict; raises InputError for a wrong type or missing value."""
        if not isinstance(data, dict):
            raise InputError(f"calibration entry {data!r} is not a JSON object with keys type, a, b, c")

        kind = data.get("type")
        if kind != CALIBRATION_TYPE:
            raise InputError(
                f"calibration type {kind!r} is not supported; expected {CALIBRATION_TYPE!r}"
            )

        parameters = {}
        for key in ("a", "b", "c"):
            value = data.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InputError(
                    f"calibration parameter {key!r} is {value!r}; expected a finite number"
                )
            parameters[key] = float(value)
        return cls(**parameters)


def fit_beta_calibration(
    scores: np.ndarray,
    labels: np.ndarray,
    sample_weight: np.ndarray | None = None,
) -> BetaCalibration:
    """Fit a three-parameter Beta calibration to raw scores and binary labels (betacal's 'abm').

    The fit is a logistic regression with C = 99999999999 (lbfgs) on the features
    [ln s, -ln(1 - s)]. When the coefficient of one feature comes out negative, that
    feature is dropped and the model is refitted, so a = 0 or b = 0. As in betacal
    1.1.0, the refitted single coefficient is kept even if it is negative.
    Raises InputError for NaN or out-of-range scores, labels other than 0 and 1,
    mismatched lengths, or a label set with only one class.
    """
    from sklearn.exceptions import ConvergenceWarning

    values = _validated_scores(scores, "calibration scores").ravel()
    targets = _validated_labels(labels, len(values))
    weights = None
    if sample_weight is not None:
        weights = np.asarray(sample_weight, dtype=np.float64).ravel()
        if weights.shape != values.shape or not np.all(np.isfinite(weights)) or np.any(weights < 0):
            raise InputError(
                f"sample_weight must hold {len(values)} finite non-negative numbers, "
                f"got shape {weights.shape}"
            )

    clipped = np.clip(values, EPS, 1.0 - EPS)
    features = np.column_stack([np.log(clipped), -np.log(1.0 - clipped)])

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)

        coefficients, intercept = _fit_logistic(features, targets, weights)
        if coefficients[0] < 0:
            logger.info("Beta calibration: coefficient a=%.6g < 0, refitting with a = 0", coefficients[0])
            (b,), intercept = _fit_logistic(features[:, 1:2], targets, weights)
            a = 0.0
        elif coefficients[1] < 0:
            logger.info("Beta calibration: coefficient b=%.6g < 0, refitting with b = 0", coefficients[1])
            (a,), intercept = _fit_logistic(features[:, 0:1], targets, weights)
            b = 0.0
        else:
            a, b = coefficients

    for warning in caught:
        if issubclass(warning.category, ConvergenceWarning):
            logger.warning("Beta calibration fit on %d scores: %s", len(values), warning.message)

    calibration = BetaCalibration(a=float(a), b=float(b), c=float(intercept))
    logger.info(
        "Fitted Beta calibration on %d scores (%d positive): a=%.6g b=%.6g c=%.6g",
        len(values), int(targets.sum()), calibration.a, calibration.b, calibration.c,
    )
    return calibration


def _fit_logistic(
    features: np.ndarray, targets: np.ndarray, weights: np.ndarray | None
) -> tuple[np.ndarray, float]:
    from sklearn.linear_model import LogisticRegression

    regression = LogisticRegression(C=UNREGULARISED_C, solver="lbfgs")
    regression.fit(features, targets, sample_weight=weights)
    return regression.coef_[0].astype(np.float64), float(regression.intercept_[0])


def _solve_midpoint(a: float, b: float, c: float) -> float:
    """Solve a * ln(m) - b * ln(1 - m) + c = 0 for m in (0, 1) by bisection on the logit."""
    def logit_at(m: float) -> float:
        return a * math.log(m) - b * math.log(1.0 - m) + c

    low, high = EPS, 1.0 - EPS
    low_value, high_value = logit_at(low), logit_at(high)
    if low_value == 0.0:
        return low
    if high_value == 0.0:
        return high
    if (low_value > 0) == (high_value > 0):
        return math.nan

    # With a, b >= 0 the logit increases with m, so the root is unique; otherwise bisection finds one root.
    for _ in range(200):
        middle = 0.5 * (low + high)
        middle_value = logit_at(middle)
        if middle_value == 0.0 or high - low < 1e-15:
            return middle
        if (middle_value > 0) == (low_value > 0):
            low, low_value = middle, middle_value
        else:
            high = middle
    return 0.5 * (low + high)


def _validated_scores(scores: np.ndarray, what: str) -> np.ndarray:
    try:
        values = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise InputError(f"{what} must be numbers in [0, 1]: {error}") from None

    if values.size == 0:
        raise InputError(f"{what} are empty; pass at least one probability")

    invalid = ~np.isfinite(values)
    if np.any(invalid):
        index = int(np.flatnonzero(invalid.ravel())[0])
        raise InputError(
            f"{what} contain {int(invalid.sum())} NaN or infinite value(s), the first at "
            f"index {index} ({float(values.ravel()[index])!r}); remove or fix them before calibrating"
        )

    outside = (values < 0.0) | (values > 1.0)
    if np.any(outside):
        index = int(np.flatnonzero(outside.ravel())[0])
        raise InputError(
            f"{what} must be probabilities in [0, 1]; value {float(values.ravel()[index])!r} at index "
            f"{index} is outside; pass the softmax probability of the malignant class"
        )
    return values


def _validated_labels(labels: np.ndarray, count: int) -> np.ndarray:
    values = np.asarray(labels).ravel()
    if values.shape != (count,):
        raise InputError(f"got {values.size} labels for {count} scores; pass one label per score")

    is_numeric = values.dtype.kind in "biuf"
    numeric = values.astype(np.float64) if is_numeric else None
    if numeric is None or not np.all(np.isin(numeric, (0.0, 1.0))):
        unexpected = sorted({repr(value) for value in values.tolist() if value not in (0, 1)})[:5]
        # Text labels such as "0" are rejected too, because a CSV column read as text is a bug upstream.
        raise InputError(
            f"calibration labels must be 0 (benign) or 1 (malignant); found {', '.join(unexpected)}"
        )

    targets = numeric.astype(np.int64)
    if targets.min() == targets.max():
        raise InputError(
            f"calibration labels are all {targets[0]}; a Beta calibration needs both benign (0) "
            "and malignant (1) examples"
        )
    return targets
