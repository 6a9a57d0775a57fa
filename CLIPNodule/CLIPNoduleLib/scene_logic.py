"""MRML side of the CLIPNodule module: scene inputs to library inputs, and the nine plane views.

Needs MRML (`slicer` from the Slicer application or the `slicer-core` wheel) and
SimpleITK; no Qt, so it runs and is tested without the Slicer application. It does not
use sitkUtils, which needs the application.

Slicer stores world points in RAS; the library takes LPS. Conversions happen here.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from clipnodule.coordinates import ras_to_lps
from clipnodule.errors import InputError

from .layout import PLANE_VIEW_NAMES
from .slice_orientation import (
    PlaneFrameLike,
    field_of_view_corners_ras,
    model_image_ijk_to_ras,
    slice_to_ras_matrix,
)

logger = logging.getLogger(__name__)

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
VIEW_TITLE_ATTRIBUTE = "CLIPNodule.ViewTitle"
MODEL_IMAGE_ATTRIBUTE = "CLIPNodule.ModelImagePlane"
FIELD_OF_VIEW_ATTRIBUTE = "CLIPNodule.FieldOfViewPlane"
SLICE_THICKNESS_MM = 1.0


@dataclasses.dataclass(frozen=True)
class LabelledPoint:
    """One markups control point: its label, index in the node and position in both systems (mm)."""

    label: str
    index: int
    point_lps: tuple[float, float, float]
    point_ras: tuple[float, float, float]


def _matrix_from_vtk(vtk_matrix) -> np.ndarray:
    return np.array([[vtk_matrix.GetElement(row, column) for column in range(4)] for row in range(4)])


def _vtk_matrix(array: np.ndarray):
    import vtk

    matrix = vtk.vtkMatrix4x4()
    for row in range(4):
        for column in range(4):
            matrix.SetElement(row, column, float(array[row, column]))
    return matrix


def _node_to_world_matrix(node) -> np.ndarray:
    """Return the 4 x 4 transform from `node`'s local RAS to world RAS, or raise for warping transforms."""
    import vtk

    transform_node = node.GetParentTransformNode()
    if transform_node is None:
        return np.eye(4)
    if not transform_node.IsTransformToWorldLinear():
        raise InputError(
            f"The node {node.GetName()!r} is under the non-linear transform {transform_node.GetName()!r}; "
            "harden the transform (Data module, right-click, Harden transform) before the analysis."
        )
    matrix = vtk.vtkMatrix4x4()
    transform_node.GetMatrixTransformToWorld(matrix)
    return _matrix_from_vtk(matrix)


def volume_ijk_to_ras(volume_node) -> np.ndarray:
    """Return the volume's IJK-to-world-RAS matrix (4 x 4), parent linear transforms included."""
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return _node_to_world_matrix(volume_node) @ _matrix_from_vtk(matrix)


def volume_node_to_sitk_image(volume_node, pixel_dtype: type | None = np.float32) -> sitk.Image:
    """Convert a scalar volume node to a SimpleITK image with LPS geometry.

    Voxel values are copied unchanged (Hounsfield units for CT) as `pixel_dtype`, or in
    the node's own type when `pixel_dtype` is None. Origin, spacing and
    direction come from the node's IJKToRAS matrix (and any linear parent transform),
    converted from RAS to LPS by negating x and y.
    """
    from slicer.util import arrayFromVolume

    if volume_node is None:
        raise InputError("No input volume is selected; load a chest CT and select it as the input volume.")
    image_data = volume_node.GetImageData()
    if image_data is None or image_data.GetNumberOfPoints() == 0:
        raise InputError(f"The volume {volume_node.GetName()!r} has no voxels; load a CT volume first.")
    if image_data.GetNumberOfScalarComponents() != 1:
        raise InputError(
            f"The volume {volume_node.GetName()!r} has {image_data.GetNumberOfScalarComponents()} components "
            "per voxel; select a single-component (greyscale) CT volume."
        )

    array = np.asarray(arrayFromVolume(volume_node), dtype=pixel_dtype)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))

    ijk_to_lps = LPS_TO_RAS @ volume_ijk_to_ras(volume_node)[:3]
    axes = ijk_to_lps[:, :3]
    spacing = np.linalg.norm(axes, axis=0)
    if np.any(spacing <= 0):
        raise InputError(f"The volume {volume_node.GetName()!r} has a zero voxel spacing {spacing.tolist()}.")
    direction = axes / spacing
    image.SetSpacing([float(value) for value in spacing])
    image.SetDirection([float(value) for value in direction.reshape(-1)])
    image.SetOrigin([float(value) for value in ijk_to_lps[:, 3]])
    return image


