"""Training results: the per-epoch CSV log, loss-curve plots and the held-out test evaluation.

The test evaluation scores the fold ensemble and a diameter-only baseline with AUROC and
patient-level bootstrap intervals. Depends on numpy, pandas and matplotlib (no torch, Qt or Slicer).
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

LOG_COLUMNS = (
    "fold", "epoch", "train_loss", "train_clip_loss", "train_image_loss", "train_text_loss",
    "val_loss", "val_auroc", "lr", "seconds",
)
BOOTSTRAP_RESAMPLES = 10_000


def write_epoch_log(path: str | Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write every epoch row (LOG_COLUMNS) to a CSV file, replacing it, so reruns never duplicate rows."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=LOG_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: "" if row.get(key) is None else row.get(key) for key in LOG_COLUMNS})
    temporary.replace(path)


def plot_loss_curves(path: str | Path, fold: int, history: Sequence[dict[str, Any]]) -> None:
    """Plot training and validation loss (and validation AUROC) against the epoch into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    def column(name: str) -> list[float]:
        # Missing values (no AUROC, a non-finite loss) are stored as None and plotted as gaps.
        return [np.nan if row.get(name) is None else row[name] for row in history]

    epochs = [row["epoch"] for row in history]
    figure, loss_axis = plt.subplots(figsize=(6, 4), dpi=100)
    loss_axis.plot(epochs, column("train_loss"), marker="o", label="training loss")
    loss_axis.plot(epochs, column("val_loss"), marker="o", label="validation loss")
    loss_axis.set_xlabel("epoch")
    loss_axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    loss_axis.set_ylabel("total loss")
    loss_axis.set_title(f"Fold {fold}")

    auroc_axis = loss_axis.twinx()
    auroc_axis.plot(epochs, column("val_auroc"), color="tab:green", linestyle="--", marker=".", label="validation AUROC")
    auroc_axis.set_ylabel("validation AUROC")
    auroc_axis.set_ylim(0.0, 1.0)

    lines = loss_axis.get_lines() + auroc_axis.get_lines()
    loss_axis.legend(lines, [line.get_label() for line in lines], loc="upper right", fontsize="small")
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)


def safe_auroc(labels: Sequence[int], scores: Sequence[float]) -> float | None:
    """Return the AUROC, or None when only one class is present or a score is missing."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels, dtype=int)
    scores = np.asarray(scores, dtype=float)
    if len(np.unique(labels)) < 2 or not np.all(np.isfinite(scores)):
        return None
    return float(roc_auc_score(labels, scores))


def bootstrap_interval(labels: np.ndarray, scores: np.ndarray, pids: Sequence[str], seed: int) -> dict[str, Any] | None:
    """Return AUROC with a patient-level percentile bootstrap 95 % interval, or None with one class."""
    from ..evaluation.bootstrap import bootstrap_auroc_auprc

    if len(np.unique(labels)) < 2:
        return None
    codes = pd.factorize(pd.Series(list(pids)))[0]
    result = bootstrap_auroc_auprc(labels, scores, codes, n_resamples=BOOTSTRAP_RESAMPLES, seed=seed)
    return {
        "auroc": result.auroc.estimate,
        "ci_lower": result.auroc.lower,
        "ci_upper": result.auroc.upper,
        "bootstrap_resamples": BOOTSTRAP_RESAMPLES,
    }


def test_set_evaluation(
    table: pd.DataFrame,
    fold_probabilities: Sequence[np.ndarray],
    calibrated: bool,
    seed: int,
) -> dict[str, Any]:
    """Evaluate the ensemble (mean over folds) and the longest-diameter baseline on the test rows.

    `table` holds the test rows (pid, malignant, optionally longest_diameter_mm);
    `fold_probabilities[k]` contains fold k's (calibrated when `calibrated`) probabilities
    in row order. The diameter baseline scores each nodule by its longest diameter,
    on the rows where it is known.
    """
    labels = table["malignant"].astype(int).to_numpy()
    ensemble = np.mean(np.stack(fold_probabilities), axis=0)
    summary: dict[str, Any] = {
        "nodules": int(len(table)),
        "patients": int(table["pid"].nunique()),
        "malignant": int(labels.sum()),
        "ensemble_score": "mean of calibrated fold probabilities" if calibrated else "mean of raw fold probabilities",
        "ensemble": bootstrap_interval(labels, ensemble, table["pid"].tolist(), seed),
        "fold_auroc": [safe_auroc(labels, values) for values in fold_probabilities],
    }

    if "longest_diameter_mm" in table.columns:
        diameters = pd.to_numeric(table["longest_diameter_mm"], errors="coerce").to_numpy(dtype=float)
        known = np.isfinite(diameters)
        baseline = bootstrap_interval(labels[known], diameters[known], table["pid"][known].tolist(), seed)
        if baseline is not None:
            baseline["nodules"] = int(known.sum())
        summary["diameter_baseline"] = baseline
    return summary


def fold_summary(values: Sequence[float | None]) -> dict[str, Any] | None:
    """Return mean, SD and t-based 95 % interval of per-fold values (None entries are left out)."""
    from ..evaluation.statistics import summarize_folds

    known = [float(value) for value in values if value is not None and math.isfinite(value)]
    if not known:
        return None
    if len(known) == 1:
        return {"values": known, "mean": known[0]}
    return summarize_folds(known).as_dict()
