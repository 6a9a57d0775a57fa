"""Checks of image file headers and data for problems that SimpleITK reads without an error.

Core library module: no Qt or Slicer imports, and no nibabel (the NIfTI header is parsed
here). With SimpleITK 2.5.7, zero NIfTI slice spacing becomes 1.0 mm and NaN voxels of a
float NIfTI become 0. A truncated .nii.gz reads with zeros in place of the missing part,
and a MetaImage or NRRD header without spacing gets 1.0 mm.
"""

from __future__ import annotations

import gzip
import itertools
import math
import os
import struct
import zlib
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

from .errors import InputError

# Largest distance (mm) between the qform and sform positions of any corner voxel.
QFORM_SFORM_TOLERANCE_MM = 0.1
_CHUNK_BYTES = 16 * 1024 * 1024

# NIfTI datatype codes of floating-point voxels and their numpy kinds.
_NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}


class _NiftiHeader:
    """The NIfTI-1 or NIfTI-2 header fields that the checks need."""

    def __init__(self, raw: bytes, source: str) -> None:
        if len(raw) < 348:
            raise InputError(f"{source} is too short to be a NIfTI file ({len(raw)} bytes).")

        for endian in ("<", ">"):
            header_size = struct.unpack(endian + "i", raw[:4])[0]
            if header_size in (348, 540):
                break
        else:
            raise InputError(f"{source} does not start with a NIfTI-1 or NIfTI-2 header.")
        if header_size == 540 and len(raw) < 540:
            raise InputError(f"{source} is too short to hold its NIfTI-2 header.")

        if header_size == 348:
            self.version = 1
            self.dim = struct.unpack(endian + "8h", raw[40:56])
            self.datatype, self.bitpix = struct.unpack(endian + "2h", raw[70:74])
            self.pixdim = struct.unpack(endian + "8f", raw[76:108])
            self.vox_offset = int(struct.unpack(endian + "f", raw[108:112])[0])
            self.qform_code, self.sform_code = struct.unpack(endian + "2h", raw[252:256])
            self.quatern = struct.unpack(endian + "3f", raw[256:268])
            self.qoffset = struct.unpack(endian + "3f", raw[268:280])
            self.srow = struct.unpack(endian + "12f", raw[280:328])
        else:
            self.version = 2
            self.datatype, self.bitpix = struct.unpack(endian + "2h", raw[12:16])
            self.dim = struct.unpack(endian + "8q", raw[16:80])
            self.pixdim = struct.unpack(endian + "8d", raw[104:168])
            self.vox_offset = int(struct.unpack(endian + "q", raw[168:176])[0])
            self.qform_code, self.sform_code = struct.unpack(endian + "2i", raw[344:352])
            self.quatern = struct.unpack(endian + "3d", raw[352:376])
            self.qoffset = struct.unpack(endian + "3d", raw[376:400])
            self.srow = struct.unpack(endian + "12d", raw[400:496])
        self.endian = endian

    @property
    def spatial_rank(self) -> int:
        return max(0, min(int(self.dim[0]), 3))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(value) for value in self.dim[1 : 1 + int(self.dim[0])])

    def data_bytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * int(self.bitpix) // 8

    def qform_affine(self) -> np.ndarray:
        """Return the 4 x 4 voxel-to-RAS affine of the quaternion (qform) fields."""
        b, c, d = (float(value) for value in self.quatern)
        a_squared = 1.0 - (b * b + c * c + d * d)
        a = math.sqrt(a_squared) if a_squared > 0 else 0.0
        rotation = np.array(
            [
                [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
                [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
                [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - b * b - c * c],
            ]
        )
        qfac = -1.0 if self.pixdim[0] < 0 else 1.0
        zooms = np.array([self.pixdim[1], self.pixdim[2], qfac * self.pixdim[3]], dtype=np.float64)
        affine = np.eye(4)
        affine[:3, :3] = rotation * zooms
        affine[:3, 3] = self.qoffset
        return affine

    def sform_affine(self) -> np.ndarray:
        """Return the 4 x 4 voxel-to-RAS affine of the srow (sform) fields."""
        affine = np.eye(4)
        affine[:3, :] = np.asarray(self.srow, dtype=np.float64).reshape(3, 4)
        return affine


def _open_nifti(path: Path) -> BinaryIO:
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")


def _gzip_size_field(path: Path) -> int:
    """Return the gzip trailer's uncompressed size field (the size modulo 2**32)."""
    with open(path, "rb") as handle:
        handle.seek(-4, os.SEEK_END)
        return struct.unpack("<I", handle.read(4))[0]


def _iterate_data(stream: BinaryIO, header: _NiftiHeader, source: str) -> Iterator[bytes]:
    """Yield the voxel bytes in chunks; raise InputError if the file ends early."""
    try:
        skipped = stream.read(header.vox_offset)
        if len(skipped) < header.vox_offset:
            raise InputError(_truncated_message(source, header, len(skipped)))
        remaining = header.data_bytes()
        received = header.vox_offset
        while remaining > 0:
            chunk = stream.read(min(_CHUNK_BYTES, remaining))
            if not chunk:
                raise InputError(_truncated_message(source, header, received))
            received += len(chunk)
            remaining -= len(chunk)
            yield chunk
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise InputError(
            f"{source} is truncated or corrupt: decompression failed ({error}). "
            "Copy or export the file again."
        ) from None


def _truncated_message(source: str, header: _NiftiHeader, received: int) -> str:
    expected = header.vox_offset + header.data_bytes()
    return (
        f"{source} is truncated: its header ({list(header.shape)} voxels of "
        f"{header.bitpix} bits) needs {expected} bytes but the file contains {received}. "
        "Copy or export the file again."
    )


def _check_nifti_spacing(header: _NiftiHeader, source: str) -> None:
    spacing = [round(float(value), 6) for value in header.pixdim[1 : 1 + header.spatial_rank]]
    for axis, value in enumerate(spacing):
        if not math.isfinite(value) or value == 0:
            raise InputError(
                f"{source} has voxel spacing {value} along axis {axis} in its NIfTI header "
                f"(pixdim {spacing}); every spacing must be a positive number in mm. "
                "SimpleITK would silently use 1.0 mm. Fix the header (pixdim) or re-export "
                "the volume."
            )


def _check_nifti_orientation(header: _NiftiHeader, source: str) -> None:
    if header.spatial_rank < 3:
        return
    if header.qform_code <= 0 and header.sform_code <= 0:
        raise InputError(
            f"{source} has qform_code 0 and sform_code 0 in its NIfTI header, so it has no "
            "position or orientation in patient space (SimpleITK would place it at the origin "
            "and could swap left and right). Re-export the volume with its orientation, for "
            "example from the DICOM series with dcm2niix."
        )
    if header.qform_code <= 0 or header.sform_code <= 0:
        return

    last = [max(size - 1, 0) for size in header.shape[:3]]
    corners = np.array([[*corner, 1.0] for corner in itertools.product(*[(0, v) for v in last])])
    qform_points = corners @ header.qform_affine().T
    sform_points = corners @ header.sform_affine().T
    distance = float(np.linalg.norm(qform_points[:, :3] - sform_points[:, :3], axis=1).max())
    if not math.isfinite(distance) or distance > QFORM_SFORM_TOLERANCE_MM:
        raise InputError(
            f"{source} has a qform (code {header.qform_code}) and an sform (code "
            f"{header.sform_code}) that disagree: they place corner voxels up to "
            f"{distance:.2f} mm apart. Readers differ in which one they use, so the nodule "
            "position would be ambiguous. Fix the header: make them agree or set the code "
            "of the wrong one to 0."
        )


def check_nifti_file(path: Path, source: str) -> None:
    """Raise InputError for a NIfTI file with zero spacing, disagreeing qform and sform,
    truncated data or NaN voxels."""
    with _open_nifti(path) as stream:
        try:
            raw = stream.read(540)
        except (EOFError, OSError, zlib.error) as error:
            raise InputError(f"{source} could not be read as NIfTI ({error}).") from None
    header = _NiftiHeader(raw, source)
    _check_nifti_spacing(header, source)
    _check_nifti_orientation(header, source)

    expected = header.vox_offset + header.data_bytes()
    float_kind = _NIFTI_FLOAT_TYPES.get(int(header.datatype))
    compressed = path.name.lower().endswith(".gz")

    if float_kind is None and not compressed:
        if path.stat().st_size < expected:
            raise InputError(_truncated_message(source, header, path.stat().st_size))
        return
    # A matching gzip size field means the stream is complete (a false match is a
    # 1 in 2**32 chance); otherwise decompress to be sure, e.g. for multi-member files.
    if float_kind is None and _gzip_size_field(path) == expected % 2**32:
        return

    dtype = np.dtype(header.endian + (float_kind or "u1"))
    nan_count = 0
    with _open_nifti(path) as stream:
        for chunk in _iterate_data(stream, header, source):
            if float_kind is not None:
                values = np.frombuffer(chunk, dtype=dtype)
                nan_count += int(values.size - np.count_nonzero(np.isfinite(values)))
    if nan_count:
        raise InputError(
            f"{source} contains {nan_count} NaN or infinite voxel values (SimpleITK would read "
            "them as 0); a CT must hold finite HU values. Fix or re-export the volume."
        )


def _read_text_header(path: Path, end_marker: str | None) -> list[str]:
    """Return the header lines of a text-header format, up to a blank line or `end_marker`."""
    with open(path, "rb") as handle:
        head = handle.read(256 * 1024).decode("latin-1")
    lines = []
    for line in head.splitlines():
        if not line.strip():
            break
        lines.append(line)
        if end_marker and line.strip().lower().startswith(end_marker):
            break
    return lines


def check_metaimage_header(path: Path, source: str) -> None:
    """Raise InputError if a MetaImage (.mha/.mhd) header is not MetaImage, gives no voxel
    spacing, or names voxel data that is missing or shorter than the header declares."""
    lines = _read_text_header(path, "elementdatafile")
    fields = {}
    for line in lines:
        key, _, value = line.partition("=")
        fields[key.strip().lower()] = value.strip()
    if "ndims" not in fields or "elementdatafile" not in fields:
        raise InputError(
            f"{source} is not a MetaImage file: its header has no NDims or ElementDataFile "
            "line. Pass a CT volume file or re-export it."
        )
    if not fields.keys() & {"elementspacing", "elementsize"}:
        raise InputError(
            f"{source} has no ElementSpacing in its MetaImage header; SimpleITK would "
            "silently use 1.0 mm. Add the voxel spacing (ElementSpacing = x y z) or re-export "
            "the volume."
        )
    _check_metaimage_data(path, source, fields, header_bytes=sum(len(line) + 1 for line in lines))


# Bytes per element of the MetaImage ElementType values.
_METAIMAGE_ELEMENT_BYTES = {
    "met_char": 1, "met_uchar": 1, "met_short": 2, "met_ushort": 2, "met_int": 4, "met_uint": 4,
    "met_long_long": 8, "met_ulong_long": 8, "met_float": 4, "met_double": 8,
}


def _check_metaimage_data(path: Path, source: str, fields: dict[str, str], header_bytes: int) -> None:
    """Raise InputError if the MetaImage voxel data file is missing or uncompressed data is short."""
    data_file = fields["elementdatafile"]
    if data_file.upper() == "LOCAL":
        data_path = path
        available = path.stat().st_size - header_bytes
    elif data_file.upper() == "LIST" or "%" in data_file or " " in data_file.strip():
        # NOTE: multi-file data (LIST or a file pattern) is left to the reader's own checks.
        return
    else:
        data_path = path.parent / data_file
        if not data_path.is_file():
            raise InputError(
                f"{source} names its voxel data file {data_file} (ElementDataFile), but "
                f"{data_path} does not exist. Put the data file next to the header or pass "
                "a single-file .mha volume."
            )
        available = data_path.stat().st_size

    try:
        shape = [int(value) for value in fields.get("dimsize", "").split()]
        channels = int(fields.get("elementnumberofchannels", "1"))
    except ValueError:
        return
    element_bytes = _METAIMAGE_ELEMENT_BYTES.get(fields.get("elementtype", "").lower())
    if fields.get("compresseddata", "false").lower() == "true":
        expected = int(fields["compresseddatasize"]) if fields.get("compresseddatasize", "").isdigit() else 0
    elif element_bytes is not None and shape:
        expected = int(np.prod(shape, dtype=np.int64)) * channels * element_bytes
    else:
        return
    if available < expected:
        raise InputError(
            f"{source} is truncated: its header needs {expected} bytes of voxel data but "
            f"{data_path.name} contains {max(available, 0)}. Copy or export the file again."
        )


def check_nrrd_header(path: Path, source: str) -> None:
    """Raise InputError if an NRRD (.nrrd/.nhdr) header gives no voxel spacing."""
    lines = _read_text_header(path, None)
    if not lines or not lines[0].startswith("NRRD"):
        raise InputError(
            f"{source} is not an NRRD file: it does not start with the NRRD magic line "
            "(for example NRRD0004). Pass a CT volume file or re-export it."
        )
    fields = {line.split(":", 1)[0].strip().lower() for line in lines if ":" in line}
    if not fields & {"space directions", "spacings"}:
        raise InputError(
            f"{source} has neither 'space directions' nor 'spacings' in its NRRD header; "
            "SimpleITK would silently use 1.0 mm. Add the voxel geometry or re-export the "
            "volume."
        )
