"""Tests of reading a DICOM CT series folder, on a real 20-slice series and damaged copies of it.

The copies are made here with pydicom (a test-only dependency): shuffled file names, a
dropped slice, a gantry tilt, a second series, a scout, a rotated slice, a duplicate.
"""

from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from clipnodule.dicom_series import read_dicom_series
from clipnodule.errors import InputError
from clipnodule.image_io import load_ct

SECOND_SERIES_UID = "1.2.826.0.1.3680043.8.498.11"


@pytest.fixture(scope="module")
def series_dir(shared_dir) -> Path:
    return shared_dir / "data" / "ct-dicom-series" / "upper-abdomen-20-slices"


@pytest.fixture(scope="module")
def original(series_dir) -> sitk.Image:
    return load_ct(series_dir)


def _datasets_by_position(series_dir: Path) -> list[pydicom.Dataset]:
    """Read every slice header and pixel data, sorted by ImagePositionPatient z (ascending)."""
    datasets = [pydicom.dcmread(path) for path in sorted(series_dir.iterdir())]
    return sorted(datasets, key=lambda dataset: float(dataset.ImagePositionPatient[2]))


def _save(datasets: list[pydicom.Dataset], folder: Path, prefix: str = "slice") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for number, dataset in enumerate(datasets):
        dataset.save_as(folder / f"{prefix}{number:03d}.dcm")
    return folder


def test_real_series_geometry_and_hu(original, series_dir):
    first_by_position = _datasets_by_position(series_dir)[0]

    assert original.GetSize() == (512, 512, 20)
    assert original.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_allclose(original.GetSpacing(), (0.9765625, 0.9765625, 2.0), atol=1e-6)
    first_position = [float(value) for value in first_by_position.ImagePositionPatient]
    np.testing.assert_allclose(original.GetOrigin(), first_position)
    np.testing.assert_allclose(original.GetOrigin(), (-249.51171875, -437.51171875, -804.5))
    np.testing.assert_allclose(original.GetDirection(), np.eye(3).ravel())

    # Rescale intercept -1024 is applied: air in front of the body is near -1000 HU.
    values = sitk.GetArrayViewFromImage(original)
    assert np.median(values[:, 0:60, 256]) == pytest.approx(-1000.0, abs=30.0)
    assert -100.0 < np.median(values[:, 250:262, 250:262]) < 150.0


def test_shuffled_file_names_read_in_position_order(tmp_path, original, series_dir):
    files = sorted(series_dir.iterdir())
    names = [f"img_{number:02d}.dcm" for number in range(len(files))]
    random.Random(4).shuffle(names)
    for source, name in zip(files, names):
        shutil.copyfile(source, tmp_path / name)

    image = load_ct(tmp_path)

    np.testing.assert_allclose(image.GetOrigin(), original.GetOrigin())
    np.testing.assert_allclose(image.GetSpacing(), original.GetSpacing())
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(original))


def test_non_ascii_folder_reads(tmp_path, series_dir):
    folder = tmp_path / "Séries Müller 肺"
    shutil.copytree(series_dir, folder)

    assert load_ct(folder).GetSize() == (512, 512, 20)


def test_missing_slice_rejected(tmp_path, series_dir):
    datasets = _datasets_by_position(series_dir)
    del datasets[9]
    folder = _save(datasets, tmp_path / "gap")

    expected = r"non-uniform slice spacing.* is 4\.00 mm, but the usual gap is 2\.00 mm"
    with pytest.raises(InputError, match=expected):
        load_ct(folder)


def test_gantry_tilt_rejected(tmp_path, series_dir):
    datasets = _datasets_by_position(series_dir)
    for number, dataset in enumerate(datasets):
        position = [float(v) for v in dataset.ImagePositionPatient]
        position[1] += 0.35 * number
        dataset.ImagePositionPatient = position
    folder = _save(datasets, tmp_path / "tilt")

    with pytest.raises(InputError, match="not along the orientation normal .*gantry tilt"):
        load_ct(folder)


def test_second_series_rejected(tmp_path, series_dir):
    datasets = _datasets_by_position(series_dir)
    _save(datasets, tmp_path / "mixed")
    second = _datasets_by_position(series_dir)[:6]
    for number, dataset in enumerate(second):
        dataset.SeriesInstanceUID = SECOND_SERIES_UID
        dataset.SOPInstanceUID = f"{SECOND_SERIES_UID}.{number + 1}"
        dataset.SeriesDescription = "Lung 1.0 B70f"
    folder = _save(second, tmp_path / "mixed", prefix="second")

    with pytest.raises(InputError, match="contains 2 DICOM series") as error:
        load_ct(folder)
    assert SECOND_SERIES_UID in str(error.value)
    assert "'Lung 1.0 B70f' (6 files)" in str(error.value)
    assert "'CT Body 3.0' (20 files)" in str(error.value)
    assert "Pass a folder that contains only the CT series" in str(error.value)


