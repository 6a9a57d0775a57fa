"""The 100 mm HU cube around a nodule on the 1 mm LPS grid of the published pipeline.

Core library module: no Qt, Slicer or torch imports. Only the CT voxels around the
nodule are read and resampled, never the whole scan.

Grid rule (MONAI `Spacingd(pixdim=1, diagonal=True, align_corners=True)` followed by
`Orientationd("LPS")` in the published pipeline):
- Take the bounding box, in LPS, of the CT's voxel centres: lo and hi per axis.
- The grid has N = round_half_even(hi - lo + 1) points per axis, 1 mm apart, with axes
  along +x (left), +y (posterior) and +z (superior).
- It is anchored at max LPS x, max LPS y and min LPS z (the RAS-minimum corner), so grid
  point (i, j, k) lies at G0 + (i, j, k) mm with G0 = (hi_x - (Nx - 1), hi_y - (Ny - 1), lo_z).
  The grid is usually not aligned to the CT voxels.
- The nodule's grid index is c = trunc(P - G0), truncated toward zero, not rounded.
- The crop covers grid indices [c - 50, c + 50) per axis, so the nodule's voxel is at
  crop[50, 50, 50], and `crop[z, y, x]` is the CT at crop origin + (x, y, z) mm.

Values are trilinear on the original voxels with zero (0 HU, not -1000) outside them:
a grid point up to one voxel beyond the last voxel centre blends toward 0 HU, as
`scipy.ndimage.map_coordinates(order=1, mode='grid-constant', cval=0)` does. Crop
voxels outside the 1 mm grid are exactly 0 HU (the published pipeline's zero padding).

NOTE: The reference fixtures pin this rule for axis-aligned direction matrices only.
An oblique direction matrix gets the same bounding-box anchor here, with sampling through
the image's physical-to-index transform. Whether MONAI anchors such grids the same way
was not checked.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .coordinates import as_point

CROP_SIZE = 100


@dataclasses.dataclass
class HUCrop:
    """A cube of HU values on the 1 mm LPS grid, centred on a nodule.

    `hu[z, y, x]` (float32) is the CT at `origin_lps + (x, y, z)` mm. `center_index` is
    the nodule's truncated (i, j, k) = (x, y, z) index in the whole-scan 1 mm grid of
    shape `grid_shape` (i, j, k); that voxel is at `hu[size // 2, size // 2, size // 2]`.
    """

    hu: np.ndarray
    origin_lps: np.ndarray
    center_index: tuple[int, int, int]
    grid_shape: tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class GridGeometry:
    """The whole-scan 1 mm LPS grid: origin G0 (mm) and shape (i, j, k)."""

    origin_lps: np.ndarray
    shape: tuple[int, int, int]


def index_to_lps_matrix(image: sitk.Image) -> np.ndarray:
    """Return the 3 x 3 matrix direction @ diag(spacing) that maps index steps to LPS mm."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    return direction @ np.diag(np.asarray(image.GetSpacing(), dtype=np.float64))


