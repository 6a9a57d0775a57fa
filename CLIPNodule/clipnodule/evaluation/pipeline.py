"""Evaluate one or more prediction CSV files against labels and write the output folder.

Output folder: metrics.json, recall_table.csv, comparison.csv (several models), roc.png,
pr.png, reliability.png, report.md and report.html. No torch, Qt or Slicer imports.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from clipnodule.errors import InputError
from clipnodule.evaluation import tables
from clipnodule.evaluation.bootstrap import BootstrapResult, bootstrap_auroc_auprc, paired_bootstrap_difference
from clipnodule.evaluation.calibration_metrics import (DEFAULT_BINS, ReliabilityBins, brier_score,
                                                       expected_calibration_error, reliability_bins)
from clipnodule.evaluation.metrics import auprc, auroc, pr_points, roc_points
from clipnodule.evaluation.plots import (CurveSeries, ReliabilitySeries, plot_pr_curves, plot_reliability,
                                         plot_roc_curves)
from clipnodule.evaluation.recall_table import RECALL_TARGETS, recall_table
from clipnodule.evaluation.report import write_html_report, write_markdown_report
from clipnodule.evaluation.statistics import compare_models, summarize_folds
from clipnodule.evaluation.zero_shot_metrics import evaluate_zero_shot

logger = logging.getLogger(__name__)

DEFAULT_SCORE_COLUMN = "calibrated_ensemble"
FOLD_METRICS = ("auroc", "auprc")


@dataclass
class EvaluationSettings:
    """Options of one evaluation run."""

    score_column: str = DEFAULT_SCORE_COLUMN
    level: str = "patient"
    n_resamples: int = 10_000
    seed: int = 0
    confidence: float = 0.95
    fold_columns: list[str] | None = None
    n_bins: int = DEFAULT_BINS
    alpha: float = 0.05


@dataclass
class ModelEvaluation:
    """Metrics of one prediction file (JSON-ready in `metrics`) and the arrays behind its plots."""

    name: str
    metrics: dict[str, object]
    labels: np.ndarray
    scores: np.ndarray
    bootstrap: BootstrapResult
    reliability: ReliabilityBins
    case_keys: tuple[tuple[str, ...], ...] = ()


@dataclass
class EvaluationResult:
    """All models of one run, their comparison and the settings used."""

    models: list[ModelEvaluation]
    settings: dict[str, object]
    comparison: dict[str, object] | None = None
    bootstrap_differences: list[dict[str, object]] | None = None
    files: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {"settings": self.settings, "models": [model.metrics for model in self.models],
                "comparison": self.comparison, "bootstrap_differences": self.bootstrap_differences}


def default_model_names(paths: list[Path]) -> list[str]:
    """Return file stems as model names, with the parent folder added where stems repeat."""
    stems = [path.stem for path in paths]
    if len(set(stems)) == len(stems):
        return stems
    return [f"{path.parent.name}/{path.stem}" for path in paths]


def fold_metrics(table: tables.EvaluationTable, fold_columns: list[str],
                 confidence: float) -> dict[str, object] | None:
    """Return per-fold AUROC and AUPRC with mean, SD and t interval, or None with fewer than 2 folds."""
    if len(fold_columns) < 2:
        return None
    labels = table.labels
    values = {
        "auroc": [auroc(labels, table.scores(column)) for column in fold_columns],
        "auprc": [auprc(labels, table.scores(column)) for column in fold_columns],
    }
    summary: dict[str, object] = {"columns": fold_columns}
    for metric in FOLD_METRICS:
        summary[metric] = summarize_folds(values[metric], confidence).as_dict()
    return summary


def evaluate_model(name: str, predictions_path: Path, predictions: pd.DataFrame, labels: tables.LabelTable,
                   settings: EvaluationSettings, fold_columns: list[str],
                   semantic_labels: pd.DataFrame | None) -> ModelEvaluation:
    """Compute every metric of one prediction file."""
    score_columns = list(dict.fromkeys([settings.score_column, *fold_columns]))
    table = tables.join_labels(predictions, labels, score_columns, settings.level, str(predictions_path))
    labels_array = table.labels
    scores = table.scores(settings.score_column)

    started = time.perf_counter()
    bootstrap = bootstrap_auroc_auprc(labels_array, scores, table.patient_codes(), settings.n_resamples,
                                      settings.seed, settings.confidence)
    logger.info("Bootstrapped %s with %d resamples in %.1f s", name, settings.n_resamples,
                time.perf_counter() - started)

    reliability = reliability_bins(labels_array, scores, settings.n_bins)
    metrics: dict[str, object] = {
        "name": name,
        "predictions": str(predictions_path),
        "score_column": settings.score_column,
        "counts": table.counts,
        "n_patients": int(table.frame["pid"].nunique()),
        "auroc": bootstrap.auroc.as_dict(),
        "auprc": bootstrap.auprc.as_dict(),
        "bootstrap_redrawn_resamples": bootstrap.redrawn_resamples,
        "brier": brier_score(labels_array, scores),
        "ece": expected_calibration_error(labels_array, scores, settings.n_bins),
        "reliability": reliability.as_dict(),
        "recall_table": [row.as_dict() for row in recall_table(labels_array, scores, RECALL_TARGETS)],
        "folds": fold_metrics(table, fold_columns, settings.confidence),
        "zero_shot": None,
    }
    if semantic_labels is not None:
        metrics["zero_shot"] = [result.as_dict() for result in evaluate_zero_shot(semantic_labels, predictions)]

    key_columns = ["pid", "nodule_id"] if settings.level == "nodule" else ["pid"]
    case_keys = tuple(zip(*(table.frame[column].tolist() for column in key_columns), table.frame["malignant"]))
    return ModelEvaluation(name=name, metrics=metrics, labels=labels_array, scores=scores, bootstrap=bootstrap,
                           reliability=reliability, case_keys=case_keys)


def compare_fold_metrics(models: list[ModelEvaluation], alpha: float) -> dict[str, object] | None:
    """Compare per-fold AUROC and AUPRC across models, or return None with a logged reason."""
    if len(models) < 2:
        return None
    folds = [model.metrics["folds"] for model in models]
    if any(fold is None for fold in folds):
        logger.warning("No fold comparison: every prediction file needs at least 2 per-fold columns")
        return None
    fold_counts = {len(fold["columns"]) for fold in folds}
    if len(fold_counts) != 1:
        logger.warning("No fold comparison: the prediction files have different numbers of folds %s",
                       sorted(fold_counts))
        return None

    names = [model.name for model in models]
    comparison: dict[str, object] = {}
    for metric in FOLD_METRICS:
        samples = np.array([fold[metric]["values"] for fold in folds])
        result = compare_models(names, samples, alpha)
        best = names[int(np.argmax(samples.mean(axis=1)))]
        result["best_model"] = best
        result["significantly_worse_than_best"] = sorted(
            {name for pair in result["pairs"] if pair["significant"] and best in pair["models"]
             for name in pair["models"] if name != best})
        comparison[metric] = result
    return comparison


def bootstrap_differences(models: list[ModelEvaluation], confidence: float) -> list[dict[str, object]] | None:
    """Return paired bootstrap AUROC and AUPRC differences for each pair of models with the same cases.

    Pairs evaluated on different cases or labels are left out with a log message,
    because their resamples differ.
    """
    if len(models) < 2:
        return None

    differences = []
    for index, first in enumerate(models):
        for second in models[index + 1:]:
            if first.case_keys != second.case_keys:
                logger.warning("No paired bootstrap difference for %s and %s: they cover different cases",
                               first.name, second.name)
                continue
            pair: dict[str, object] = {"models": [first.name, second.name]}
            for metric in FOLD_METRICS:
                first_result = getattr(first.bootstrap, metric)
                second_result = getattr(second.bootstrap, metric)
                difference = paired_bootstrap_difference(
                    first_result.estimate, second_result.estimate, getattr(first.bootstrap, f"{metric}_samples"),
                    getattr(second.bootstrap, f"{metric}_samples"), confidence)
                pair[metric] = difference.as_dict()
            differences.append(pair)
    return differences


def comparison_frame(models: list[ModelEvaluation]) -> pd.DataFrame:
    """Return one row per model with AUROC and AUPRC (with intervals), Brier score and ECE."""
    rows = []
    for model in models:
        metrics = model.metrics
        row = {"model": model.name, "n": metrics["counts"]["evaluated"], "positives": metrics["counts"]["positives"]}
        for metric in FOLD_METRICS:
            interval = metrics[metric]
            row[metric] = interval["estimate"]
            row[f"{metric}_ci_lower"] = interval["ci_lower"]
            row[f"{metric}_ci_upper"] = interval["ci_upper"]
            row[f"{metric}_with_ci"] = (f"{interval['estimate']:.3f} [{interval['ci_lower']:.3f}, "
                                        f"{interval['ci_upper']:.3f}]")
        row["brier"] = metrics["brier"]
        row["ece"] = metrics["ece"]
        if metrics["folds"] is not None:
            for metric in FOLD_METRICS:
                row[f"fold_{metric}_mean"] = metrics["folds"][metric]["mean"]
                row[f"fold_{metric}_sd"] = metrics["folds"][metric]["sd"]
        rows.append(row)
    return pd.DataFrame(rows)


def recall_frame(models: list[ModelEvaluation]) -> pd.DataFrame:
    """Return one row per model and target recall."""
    rows = [{"model": model.name, **row} for model in models for row in model.metrics["recall_table"]]
    return pd.DataFrame(rows)


def evaluate_predictions(prediction_paths: list[str | Path], labels_path: str | Path,
                         settings: EvaluationSettings | None = None, names: list[str] | None = None,
                         semantic_labels_path: str | Path | None = None) -> EvaluationResult:
    """Evaluate each prediction file against the labels and compare them when there are several."""
    settings = settings or EvaluationSettings()
    paths = [Path(path) for path in prediction_paths]
    if not paths:
        raise InputError("no prediction files given; pass at least one CSV file with --predictions")
    if names is not None and len(names) != len(paths):
        raise InputError(f"{len(names)} names given for {len(paths)} prediction files; give one name per file")
    names = names or default_model_names(paths)
    if len(set(names)) != len(names):
        raise InputError(f"model names must be unique, got {names}; pass distinct names with --names")

    labels = tables.load_labels(labels_path)
    semantic_labels = tables.load_semantic_labels(semantic_labels_path) if semantic_labels_path else None

    models = []
    for name, path in zip(names, paths):
        predictions, fold_columns = tables.load_predictions(path, settings.score_column, settings.fold_columns)
        models.append(evaluate_model(name, path, predictions, labels, settings, fold_columns, semantic_labels))

    evaluated_counts = [model.metrics["counts"]["evaluated"] for model in models]
    if len(set(evaluated_counts)) > 1:
        logger.warning("The prediction files cover different numbers of cases %s, so their metrics are not "
                       "strictly comparable", evaluated_counts)

    settings_dict = {
        "labels": str(labels_path),
        "semantic_labels": str(semantic_labels_path) if semantic_labels_path else None,
        "level": settings.level,
        "score_column": settings.score_column,
        "bootstrap": {"resamples": settings.n_resamples, "seed": settings.seed, "confidence": settings.confidence,
                      "method": "percentile", "unit": "patient",
                      "single_class_resamples": "discarded and redrawn; counted per model in "
                                                "bootstrap_redrawn_resamples"},
        "recall_rule": "threshold whose recall is closest to the target; ties go to the lower FPR",
        "calibration_bins": settings.n_bins,
        "alpha": settings.alpha,
    }
    comparison = compare_fold_metrics(models, settings.alpha)
    return EvaluationResult(models=models, settings=settings_dict, comparison=comparison,
                            bootstrap_differences=bootstrap_differences(models, settings.confidence))


def _json_ready(value: object) -> object:
    """Replace NaN and infinity (not valid JSON) by None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(item) for item in value]
    if isinstance(value, np.generic):
        return _json_ready(value.item())
    return value


