"""Tests of CT loading and of the input checks, on real files written and then damaged here.

SimpleITK 2.5.7 reads most damaged files here without an error (zero spacing, NaN,
truncation, raw pixels, non-orthonormal direction). So the error must come from the
library's own checks, and its message must name the problem and the fix.
"""

from __future__ import annotations

import gzip
import shutil
import struct

import numpy as np
import pytest
import SimpleITK as sitk

from clipnodule.ct_checks import check_point_inside
from clipnodule.errors import InputError
from clipnodule.image_io import load_ct
from clipnodule.preprocess import extract_planes

# NIfTI-1 header byte offsets (float32 pixdim[3] and srow_x[3], the x translation).
PIXDIM_Z_OFFSET = 76 + 3 * 4
SROW_X_TRANSLATION_OFFSET = 280 + 3 * 4


def _phantom_hu() -> np.ndarray:
    """A small chest-like volume (z, y, x) in HU: air, a body, two lungs and a bone."""
    z, y, x = np.meshgrid(np.arange(30), np.arange(40), np.arange(44), indexing="ij")
    hu = np.full(z.shape, -1000.0, dtype=np.float32)
    hu[((x - 22) / 19.0) ** 2 + ((y - 20) / 16.0) ** 2 <= 1.0] = 40.0
    hu[((x - 13) / 6.0) ** 2 + ((y - 19) / 9.0) ** 2 <= 1.0] = -850.0
    hu[((x - 31) / 6.0) ** 2 + ((y - 19) / 9.0) ** 2 <= 1.0] = -850.0
    hu[(abs(x - 22) <= 2) & (y >= 31) & (y <= 34)] = 1400.0
    return hu


def _image(array: np.ndarray, pixel_type=None) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    if pixel_type is not None:
        image = sitk.Cast(image, pixel_type)
    image.SetSpacing((0.8, 0.8, 2.0))
    image.SetOrigin((-17.0, -15.0, -30.0))
    return image


def _write(image: sitk.Image, path) -> str:
    sitk.WriteImage(image, str(path))
    return str(path)


def _patch_nifti(path, offset: int, value: float, compress_to=None) -> None:
    """Overwrite one float32 field of an uncompressed NIfTI-1 header, optionally gzip it."""
    data = bytearray(path.read_bytes())
    data[offset : offset + 4] = struct.pack("<f", value)
    if compress_to is None:
        path.write_bytes(bytes(data))
    else:
        compress_to.write_bytes(gzip.compress(bytes(data)))


def _replace_header_line(path, prefix: str, replacement: str | None) -> None:
    """Replace (or drop, when `replacement` is None) the text header line starting with `prefix`."""
    data = path.read_bytes()
    start = data.index(prefix.encode())
    end = data.index(b"\n", start) + 1
    new_line = b"" if replacement is None else replacement.encode() + b"\n"
    path.write_bytes(data[:start] + new_line + data[end:])


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_load_formats_float32_hu(tmp_path, suffix):
    hu = _phantom_hu()
    path = _write(_image(hu.astype(np.int16)), tmp_path / f"phantom{suffix}")

    image = load_ct(path)

    assert image.GetPixelID() == sitk.sitkFloat32
    assert image.GetSize() == (44, 40, 30)
    np.testing.assert_allclose(image.GetSpacing(), (0.8, 0.8, 2.0), rtol=1e-6)
    np.testing.assert_allclose(image.GetOrigin(), (-17.0, -15.0, -30.0), atol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image), hu)


def test_load_non_ascii_paths(tmp_path, reference_fixtures):
    folder = tmp_path / "Patiënt Müller 肺"
    folder.mkdir()
    nifti = folder / "CT ä.nii.gz"
    shutil.copyfile(reference_fixtures / "ct_caseA.nii.gz", nifti)
    metaimage = _write(_image(_phantom_hu()), folder / "Lunge ö.mha")

    assert load_ct(nifti).GetSize() == (160, 160, 60)
    assert load_ct(metaimage).GetSize() == (44, 40, 30)


