"""SliceToRAS matrices that show each model plane the way radiologists read it.

Pure numpy: no MRML, Qt or Slicer imports, so the geometry is testable anywhere.

A Slicer SliceToRAS matrix has, as its columns, the RAS directions of screen right,
screen up and the slice normal, and as its translation the RAS point at the view
centre. Display rule, applied to every plane:

- screen up is the projection of superior (+S) onto the plane, except for planes within
  about 25 degrees of axial, where it is the projection of anterior (+A);
- screen right is perpendicular to it in the plane and points to patient left
  (radiological convention). In a plane without a left-right component it points
  posterior, as Slicer's sagittal view does;
- the normal column is right x up, except for axial-like planes where Slicer's axial
  preset uses the opposite sign (+S), so the axial, coronal and sagittal planes get
  exactly Slicer's default Axial, Coronal and Sagittal orientation matrices
  (vtkMRMLSliceNode::Get{Axial,Coronal,Sagittal}SliceToRASMatrix, radiological).

The displayed plane is the model's plane, with the same centre and the same normal up
to sign. The image on screen can be the model image flipped or transposed.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np

RIGHT_ANTERIOR_SUPERIOR = np.eye(3)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])

# A plane whose normal is within acos(0.9) ~ 25.8 degrees of the S axis is shown
# anterior-up like Slicer's axial view. Every other plane is shown superior-up.
AXIAL_LIKE_NORMAL_COSINE = 0.9


class PlaneFrameLike(Protocol):
    """The parts of `clipnodule.planes.PlaneFrame` this module reads (LPS millimetres)."""

    name: str
    center_lps: np.ndarray
    column_direction_lps: np.ndarray
    row_direction_lps: np.ndarray
    normal_lps: np.ndarray
    pixel_spacing_mm: float
    field_of_view_mm: float


def _unit(vector: Sequence[float]) -> np.ndarray:
    array = np.asarray(vector, dtype=np.float64)
    return array / np.linalg.norm(array)


def display_axes_ras(normal_ras: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the RAS unit vectors (screen right, screen up, normal column) for a plane.

    `normal_ras` is the plane normal in RAS; its sign does not matter.
    """
    normal = _unit(normal_ras)
    superior = RIGHT_ANTERIOR_SUPERIOR[2]
    anterior = RIGHT_ANTERIOR_SUPERIOR[1]
    right_axis = RIGHT_ANTERIOR_SUPERIOR[0]

    axial_like = abs(float(normal @ superior)) > AXIAL_LIKE_NORMAL_COSINE
    reference_up = anterior if axial_like else superior
    up = _unit(reference_up - (reference_up @ normal) * normal)

    # Screen right: in the plane, perpendicular to up, towards patient left (-R);
    # towards posterior (-A) when the plane has no left-right component.
    right = _unit(np.cross(up, normal))
    if abs(float(right @ right_axis)) > 1e-6:
        if right @ right_axis > 0:
            right = -right
    elif right @ anterior > 0:
        right = -right

    normal_column = np.cross(right, up)
    if axial_like:
        normal_column = -normal_column
    return right, up, normal_column


def slice_to_ras_matrix(frame: PlaneFrameLike) -> np.ndarray:
    """Compute the 4 x 4 SliceToRAS matrix that shows `frame`'s plane in display orientation.

    The translation is the frame centre converted to RAS, so the view is centred on the
    model image centre.
    """
    normal_ras = LPS_TO_RAS @ _unit(frame.normal_lps)
    right, up, normal_column = display_axes_ras(normal_ras)

    matrix = np.eye(4)
    matrix[:3, 0] = right
    matrix[:3, 1] = up
    matrix[:3, 2] = normal_column
    matrix[:3, 3] = LPS_TO_RAS @ np.asarray(frame.center_lps, dtype=np.float64)
    return matrix


def model_image_ijk_to_ras(frame: PlaneFrameLike, image_size: int = 224) -> np.ndarray:
    """Compute the IJKToRAS matrix of a one-slice volume holding the model's image of `frame`.

    Voxel (i, j, 0) is model image pixel (row j, column i): i runs along the frame's
    column direction and j along its row direction, so `planes[k]` is the volume array
    as it is (shape (1, rows, columns)). The slice axis is the frame normal with the
    pixel spacing as its step.
    """
    spacing = float(frame.pixel_spacing_mm)
    half = (image_size - 1) / 2.0
    column_ras = LPS_TO_RAS @ _unit(frame.column_direction_lps)
    row_ras = LPS_TO_RAS @ _unit(frame.row_direction_lps)
    normal_ras = LPS_TO_RAS @ _unit(frame.normal_lps)
    center_ras = LPS_TO_RAS @ np.asarray(frame.center_lps, dtype=np.float64)

    matrix = np.eye(4)
    matrix[:3, 0] = column_ras * spacing
    matrix[:3, 1] = row_ras * spacing
    matrix[:3, 2] = normal_ras * spacing
    matrix[:3, 3] = center_ras - half * spacing * (column_ras + row_ras)
    return matrix


def field_of_view_corners_ras(frame: PlaneFrameLike) -> np.ndarray:
    """Return the four RAS corners (4, 3) of the model's field of view, in display order.

    The order is top-left, top-right, bottom-right, bottom-left as seen on screen.
    """
    matrix = slice_to_ras_matrix(frame)
    right, up, center = matrix[:3, 0], matrix[:3, 1], matrix[:3, 3]
    half = float(frame.field_of_view_mm) / 2.0
    return np.array(
        [
            center - half * right + half * up,
            center + half * right + half * up,
            center + half * right - half * up,
            center - half * right - half * up,
        ]
    )
