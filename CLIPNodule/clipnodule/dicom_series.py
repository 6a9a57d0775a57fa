"""Reading one CT series from a DICOM folder, with the checks that the series reader skips.

Core library module: no Qt or Slicer imports, and no pydicom (tags are read with
SimpleITK's GDCM reader). SimpleITK reads a folder containing a scout or a second series,
a missing slice or a gantry tilt as one regular volume, so the slices are checked here.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InputError

logger = logging.getLogger(__name__)

# Series with fewer slices than this are treated as scouts or dose reports.
MIN_SERIES_SLICES = 3
# Largest relative deviation of one slice gap from the median gap.
SLICE_GAP_TOLERANCE = 0.10
ORIENTATION_TOLERANCE = 1e-4
# Largest difference (mm) between the PixelSpacing values of two slices of one series.
PIXEL_SPACING_TOLERANCE_MM = 1e-4
# Largest distance (mm) of a slice position from the line along the slice normal.
TILT_TOLERANCE_MM = 0.05

_TAG_SERIES_UID = "0020|000e"
_TAG_SERIES_DESCRIPTION = "0008|103e"
_TAG_IMAGE_TYPE = "0008|0008"
_TAG_POSITION = "0020|0032"
_TAG_ORIENTATION = "0020|0037"
_TAG_MODALITY = "0008|0060"
_TAG_ROWS = "0028|0010"
_TAG_COLUMNS = "0028|0011"
_TAG_PIXEL_SPACING = "0028|0030"


@dataclasses.dataclass
class _Slice:
    path: str
    image_type: str
    position: np.ndarray | None
    orientation: np.ndarray | None
    # Rows, Columns and PixelSpacing as stored; the series reader takes them from one slice.
    grid: tuple[str, str, np.ndarray | None]


def _parse_numbers(value: str, count: int) -> np.ndarray | None:
    try:
        numbers = np.array([float(part) for part in value.strip().split("\\")], dtype=np.float64)
    except ValueError:
        return None
    return numbers if numbers.shape == (count,) else None


def _read_slice(path: str) -> tuple[_Slice, dict[str, str]]:
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.SetImageIO("GDCMImageIO")
    reader.ReadImageInformation()

    def tag(key: str) -> str:
        return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""

    tags = {key: tag(key) for key in (_TAG_SERIES_UID, _TAG_SERIES_DESCRIPTION, _TAG_MODALITY)}
    dicom_slice = _Slice(
        path=path,
        image_type=tag(_TAG_IMAGE_TYPE).upper(),
        position=_parse_numbers(tag(_TAG_POSITION), 3),
        orientation=_parse_numbers(tag(_TAG_ORIENTATION), 6),
        grid=(tag(_TAG_ROWS), tag(_TAG_COLUMNS), _parse_numbers(tag(_TAG_PIXEL_SPACING), 2)),
    )
    return dicom_slice, tags


def _is_localizer(slices: list[_Slice]) -> bool:
    return len(slices) < MIN_SERIES_SLICES or all("LOCALIZER" in s.image_type for s in slices)


def _select_series(folder: Path) -> tuple[str, list[_Slice]]:
    """Return the UID and slices of the one CT series in `folder`, skipping scouts."""
    series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series_ids:
        subfolders = sorted(path.name for path in folder.iterdir() if path.is_dir())
        hint = ""
        if subfolders:
            hint = f" It has subfolders ({', '.join(subfolders[:5])}); pass the one of the CT series."
        raise InputError(
            f"No DICOM series found in {folder}. Pass the folder that contains the CT's DICOM "
            f"files, or a NIfTI, NRRD or MHA volume.{hint}"
        )

    candidates = []
    for series_id in series_ids:
        file_names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_id)
        read = [_read_slice(name) for name in file_names]
        slices = [dicom_slice for dicom_slice, _ in read]
        tags = read[0][1]
        description = tags[_TAG_SERIES_DESCRIPTION] or "no description"
        summary = f"{series_id or '(empty UID)'} '{description}' ({len(slices)} files)"
        if _is_localizer(slices):
            logger.warning("Skipping scout or localizer series %s in %s", summary, folder)
            continue
        if tags[_TAG_MODALITY] and tags[_TAG_MODALITY].upper() != "CT":
            logger.warning("Series %s in %s has modality %s, not CT", summary, folder, tags[_TAG_MODALITY])
        candidates.append((series_id, slices, summary))

    if not candidates:
        raise InputError(
            f"{folder} contains only scout or localizer images (series with fewer than "
            f"{MIN_SERIES_SLICES} slices or ImageType LOCALIZER); pass the folder of the CT series."
        )
    if len(candidates) > 1:
        listing = "; ".join(summary for _, _, summary in candidates)
        raise InputError(
            f"{folder} contains {len(candidates)} DICOM series: {listing}. Pass a folder that "
            "contains only the CT series to analyse (move each series into its own folder)."
        )

    series_id, slices, summary = candidates[0]
    image_slices = [s for s in slices if "LOCALIZER" not in s.image_type]
    if len(image_slices) < len(slices):
        skipped = len(slices) - len(image_slices)
        logger.warning("Skipping %d localizer images inside series %s", skipped, summary)
    return series_id, image_slices


def _describe_grid(dicom_slice: _Slice) -> str:
    rows, columns, spacing = dicom_slice.grid
    spacing_text = "missing" if spacing is None else f"{spacing.tolist()} mm"
    return f"{rows or '?'} x {columns or '?'} pixels, PixelSpacing {spacing_text}"


def _check_same_grid(slices: list[_Slice], folder: Path) -> None:
    """Reject a series whose slices differ in Rows, Columns or PixelSpacing."""
    rows, columns, spacing = slices[0].grid
    for dicom_slice in slices[1:]:
        other_rows, other_columns, other_spacing = dicom_slice.grid
        same_spacing = (spacing is None and other_spacing is None) or (
            spacing is not None
            and other_spacing is not None
            and np.abs(spacing - other_spacing).max() <= PIXEL_SPACING_TOLERANCE_MM
        )
        if other_rows != rows or other_columns != columns or not same_spacing:
            raise InputError(
                f"The DICOM series in {folder} mixes slice grids: {Path(slices[0].path).name} has "
                f"{_describe_grid(slices[0])} but {Path(dicom_slice.path).name} has "
                f"{_describe_grid(dicom_slice)}; the slices cannot form one volume. Pass a "
                "folder with a single consistent series."
            )


def _sort_and_check_slices(slices: list[_Slice], folder: Path) -> list[str]:
    """Sort slices along the slice normal and reject tilted, irregular or mixed series."""
    missing = [Path(s.path).name for s in slices if s.position is None or s.orientation is None]
    if missing:
        raise InputError(
            f"DICOM files in {folder} lack ImagePositionPatient or ImageOrientationPatient "
            f"(for example {missing[0]}); the slice geometry cannot be established."
        )

    orientation = slices[0].orientation
    for dicom_slice in slices[1:]:
        if np.abs(dicom_slice.orientation - orientation).max() > ORIENTATION_TOLERANCE:
            raise InputError(
                f"The DICOM series in {folder} has inconsistent ImageOrientationPatient across "
                f"slices ({orientation.tolist()} in {Path(slices[0].path).name}, "
                f"{dicom_slice.orientation.tolist()} in {Path(dicom_slice.path).name}); it "
                "cannot form one volume. Pass a folder with a single consistent series."
            )

    _check_same_grid(slices, folder)

    normal = np.cross(orientation[:3], orientation[3:])
    normal /= np.linalg.norm(normal)
    positions = np.array([s.position for s in slices])
    distances = positions @ normal
    order = np.argsort(distances, kind="stable")
    positions = positions[order]
    distances = distances[order]
    sorted_slices = [slices[index] for index in order]

    # Slice positions must lie on one line along the normal; otherwise the gantry was tilted.
    in_plane = positions - positions[0] - np.outer(distances - distances[0], normal)
    off_line = float(np.linalg.norm(in_plane, axis=1).max())
    if off_line > TILT_TOLERANCE_MM:
        span = float(distances[-1] - distances[0])
        tilt = float(np.degrees(np.arctan2(off_line, span))) if span > 0 else float("nan")
        raise InputError(
            f"The DICOM series in {folder} has slice positions that are not along the "
            f"orientation normal (offset up to {off_line:.2f} mm, about {tilt:.1f} degrees): "
            "a gantry tilt or sheared acquisition. Resample it to an orthogonal volume first "
            "(for example with dcm2niix, which corrects gantry tilt)."
        )

    gaps = np.diff(distances)
    if np.any(gaps <= 1e-3):
        duplicate = int(np.argmin(gaps))
        raise InputError(
            f"The DICOM series in {folder} has two slices at the same position "
            f"({distances[duplicate]:.2f} mm along the normal: {Path(sorted_slices[duplicate].path).name} "
            f"and {Path(sorted_slices[duplicate + 1].path).name}). Remove duplicate files."
        )
    median_gap = float(np.median(gaps))
    deviation = np.abs(gaps - median_gap) / median_gap
    if np.any(deviation > SLICE_GAP_TOLERANCE):
        worst = int(np.argmax(deviation))
        raise InputError(
            f"The DICOM series in {folder} has non-uniform slice spacing: the gap between "
            f"slices at {distances[worst]:.2f} mm and {distances[worst + 1]:.2f} mm along the "
            f"normal is {gaps[worst]:.2f} mm, but the usual gap is {median_gap:.2f} mm "
            "(missing slices?). Pass the complete series."
        )
    return [s.path for s in sorted_slices]


def read_dicom_series(folder: str | Path) -> sitk.Image:
    """Read the one CT series in `folder`, sorted along the slice normal, in HU.

    Scout or localizer series (fewer than 3 slices, or ImageType LOCALIZER) are skipped
    with a warning. Rescale slope and intercept are applied by the GDCM reader. The
    origin is the position of the first slice along the normal.
    """
    folder = Path(folder)
    series_id, slices = _select_series(folder)
    file_names = _sort_and_check_slices(slices, folder)

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(file_names)
    try:
        image = reader.Execute()
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = lines[-1].replace("ITK ERROR:", "").strip() if lines else "unknown error"
        raise InputError(
            f"The DICOM series in {folder} could not be read: {reason}. Check that every file "
            "is a complete image of the same series."
        ) from None
    logger.info(
        "Read DICOM series %s from %s: %d slices, size %s, spacing %s mm",
        series_id or "(empty UID)",
        folder,
        len(file_names),
        list(image.GetSize()),
        [round(value, 4) for value in image.GetSpacing()],
    )
    return image
