"""Checks that a loaded image is a usable 3D CT in Hounsfield units and that a point lies in it.

Core library module: no Qt or Slicer imports. Readers are lenient (they default missing
spacing, accept non-orthonormal directions and read raw stored pixels), so these checks
are the library's own and raise InputError naming the value and the fix.
"""

from __future__ import annotations

import itertools
import logging
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from .coordinates import as_point
from .errors import InputError

logger = logging.getLogger(__name__)

# Air is about -1000 HU and aerated lung about -900 to -700 HU. A chest CT, and even a
# tight volume of interest around a lung nodule, contains some voxels at or below this
# value (the highest minimum among 787 LIDC-IDRI nodule volumes is -789 HU).
AERATED_HU_THRESHOLD = -700.0
MIN_AERATED_FRACTION = 1e-4
# Stored CT pixels without rescale are usually 0..4095 with air near 0.
RAW_PIXEL_MAX_THRESHOLD = 2000.0
ORTHONORMAL_TOLERANCE = 1e-3
# A point this far (in voxels) beyond the outer face of an edge voxel still counts as
# inside, so that a point typed at the face is not rejected for float32 header rounding.
POINT_INSIDE_TOLERANCE_VOXELS = 1e-3

_FLOAT_PIXEL_IDS = {sitk.sitkFloat32, sitk.sitkFloat64}


def check_ct_geometry(image: sitk.Image, source: str) -> None:
    """Raise InputError unless `image` is 3D, single-channel, with valid spacing and direction.

    This is the cheap part of `check_ct_image`: it reads no voxel values.
    """
    dimension = image.GetDimension()
    if dimension != 3:
        kind = "a 2D image" if dimension == 2 else f"a {dimension}D image"
        raise InputError(
            f"{source} is {kind} (size {list(image.GetSize())}); a CT volume must be 3D. "
            "Pass the whole CT series or a 3D volume file (one time point, one channel)."
        )
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{source} has {image.GetNumberOfComponentsPerPixel()} components per voxel "
            "(a colour or vector image); a CT volume has one HU value per voxel."
        )

    size = image.GetSize()
    if min(size) < 2:
        raise InputError(
            f"{source} has size {list(size)} voxels, a single slice; a CT volume needs "
            "at least two slices along every axis. Load the whole series."
        )

    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise InputError(
            f"{source} has invalid voxel spacing {spacing.tolist()} mm; every spacing must be "
            "a positive number. Fix the spacing in the file header."
        )

    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    deviation = np.abs(direction.T @ direction - np.eye(3)).max()
    if not np.isfinite(deviation) or deviation > ORTHONORMAL_TOLERANCE:
        raise InputError(
            f"{source} has a direction matrix that is not orthonormal "
            f"({np.round(direction, 6).tolist()}, max deviation {deviation:.3g} from an "
            "orthonormal matrix); voxel positions would be wrong. Fix the orientation in "
            "the file header."
        )


def _check_values(image: sitk.Image, source: str) -> None:
    values = sitk.GetArrayViewFromImage(image)

    if image.GetPixelID() in _FLOAT_PIXEL_IDS:
        finite = np.isfinite(values)
        if not finite.all():
            count = int(finite.size - np.count_nonzero(finite))
            raise InputError(
                f"{source} contains {count} NaN or infinite voxel values; a CT must hold "
                "finite HU values. Fix or re-export the volume."
            )

    minimum = float(values.min())
    maximum = float(values.max())
    if minimum >= 0 and maximum > RAW_PIXEL_MAX_THRESHOLD:
        raise InputError(
            f"{source} has values from {minimum:g} to {maximum:g}, which look like raw stored "
            "pixel values without the rescale slope and intercept, not Hounsfield units "
            "(air should be near -1000 HU). Convert the CT to HU (apply RescaleSlope and "
            "RescaleIntercept) before loading it."
        )

    aerated_count = int(np.count_nonzero(values <= AERATED_HU_THRESHOLD))
    if aerated_count < max(1, MIN_AERATED_FRACTION * values.size):
        raise InputError(
            f"{source} has no voxels near -1000 HU (air) or of aerated lung: values range "
            f"from {minimum:g} to {maximum:g}, and {aerated_count} voxels are at or below "
            f"{AERATED_HU_THRESHOLD:g} HU. The model needs a chest CT in Hounsfield units; "
            "this looks like another modality or a normalised image."
        )


def check_ct_image(image: sitk.Image, source: str) -> None:
    """Raise InputError unless `image` is a 3D single-channel CT in HU with valid geometry.

    `source` names the image in messages (usually its path).
    """
    check_ct_geometry(image, source)
    _check_values(image, source)
    logger.debug("%s passed the CT checks", source)


def lps_extent(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Return the LPS (min, max) corners (mm) of the box covering every voxel, edges included."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    matrix = direction @ np.diag(np.asarray(image.GetSpacing(), dtype=np.float64))
    origin = np.asarray(image.GetOrigin(), dtype=np.float64)
    edges = [(-0.5, size - 0.5) for size in image.GetSize()]
    corners = origin + np.array(list(itertools.product(*edges))) @ matrix.T
    return corners.min(axis=0), corners.max(axis=0)


def _is_inside(image: sitk.Image, point_lps: np.ndarray) -> bool:
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    matrix = direction @ np.diag(np.asarray(image.GetSpacing(), dtype=np.float64))
    index = np.linalg.solve(matrix, point_lps - np.asarray(image.GetOrigin(), dtype=np.float64))
    size = np.asarray(image.GetSize(), dtype=np.float64)
    margin = 0.5 + POINT_INSIDE_TOLERANCE_VOXELS
    return bool(np.all(index >= -margin) and np.all(index <= size - 1 + margin))


def check_point_inside(image: sitk.Image, point_lps: Sequence[float]) -> None:
    """Raise InputError unless the LPS point (mm) lies inside the scan's voxels."""
    point = as_point(point_lps, "nodule point (LPS)")
    if _is_inside(image, point):
        return

    low, high = lps_extent(image)
    extent = ", ".join(
        f"{axis} [{low[i]:.1f}, {high[i]:.1f}]" for i, axis in enumerate(("x", "y", "z"))
    )
    message = (
        f"The nodule point ({point[0]:.2f}, {point[1]:.2f}, {point[2]:.2f}) mm (LPS) lies "
        f"outside the scan, whose LPS extent is {extent} mm."
    )
    flipped = point * np.array([-1.0, -1.0, 1.0])
    if _is_inside(image, flipped):
        message += (
            " Read as RAS, the point would lie inside: did you pass RAS coordinates "
            "(3D Slicer markups)? Use --coordinate-system RAS."
        )
    else:
        message += (
            " Check that the point belongs to this scan and is in millimetres; if it is in "
            "RAS (3D Slicer markups), use --coordinate-system RAS."
        )
    raise InputError(message)
