"""Results of the CLIPNodule module in the scene: a table node, a report text node, CSV and JSON export.

MRML only (no Qt). Results arrive as the JSON dictionaries of `NoduleResult.to_dict()`
(the worker process sends them), each with the markups control point label added under
"point_label". The table has one row per nodule. The full JSON list is also stored on
the table node, so an exported or reloaded scene keeps every value.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Sequence

RESULTS_JSON_ATTRIBUTE = "CLIPNodule.ResultsJSON"
MARKUPS_ATTRIBUTE = "CLIPNodule.MarkupsNodeID"
TOP_FINDINGS_IN_TABLE = 5


def top_findings(semantic_report: dict[str, dict[str, Any]] | None, count: int | None = None) -> list[tuple[str, str, float]]:
    """Return (feature, most likely value, its probability) sorted by probability, highest first."""
    if not semantic_report:
        return []
    findings = []
    for feature, entry in semantic_report.items():
        value = entry.get("most_likely")
        probability = float(entry.get("probabilities", {}).get(value, float("nan")))
        findings.append((feature, str(value), probability))
    findings.sort(key=lambda item: -item[2] if item[2] == item[2] else 0.0)
    return findings if count is None else findings[:count]


def format_findings(findings: Sequence[tuple[str, str, float]]) -> str:
    """Format findings as "feature: value (p); ..." for one table cell."""
    return "; ".join(f"{feature}: {value} ({probability:.2f})" for feature, value, probability in findings)


def table_columns(results: Sequence[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """Return the table's (column name, value type, long name) in order, for these results.

    Columns: point_label, risk, calibrated (1 when every fold was calibrated), raw_ensemble,
    raw_<k> and calibrated_<k> per fold k, attention_<i> per plane i (long name gives the
    plane), point_R/A/S (mm), model, device, run_time_s and top_findings.
    """
    fold_indices: list[int] = []
    plane_names: list[str] = []
    for result in results:
        for fold in result.get("folds", []):
            if fold["index"] not in fold_indices:
                fold_indices.append(int(fold["index"]))
        if len(result.get("plane_names", [])) > len(plane_names):
            plane_names = list(result["plane_names"])

    columns = [
        ("point_label", "string", "control point label"),
        ("risk", "double", "calibrated one-year malignancy risk (mean over folds)"),
        ("calibrated", "int", "1 when every fold was calibrated, else risk is the raw mean"),
        ("raw_ensemble", "double", "mean raw probability over folds"),
    ]
    columns += [(f"raw_{index}", "double", f"fold {index} raw probability") for index in fold_indices]
    columns += [(f"calibrated_{index}", "double", f"fold {index} calibrated probability") for index in fold_indices]
    columns += [(f"attention_{index}", "double", f"attention {name}") for index, name in enumerate(plane_names)]
    columns += [
        ("point_R", "double", "nodule point R (mm, RAS)"),
        ("point_A", "double", "nodule point A (mm, RAS)"),
        ("point_S", "double", "nodule point S (mm, RAS)"),
        ("model", "string", "model name and version"),
        ("device", "string", "torch device"),
        ("run_time_s", "double", "time to score this nodule (s)"),
        ("top_findings", "string", "most likely zero-shot findings"),
    ]
    return columns


def result_row(result: dict[str, Any]) -> dict[str, Any]:
    """Return one table row (column name -> value) for a result dictionary."""
    model = result.get("model", {})
    row: dict[str, Any] = {
        "point_label": result.get("point_label") or result.get("nodule_id") or "",
        "risk": float(result["risk"]),
        "calibrated": int(bool(result.get("calibrated", True))),
        "raw_ensemble": float(result.get("raw_ensemble", float("nan"))),
    }
    for fold in result.get("folds", []):
        row[f"raw_{fold['index']}"] = float(fold["raw_probability"])
        calibrated = fold.get("calibrated_probability")
        row[f"calibrated_{fold['index']}"] = float("nan") if calibrated is None else float(calibrated)
    for index, weight in enumerate(result.get("attention", [])):
        row[f"attention_{index}"] = float(weight)
    point_ras = result.get("point_ras") or [float("nan")] * 3
    row["point_R"], row["point_A"], row["point_S"] = (float(value) for value in point_ras)
    row["model"] = f"{model.get('name', '')} {model.get('version', '')}".strip()
    row["device"] = str(result.get("device", ""))
    row["run_time_s"] = float(result.get("run_time_s", float("nan")))
    row["top_findings"] = format_findings(top_findings(result.get("semantic_report"), TOP_FINDINGS_IN_TABLE))
    return row


def update_results_table(table_node, results: Sequence[dict[str, Any]], markups_node=None):
    """Fill `table_node` with one row per result and store the full results as JSON on it."""
    import vtk

    columns = table_columns(results)
    was_modifying = table_node.StartModify()
    table_node.RemoveAllColumns()
    table = table_node.GetTable()
    for name, value_type, long_name in columns:
        if value_type == "string":
            array = vtk.vtkStringArray()
        elif value_type == "int":
            array = vtk.vtkIntArray()
        else:
            array = vtk.vtkDoubleArray()
        array.SetName(name)
        array.SetNumberOfValues(len(results))
        table.AddColumn(array)
        table_node.SetColumnLongName(name, long_name)
        table_node.SetColumnDescription(name, long_name)

    for row_index, result in enumerate(results):
        row = result_row(result)
        for name, value_type, _ in columns:
            array = table.GetColumnByName(name)
            value = row.get(name)
            if value_type == "string":
                array.SetValue(row_index, "" if value is None else str(value))
            elif value_type == "int":
                array.SetValue(row_index, int(value or 0))
            else:
                array.SetValue(row_index, float("nan") if value is None else float(value))

    table_node.SetUseColumnNameAsColumnHeader(True)
    table_node.SetAttribute(RESULTS_JSON_ATTRIBUTE, json.dumps(list(results)))
    if markups_node is not None:
        table_node.SetAttribute(MARKUPS_ATTRIBUTE, markups_node.GetID())
    table.Modified()
    table_node.EndModify(was_modifying)
    return table_node


def results_from_table(table_node) -> list[dict[str, Any]]:
    """Return the result dictionaries stored on a results table node (empty list if none)."""
    stored = table_node.GetAttribute(RESULTS_JSON_ATTRIBUTE) if table_node is not None else None
    return json.loads(stored) if stored else []


def format_report(results: Sequence[dict[str, Any]]) -> str:
    """Return the plain-text report of all nodules: risk, folds, attention and zero-shot findings."""
    lines = []
    for result in results:
        label = result.get("point_label") or result.get("nodule_id") or "nodule"
        model = result.get("model", {})
        lines.append(f"Nodule {label}")
        point_ras = ", ".join(f"{value:.1f}" for value in result.get("point_ras", []))
        lines.append(f"  Point (RAS, mm): {point_ras}")
        calibrated = result.get("calibrated", True)
        lines.append(
            f"  One-year malignancy risk: {float(result['risk']):.3f}"
            + ("" if calibrated else " (uncalibrated: mean raw probability)")
        )
        for fold in result.get("folds", []):
            calibrated_value = fold.get("calibrated_probability")
            calibrated_text = "n/a" if calibrated_value is None else f"{float(calibrated_value):.3f}"
            lines.append(
                f"  Fold {fold['index']}: raw {float(fold['raw_probability']):.3f}, calibrated {calibrated_text}"
            )
        lines.append("  Plane attention:")
        for name, weight in zip(result.get("plane_names", []), result.get("attention", [])):
            lines.append(f"    {name}: {float(weight):.3f}")
        findings = top_findings(result.get("semantic_report"))
        if findings:
            lines.append("  Zero-shot findings (most likely value, probability):")
            for feature, value, probability in findings:
                lines.append(f"    {feature}: {value} ({probability:.2f})")
        lines.append(
            f"  Model {model.get('name', '')} {model.get('version', '')} on {result.get('device', '')}, "
            f"{float(result.get('run_time_s', 0.0)):.2f} s"
        )
        lines.append("")
    lines.append(
        "Research use only: the risk is a model output for decision support, not a diagnosis."
    )
    return "\n".join(lines)


def update_report_text(text_node, results: Sequence[dict[str, Any]]):
    """Write the plain-text report of `results` into a vtkMRMLTextNode."""
    text_node.SetText(format_report(results))
    return text_node


def export_results_csv(table_node, path: str | os.PathLike) -> Path:
    """Write the results table as CSV (header = column names, one row per nodule)."""
    table = table_node.GetTable()
    names = [table.GetColumnName(index) for index in range(table.GetNumberOfColumns())]
    path = Path(path)
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(names)
        for row in range(table.GetNumberOfRows()):
            writer.writerow([table.GetValue(row, column).ToString() for column in range(len(names))])
    return path


def export_results_json(results: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Write the results as a JSON list of result dictionaries (result.json layout plus point_label)."""
    path = Path(path)
    path.write_text(json.dumps(list(results), indent=2) + "\n", encoding="utf-8")
    return path