@pytest.mark.parametrize("name", ["LIDC-IDRI-0398_R_2.nii.gz", "LIDC-IDRI-0208_R_2.nii.gz"])
def test_tight_lung_volumes_load(shared_dir, name):
    # Real nodule volumes of interest: the first has no voxel below -789 HU (no air, only
    # aerated lung), the second is two slices thick. Both are valid CT.
    path = shared_dir / "data" / "lidc-voi" / "images" / name

    image = load_ct(path)

    assert image.GetPixelID() == sitk.sitkFloat32
    assert min(image.GetSize()) >= 2


def test_missing_path_is_reported(tmp_path):
    with pytest.raises(InputError, match="CT not found: .*absent.nii.gz"):
        load_ct(tmp_path / "absent.nii.gz")


def test_unreadable_file_is_reported(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"not gzip data at all")

    with pytest.raises(InputError, match="not a supported CT file type.*Supported inputs"):
        load_ct(notes)
    with pytest.raises(InputError, match="could not be read as NIfTI"):
        load_ct(junk)


def test_2d_image_rejected(tmp_path):
    path = _write(sitk.GetImageFromArray(_phantom_hu()[10]), tmp_path / "slice.nrrd")

    with pytest.raises(InputError, match="is a 2D image .* must be 3D"):
        load_ct(path)


def test_4d_image_rejected(tmp_path):
    volume = _image(_phantom_hu())
    path = _write(sitk.JoinSeries([volume, volume]), tmp_path / "series.nii.gz")

    with pytest.raises(InputError, match="is a 4D image .* must be 3D"):
        load_ct(path)


def test_single_slice_volume_rejected(tmp_path):
    path = _write(_image(_phantom_hu()[10:11]), tmp_path / "one_slice.mha")

    with pytest.raises(InputError, match="a single slice"):
        load_ct(path)


def test_zero_nifti_spacing_rejected(tmp_path):
    path = tmp_path / "phantom.nii"
    _write(_image(_phantom_hu().astype(np.int16)), path)
    _patch_nifti(path, PIXDIM_Z_OFFSET, 0.0, compress_to=tmp_path / "zero_spacing.nii.gz")

    # SimpleITK turns the zero spacing into 1.0 mm, so only the header check detects it.
    assert sitk.ReadImage(str(tmp_path / "zero_spacing.nii.gz")).GetSpacing()[2] == 1.0
    with pytest.raises(InputError, match=r"voxel spacing 0\.0 along axis 2 .*pixdim"):
        load_ct(tmp_path / "zero_spacing.nii.gz")


def test_missing_metaimage_spacing_rejected(tmp_path):
    path = tmp_path / "phantom.mha"
    _write(_image(_phantom_hu()), path)
    _replace_header_line(path, "ElementSpacing", None)

    assert sitk.ReadImage(str(path)).GetSpacing() == (1.0, 1.0, 1.0)
    with pytest.raises(InputError, match="no ElementSpacing"):
        load_ct(path)


def test_missing_nrrd_spacing_rejected(tmp_path):
    path = tmp_path / "phantom.nrrd"
    _write(_image(_phantom_hu()), path)
    _replace_header_line(path, "space directions", None)

    with pytest.raises(InputError, match="neither 'space directions' nor 'spacings'"):
        load_ct(path)


def test_nan_in_float_nifti_rejected(tmp_path):
    hu = _phantom_hu()
    hu[5, 6, 7] = np.nan
    hu[6, 6, 7] = np.nan
    path = _write(_image(hu), tmp_path / "nan.nii.gz")

    # SimpleITK returns the NaN voxels as 0, so the raw data must be checked.
    assert np.isfinite(sitk.GetArrayViewFromImage(sitk.ReadImage(path))).all()
    with pytest.raises(InputError, match="contains 2 NaN or infinite voxel values"):
        load_ct(path)


def test_nan_in_float_metaimage_rejected(tmp_path):
    hu = _phantom_hu()
    hu[5, 6, 7] = np.inf
    path = _write(_image(hu), tmp_path / "inf.mha")

    with pytest.raises(InputError, match="contains 1 NaN or infinite voxel values"):
        load_ct(path)


def test_truncated_nifti_gz_rejected(tmp_path):
    path = tmp_path / "phantom.nii.gz"
    _write(_image(_phantom_hu().astype(np.int16)), path)
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    assert sitk.ReadImage(str(truncated)).GetSize() == (44, 40, 30)
    with pytest.raises(InputError, match="truncated"):
        load_ct(truncated)


