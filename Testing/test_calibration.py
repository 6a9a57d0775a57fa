"""Tests of the Beta calibration map and fit against the reference fixture and the betacal package.

betacal is a test-only dependency: the library's own fit must match it without importing it.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from clipnodule.calibration import EPS, BetaCalibration, fit_beta_calibration
from clipnodule.errors import InputError


@pytest.fixture(scope="module")
def betacal_fixture(reference_fixtures):
    with np.load(reference_fixtures / "betacal_abm.npz") as data:
        return {key: data[key] for key in data.files}


def _synthetic_sets() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Three score sets: both coefficients positive, b negative (dropped), a negative (dropped)."""
    rng = np.random.default_rng(3)

    scores = rng.beta(2, 5, 400)
    labels = (rng.uniform(size=400) < np.sqrt(scores)).astype(np.int64)
    sets = {"both_positive": (scores, labels)}

    # High scores are mostly benign, so the -ln(1 - s) coefficient comes out negative.
    scores = rng.uniform(0, 1, 300)
    risk = np.where(scores > 0.8, 0.2, scores)
    sets["b_negative"] = (scores, (rng.uniform(size=300) < risk).astype(np.int64))

    # Low scores are mostly malignant, so the ln(s) coefficient comes out negative.
    scores = rng.uniform(0, 1, 300)
    risk = np.where(scores < 0.2, 0.8, scores)
    sets["a_negative"] = (scores, (rng.uniform(size=300) < risk).astype(np.int64))
    return sets


def test_predict_from_coefficients_matches_fixture(betacal_fixture):
    a, b = betacal_fixture["lr_coef"]
    calibration = BetaCalibration(a=float(a), b=float(b), c=float(betacal_fixture["lr_intercept"][0]))

    predicted = calibration.predict(betacal_fixture["test_scores"])

    assert predicted.dtype == np.float64
    assert predicted.shape == (50,)
    np.testing.assert_allclose(predicted, betacal_fixture["test_pred"], rtol=0, atol=1e-12)


def test_predict_from_map_matches_fixture(betacal_fixture):
    # betacal finds m with a bounded scalar search (tolerance about 1e-5), so c rebuilt
    # from map_ [a, b, m] is only that accurate. The stored coefficients give 1e-16 above.
    a, b, m = betacal_fixture["map_abm"]
    calibration = BetaCalibration.from_map(a, b, m)

    predicted = calibration.predict(betacal_fixture["test_scores"])

    assert calibration.a == a
    assert calibration.b == b
    assert calibration.c == pytest.approx(float(betacal_fixture["lr_intercept"][0]), abs=1e-4)
    np.testing.assert_allclose(predicted, betacal_fixture["test_pred"], rtol=0, atol=1e-5)


def test_midpoint_matches_fixture_map(betacal_fixture):
    a, b = betacal_fixture["lr_coef"]
    calibration = BetaCalibration(a=float(a), b=float(b), c=float(betacal_fixture["lr_intercept"][0]))

    assert calibration.midpoint == pytest.approx(float(betacal_fixture["map_abm"][2]), abs=1e-5)
    assert calibration.predict(np.array([calibration.midpoint]))[0] == pytest.approx(0.5, abs=1e-12)


