"""Tests of the evaluation metrics: sklearn parity, fast bootstrap, recall rule, calibration and statistics.

Plain numpy, pandas, scipy and scikit-learn. Nothing is mocked.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from clipnodule.errors import InputError
from clipnodule.evaluation import tables
from clipnodule.evaluation.bootstrap import (bootstrap_auroc_auprc, paired_bootstrap_difference,
                                             patient_resample_weights, weighted_auroc,
                                             weighted_average_precision)
from clipnodule.evaluation.calibration_metrics import brier_score, expected_calibration_error, reliability_bins
from clipnodule.evaluation.metrics import auprc, auroc
from clipnodule.evaluation.recall_table import operating_points, recall_table
from clipnodule.evaluation.statistics import (compare_models, friedman_test, mean_ranks,
                                              nemenyi_critical_difference, nemenyi_test, summarize_folds,
                                              wilcoxon_signed_rank)
from clipnodule.evaluation.zero_shot_metrics import (evaluate_feature, evaluate_zero_shot, feature_value_columns,
                                                     weighted_ovr_auroc)

# Hand-worked example: five malignant, five benign, scores all distinct.
EXAMPLE_SCORES = np.array([0.9, 0.8, 0.7, 0.6, 0.55, 0.5, 0.4, 0.3, 0.2, 0.1])
EXAMPLE_LABELS = np.array([1, 1, 0, 1, 0, 1, 0, 1, 0, 0])


@pytest.fixture()
def tied_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    labels = (rng.random(120) < 0.3).astype(int)
    scores = np.round(rng.random(120) * 0.6 + 0.4 * labels, 1)  # rounding creates many ties
    return labels, scores


def test_point_metrics_match_sklearn(tied_data):
    labels, scores = tied_data

    assert auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert auprc(labels, scores) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert brier_score(labels, scores) == pytest.approx(brier_score_loss(labels, scores), abs=1e-12)


def test_hand_example_auroc_value():
    # Concordant pairs: 5 + 5 + 4 + 3 + 2 = 19 of 25 positive-negative pairs.
    assert auroc(EXAMPLE_LABELS, EXAMPLE_SCORES) == pytest.approx(19 / 25)


def test_weighted_metrics_match_sklearn_on_resamples(tied_data):
    labels, scores = tied_data
    patients = np.arange(labels.size)
    weights = patient_resample_weights(patients, np.random.default_rng(0), 6)

    fast_auroc = weighted_auroc(labels, scores, weights)
    fast_ap = weighted_average_precision(labels, scores, weights)
    for row in range(weights.shape[0]):
        rows = np.repeat(np.arange(labels.size), weights[row])
        assert fast_auroc[row] == pytest.approx(roc_auc_score(labels[rows], scores[rows]), abs=1e-12)
        assert fast_ap[row] == pytest.approx(average_precision_score(labels[rows], scores[rows]), abs=1e-12)


def test_unit_weights_equal_point_estimate(tied_data):
    labels, scores = tied_data
    ones = np.ones((1, labels.size))

    assert weighted_auroc(labels, scores, ones)[0] == pytest.approx(roc_auc_score(labels, scores))
    assert weighted_average_precision(labels, scores, ones)[0] == pytest.approx(
        average_precision_score(labels, scores))


def test_resample_weights_shared_by_patient():
    patient_codes = np.array([0, 0, 1, 2, 2, 2])
    weights = patient_resample_weights(patient_codes, np.random.default_rng(1), 50)

    assert weights.shape == (50, 6)
    assert np.array_equal(weights[:, 0], weights[:, 1])
    assert np.array_equal(weights[:, 3], weights[:, 5])
    # Each resample draws 3 patients.
    assert np.array_equal(weights[:, [0, 2, 3]].sum(axis=1), np.full(50, 3))


def test_bootstrap_interval_contains_estimate(tied_data):
    labels, scores = tied_data
    result = bootstrap_auroc_auprc(labels, scores, np.arange(labels.size), n_resamples=2000, seed=0)

    assert result.auroc.estimate == pytest.approx(roc_auc_score(labels, scores))
    assert result.auprc.estimate == pytest.approx(average_precision_score(labels, scores))
    assert result.auroc.lower < result.auroc.estimate < result.auroc.upper
    assert result.auprc.lower < result.auprc.estimate < result.auprc.upper
    assert result.auroc_samples.shape == (2000,)
    assert result.auroc.lower == pytest.approx(np.percentile(result.auroc_samples, 2.5))
    assert result.auroc.upper == pytest.approx(np.percentile(result.auroc_samples, 97.5))


def test_bootstrap_seed_reproducible(tied_data):
    labels, scores = tied_data
    codes = np.arange(labels.size)
    first = bootstrap_auroc_auprc(labels, scores, codes, n_resamples=700, seed=5)
    again = bootstrap_auroc_auprc(labels, scores, codes, n_resamples=700, seed=5)
    other = bootstrap_auroc_auprc(labels, scores, codes, n_resamples=700, seed=6)

    assert first.auroc == again.auroc
    assert first.auprc == again.auprc
    assert np.array_equal(first.auroc_samples, again.auroc_samples)
    assert first.auroc != other.auroc
    assert not np.array_equal(first.auroc_samples, other.auroc_samples)


def test_bootstrap_redraws_single_class_resamples():
    # One malignant patient of 12: about (11/12)^12 = 35% of resamples lack it.
    labels = np.array([1] + [0] * 11)
    scores = np.linspace(0.9, 0.1, 12)
    result = bootstrap_auroc_auprc(labels, scores, np.arange(12), n_resamples=1000, seed=0)

    assert result.auroc_samples.size == 1000
    assert np.all(np.isfinite(result.auroc_samples))
    # Expected discards: 1000 * p / (1 - p) with p = (11/12)^12 + (1/12)^12, about 543.
    assert 400 < result.redrawn_resamples < 700


def test_recall_table_hand_example():
    rows = recall_table(EXAMPLE_LABELS, EXAMPLE_SCORES)
    by_target = {row.target_recall: row.point for row in rows}

    # Recall 0.6 occurs at thresholds 0.6 (FPR 1/5) and 0.55 (FPR 2/5): lower FPR wins.
    assert by_target[0.6].threshold == 0.6
    assert by_target[0.6].fpr == pytest.approx(0.2)
    assert by_target[0.6].precision == pytest.approx(3 / 4)

    # 0.7 is equally close to recall 0.6 and 0.8: the 0.6 point has the lower FPR.
    assert by_target[0.7].recall == pytest.approx(0.6)
    assert by_target[0.7].fpr == pytest.approx(0.2)
    assert by_target[0.7].precision == pytest.approx(3 / 4)

    # Recall 0.8 at threshold 0.5 (4 TP, 2 FP) beats threshold 0.4 (4 TP, 3 FP).
    assert by_target[0.8].threshold == 0.5
    assert by_target[0.8].fpr == pytest.approx(0.4)
    assert by_target[0.8].precision == pytest.approx(4 / 6)

    # 0.9 is equally close to recall 0.8 (FPR 0.4) and 1.0 (FPR 0.6 at threshold 0.3).
    assert by_target[0.9].recall == pytest.approx(0.8)
    assert by_target[0.9].fpr == pytest.approx(0.4)
    assert by_target[0.9].precision == pytest.approx(4 / 6)


def test_operating_points_group_tied_scores():
    points = operating_points(np.array([1, 0, 1, 0]), np.array([0.8, 0.8, 0.3, 0.1]))

    assert [point.threshold for point in points] == [0.8, 0.3, 0.1]
    assert [(point.true_positives, point.false_positives) for point in points] == [(1, 1), (2, 1), (2, 2)]


def test_ece_hand_example():
    labels = np.array([0, 0, 1, 1, 1])
    probabilities = np.array([0.05, 0.15, 0.15, 0.95, 1.0])
    # Bin [0, 0.1): mean 0.05, observed 0 -> gap 0.05, weight 1/5.
    # Bin [0.1, 0.2): mean 0.15, observed 0.5 -> gap 0.35, weight 2/5.
    # Bin [0.9, 1.0] (1.0 included): mean 0.975, observed 1 -> gap 0.025, weight 2/5.
    expected = 0.05 / 5 + 2 * 0.35 / 5 + 2 * 0.025 / 5

    assert expected_calibration_error(labels, probabilities) == pytest.approx(expected)
    bins = reliability_bins(labels, probabilities)
    assert bins.counts.tolist() == [1, 2, 0, 0, 0, 0, 0, 0, 0, 2]
    assert np.isnan(bins.mean_probability[2])


def test_ece_bin_edges_are_left_closed():
    bins = reliability_bins(np.array([0, 1, 1]), np.array([0.1, 0.7, 0.3]))

    assert bins.counts[1] == 1
    assert bins.counts[3] == 1
    assert bins.counts[7] == 1


def test_calibration_rejects_scores_outside_unit_interval():
    with pytest.raises(InputError, match="outside \\[0, 1\\]"):
        brier_score(np.array([0, 1]), np.array([0.2, 1.5]))


def test_fold_summary_t_interval():
    summary = summarize_folds([0.80, 0.82, 0.84, 0.86, 0.88])
    sd = math.sqrt(0.004 / 4)
    half_width = 2.7764451051977987 * sd / math.sqrt(5)  # t(0.975, df=4)

    assert summary.mean == pytest.approx(0.84)
    assert summary.sd == pytest.approx(sd)
    assert summary.ci_lower == pytest.approx(0.84 - half_width)
    assert summary.ci_upper == pytest.approx(0.84 + half_width)


def test_wilcoxon_matches_scipy_and_five_fold_floor():
    first = np.array([0.81, 0.80, 0.83, 0.79, 0.82])
    second = np.array([0.89, 0.88, 0.90, 0.87, 0.91])
    result = wilcoxon_signed_rank(first, second)

    assert result.p_value == pytest.approx(stats.wilcoxon(first, second).pvalue)
    # With five folds the smallest two-sided exact p-value is 2/32.
    assert result.p_value == pytest.approx(0.0625)


def test_wilcoxon_all_zero_differences():
    result = wilcoxon_signed_rank(np.ones(5), np.ones(5))

    assert result.p_value is None
    assert "zero" in result.note


def test_friedman_matches_scipy():
    samples = np.array([[0.81, 0.79, 0.80, 0.82, 0.78],
                        [0.84, 0.83, 0.85, 0.81, 0.80],
                        [0.89, 0.88, 0.87, 0.90, 0.86]])
    result = friedman_test(samples)
    expected = stats.friedmanchisquare(*samples)

    assert result.statistic == pytest.approx(expected.statistic)
    assert result.p_value == pytest.approx(expected.pvalue)


def test_nemenyi_reproduces_published_p_values():
    # Five folds, three models (F, P, L), rank 1 = best. Ranks 3, 2, 1 in every fold give
    # 0.254, 0.004 and 0.254. Mean ranks 2.8, 2.2, 1.0 give 0.609 (F-P), 0.012 (F-L) and
    # 0.139 (P-L). Zhuang et al., "Vision-Language Model-Based Semantic-Guided Imaging
    # Biomarker for Lung Nodule Malignancy Prediction", Table A5, reports both triples.
    ordered = np.array([[0.70, 0.71, 0.72, 0.73, 0.74],
                        [0.80, 0.81, 0.82, 0.83, 0.84],
                        [0.90, 0.91, 0.92, 0.93, 0.94]])

    assert mean_ranks(ordered).tolist() == pytest.approx([3.0, 2.0, 1.0])
    ordered_p = nemenyi_test(ordered)
    assert ordered_p[0, 1] == pytest.approx(0.254, abs=5e-4)
    assert ordered_p[0, 2] == pytest.approx(0.004, abs=5e-4)
    assert ordered_p[1, 2] == pytest.approx(0.254, abs=5e-4)

    published = np.array([[0.70, 0.71, 0.72, 0.80, 0.73],
                          [0.75, 0.76, 0.77, 0.79, 0.78],
                          [0.90, 0.91, 0.92, 0.93, 0.94]])
    assert mean_ranks(published).tolist() == pytest.approx([2.8, 2.2, 1.0])
    published_p = nemenyi_test(published)
    assert published_p[0, 1] == pytest.approx(0.609, abs=5e-4)
    assert published_p[0, 2] == pytest.approx(0.012, abs=5e-4)
    assert published_p[1, 2] == pytest.approx(0.139, abs=5e-4)
    assert np.allclose(published_p, published_p.T)


def test_nemenyi_critical_difference_formula():
    # Tabulated Nemenyi q_0.05 values: 2.343 (k=3), 2.569 (k=4), 2.728 (k=5).
    for k, q_alpha in ((3, 2.343), (4, 2.569), (5, 2.728)):
        expected = q_alpha * math.sqrt(k * (k + 1) / (6 * 10))
        assert nemenyi_critical_difference(k, 10) == pytest.approx(expected, abs=1e-3)

    # A mean-rank difference equal to the critical difference has p = alpha.
    n_models, n_folds = 3, 5
    critical = nemenyi_critical_difference(n_models, n_folds)
    q = critical / math.sqrt(n_models * (n_models + 1) / (6 * n_folds)) * math.sqrt(2)
    assert stats.studentized_range.sf(q, n_models, np.inf) == pytest.approx(0.05, abs=1e-6)


def test_compare_models_picks_test_by_count():
    two = compare_models(["a", "b"], np.array([[0.8, 0.81, 0.82, 0.83, 0.84], [0.7, 0.72, 0.71, 0.74, 0.73]]))
    three = compare_models(["a", "b", "c"], np.array([[0.8, 0.81, 0.82, 0.83, 0.84],
                                                      [0.7, 0.72, 0.71, 0.74, 0.73],
                                                      [0.6, 0.61, 0.62, 0.63, 0.64]]))

    assert two["test"] == "wilcoxon signed-rank"
    assert len(two["pairs"]) == 1
    assert three["test"] == "friedman + nemenyi"
    assert [pair["models"] for pair in three["pairs"]] == [["a", "b"], ["a", "c"], ["b", "c"]]
    assert three["pairs"][1]["p_value"] == pytest.approx(0.004, abs=5e-4)
    assert three["pairs"][1]["significant"] is True


def test_patient_aggregation_takes_maximum():
    predictions = pd.DataFrame({"pid": ["p1", "p1", "p2", "p3", "p3"], "nodule_id": ["1", "2", "1", "1", "2"],
                                "calibrated_ensemble": [0.2, 0.7, 0.4, 0.1, 0.3]})
    labels = tables.LabelTable(
        frame=pd.DataFrame({"pid": ["p1", "p1", "p2", "p3", "p3"], "nodule_id": ["1", "2", "1", "1", "2"],
                            "malignant": [1, 0, 0, 0, 0]}),
        has_nodule_id=True, excluded_rows=0, source="labels.csv")
    table = tables.join_labels(predictions, labels, ["calibrated_ensemble"], "patient", "predictions.csv")

    assert table.frame["pid"].tolist() == ["p1", "p2", "p3"]
    assert table.frame["calibrated_ensemble"].tolist() == [0.7, 0.4, 0.3]
    assert table.frame["malignant"].tolist() == [1, 0, 0]
    assert table.counts["evaluated"] == 3
    assert table.counts["positives"] == 1


def test_nodule_level_keeps_patient_clusters():
    predictions = pd.DataFrame({"pid": ["p1", "p1", "p2"], "nodule_id": ["1", "2", "1"],
                                "calibrated_ensemble": [0.2, 0.7, 0.4]})
    labels = tables.LabelTable(
        frame=pd.DataFrame({"pid": ["p1", "p1", "p2"], "nodule_id": ["1", "2", "1"], "malignant": [0, 1, 0]}),
        has_nodule_id=True, excluded_rows=0, source="labels.csv")
    table = tables.join_labels(predictions, labels, ["calibrated_ensemble"], "nodule", "predictions.csv")

    assert len(table.frame) == 3
    assert table.patient_codes().tolist() == [0, 0, 1]


def test_weighted_ovr_auroc_matches_sklearn():
    rng = np.random.default_rng(4)
    classes = rng.integers(0, 3, 60)
    probabilities = rng.dirichlet([1, 1, 1], 60)
    probabilities[np.arange(60), classes] += 0.5
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    indicators = np.eye(3, dtype=int)[classes]

    expected = roc_auc_score(classes, probabilities, multi_class="ovr", average="weighted")
    assert weighted_ovr_auroc(indicators, probabilities) == pytest.approx(expected)


def test_zero_shot_binary_and_prefix_rules():
    columns = ["zeroshot_margin_smooth", "zeroshot_margin_spiculated", "zeroshot_margin_conspicuity_well",
               "zeroshot_margin_conspicuity_poorly"]
    margin = feature_value_columns(columns, "margin", ["margin", "margin_conspicuity"])
    assert margin == {"smooth": "zeroshot_margin_smooth", "spiculated": "zeroshot_margin_spiculated"}


def test_zero_shot_most_likely_columns_skipped():
    # The cohort CSV has one most-likely text column per feature beside the probabilities.
    columns = ["zeroshot_margin_smooth", "zeroshot_margin", "zeroshot_margin_conspicuity_well_marginated",
               "zeroshot_margin_conspicuity"]
    margin = feature_value_columns(columns, "margin", ["margin", "margin_conspicuity"])
    conspicuity = feature_value_columns(columns, "margin_conspicuity", ["margin", "margin_conspicuity"])

    assert margin == {"smooth": "zeroshot_margin_smooth"}
    assert conspicuity == {"well_marginated": "zeroshot_margin_conspicuity_well_marginated"}


def test_zero_shot_feature_spelling_matched():
    predictions = pd.DataFrame({
        "pid": ["a", "b", "c", "d"],
        "zeroshot_airway_cut_off_present": [0.9, 0.2, 0.7, 0.4],
        "zeroshot_airway_cut_off_absent": [0.1, 0.8, 0.3, 0.6],
        "zeroshot_airway_cut_off": ["present", "absent", "present", "absent"],
    })
    labels = pd.DataFrame({"pid": ["a", "b", "c", "d"], "airway_cutoff": ["present", "absent", "absent", "present"]})

    results = evaluate_zero_shot(labels, predictions)

    assert [result.feature for result in results] == ["airway_cutoff"]
    assert results[0].auroc == pytest.approx(roc_auc_score([1, 0, 0, 1], [0.9, 0.2, 0.7, 0.4]))

    predictions = pd.DataFrame({"zeroshot_cavitation_present": [0.9, 0.2, 0.6, 0.4, 0.5],
                                "zeroshot_cavitation_absent": [0.1, 0.8, 0.4, 0.6, 0.5]})
    labels = pd.Series(["Present", "absent", "absent", "present", None])
    result = evaluate_feature("cavitation", labels, predictions,
                              {"present": "zeroshot_cavitation_present", "absent": "zeroshot_cavitation_absent"})

    assert result.kind == "binary"
    assert result.n == 4
    assert result.auroc == pytest.approx(roc_auc_score([1, 0, 0, 1], [0.9, 0.2, 0.6, 0.4]))
    assert result.class_percent == {"present": 40.0, "absent": 40.0, "n/a": 20.0}


def test_zero_shot_unknown_value_message():
    predictions = pd.DataFrame({"zeroshot_shape_round": [0.5], "zeroshot_shape_ovoid": [0.5]})
    with pytest.raises(InputError, match="'zeroshot_shape_polygonal'"):
        evaluate_feature("shape", pd.Series(["polygonal"]), predictions,
                         {"round": "zeroshot_shape_round", "ovoid": "zeroshot_shape_ovoid"})


def test_paired_difference_self_and_better():
    rng = np.random.default_rng(8)
    labels = (rng.random(150) < 0.3).astype(int)
    good = labels + rng.normal(0, 0.5, 150)
    poor = labels + rng.normal(0, 2.0, 150)
    codes = np.arange(150)
    good_result = bootstrap_auroc_auprc(labels, good, codes, n_resamples=1000, seed=2)
    poor_result = bootstrap_auroc_auprc(labels, poor, codes, n_resamples=1000, seed=2)

    same = paired_bootstrap_difference(good_result.auroc.estimate, good_result.auroc.estimate,
                                       good_result.auroc_samples, good_result.auroc_samples)
    assert same.estimate == 0.0
    assert same.lower == 0.0
    assert same.upper == 0.0
    assert same.p_value == 1.0

    better = paired_bootstrap_difference(good_result.auroc.estimate, poor_result.auroc.estimate,
                                         good_result.auroc_samples, poor_result.auroc_samples)
    assert better.estimate == pytest.approx(good_result.auroc.estimate - poor_result.auroc.estimate)
    assert better.lower > 0.0
    assert better.p_value < 0.01
