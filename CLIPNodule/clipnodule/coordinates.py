"""World coordinate systems: LPS (ITK, DICOM, the published CSV) and RAS (3D Slicer).

Inside the library every world point is LPS in millimetres. RAS differs from LPS by
the sign of x and y; entry points that accept RAS convert with `to_lps` at once.
"""

from __future__ import annotations

import enum
import math
from typing import Sequence

import numpy as np

from .errors import InputError

_LPS_RAS_FLIP = np.array([-1.0, -1.0, 1.0])


class CoordinateSystem(str, enum.Enum):
    """World coordinate system of a point given by a user or a file."""

    LPS = "LPS"
    RAS = "RAS"

    @classmethod
    def parse(cls, value: "str | CoordinateSystem") -> "CoordinateSystem":
        """Return the system named by `value` (case-insensitive)."""
        if isinstance(value, CoordinateSystem):
            return value
        try:
            return cls(str(value).upper())
        except ValueError:
            raise InputError(
                f"Unknown coordinate system {value!r}: use 'LPS' (ITK, DICOM, CSV files) "
                "or 'RAS' (3D Slicer markups)."
            ) from None


def as_point(point: Sequence[float], name: str = "point") -> np.ndarray:
    """Return `point` as a finite float64 array of shape (3,), or raise InputError."""
    try:
        array = np.asarray(point, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise InputError(f"The {name} {point!r} is not three numbers (x, y, z in mm).") from None
    if array.shape != (3,):
        raise InputError(f"The {name} {list(point)!r} must have three coordinates (x, y, z in mm).")
    if not all(math.isfinite(value) for value in array):
        raise InputError(f"The {name} {array.tolist()} contains NaN or infinity; give finite mm values.")
    return array


def lps_to_ras(point: Sequence[float]) -> np.ndarray:
    """Convert an LPS point (mm) to RAS (mm)."""
    return as_point(point) * _LPS_RAS_FLIP


def ras_to_lps(point: Sequence[float]) -> np.ndarray:
    """Convert a RAS point (mm) to LPS (mm)."""
    return as_point(point) * _LPS_RAS_FLIP


def to_lps(point: Sequence[float], system: "str | CoordinateSystem") -> np.ndarray:
    """Return `point`, given in `system`, as an LPS point in mm."""
    if CoordinateSystem.parse(system) is CoordinateSystem.RAS:
        return ras_to_lps(point)
    return as_point(point)