def test_short_data_nifti_rejected(tmp_path):
    path = tmp_path / "phantom.nii"
    _write(_image(_phantom_hu().astype(np.int16)), path)
    short = path.read_bytes()[:-5000]
    (tmp_path / "short.nii").write_bytes(short)
    (tmp_path / "short_complete_gzip.nii.gz").write_bytes(gzip.compress(short))

    with pytest.raises(InputError, match=r"is truncated: .* needs 105952 bytes but the file contains 100952"):
        load_ct(tmp_path / "short.nii")
    with pytest.raises(InputError, match=r"is truncated: .* needs 105952 bytes but the file contains 100952"):
        load_ct(tmp_path / "short_complete_gzip.nii.gz")


def test_qform_sform_disagreement_rejected(tmp_path):
    path = tmp_path / "phantom.nii"
    _write(_image(_phantom_hu().astype(np.int16)), path)
    field = path.read_bytes()[SROW_X_TRANSLATION_OFFSET : SROW_X_TRANSLATION_OFFSET + 4]
    translation = struct.unpack("<f", field)[0]
    _patch_nifti(path, SROW_X_TRANSLATION_OFFSET, translation + 5.0)

    with pytest.raises(InputError, match=r"qform \(code 1\) and an sform \(code 1\) that disagree.*5\.00 mm"):
        load_ct(path)


def test_raw_stored_pixels_rejected(tmp_path):
    raw = (_phantom_hu() + 1024.0).astype(np.uint16)
    path = _write(_image(raw), tmp_path / "raw.nrrd")

    with pytest.raises(InputError, match="raw stored pixel values without the rescale slope and intercept"):
        load_ct(path)


def test_image_without_air_rejected(tmp_path):
    path = _write(_image(np.clip(_phantom_hu(), -500.0, None)), tmp_path / "no_air.mha")

    with pytest.raises(InputError, match="no voxels near -1000 HU"):
        load_ct(path)


def test_non_orthonormal_direction_rejected(tmp_path):
    path = tmp_path / "sheared.mha"
    _write(_image(_phantom_hu()), path)
    _replace_header_line(path, "TransformMatrix", "TransformMatrix = 1 0 0 0 1.2 0 0 0 1")

    assert sitk.ReadImage(str(path)).GetDirection()[4] == pytest.approx(1.2)
    with pytest.raises(InputError, match="direction matrix that is not orthonormal"):
        load_ct(path)


def test_extract_planes_checks_geometry():
    flat = sitk.GetImageFromArray(_phantom_hu()[10])

    with pytest.raises(InputError, match="The CT image is a 2D image"):
        extract_planes(flat, (0.0, 0.0, 0.0))


def test_point_outside_suggests_ras(reference_fixtures):
    image = load_ct(reference_fixtures / "ct_caseA.nii.gz")

    # (55.8, -30.4) is caseA_n2 given in RAS: outside in LPS, inside once x and y flip.
    with pytest.raises(InputError, match=r"lies outside the scan, whose LPS extent is x \[") as error:
        extract_planes(image, (55.8, -30.4, -17.2))
    assert "did you pass RAS coordinates" in str(error.value)
    assert "--coordinate-system RAS" in str(error.value)


def test_point_far_outside_reported(reference_fixtures):
    image = load_ct(reference_fixtures / "ct_caseA.nii.gz")

    with pytest.raises(InputError, match=r"\(500.00, 500.00, 500.00\) mm \(LPS\) lies outside") as error:
        check_point_inside(image, (500.0, 500.0, 500.0))
    assert "Read as RAS" not in str(error.value)
    assert "z [-134.2, 15.8]" in str(error.value)


def _nifti_codes(path, qform_code: int, sform_code: int) -> None:
    """Set the qform_code and sform_code fields of an uncompressed NIfTI-1 header."""
    data = bytearray(path.read_bytes())
    data[252:256] = struct.pack("<2h", qform_code, sform_code)
    path.write_bytes(bytes(data))


def test_nifti_without_orientation_rejected(tmp_path):
    path = tmp_path / "no_orientation.nii"
    _write(_image(_phantom_hu()), path)
    _nifti_codes(path, qform_code=0, sform_code=0)

    with pytest.raises(InputError, match="qform_code 0 and sform_code 0 .*no position or orientation"):
        load_ct(path)


