"""ROC, precision-recall and reliability plots written as PNG files.

Uses matplotlib's object API with the Agg canvas, so no GUI backend or global pyplot
state is touched. No torch, Qt or Slicer imports.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from clipnodule.evaluation.calibration_metrics import ReliabilityBins
from clipnodule.evaluation.metrics import Curve

FIGURE_SIZE = (5.5, 5.0)
DPI = 120


@dataclass(frozen=True)
class CurveSeries:
    """One model's curve and its legend label."""

    label: str
    curve: Curve


@dataclass(frozen=True)
class ReliabilitySeries:
    """One model's reliability bins and its legend label."""

    label: str
    bins: ReliabilityBins


def _new_figure() -> tuple[Figure, object]:
    figure = Figure(figsize=FIGURE_SIZE, dpi=DPI)
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot(1, 1, 1)


def _save(figure: Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, format="png")
    return path


def plot_roc_curves(series: list[CurveSeries], path: str | Path, title: str = "ROC curve") -> Path:
    """Write ROC curves (recall against FPR) of one or more models to a PNG file.

    Points are joined by straight lines, which is how tied scores move the curve.
    """
    figure, axes = _new_figure()
    for item in series:
        axes.plot(item.curve.x, item.curve.y, label=item.label)
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8, label="chance")
    axes.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="False-positive rate", ylabel="Recall (sensitivity)",
             title=title)
    axes.legend(loc="lower right", fontsize=8)
    return _save(figure, Path(path))


def plot_pr_curves(series: list[CurveSeries], prevalence: float | None, path: str | Path,
                   title: str = "Precision-recall curve") -> Path:
    """Write precision-recall curves of one or more models to a PNG file, with the prevalence line."""
    figure, axes = _new_figure()
    for item in series:
        axes.step(item.curve.x, item.curve.y, where="post", label=item.label)
    if prevalence is not None:
        axes.axhline(prevalence, linestyle="--", color="grey", linewidth=0.8,
                     label=f"prevalence {prevalence:.3f}")
    axes.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="Recall (sensitivity)", ylabel="Precision (PPV)", title=title)
    axes.legend(loc="lower left", fontsize=8)
    return _save(figure, Path(path))


def plot_reliability(series: list[ReliabilitySeries], path: str | Path,
                     title: str = "Reliability diagram") -> Path:
    """Write a reliability diagram (observed fraction malignant against mean probability) to a PNG file.

    Empty bins have no marker; the lower panel shows how many rows fall in each bin.
    """
    figure = Figure(figsize=(FIGURE_SIZE[0], FIGURE_SIZE[1] * 1.3), dpi=DPI)
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(2, 1, height_ratios=(3, 1))
    curve_axes = figure.add_subplot(grid[0])
    count_axes = figure.add_subplot(grid[1], sharex=curve_axes)

    curve_axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8, label="perfect calibration")
    width = 1.0 / (len(series[0].bins.counts) * max(len(series), 1)) if series else 0.1
    for position, item in enumerate(series):
        filled = item.bins.counts > 0
        curve_axes.plot(item.bins.mean_probability[filled], item.bins.fraction_positive[filled], marker="o",
                        label=item.label)
        left_edges = item.bins.edges[:-1] + position * width
        count_axes.bar(left_edges, item.bins.counts, width=width, align="edge", alpha=0.7, label=item.label)

    curve_axes.set(xlim=(0, 1), ylim=(0, 1.01), ylabel="Observed fraction malignant", title=title)
    curve_axes.legend(loc="upper left", fontsize=8)
    count_axes.set(xlabel="Predicted probability", ylabel="Count")
    return _save(figure, Path(path))
