"""On-disk cache of the HU cubes around training nodules, so each CT is read and resampled once.

A cached cube is the 1 mm LPS crop of `crop.crop_hu_cube` with a margin for centre
jitter, stored as a plain float32 `.npy` file (read with allow_pickle=False) and keyed by
the CT file's sha256, the LPS point and `PREPROCESSING_VERSION`. No torch, Qt or Slicer imports.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from ..coordinates import as_point
from ..crop import CROP_SIZE, crop_hu_cube
from ..errors import InputError

logger = logging.getLogger(__name__)

# Largest centre jitter per axis (mm) that a cached cube supports. The cube extends this
# far beyond the model's 100 mm crop on every side.
JITTER_MARGIN_MM = 5

# Change this string whenever the crop rule, margin or stored dtype changes, so that old
# cache files are no longer found.
PREPROCESSING_VERSION = f"hu-cube-{CROP_SIZE}mm-margin{JITTER_MARGIN_MM}-float32-v1"


class CropCache:
    """Cache of HU cubes of shape (S, S, S), S = 100 + 2 * margin, in `crop[z, y, x]` order.

    The nodule's grid voxel is at index S // 2, so `cube[m:m + 100, m:m + 100, m:m + 100]`
    (m = margin) is exactly `crop_hu_cube(image, point).hu`. A cube takes S**3 * 4 bytes
    on disk (5.3 MB for S = 110).
    """

    def __init__(self, folder: str | Path, margin: int = JITTER_MARGIN_MM) -> None:
        if margin < 0:
            raise InputError(f"The crop cache margin must be >= 0 mm, got {margin}.")
        self.folder = Path(folder)
        self.margin = int(margin)
        self.size = CROP_SIZE + 2 * self.margin
        self._file_hashes: dict[tuple[str, int, int], str] = {}

    def key(self, image_path: str | Path, point_lps: Sequence[float]) -> str:
        """Return the cache key: sha256 over the CT checksum, the exact point and the version."""
        point = as_point(point_lps, "nodule point (LPS)")
        content = {
            "ct_sha256": self._file_sha256(Path(image_path)),
            # Exact floats, not rounded ones: the crop's grid index truncates the point, so two
            # points that round alike can still lie in different 1 mm voxels.
            "point_lps": [float(value) for value in point],
            "version": PREPROCESSING_VERSION,
            "size": self.size,
        }
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode("utf-8")).hexdigest()

    def path_for(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.npy"

    def get(self, image_path: str | Path, point_lps: Sequence[float]) -> np.ndarray:
        """Return the cached HU cube (float32, (S, S, S)), cropping and storing it first if needed.

        Raises InputError when the CT cannot be read, fails the CT checks, or the point
        lies outside it.
        """
        path = self.path_for(self.key(image_path, point_lps))
        if path.is_file():
            try:
                cube = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as error:
                logger.warning("Cropping again: cached cube %s is unreadable (%s).", path, error)
            else:
                if cube.shape == (self.size,) * 3 and cube.dtype == np.float32:
                    return cube
                logger.warning("Cropping again: cached cube %s has shape %s, dtype %s.", path, cube.shape, cube.dtype)

        cube = self._crop(Path(image_path), point_lps)
        _save_npy_atomic(path, cube)
        return cube

    def _crop(self, image_path: Path, point_lps: Sequence[float]) -> np.ndarray:
        from ..ct_checks import check_point_inside
        from ..image_io import load_ct

        image = load_ct(image_path)
        point = as_point(point_lps, "nodule point (LPS)")
        check_point_inside(image, point)
        return crop_hu_cube(image, point, size=self.size).hu.astype(np.float32, copy=False)

    def _file_sha256(self, path: Path) -> str:
        from ..predictor import input_checksum

        try:
            status = path.stat()
        except OSError:
            raise InputError(f"CT not found: {path}. Check the image_path column of the data set table.") from None
        # The checksum of an unchanged file (same size and modification time) is computed once per process.
        memo_key = (str(path.resolve()), status.st_size, status.st_mtime_ns)
        if memo_key not in self._file_hashes:
            self._file_hashes[memo_key] = input_checksum(path)
        return self._file_hashes[memo_key]


def centre_crop(cube: np.ndarray, shift: Sequence[int] = (0, 0, 0), size: int = CROP_SIZE) -> np.ndarray:
    """Cut the `size`-voxel cube whose centre is moved by `shift` (z, y, x) voxels from the cube's centre.

    With a zero shift this is the nodule-centred crop. Raises InputError when the shift
    exceeds the cube's margin.
    """
    margin = (cube.shape[0] - size) // 2
    offsets = [margin + int(value) for value in shift]
    if any(offset < 0 or offset + size > extent for offset, extent in zip(offsets, cube.shape)):
        raise InputError(f"A shift of {tuple(shift)} voxels exceeds the cached cube's margin of {margin} voxels.")
    z, y, x = offsets
    return cube[z : z + size, y : y + size, x : x + size]


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npy", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            np.save(stream, array, allow_pickle=False)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
