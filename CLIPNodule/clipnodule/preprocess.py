"""From a CT and a nodule point to the nine model planes, as the published pipeline makes them.

Core library module: no Qt, Slicer or torch imports. CLIP normalisation, which needs
torch, is `intensity.clip_normalize` and is applied by the caller.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from .coordinates import as_point
from .crop import HUCrop, crop_hu_cube
from .ct_checks import check_ct_geometry, check_point_inside
from .intensity import scale_hu
from .planes import PlaneFrame, nine_planes, plane_frames

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class NodulePlanes:
    """The nine planes of one nodule and where they come from.

    `planes` is (9, 224, 224) float32 after the HU window scaling to [0, 1] and before
    CLIP normalisation, in `planes.PLANE_NAMES` order. `frames` gives each plane's LPS
    position and orientation.
    """

    planes: np.ndarray
    crop: HUCrop
    point_lps: np.ndarray
    frames: list[PlaneFrame]


def extract_planes(image: sitk.Image, point_lps: Sequence[float]) -> NodulePlanes:
    """Check that the LPS point (mm) lies in the scan, crop around it and cut the nine planes.

    Only the geometry of `image` is checked here; `image_io.load_ct` also checks the HU
    values, so an image loaded another way should pass `ct_checks.check_ct_image` first.
    """
    started = time.perf_counter()
    point = as_point(point_lps, "nodule point (LPS)")
    check_ct_geometry(image, "The CT image")
    check_point_inside(image, point)

    crop = crop_hu_cube(image, point)
    planes = nine_planes(scale_hu(crop.hu))
    frames = plane_frames(crop.origin_lps, size=crop.hu.shape[0])

    logger.debug(
        "Extracted nine planes at %s mm (LPS), grid index %s, in %.3f s",
        np.round(point, 2).tolist(),
        crop.center_index,
        time.perf_counter() - started,
    )
    return NodulePlanes(planes=planes, crop=crop, point_lps=point, frames=frames)