def attention_chart_nodes(scene, result: dict[str, Any], name_prefix: str = "CLIPNodule attention"):
    """Create or update a bar chart of the nine plane attention weights of one result.

    Returns (table node, plot series node, plot chart node); the table has columns
    "plane" (index), "plane_name" and "attention".
    """
    import vtk

    table_node = scene.GetFirstNodeByName(f"{name_prefix} table") or scene.AddNewNodeByClass(
        "vtkMRMLTableNode", f"{name_prefix} table"
    )
    series_node = scene.GetFirstNodeByName(f"{name_prefix} series") or scene.AddNewNodeByClass(
        "vtkMRMLPlotSeriesNode", f"{name_prefix} series"
    )
    chart_node = scene.GetFirstNodeByName(f"{name_prefix} chart") or scene.AddNewNodeByClass(
        "vtkMRMLPlotChartNode", f"{name_prefix} chart"
    )

    weights = [float(value) for value in result.get("attention", [])]
    names = [str(value) for value in result.get("plane_names", [])]
    was_modifying = table_node.StartModify()
    table_node.RemoveAllColumns()
    index_column = vtk.vtkDoubleArray()
    index_column.SetName("plane")
    name_column = vtk.vtkStringArray()
    name_column.SetName("plane_name")
    weight_column = vtk.vtkDoubleArray()
    weight_column.SetName("attention")
    for index, weight in enumerate(weights):
        index_column.InsertNextValue(float(index))
        name_column.InsertNextValue(names[index] if index < len(names) else str(index))
        weight_column.InsertNextValue(weight)
    for column in (index_column, name_column, weight_column):
        table_node.GetTable().AddColumn(column)
    table_node.EndModify(was_modifying)

    series_node.SetAndObserveTableNodeID(table_node.GetID())
    series_node.SetXColumnName("plane")
    series_node.SetYColumnName("attention")
    series_node.SetLabelColumnName("plane_name")
    series_node.SetPlotType(series_node.PlotTypeBar)
    chart_node.RemoveAllPlotSeriesNodeIDs()
    chart_node.AddAndObservePlotSeriesNodeID(series_node.GetID())
    chart_node.SetTitle(f"Plane attention, {result.get('point_label', '')}".strip(", "))
    chart_node.SetXAxisTitle("plane")
    chart_node.SetYAxisTitle("attention weight")
    chart_node.SetLegendVisibility(False)
    return table_node, series_node, chart_node