def markups_points(markups_node, defined_only: bool = True) -> list[LabelledPoint]:
    """Return the control points of a markups node in world RAS and LPS, with their labels.

    Points whose position is not defined yet (being placed, or skipped) are left out
    when `defined_only` is true. An unlabelled point gets the label "P<index + 1>".
    """
    import slicer

    if markups_node is None:
        raise InputError("No markups point list is selected; place a point on the nodule first.")
    points = []
    for index in range(markups_node.GetNumberOfControlPoints()):
        status = markups_node.GetNthControlPointPositionStatus(index)
        if defined_only and status != slicer.vtkMRMLMarkupsNode.PositionDefined:
            continue
        position = [0.0, 0.0, 0.0]
        markups_node.GetNthControlPointPositionWorld(index, position)
        label = markups_node.GetNthControlPointLabel(index) or f"P{index + 1}"
        point_ras = np.asarray(position, dtype=np.float64)
        points.append(
            LabelledPoint(
                label=label,
                index=index,
                point_lps=tuple(float(value) for value in ras_to_lps(point_ras)),
                point_ras=tuple(float(value) for value in point_ras),
            )
        )
    if not points:
        raise InputError(
            f"The point list {markups_node.GetName()!r} has no placed points; click the nodule centre "
            "with the point placement tool."
        )
    return points


def _find_view_node(scene, class_name: str, layout_name: str):
    for node in scene.GetNodesByClass(class_name):
        if node.GetLayoutName() == layout_name:
            return node
    return None


def plane_slice_nodes(scene, view_names: Sequence[str] = PLANE_VIEW_NAMES) -> list:
    """Return the slice nodes of the nine plane views, creating those the scene lacks.

    In the Slicer application the layout manager creates them when the CLIPNodule layout
    is shown. Creating them here first is equivalent, because views are matched by their
    layout name.
    """
    nodes = []
    for index, name in enumerate(view_names):
        node = _find_view_node(scene, "vtkMRMLSliceNode", name)
        if node is None:
            node = scene.CreateNodeByClass("vtkMRMLSliceNode")
            node.SetName(name)
            node.SetLayoutName(name)
            node.SetLayoutLabel(str(index))
            scene.AddNode(node)
            node.UnRegister(None)
        nodes.append(node)
    return nodes


def plane_slice_composite_nodes(scene, view_names: Sequence[str] = PLANE_VIEW_NAMES) -> list:
    """Return the slice composite nodes (layer selection) of the nine plane views, creating missing ones."""
    nodes = []
    for name in view_names:
        node = _find_view_node(scene, "vtkMRMLSliceCompositeNode", name)
        if node is None:
            node = scene.CreateNodeByClass("vtkMRMLSliceCompositeNode")
            node.SetLayoutName(name)
            scene.AddNode(node)
            node.UnRegister(None)
        nodes.append(node)
    return nodes


def view_title(plane_name: str, attention: float | None) -> str:
    """Return the text shown in a plane view's corner: the plane name and its attention weight."""
    if attention is None:
        return plane_name
    return f"{plane_name}  attention {attention:.3f}"


def _update_field_of_view_outline(scene, slice_node, frame: PlaneFrameLike, index: int):
    """Create or move the closed curve that outlines the model's field of view in one view."""
    name = f"CLIPNodule field of view {index}: {frame.name}"
    curve = None
    for node in scene.GetNodesByClass("vtkMRMLMarkupsClosedCurveNode"):
        if node.GetAttribute(FIELD_OF_VIEW_ATTRIBUTE) == str(index):
            curve = node
            break
    if curve is None:
        curve = scene.AddNewNodeByClass("vtkMRMLMarkupsClosedCurveNode", name)
        curve.SetAttribute(FIELD_OF_VIEW_ATTRIBUTE, str(index))
        curve.CreateDefaultDisplayNodes()
    curve.SetName(name)
    curve.SetCurveTypeToLinear()
    curve.RemoveAllControlPoints()
    for corner in field_of_view_corners_ras(frame):
        curve.AddControlPoint(*[float(value) for value in corner])
    curve.SetLocked(True)
    curve.SetHideFromEditors(True)

    display = curve.GetDisplayNode()
    if display is not None:
        display.SetViewNodeIDs([slice_node.GetID()])
        display.SetPropertiesLabelVisibility(False)
        display.SetPointLabelsVisibility(False)
        display.SetGlyphScale(0.5)
        display.SetFillVisibility(False)
        display.SetSelectedColor(1.0, 0.85, 0.0)
        display.SetColor(1.0, 0.85, 0.0)
    return curve