def test_scout_series_skipped_with_warning(tmp_path, series_dir, original, caplog):
    folder = _save(_datasets_by_position(series_dir), tmp_path / "with_scout")
    scout = _datasets_by_position(series_dir)[0]
    scout.SeriesInstanceUID = SECOND_SERIES_UID
    scout.SOPInstanceUID = f"{SECOND_SERIES_UID}.1"
    scout.SeriesDescription = "Topogram 0.6 T20f"
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    scout.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    scout.save_as(folder / "scout.dcm")

    with caplog.at_level(logging.WARNING, logger="clipnodule.dicom_series"):
        image = load_ct(folder)

    assert image.GetSize() == (512, 512, 20)
    np.testing.assert_array_equal(
        sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(original)
    )
    assert any("Skipping scout or localizer series" in record.message for record in caplog.records)
    assert any("Topogram" in record.message for record in caplog.records)


def test_inconsistent_orientation_rejected(tmp_path, series_dir):
    datasets = _datasets_by_position(series_dir)
    datasets[7].ImageOrientationPatient = [1, 0, 0, 0, 0.9961947, -0.0871557]
    folder = _save(datasets, tmp_path / "rotated_slice")

    with pytest.raises(InputError, match="inconsistent ImageOrientationPatient across slices"):
        load_ct(folder)


def test_duplicate_slice_rejected(tmp_path, series_dir):
    datasets = _datasets_by_position(series_dir)
    folder = _save(datasets, tmp_path / "duplicate")
    datasets[4].save_as(folder / "copy_of_slice004.dcm")

    with pytest.raises(InputError, match="two slices at the same position"):
        load_ct(folder)


def test_empty_folder_rejected(tmp_path):
    (tmp_path / "readme.txt").write_text("no images here")
    (tmp_path / "series_2").mkdir()

    with pytest.raises(InputError, match=r"No DICOM series found in .*subfolders \(series_2\)"):
        read_dicom_series(tmp_path)


def test_single_dicom_file_rejected(tmp_path, series_dir):
    single = tmp_path / "slice.dcm"
    shutil.copyfile(sorted(series_dir.iterdir())[0], single)

    with pytest.raises(InputError, match="is a single DICOM file; pass the folder"):
        load_ct(single)


def test_mixed_pixel_spacing_rejected(tmp_path, series_dir):
    # SimpleITK reads the series with the first slice's PixelSpacing for every slice.
    datasets = _datasets_by_position(series_dir)
    datasets[5].PixelSpacing = [0.8, 0.8]
    folder = _save(datasets, tmp_path / "spacing")

    expected = r"mixes slice grids: .*PixelSpacing \[0\.9765625, 0\.9765625\] mm but .*PixelSpacing \[0\.8, 0\.8\] mm"
    with pytest.raises(InputError, match=expected):
        load_ct(folder)


def test_mixed_slice_size_rejected(tmp_path, series_dir):
    datasets = _datasets_by_position(series_dir)
    small = datasets[5]
    small.decompress()
    small.PixelData = small.pixel_array[::2, ::2].copy().tobytes()
    small.Rows = 256
    small.Columns = 256
    small.PixelSpacing = [1.953125, 1.953125]
    folder = _save(datasets, tmp_path / "size")

    with pytest.raises(InputError, match="mixes slice grids: .*512 x 512 pixels.* but .*256 x 256 pixels"):
        load_ct(folder)


def test_per_slice_rescale_read_in_hu(tmp_path, series_dir, original):
    # Some scanners store a different RescaleSlope and RescaleIntercept on each slice.
    datasets = _datasets_by_position(series_dir)
    for number, dataset in enumerate(datasets):
        dataset.decompress()
        hu = dataset.pixel_array * float(dataset.RescaleSlope) + float(dataset.RescaleIntercept)
        slope, intercept = (1.0, -1024.0) if number % 2 == 0 else (0.5, -1100.0)
        stored = np.round((hu - intercept) / slope)
        assert stored.min() >= 0
        assert stored.max() <= 65535
        dataset.BitsStored = 16
        dataset.HighBit = 15
        dataset.PixelData = stored.astype(np.uint16).tobytes()
        dataset.RescaleSlope = slope
        dataset.RescaleIntercept = intercept
    folder = _save(datasets, tmp_path / "rescale")

    image = load_ct(folder)

    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(original))
