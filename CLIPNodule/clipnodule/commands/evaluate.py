"""The `clipnodule evaluate` command: metrics, plots and reports from prediction and label CSV files.

Argument parsing only; the work is in clipnodule.evaluation. No Qt or Slicer imports.
"""

from __future__ import annotations

import argparse
import logging

from clipnodule.evaluation.calibration_metrics import DEFAULT_BINS
from clipnodule.evaluation.pipeline import DEFAULT_SCORE_COLUMN, EvaluationSettings, evaluate_predictions, write_outputs

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `evaluate` subcommand to `subparsers` and return its parser."""
    parser = subparsers.add_parser(
        "evaluate",
        help="compute AUROC/AUPRC with bootstrap CIs, recall tables, calibration and plots from prediction CSVs",
        description="Evaluate one or more prediction CSV files (columns pid, nodule_id, raw_<k>, ensemble, "
                    "calibrated_<k>, calibrated_ensemble) against a label CSV (pid, optional nodule_id, "
                    "malignant 0/1) and write metrics.json, recall_table.csv, comparison.csv (several files), "
                    "roc.png, pr.png, reliability.png, report.md and report.html.",
    )

    parser.add_argument("--predictions", nargs="+", required=True, metavar="CSV",
                        help="prediction CSV files, one per model")
    parser.add_argument("--labels", required=True, metavar="CSV",
                        help="label CSV with columns pid, optional nodule_id, and malignant (1 malignant, 0 benign; "
                             "empty or 'indeterminate' rows are excluded)")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the output files (created)")

    parser.add_argument("--score-column", default=DEFAULT_SCORE_COLUMN,
                        help="prediction column containing the malignancy probability to evaluate "
                             f"(default: {DEFAULT_SCORE_COLUMN})")
    parser.add_argument("--level", choices=("patient", "nodule"), default="patient",
                        help="evaluation unit: 'patient' takes the maximum score and label over a patient's "
                             "nodules; 'nodule' joins on pid and nodule_id (default: patient)")

    parser.add_argument("--bootstraps", type=int, default=10_000, metavar="N",
                        help="number of bootstrap resamples of patients for the 95%% CIs (default: 10000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the bootstrap (default: 0)")
    parser.add_argument("--semantic-labels", metavar="CSV",
                        help="CSV with pid, nodule_id and one column per semantic feature (for example margin); "
                             "enables zero-shot AUROC per feature from the zeroshot_<feature>_<value> columns")

    parser.add_argument("--names", nargs="+", metavar="NAME",
                        help="model names for the reports, one per prediction file (default: file names)")
    parser.add_argument("--fold-columns", nargs="+", metavar="COLUMN",
                        help="per-fold score columns for the mean, SD and t-based CI across folds and the "
                             "paired tests (default: calibrated_<k> columns, else raw_<k>)")
    parser.add_argument("--calibration-bins", type=int, default=DEFAULT_BINS, metavar="N",
                        help=f"number of equal-width probability bins for ECE and the reliability diagram "
                             f"(default: {DEFAULT_BINS})")

    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the evaluation described by parsed `args` and return the exit status."""
    settings = EvaluationSettings(score_column=args.score_column, level=args.level, n_resamples=args.bootstraps,
                                  seed=args.seed, fold_columns=args.fold_columns, n_bins=args.calibration_bins)
    result = evaluate_predictions(args.predictions, args.labels, settings, names=args.names,
                                  semantic_labels_path=args.semantic_labels)
    files = write_outputs(result, args.output)

    for model in result.models:
        auroc = model.metrics["auroc"]
        auprc = model.metrics["auprc"]
        logger.info("%s: AUROC %.3f [%.3f, %.3f], AUPRC %.3f [%.3f, %.3f]", model.name, auroc["estimate"],
                    auroc["ci_lower"], auroc["ci_upper"], auprc["estimate"], auprc["ci_lower"], auprc["ci_upper"])
    logger.info("Report: %s", files["report_html"])
    return 0
