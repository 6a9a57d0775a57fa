"""Loss curves of a training run as MRML plot nodes: one table per fold, train and validation series.

MRML only (no Qt), testable with the slicer-core wheel. Input is the {fold: rows} mapping
of `training_process.read_epoch_log`.
"""

from __future__ import annotations

import math
from typing import Sequence

CHART_NAME = "CLIPNodule training loss"
# Colours of the folds' curves (RGB 0-1); validation curves are dashed in the same colour.
FOLD_COLORS: tuple[tuple[float, float, float], ...] = (
    (0.12, 0.47, 0.71),
    (1.00, 0.50, 0.05),
    (0.17, 0.63, 0.17),
    (0.84, 0.15, 0.16),
    (0.58, 0.40, 0.74),
    (0.55, 0.34, 0.29),
)


def _get_or_add(scene, class_name: str, name: str):
    # Match the class too: a user's node of another type may have the same name.
    for node in scene.GetNodesByClassByName(class_name, name):
        return node
    return scene.AddNewNodeByClass(class_name, name)


def _fill_table(table_node, rows: Sequence[dict[str, float]]) -> None:
    import vtk

    was_modifying = table_node.StartModify()
    table_node.RemoveAllColumns()
    columns = {}
    for name in ("epoch", "train_loss", "val_loss"):
        array = vtk.vtkDoubleArray()
        array.SetName(name)
        columns[name] = array
        table_node.GetTable().AddColumn(array)
    for row in rows:
        for name, array in columns.items():
            value = row.get(name, math.nan)
            array.InsertNextValue(float(value))
    table_node.GetTable().SetNumberOfRows(len(rows))
    table_node.EndModify(was_modifying)


def update_loss_chart(scene, rows_by_fold: dict[int, list[dict[str, float]]]):
    """Create or update the loss chart: per fold a solid training and a dashed validation curve.

    Returns the vtkMRMLPlotChartNode.
    """
    import slicer

    chart = _get_or_add(scene, "vtkMRMLPlotChartNode", CHART_NAME)
    chart.SetTitle("Training and validation loss per fold")
    chart.SetXAxisTitle("epoch")
    chart.SetYAxisTitle("loss")

    series_ids = []
    for fold in sorted(rows_by_fold):
        table = _get_or_add(scene, "vtkMRMLTableNode", f"{CHART_NAME} fold {fold}")
        _fill_table(table, rows_by_fold[fold])
        color = FOLD_COLORS[fold % len(FOLD_COLORS)]
        # The enum values themselves: GetLineStyleFromString only accepts the lower-case
        # names ("solid", "dash") and returns -1 for anything else.
        for column, label, line_style in (
            ("train_loss", "train", slicer.vtkMRMLPlotSeriesNode.LineStyleSolid),
            ("val_loss", "validation", slicer.vtkMRMLPlotSeriesNode.LineStyleDash),
        ):
            series = _get_or_add(scene, "vtkMRMLPlotSeriesNode", f"fold {fold} {label}")
            series.SetAndObserveTableNodeID(table.GetID())
            series.SetXColumnName("epoch")
            series.SetYColumnName(column)
            series.SetPlotType(series.PlotTypeScatter)
            series.SetMarkerStyle(series.MarkerStyleNone)
            series.SetLineStyle(line_style)
            series.SetColor(*color)
            series_ids.append(series.GetID())

    present = [chart.GetNthPlotSeriesNodeID(index) for index in range(chart.GetNumberOfPlotSeriesNodes())]
    if present != series_ids:
        chart.RemoveAllPlotSeriesNodeIDs()
        for series_id in series_ids:
            chart.AddAndObservePlotSeriesNodeID(series_id)
    return chart
