"""Markdown and self-contained HTML reports of an evaluation, with tables laid out as in Zhuang et al.

Layouts follow Tables 2-5 and A5 of "Vision-Language Model-Based Semantic-Guided Imaging
Biomarker for Lung Nodule Malignancy Prediction" (Zhuang et al.): AUROC and AUPRC with
the interval on a second line, FPR and precision at recall 0.6-0.9, per-fold mean ± SD
with p-values, and zero-shot AUROC per semantic feature. Calibration is added. The HTML
embeds the PNG plots as base64, so it needs no other file. Standard library only: no
torch, Qt or Slicer imports.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path

FIGURE_TITLES = {"roc": "ROC curve", "pr": "Precision-recall curve", "reliability": "Reliability diagram"}


@dataclass(frozen=True)
class Table:
    """A report table; a cell may contain several lines separated by newlines."""

    title: str
    header: list[str]
    rows: list[list[str]]
    caption: str = ""


def _number(value: object, digits: int = 3) -> str:
    return "-" if value is None else f"{float(value):.{digits}f}"


def _p_value(value: object) -> str:
    if value is None:
        return "-"
    return "< 0.001" if float(value) < 0.001 else f"{float(value):.3f}"


def _comparison_p(value: object) -> str:
    text = _p_value(value)
    return text if text.startswith("<") else f"= {text}"


def _interval_cell(interval: dict[str, float]) -> str:
    return f"{_number(interval['estimate'])}\n[{_number(interval['ci_lower'])}, {_number(interval['ci_upper'])}]"


def _cases(model: dict[str, object]) -> str:
    counts = model["counts"]
    return f"{counts['evaluated']} ({counts['positives']})"


def discrimination_table(data: dict[str, object]) -> Table:
    """Return AUROC and AUPRC with bootstrap intervals per model."""
    bootstrap = data["settings"]["bootstrap"]
    level = data["settings"]["level"]
    rows = [[model["name"], _cases(model), _interval_cell(model["auroc"]), _interval_cell(model["auprc"])]
            for model in data["models"]]
    caption = (f"{level.capitalize()} level; N evaluated, malignant in brackets. Point estimate, then "
               f"[{100 * bootstrap['confidence']:.0f}% CI] from {bootstrap['resamples']} bootstrap resamples by "
               f"patient (percentile method, seed {bootstrap['seed']}).")
    return Table("Discrimination", ["Model", "N (malignant)", "AUROC", "AUPRC"], rows, caption)


def recall_level_table(data: dict[str, object]) -> Table:
    """Return FPR and precision at the recall closest to each target per model."""
    targets = [row["target_recall"] for row in data["models"][0]["recall_table"]]
    header = ["Model"]
    for target in targets:
        header += [f"Recall ≈ {target:g}: FPR ↓", f"Recall ≈ {target:g}: Precision ↑"]

    rows = []
    for model in data["models"]:
        row = [model["name"]]
        for point in model["recall_table"]:
            row += [_number(point["fpr"]), _number(point["precision"])]
        rows.append(row)
    caption = (f"Operating point: {data['settings']['recall_rule']}. Achieved recalls and thresholds are in "
               "recall_table.csv.")
    return Table("False-positive rate and precision at a given recall", header, rows, caption)


def calibration_table(data: dict[str, object]) -> Table:
    """Return the Brier score and expected calibration error per model."""
    rows = [[model["name"], _number(model["brier"], 4), _number(model["ece"], 4),
             str(model["bootstrap_redrawn_resamples"])] for model in data["models"]]
    caption = (f"ECE: {data['settings']['calibration_bins']} equal-width probability bins, absolute gap between "
               "observed fraction malignant and mean probability, weighted by the bin's share of cases. "
               "Bootstrap resamples lacking benign or malignant cases were discarded and redrawn; the last "
               "column counts them.")
    return Table("Calibration", ["Model", "Brier score", "ECE", "Redrawn resamples"], rows, caption)


def fold_table(data: dict[str, object]) -> Table | None:
    """Return per-fold mean ± SD with t intervals per model, or None when no model has folds."""
    models = [model for model in data["models"] if model["folds"] is not None]
    if not models:
        return None

    comparison = data.get("comparison") or {}
    rows = []
    for model in models:
        row = [model["name"], str(len(model["folds"]["columns"]))]
        for metric in ("auroc", "auprc"):
            summary = model["folds"][metric]
            worse = model["name"] in comparison.get(metric, {}).get("significantly_worse_than_best", [])
            marker = "*" if worse else ""
            row.append(f"{_number(summary['mean'])} ± {_number(summary['sd'])}{marker}\n"
                       f"[{_number(summary['ci_lower'])}, {_number(summary['ci_upper'])}]")
        rows.append(row)
    caption = ("Mean ± SD over the per-fold models, then the 95% CI from the t-distribution with the standard "
               "error across folds. * marks a significant difference from the best model.")
    return Table("Per-fold performance", ["Model", "Folds", "AUROC", "AUPRC"], rows, caption)


def p_value_table(data: dict[str, object]) -> Table | None:
    """Return the pairwise p-values of the fold comparison, or None without a comparison."""
    comparison = data.get("comparison")
    if not comparison:
        return None

    rows = []
    for index, pair in enumerate(comparison["auroc"]["pairs"]):
        cells = [" vs ".join(pair["models"])]
        for metric in ("auroc", "auprc"):
            metric_pair = comparison[metric]["pairs"][index]
            marker = "*" if metric_pair["significant"] else ""
            cells.append(f"{_p_value(metric_pair['p_value'])}{marker}")
        rows.append(cells)

    test = comparison["auroc"]["test"]
    caption = f"Test: {test} on per-fold values; * marks p < {comparison['auroc']['alpha']}."
    if comparison["auroc"]["overall"] is not None:
        overall = [f"{metric.upper()} Friedman p {_comparison_p(comparison[metric]['overall']['p_value'])}"
                   for metric in ("auroc", "auprc")]
        caption += " " + "; ".join(overall) + "."
    return Table("Hypothesis testing p-values", ["Models", "AUROC", "AUPRC"], rows, caption)


def _value_label(value: str) -> str:
    return "N/A" if value == "n/a" else value.replace("_", " ").capitalize()


def bootstrap_difference_table(data: dict[str, object]) -> Table | None:
    """Return the paired bootstrap differences between models, or None without them."""
    differences = data.get("bootstrap_differences")
    if not differences:
        return None

    rows = []
    for pair in differences:
        row = [" − ".join(pair["models"])]
        for metric in ("auroc", "auprc"):
            difference = pair[metric]
            row.append(f"{_number(difference['estimate'])}\n[{_number(difference['ci_lower'])}, "
                       f"{_number(difference['ci_upper'])}]\np {_comparison_p(difference['p_value'])}")
        rows.append(row)
    confidence = 100 * data["settings"]["bootstrap"]["confidence"]
    caption = ("First model minus second on the same bootstrap resamples of patients: difference, percentile "
               f"{confidence:.0f}% CI, and a two-sided bootstrap p-value (twice the smaller share of resampled differences on "
               "either side of zero).")
    return Table("Paired bootstrap differences", ["Models", "AUROC difference", "AUPRC difference"], rows, caption)


def zero_shot_tables(data: dict[str, object]) -> list[Table]:
    """Return one zero-shot table per model that has semantic-label results."""
    result = []
    for model in data["models"]:
        if not model["zero_shot"]:
            continue
        rows = []
        for feature in model["zero_shot"]:
            classes = "; ".join(f"{_value_label(value)} ({percent:.1f})"
                                for value, percent in feature["class_percent"].items())
            rows.append([feature["feature"].replace("_", " ").capitalize(), classes, _number(feature["auroc"]),
                         feature["kind"]])
        caption = ("Class percentages over the nodules in the semantic labels (N/A: missing value); multi-label features can "
                   "exceed 100%. Binary features: standard AUROC; others: one-vs-rest AUROC weighted by class "
                   "support.")
        result.append(Table(f"Zero-shot semantic features: {model['name']}",
                            ["Semantic feature", "Classes (%)", "AUROC", "Kind"], rows, caption))
    return result


def report_tables(data: dict[str, object]) -> list[Table]:
    """Return every table of the report in order."""
    tables = [discrimination_table(data), recall_level_table(data), calibration_table(data)]
    optional = (fold_table(data), p_value_table(data), bootstrap_difference_table(data))
    tables += [table for table in optional if table is not None]
    return tables + zero_shot_tables(data)


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>")


def render_markdown(data: dict[str, object], images: dict[str, Path]) -> str:
    """Return the report as Markdown; figures link to the PNG files beside it."""
    lines = ["# CLIPNodule evaluation", "",
             f"Labels: `{data['settings']['labels']}`; score column: `{data['settings']['score_column']}`.", ""]
    for table in report_tables(data):
        lines += [f"## {table.title}", "", "| " + " | ".join(table.header) + " |",
                  "|" + "---|" * len(table.header)]
        lines += ["| " + " | ".join(_markdown_cell(cell) for cell in row) + " |" for row in table.rows]
        lines += ["", table.caption, ""]

    lines += ["## Figures", ""]
    lines += [f"![{FIGURE_TITLES[key]}]({path.name})" for key, path in images.items()]
    return "\n".join(lines) + "\n"


def _html_cell(text: str, tag: str = "td") -> str:
    return f"<{tag}>{html.escape(text).replace(chr(10), '<br>')}</{tag}>"


def render_html(data: dict[str, object], images: dict[str, Path]) -> str:
    """Return the report as one HTML page with the PNG figures embedded as base64."""
    parts = ["<!DOCTYPE html>", "<html lang=\"en\">", "<head>", "<meta charset=\"utf-8\">",
             "<title>CLIPNodule evaluation</title>",
             "<style>body{font-family:sans-serif;margin:2em;max-width:75em}"
             "table{border-collapse:collapse;margin-bottom:0.5em}"
             "th,td{border:1px solid #999;padding:0.3em 0.6em;text-align:center;vertical-align:top}"
             "td:first-child{text-align:left}.caption{color:#444;font-size:0.9em}"
             "img{max-width:32em;margin:0.5em}</style>",
             "</head>", "<body>", "<h1>CLIPNodule evaluation</h1>",
             f"<p>Labels: <code>{html.escape(str(data['settings']['labels']))}</code>; score column: "
             f"<code>{html.escape(str(data['settings']['score_column']))}</code>.</p>"]

    for table in report_tables(data):
        parts += [f"<h2>{html.escape(table.title)}</h2>", "<table>",
                  "<tr>" + "".join(_html_cell(cell, "th") for cell in table.header) + "</tr>"]
        parts += ["<tr>" + "".join(_html_cell(cell) for cell in row) + "</tr>" for row in table.rows]
        parts += ["</table>", f"<p class=\"caption\">{html.escape(table.caption)}</p>"]

    parts.append("<h2>Figures</h2>")
    for key, path in images.items():
        encoded = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        parts.append(f"<img alt=\"{FIGURE_TITLES[key]}\" src=\"data:image/png;base64,{encoded}\">")
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"


def write_markdown_report(data: dict[str, object], images: dict[str, Path], path: str | Path) -> Path:
    """Write the Markdown report and return its path."""
    path = Path(path)
    path.write_text(render_markdown(data, images), encoding="utf-8")
    return path


def write_html_report(data: dict[str, object], images: dict[str, Path], path: str | Path) -> Path:
    """Write the self-contained HTML report and return its path."""
    path = Path(path)
    path.write_text(render_html(data, images), encoding="utf-8")
    return path