def show_planes_in_views(
    scene,
    frames: Sequence[PlaneFrameLike],
    volume_node=None,
    attention: Sequence[float] | None = None,
    model_image_nodes: Sequence | None = None,
    model_image_opacity: float = 0.0,
) -> list:
    """Put each of the nine plane views on its model plane, labelled with its attention weight.

    Each view gets the SliceToRAS of `slice_orientation.slice_to_ras_matrix` and the
    model's field of view in mm, widened along the longer screen axis to keep the view's
    aspect. A closed curve outlines the model's field of view. The CT is the background
    layer and, when given, the model's own image of that plane the foreground layer at
    `model_image_opacity`. Returns the slice nodes in plane order.
    """
    if len(frames) != len(PLANE_VIEW_NAMES):
        raise InputError(f"Expected {len(PLANE_VIEW_NAMES)} plane frames, got {len(frames)}.")

    slice_nodes = plane_slice_nodes(scene)
    composite_nodes = plane_slice_composite_nodes(scene)
    for index, (frame, slice_node, composite_node) in enumerate(zip(frames, slice_nodes, composite_nodes)):
        weight = None if attention is None else float(attention[index])
        title = view_title(frame.name, weight)

        was_modifying = slice_node.StartModify()
        slice_node.GetSliceToRAS().DeepCopy(_vtk_matrix(slice_to_ras_matrix(frame)))
        width, height = slice_node.GetDimensions()[:2]
        field_of_view = float(frame.field_of_view_mm)
        aspect = (height / width) if width else 1.0
        if aspect >= 1.0:
            slice_node.SetFieldOfView(field_of_view, field_of_view * aspect, SLICE_THICKNESS_MM)
        else:
            slice_node.SetFieldOfView(field_of_view / aspect, field_of_view, SLICE_THICKNESS_MM)
        slice_node.SetXYZOrigin(0.0, 0.0, 0.0)
        slice_node.SetAttribute(VIEW_TITLE_ATTRIBUTE, title)
        slice_node.UpdateMatrices()
        slice_node.EndModify(was_modifying)

        composite_node.SetLinkedControl(False)
        if volume_node is not None:
            composite_node.SetBackgroundVolumeID(volume_node.GetID())
        if model_image_nodes is not None:
            composite_node.SetForegroundVolumeID(model_image_nodes[index].GetID())
            composite_node.SetForegroundOpacity(float(model_image_opacity))

        _update_field_of_view_outline(scene, slice_node, frame, index)
    return slice_nodes


def set_model_image_opacity(scene, opacity: float) -> None:
    """Set how strongly the model's own plane images cover the CT in the nine views (0 to 1)."""
    for composite_node in plane_slice_composite_nodes(scene):
        composite_node.SetForegroundOpacity(float(opacity))


def model_image_volumes(scene, planes: np.ndarray, frames: Sequence[PlaneFrameLike]) -> list:
    """Create or update one single-slice volume per plane holding the model's 224 x 224 image.

    Each volume lies exactly on its plane in world space (`model_image_ijk_to_ras`), so it
    shows in the plane's view on top of the CT. Values are the [0, 1] intensities after
    the [-1000, 500] HU window, shown with window 1 and level 0.5.
    """
    from slicer.util import updateVolumeFromArray

    planes = np.asarray(planes, dtype=np.float32)
    if planes.ndim != 3 or planes.shape[0] != len(frames):
        raise InputError(f"Expected planes of shape ({len(frames)}, 224, 224), got {planes.shape}.")

    existing = {
        node.GetAttribute(MODEL_IMAGE_ATTRIBUTE): node
        for node in scene.GetNodesByClass("vtkMRMLScalarVolumeNode")
        if node.GetAttribute(MODEL_IMAGE_ATTRIBUTE) is not None
    }
    nodes = []
    for index, frame in enumerate(frames):
        node = existing.get(str(index))
        if node is None:
            node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"CLIPNodule model input {index}: {frame.name}")
            node.SetAttribute(MODEL_IMAGE_ATTRIBUTE, str(index))
            node.CreateDefaultDisplayNodes()
        updateVolumeFromArray(node, planes[index][np.newaxis])
        node.SetIJKToRASMatrix(_vtk_matrix(model_image_ijk_to_ras(frame, image_size=planes.shape[-1])))

        display = node.GetDisplayNode()
        if display is not None:
            display.SetAutoWindowLevel(False)
            display.SetWindowLevel(1.0, 0.5)
        nodes.append(node)
    return nodes

