"""Loading a CT volume from a file or a DICOM folder as a checked float32 HU image.

Core library module: no Qt or Slicer imports. Geometry stays as ITK reports it (LPS
origin, spacing and direction); the voxels are not resampled here.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import SimpleITK as sitk

from . import header_checks
from .ct_checks import check_ct_image
from .dicom_series import read_dicom_series
from .errors import InputError

logger = logging.getLogger(__name__)

SUPPORTED_FORMATS = (
    "NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd) or a DICOM series folder"
)


def _format_of(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if name.endswith((".mha", ".mhd")):
        return "metaimage"
    if name.endswith((".nrrd", ".nhdr")):
        return "nrrd"
    if name.endswith((".dcm", ".ima")):
        return "dicom"
    if name.endswith((".hdr", ".img", ".hdr.gz", ".img.gz")):
        return "analyze"
    return "other"


def _read_file(path: Path, source: str) -> sitk.Image:
    # A symbolic link is read through the file it points to, whose suffix names the format.
    path = path.resolve()
    file_format = _format_of(path)
    if file_format == "other":
        # Other formats that SimpleITK reads (VTK, TIFF stacks, ...) would skip the
        # header checks, so a zero spacing or NaN voxels could pass unnoticed.
        raise InputError(
            f"{source} is not a supported CT file type. Supported inputs: {SUPPORTED_FORMATS}; "
            "convert the image to NIfTI or NRRD first, or pass the DICOM series folder."
        )
    if file_format == "dicom":
        raise InputError(
            f"{source} is a single DICOM file; pass the folder that contains the whole CT "
            f"series instead ({path.parent})."
        )
    if file_format == "analyze":
        # SimpleITK reads NaN voxels of a NIfTI pair as 0, and Analyze 7.5 headers have no
        # reliable orientation, so neither can be checked like a .nii file.
        raise InputError(
            f"{source} is a NIfTI pair or Analyze 7.5 (.hdr/.img) file, which is not "
            "supported; convert it to a single .nii or .nii.gz file (for example with "
            "nibabel or 3D Slicer) and check its orientation."
        )
    if file_format == "nifti":
        header_checks.check_nifti_file(path, source)
    elif file_format == "metaimage":
        header_checks.check_metaimage_header(path, source)
    elif file_format == "nrrd":
        header_checks.check_nrrd_header(path, source)

    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = lines[-1].replace("sitk::ERROR:", "").strip().rstrip(".") if lines else "unknown error"
        raise InputError(
            f"{source} could not be read as an image: {reason}. "
            "The file may be truncated or corrupt: copy or export it again."
        ) from None


def load_ct(path: str | os.PathLike) -> sitk.Image:
    """Read a CT volume or DICOM series folder and return it as a checked float32 HU image.

    Raises InputError when the path is missing, the file cannot be read, or the image
    fails the checks of `ct_checks.check_ct_image` or of the file header.
    """
    started = time.perf_counter()
    path = Path(os.fspath(path))
    source = str(path)
    if not path.exists():
        raise InputError(f"CT not found: {source}. Check the path ({SUPPORTED_FORMATS}).")

    if path.is_dir():
        image = read_dicom_series(path)
        source = f"DICOM series in {path}"
    else:
        image = _read_file(path, source)

    check_ct_image(image, source)
    if image.GetPixelID() != sitk.sitkFloat32:
        image = sitk.Cast(image, sitk.sitkFloat32)

    logger.info(
        "Loaded CT %s: size %s, spacing %s mm, origin %s mm (LPS) in %.2f s",
        source,
        list(image.GetSize()),
        [round(value, 4) for value in image.GetSpacing()],
        [round(value, 2) for value in image.GetOrigin()],
        time.perf_counter() - started,
    )
    return image
