"""The nine 2D planes through the nodule that form the model input, and their LPS geometry.

Core library module: no Qt, Slicer or torch imports. It reproduces the published
pipeline's `slices2d_9` without rotating the whole cube.

Input: a crop `crop[z, y, x]` of N = 100 voxels per side on a 1 mm LPS grid (+x = patient
left, +y = posterior, +z = superior; see `crop.py`), scaled to [0, 1]. Notation:
c0 = (N - 1) / 2 = 49.5, k = 1/sqrt(2). Every plane is first formed on an N x N grid
(row i, column j). Its central 50 x 50 (rows and columns 25..74) is then resized to
224 x 224 with bilinear, corner-aligned interpolation, so output pixel r samples grid
position 25 + r * 49 / 223.

Planes 0-2 are slices of the crop. Planes 3-8 come from the published pipeline's
`scipy.ndimage.rotate(crop, 45, axes=(a, b), reshape=False)` (cubic B-spline with
prefilter, zero outside), which maps output (o_a, o_b) to input
in_a = c0 + k (o_a - c0) + k (o_b - c0), in_b = c0 - k (o_a - c0) + k (o_b - c0),
followed by taking index 50 of one rotated axis. Index 50 rather than c0 shifts each
oblique plane by 0.5 voxel from the crop centre. Oblique values are cubic-spline
interpolated within the 2D slice of the two rotated axes; the third axis is an integer
index. Grid steps are 1 voxel (1 mm) on every plane, also along the diagonals.

| # | name         | plane (crop voxels)               | rows, top -> bottom     | columns, left -> right  |
|---|--------------|-----------------------------------|-------------------------|-------------------------|
| 0 | axial        | z = 50                            | +y (anterior->posterior)| +x (right->left)        |
| 1 | coronal      | y = 50                            | +z (inferior->superior) | +x (right->left)        |
| 2 | sagittal     | x = 50                            | +z (inferior->superior) | +y (anterior->posterior)|
| 3 | oblique z=x  | z - x = +0.7071, contains y axis  | +y                      | (+z, +x) / sqrt(2)      |
| 4 | oblique z=-x | (z-c0) + (x-c0) = +0.7071         | (+z, -x) / sqrt(2)      | +y                      |
| 5 | oblique z=y  | z - y = +0.7071, contains x axis  | (+z, +y) / sqrt(2)      | +x                      |
| 6 | oblique z=-y | (z-c0) + (y-c0) = +0.7071         | (+z, -y) / sqrt(2)      | +x                      |
| 7 | oblique y=x  | y - x = +0.7071, contains z axis  | +z                      | (+y, +x) / sqrt(2)      |
| 8 | oblique y=-x | (y-c0) + (x-c0) = +0.7071         | +z                      | (+y, -x) / sqrt(2)      |

Superior is at the bottom of planes 1, 2, 7 and 8, as in the published pipeline.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
from scipy import ndimage

PLANE_NAMES: tuple[str, ...] = (
    "axial",
    "coronal",
    "sagittal",
    "oblique z=x",
    "oblique z=-x",
    "oblique z=y",
    "oblique z=-y",
    "oblique y=x",
    "oblique y=-x",
)

CROP_SIZE = 100
PLANE_SIZE = 224

_INV_SQRT2 = 1.0 / math.sqrt(2.0)


@dataclasses.dataclass(frozen=True)
class _PlaneSpec:
    """Cutting rule of one plane: the rotation axes (None for planes 0-2) and the fixed axis."""

    rotation_axes: tuple[int, int] | None
    fixed_axis: int


# Array axes are (0, 1, 2) = (z, y, x). The fixed axis takes index N // 2.
_PLANE_SPECS: tuple[_PlaneSpec, ...] = (
    _PlaneSpec(None, 0),
    _PlaneSpec(None, 1),
    _PlaneSpec(None, 2),
    _PlaneSpec((0, 2), 0),
    _PlaneSpec((0, 2), 2),
    _PlaneSpec((0, 1), 0),
    _PlaneSpec((0, 1), 1),
    _PlaneSpec((1, 2), 1),
    _PlaneSpec((1, 2), 2),
)


@dataclasses.dataclass(frozen=True)
class PlaneFrame:
    """Position and orientation of one model plane in LPS millimetres.

    Pixel (row r, column c) of the 224 x 224 model image, with r and c from 0 to 223,
    lies at `center_lps + (r - 111.5) * pixel_spacing_mm * row_direction_lps
    + (c - 111.5) * pixel_spacing_mm * column_direction_lps`.
    """

    name: str
    center_lps: np.ndarray
    column_direction_lps: np.ndarray
    row_direction_lps: np.ndarray
    normal_lps: np.ndarray
    pixel_spacing_mm: float
    field_of_view_mm: float


def _window(size: int) -> tuple[int, int]:
    """Return the first grid index and the length of the central window kept per plane."""
    length = size // 2
    return (size - length) // 2, length


def _grid_to_voxel(spec: _PlaneSpec, rows: np.ndarray, cols: np.ndarray, size: int) -> np.ndarray:
    """Map plane grid positions (row, column) to continuous crop voxel coordinates (z, y, x).

    Returns an array of shape (3, *rows.shape). Rows and columns may be fractional.
    """
    center = (size - 1) / 2.0
    fixed_index = float(size // 2)

    # Output coordinates of the (possibly rotated) volume: the fixed axis is constant,
    # the other two take the rows and columns in increasing axis order.
    free_axes = [axis for axis in range(3) if axis != spec.fixed_axis]
    output = [None, None, None]
    output[spec.fixed_axis] = np.full(np.shape(rows), fixed_index)
    output[free_axes[0]] = np.asarray(rows, dtype=np.float64)
    output[free_axes[1]] = np.asarray(cols, dtype=np.float64)
    if spec.rotation_axes is None:
        return np.stack(output)

    axis_a, axis_b = spec.rotation_axes
    offset_a = output[axis_a] - center
    offset_b = output[axis_b] - center
    voxel = list(output)
    voxel[axis_a] = center + _INV_SQRT2 * offset_a + _INV_SQRT2 * offset_b
    voxel[axis_b] = center - _INV_SQRT2 * offset_a + _INV_SQRT2 * offset_b
    return np.stack(voxel)


def _prefilter_slices(crop01: np.ndarray, rotation_axes: tuple[int, int]) -> np.ndarray:
    """Return the 2D cubic B-spline coefficients of the central window's slices.

    The slices are those across the untouched axis at indices start..start+length-1,
    the only ones the central window of an oblique plane reaches. Filtering along both
    rotated axes equals the 2D prefilter of each slice (scipy mode 'constant').
    """
    start, length = _window(crop01.shape[0])
    untouched_axis = 3 - sum(rotation_axes)
    coefficients = np.take(crop01, np.arange(start, start + length), axis=untouched_axis).astype(np.float64)
    for axis in rotation_axes:
        coefficients = ndimage.spline_filter1d(coefficients, order=3, axis=axis, mode="constant")
    return coefficients


def _oblique_window(spec: _PlaneSpec, coefficients: np.ndarray, size: int) -> np.ndarray:
    """Sample the central window of an oblique plane with 2D cubic splines, slice by slice."""
    start, length = _window(size)
    grid = np.arange(start, start + length, dtype=np.float64)
    rows, cols = np.meshgrid(grid, grid, indexing="ij")
    voxel = _grid_to_voxel(spec, rows, cols, size)

    axis_a, axis_b = spec.rotation_axes
    untouched_axis = 3 - axis_a - axis_b
    slice_indices = voxel[untouched_axis].astype(np.int64)

    window = np.empty((length, length), dtype=np.float32)
    for index in np.unique(slice_indices):
        selected = slice_indices == index
        plane_2d = np.take(coefficients, index - start, axis=untouched_axis)
        coordinates = np.stack([voxel[axis_a][selected], voxel[axis_b][selected]])
        window[selected] = ndimage.map_coordinates(
            plane_2d, coordinates, order=3, mode="constant", cval=0.0, prefilter=False
        )
    return window


def _resize_bilinear(window: np.ndarray) -> np.ndarray:
    """Resize a window to PLANE_SIZE x PLANE_SIZE, bilinear and corner-aligned (scipy zoom)."""
    factor = PLANE_SIZE / window.shape[0]
    return ndimage.zoom(window, factor, order=1)


def nine_planes(crop01: np.ndarray) -> np.ndarray:
    """Cut the nine planes from a scaled crop as the published pipeline does.

    `crop01` is a (100, 100, 100) float32 array in [0, 1] with axes (z, y, x). Returns
    (9, 224, 224) float32 in `PLANE_NAMES` order; cubic-spline ringing can leave values
    of the oblique planes slightly outside [0, 1].
    """
    crop01 = np.asarray(crop01, dtype=np.float32)
    if crop01.shape != (CROP_SIZE,) * 3:
        raise ValueError(f"crop must have shape {(CROP_SIZE,) * 3}; got {crop01.shape}")

    size = CROP_SIZE
    start, length = _window(size)
    middle = size // 2
    coefficients_by_axes: dict[tuple[int, int], np.ndarray] = {}
    planes = np.empty((len(_PLANE_SPECS), PLANE_SIZE, PLANE_SIZE), dtype=np.float32)

    for plane_index, spec in enumerate(_PLANE_SPECS):
        if spec.rotation_axes is None:
            full_plane = np.take(crop01, middle, axis=spec.fixed_axis)
            window = full_plane[start : start + length, start : start + length]
        else:
            if spec.rotation_axes not in coefficients_by_axes:
                coefficients_by_axes[spec.rotation_axes] = _prefilter_slices(crop01, spec.rotation_axes)
            window = _oblique_window(spec, coefficients_by_axes[spec.rotation_axes], size)
        planes[plane_index] = _resize_bilinear(np.ascontiguousarray(window, dtype=np.float32))

    return planes


def plane_frames(crop_origin_lps: Sequence[float], size: int = CROP_SIZE) -> list[PlaneFrame]:
    """Return the LPS frame of each of the nine model planes of a crop.

    `crop_origin_lps` is the LPS position (mm) of crop voxel [0, 0, 0]; voxel [z, y, x]
    lies at origin + (x, y, z) mm. The frame centre is where the centre of the 224 x 224
    image lies (between its pixels 111 and 112), including the 0.5-voxel offset of the
    oblique planes. The 224 pixel centres span the 49 mm between the first and last of
    the central 50 grid positions. So the pixel spacing is 49/223 mm on every plane, and
    the field of view, edge to edge, is 224 * 49/223 mm.
    """
    origin = np.asarray(crop_origin_lps, dtype=np.float64).reshape(3)
    start, length = _window(size)
    pixel_spacing = (length - 1) / (PLANE_SIZE - 1)
    center_grid = start + (length - 1) / 2.0

    frames = []
    for name, spec in zip(PLANE_NAMES, _PLANE_SPECS):
        rows = np.array([center_grid, center_grid + 1.0, center_grid])
        cols = np.array([center_grid, center_grid, center_grid + 1.0])
        zyx = _grid_to_voxel(spec, rows, cols, size)
        lps = origin[:, None] + zyx[::-1]

        center = lps[:, 0]
        row_direction = (lps[:, 1] - center) / np.linalg.norm(lps[:, 1] - center)
        column_direction = (lps[:, 2] - center) / np.linalg.norm(lps[:, 2] - center)
        frames.append(
            PlaneFrame(
                name=name,
                center_lps=center,
                column_direction_lps=column_direction,
                row_direction_lps=row_direction,
                normal_lps=np.cross(column_direction, row_direction),
                pixel_spacing_mm=pixel_spacing,
                field_of_view_mm=PLANE_SIZE * pixel_spacing,
            )
        )
    return frames
