"""Evaluation of malignancy predictions: discrimination, calibration, fold statistics, zero-shot AUROC and reports.

Imports numpy, pandas, scipy, scikit-learn and matplotlib only: no torch, Qt or Slicer.
"""

from clipnodule.evaluation.bootstrap import BootstrapResult, ConfidenceInterval, bootstrap_auroc_auprc
from clipnodule.evaluation.calibration_metrics import brier_score, expected_calibration_error, reliability_bins
from clipnodule.evaluation.metrics import auprc, auroc
from clipnodule.evaluation.pipeline import (EvaluationResult, EvaluationSettings, evaluate_predictions,
                                            write_outputs)
from clipnodule.evaluation.recall_table import RECALL_TARGETS, recall_table
from clipnodule.evaluation.statistics import (compare_models, friedman_test, nemenyi_test, summarize_folds,
                                              wilcoxon_signed_rank)
from clipnodule.evaluation.zero_shot_metrics import evaluate_zero_shot

__all__ = [
    "RECALL_TARGETS",
    "BootstrapResult",
    "ConfidenceInterval",
    "EvaluationResult",
    "EvaluationSettings",
    "auprc",
    "auroc",
    "bootstrap_auroc_auprc",
    "brier_score",
    "compare_models",
    "evaluate_predictions",
    "evaluate_zero_shot",
    "expected_calibration_error",
    "friedman_test",
    "nemenyi_test",
    "recall_table",
    "reliability_bins",
    "summarize_folds",
    "wilcoxon_signed_rank",
    "write_outputs",
]