def test_fit_matches_fixture(betacal_fixture):
    calibration = fit_beta_calibration(betacal_fixture["train_scores"], betacal_fixture["train_labels"])

    a, b = betacal_fixture["lr_coef"]
    assert calibration.a == pytest.approx(a, abs=1e-4)
    assert calibration.b == pytest.approx(b, abs=1e-4)
    assert calibration.c == pytest.approx(float(betacal_fixture["lr_intercept"][0]), abs=1e-4)

    predicted = calibration.predict(betacal_fixture["test_scores"])
    np.testing.assert_allclose(predicted, betacal_fixture["test_pred"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("case", ["both_positive", "b_negative", "a_negative"])
def test_fit_matches_betacal_package(case):
    betacal = pytest.importorskip("betacal")
    scores, labels = _synthetic_sets()[case]

    reference = betacal.BetaCalibration(parameters="abm").fit(scores, labels)
    reference_a, reference_b, reference_m = reference.calibrator_.map_
    calibration = fit_beta_calibration(scores, labels)

    assert calibration.a == pytest.approx(float(reference_a), abs=1e-6)
    assert calibration.b == pytest.approx(float(reference_b), abs=1e-6)
    assert calibration.c == pytest.approx(float(reference.calibrator_.lr_.intercept_[0]), abs=1e-6)
    assert calibration.midpoint == pytest.approx(float(reference_m), abs=1e-5)

    grid = np.concatenate([[0.0, 1e-9, 1.0 - 1e-9, 1.0], np.linspace(0.01, 0.99, 99)])
    np.testing.assert_allclose(calibration.predict(grid), reference.predict(grid), rtol=0, atol=1e-9)


def test_fit_drops_negative_coefficient():
    sets = _synthetic_sets()

    b_dropped = fit_beta_calibration(*sets["b_negative"])
    a_dropped = fit_beta_calibration(*sets["a_negative"])

    assert b_dropped.b == 0.0
    assert b_dropped.a > 0.0
    assert a_dropped.a == 0.0
    assert a_dropped.b > 0.0


def test_predict_keeps_shape_and_clips_extremes():
    calibration = BetaCalibration(a=1.5, b=0.8, c=-0.2)
    scores = np.array([[0.0, 0.25], [0.75, 1.0]])

    predicted = calibration.predict(scores)

    assert predicted.shape == (2, 2)
    assert np.all(np.isfinite(predicted))
    expected_low = 1.0 / (1.0 + math.exp(-(1.5 * math.log(EPS) - 0.8 * math.log(1.0 - EPS) - 0.2)))
    assert predicted[0, 0] == pytest.approx(expected_low, rel=1e-12)
    assert np.all(np.diff(predicted.ravel()) > 0)


def test_identity_like_map():
    # a = b = 1, c = 0 is the identity map on (0, 1).
    calibration = BetaCalibration(a=1.0, b=1.0, c=0.0)
    scores = np.array([0.1, 0.5, 0.9])

    np.testing.assert_allclose(calibration.predict(scores), scores, rtol=1e-12)
    assert calibration.midpoint == pytest.approx(0.5, abs=1e-12)


def test_dict_round_trip_through_json():
    calibration = BetaCalibration(a=1.4409099412, b=0.8992347, c=-0.44566788)

    restored = BetaCalibration.from_dict(json.loads(json.dumps(calibration.to_dict())))

    assert restored == calibration
    assert calibration.to_dict()["type"] == "beta-abm"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"type": "platt", "a": 1.0, "b": 1.0, "c": 0.0}, "'platt' is not supported"),
        ({"type": "beta-abm", "a": 1.0, "c": 0.0}, "'b' is None"),
        ({"type": "beta-abm", "a": 1.0, "b": "x", "c": 0.0}, "'b' is 'x'"),
        ({"type": "beta-abm", "a": 1.0, "b": 1.0, "c": float("nan")}, "'c' is nan"),
    ],
)
def test_from_dict_rejects_invalid(entry, message):
    with pytest.raises(InputError, match=message):
        BetaCalibration.from_dict(entry)


def test_from_map_rejects_midpoint_outside():
    with pytest.raises(InputError, match="m=1.5 is outside"):
        BetaCalibration.from_map(1.0, 1.0, 1.5)


def test_fit_rejects_nan_scores():
    scores = np.array([0.1, np.nan, 0.7, 0.9])

    with pytest.raises(InputError, match="NaN or infinite value.*index 1"):
        fit_beta_calibration(scores, [0, 1, 0, 1])


def test_fit_rejects_labels_outside_binary():
    with pytest.raises(InputError, match="must be 0 \\(benign\\) or 1 \\(malignant\\); found 2"):
        fit_beta_calibration([0.1, 0.4, 0.7, 0.9], [0, 1, 2, 1])

    with pytest.raises(InputError, match="found 'no', 'yes'"):
        fit_beta_calibration([0.1, 0.4, 0.7, 0.9], np.array(["no", "yes", "no", "yes"], dtype=object))

    with pytest.raises(InputError, match="found nan"):
        fit_beta_calibration([0.1, 0.4, 0.7, 0.9], [0.0, 1.0, np.nan, 1.0])


def test_fit_rejects_single_class():
    with pytest.raises(InputError, match="all 1"):
        fit_beta_calibration([0.1, 0.4, 0.7, 0.9], [1, 1, 1, 1])


def test_fit_rejects_length_mismatch():
    with pytest.raises(InputError, match="3 labels for 4 scores"):
        fit_beta_calibration([0.1, 0.4, 0.7, 0.9], [0, 1, 1])


def test_predict_rejects_out_of_range_and_nan():
    calibration = BetaCalibration(a=1.0, b=1.0, c=0.0)

    with pytest.raises(InputError, match="value 1.2 at index 1 is outside"):
        calibration.predict(np.array([0.5, 1.2]))
    with pytest.raises(InputError, match="NaN or infinite"):
        calibration.predict(np.array([np.nan]))