def write_outputs(result: EvaluationResult, output_dir: str | Path) -> dict[str, Path]:
    """Write metrics, tables, plots and reports of `result` into `output_dir` and return their paths."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    models = result.models
    files: dict[str, Path] = {}

    files["recall_table"] = output_dir / "recall_table.csv"
    recall_frame(models).to_csv(files["recall_table"], index=False)
    if len(models) > 1:
        files["comparison"] = output_dir / "comparison.csv"
        comparison_frame(models).to_csv(files["comparison"], index=False)

    roc_series = [CurveSeries(_legend(model, "auroc", "AUROC"), roc_points(model.labels, model.scores))
                  for model in models]
    pr_series = [CurveSeries(_legend(model, "auprc", "AUPRC"), pr_points(model.labels, model.scores))
                 for model in models]
    prevalence = float(models[0].labels.mean()) if len(models) == 1 else None
    files["roc"] = plot_roc_curves(roc_series, output_dir / "roc.png")
    files["pr"] = plot_pr_curves(pr_series, prevalence, output_dir / "pr.png")
    reliability_series = [ReliabilitySeries(f"{model.name} (ECE {model.metrics['ece']:.3f})", model.reliability)
                          for model in models]
    files["reliability"] = plot_reliability(reliability_series, output_dir / "reliability.png")

    report_data = _json_ready(result.as_dict())
    files["metrics"] = output_dir / "metrics.json"
    files["metrics"].write_text(json.dumps(report_data, indent=2), encoding="utf-8")

    images = {"roc": files["roc"], "pr": files["pr"], "reliability": files["reliability"]}
    files["report_md"] = write_markdown_report(report_data, images, output_dir / "report.md")
    files["report_html"] = write_html_report(report_data, images, output_dir / "report.html")
    result.files = {key: str(path) for key, path in files.items()}
    logger.info("Wrote evaluation of %d model(s) to %s", len(models), output_dir)
    return files


def _legend(model: ModelEvaluation, metric: str, label: str) -> str:
    interval = model.metrics[metric]
    return (f"{model.name}: {label} {interval['estimate']:.3f} "
            f"[{interval['ci_lower']:.3f}, {interval['ci_upper']:.3f}]")