def voxel_center_bounds(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Return the LPS (min, max) corners of the bounding box of all voxel centres (mm)."""
    matrix = index_to_lps_matrix(image)
    origin = np.asarray(image.GetOrigin(), dtype=np.float64)
    last = np.asarray(image.GetSize(), dtype=np.float64) - 1.0
    corners = np.array(list(itertools.product(*[(0.0, value) for value in last])))
    corners_lps = origin + corners @ matrix.T
    return corners_lps.min(axis=0), corners_lps.max(axis=0)


def one_mm_grid(image: sitk.Image) -> GridGeometry:
    """Compute the whole-scan 1 mm LPS grid that the published pipeline resamples to."""
    low, high = voxel_center_bounds(image)

    # np.round rounds half to even, as the reference resampler does.
    shape = np.round(high - low + 1.0).astype(np.int64)
    origin = np.array(
        [high[0] - (shape[0] - 1), high[1] - (shape[1] - 1), low[2]],
        dtype=np.float64,
    )
    return GridGeometry(origin_lps=origin, shape=tuple(int(value) for value in shape))


def _block_bounds(
    index_corners: np.ndarray, image_size: Sequence[int]
) -> tuple[np.ndarray, np.ndarray] | None:
    """Return the [start, stop) index block (i, j, k) that linear sampling at the corners needs.

    Returns None when the block lies entirely outside the image.
    """
    size = np.asarray(image_size, dtype=np.int64)
    start = np.floor(index_corners.min(axis=0)).astype(np.int64)
    stop = np.floor(index_corners.max(axis=0)).astype(np.int64) + 2
    start = np.clip(start, 0, size)
    stop = np.clip(stop, 0, size)
    if np.any(stop <= start):
        return None
    return start, stop


def crop_hu_cube(image: sitk.Image, point_lps: Sequence[float], size: int = CROP_SIZE) -> HUCrop:
    """Resample the `size`-mm cube around `point_lps` onto the 1 mm LPS grid, in HU.

    Works for any direction matrix (flipped, permuted or oblique axes): grid points are
    mapped through the image's physical-to-index transform. The caller checks that the
    point lies inside the scan; a point outside gives a crop of padding.
    """
    point = as_point(point_lps, "nodule point (LPS)")
    grid = one_mm_grid(image)
    grid_shape = np.asarray(grid.shape, dtype=np.int64)

    # Grid index of the nodule: int() truncates toward zero.
    center_index = np.trunc(point - grid.origin_lps).astype(np.int64)
    half = size // 2
    first_grid_index = center_index - half
    crop_origin = grid.origin_lps + first_grid_index

    # Crop voxels that fall on the 1 mm grid; the rest stay 0 HU.
    valid_start = np.clip(-first_grid_index, 0, size)
    valid_stop = np.clip(grid_shape - first_grid_index, 0, size)
    hu = np.zeros((size, size, size), dtype=np.float32)
    if np.any(valid_stop <= valid_start):
        return HUCrop(hu, crop_origin, tuple(int(v) for v in center_index), grid.shape)

    # Continuous CT index (i, j, k) of LPS point p is lps_to_index @ (p - image origin).
    lps_to_index = np.linalg.inv(index_to_lps_matrix(image))
    image_origin = np.asarray(image.GetOrigin(), dtype=np.float64)
    corner_offsets = np.array(list(itertools.product(*zip(valid_start, valid_stop - 1))), dtype=np.float64)
    index_corners = (crop_origin + corner_offsets - image_origin) @ lps_to_index.T
    bounds = _block_bounds(index_corners, image.GetSize())
    if bounds is None:
        return HUCrop(hu, crop_origin, tuple(int(v) for v in center_index), grid.shape)
    block_start, block_stop = bounds

    # Read only the needed block; numpy axes are (k, j, i), the reverse of ITK's.
    array_view = sitk.GetArrayViewFromImage(image)
    block = np.asarray(
        array_view[
            block_start[2] : block_stop[2],
            block_start[1] : block_stop[1],
            block_start[0] : block_stop[0],
        ],
        dtype=np.float32,
    )

    # Output axes are (z, y, x) and input axes (k, j, i): reverse both sides of the map.
    matrix_zyx = lps_to_index[::-1, ::-1]
    valid_start_zyx = valid_start[::-1].astype(np.float64)
    offset_zyx = (
        (lps_to_index @ (crop_origin - image_origin))[::-1]
        - block_start[::-1]
        + matrix_zyx @ valid_start_zyx
    )
    output_shape = tuple(int(v) for v in (valid_stop - valid_start)[::-1])
    sampled = ndimage.affine_transform(
        block,
        matrix_zyx,
        offset=offset_zyx,
        output_shape=output_shape,
        output=np.float32,
        order=1,
        mode="grid-constant",
        cval=0.0,
        prefilter=False,
    )

    z0, y0, x0 = valid_start[::-1]
    z1, y1, x1 = valid_stop[::-1]
    hu[z0:z1, y0:y1, x0:x1] = sampled
    return HUCrop(hu, crop_origin, tuple(int(v) for v in center_index), grid.shape)