def test_nifti_with_one_transform_loads(tmp_path):
    for qform_code, sform_code in ((1, 0), (0, 1)):
        path = tmp_path / f"codes_{qform_code}_{sform_code}.nii"
        _write(_image(_phantom_hu()), path)
        _nifti_codes(path, qform_code, sform_code)

        image = load_ct(path)

        np.testing.assert_allclose(image.GetOrigin(), (-17.0, -15.0, -30.0), atol=1e-5)
        np.testing.assert_allclose(image.GetDirection(), np.eye(3).ravel(), atol=1e-6)


def test_nifti_pair_rejected(tmp_path):
    # SimpleITK reads the NaN voxel of a NIfTI pair as 0, so pairs are rejected outright.
    hu = _phantom_hu()
    hu[15, 20, 22] = np.nan
    path = _write(_image(hu), tmp_path / "pair.img")

    with pytest.raises(InputError, match=r"NIfTI pair or Analyze 7\.5 .*convert it to a single \.nii"):
        load_ct(path)


def test_metaimage_missing_data_file_rejected(tmp_path):
    path = _write(_image(_phantom_hu()), tmp_path / "detached.mhd")
    (tmp_path / "detached.raw").unlink()

    with pytest.raises(InputError, match=r"voxel data file detached\.raw .*does not exist"):
        load_ct(path)


@pytest.mark.parametrize("compressed", [False, True])
def test_truncated_metaimage_rejected(tmp_path, compressed):
    path = tmp_path / "full.mha"
    sitk.WriteImage(_image(_phantom_hu()), str(path), useCompression=compressed)
    data = path.read_bytes()
    truncated = tmp_path / "truncated.mha"
    truncated.write_bytes(data[: len(data) - 1000])

    with pytest.raises(InputError, match=r"truncated\.mha is truncated: its header needs \d+ bytes"):
        load_ct(truncated)


def test_text_files_with_image_suffix_rejected(tmp_path):
    metaimage = tmp_path / "notes.mha"
    metaimage.write_text("not an image\n" * 10)
    nrrd = tmp_path / "notes.nrrd"
    nrrd.write_text("not an image\n" * 10)

    with pytest.raises(InputError, match="is not a MetaImage file"):
        load_ct(metaimage)
    with pytest.raises(InputError, match="is not an NRRD file"):
        load_ct(nrrd)


def test_truncated_nrrd_message_suggests_fix(tmp_path):
    path = _write(_image(_phantom_hu()), tmp_path / "full.nrrd")
    data = (tmp_path / "full.nrrd").read_bytes()
    truncated = tmp_path / "truncated.nrrd"
    truncated.write_bytes(data[: len(data) // 2])

    with pytest.raises(InputError, match="could not be read as an image.*copy or export it again"):
        load_ct(truncated)
    assert load_ct(path).GetSize() == (44, 40, 30)


def test_point_on_outer_voxel_face_inside():
    image = _image(_phantom_hu())
    # The last voxel centre is at origin + (size - 1) * spacing; its outer face is half a
    # voxel further, at x = -17 + 43.5 * 0.8 = 17.8 mm.
    check_point_inside(image, (17.8, 0.0, 0.0))
    check_point_inside(image, (-17.4, -15.4, -31.0))

    with pytest.raises(InputError, match="lies outside the scan"):
        check_point_inside(image, (17.9, 0.0, 0.0))


def test_unsupported_file_type_rejected(tmp_path):
    import SimpleITK as sitk

    from clipnodule.errors import InputError
    from clipnodule.image_io import load_ct

    image = sitk.Image(8, 8, 8, sitk.sitkInt16)
    image.SetSpacing((1.0, 1.0, 0.0001))
    path = tmp_path / "scan.vtk"
    sitk.WriteImage(image, str(path))

    with pytest.raises(InputError, match="not a supported CT file type") as raised:
        load_ct(path)
    assert "NIfTI" in str(raised.value)


def test_symlink_without_suffix_follows_target(tmp_path, reference_fixtures):
    from clipnodule.image_io import load_ct

    link = tmp_path / "scan"
    link.symlink_to(reference_fixtures / "ct_caseA.nii.gz")

    image = load_ct(link)
    assert image.GetSize() == (160, 160, 60)
