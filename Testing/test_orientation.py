"""Tests that the nine planes depend only on the physical CT content, not on how it is stored.

Each reference CT is rewritten with permuted and flipped voxel axes (direction matrix
adjusted so every voxel keeps its LPS position) in NIfTI, MetaImage and NRRD, and the
planes for the same LPS point must not change. An oblique CT checks the direction handling.
"""

from __future__ import annotations

import csv
import itertools

import numpy as np
import pytest
import SimpleITK as sitk

from clipnodule.coordinates import ras_to_lps
from clipnodule.crop import crop_hu_cube
from clipnodule.image_io import load_ct
from clipnodule.preprocess import extract_planes

# (file name, axis permutation, axes to flip) of each rewritten copy.
STORAGE_VARIANTS = [
    ("flipped_ij.nii.gz", (0, 1, 2), (True, True, False)),
    ("flipped_k.nii", (0, 1, 2), (False, False, True)),
    ("permuted_flipped.nii.gz", (1, 0, 2), (False, True, True)),
    ("permuted.mha", (2, 0, 1), (False, True, False)),
    ("permuted_flipped.nrrd", (1, 2, 0), (True, False, True)),
]


@pytest.fixture(scope="module")
def case_rows(reference_fixtures):
    with open(reference_fixtures / "crop_from_ct_cases.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def reference_planes(reference_fixtures):
    with np.load(reference_fixtures / "crop_from_ct.npz") as data:
        return {key: data[key] for key in data.files if key.endswith("_planes")}


def _lps_point(row: dict) -> np.ndarray:
    return np.array([float(row["coordX"]), float(row["coordY"]), float(row["coordZ"])])


def _rewrite(image: sitk.Image, path, permutation, flips) -> None:
    """Write `image` with reordered voxel axes; PermuteAxes and Flip keep LPS positions."""
    reordered = sitk.Flip(sitk.PermuteAxes(image, list(permutation)), list(flips), flipAboutOrigin=False)
    sitk.WriteImage(reordered, str(path))


@pytest.mark.parametrize("case_file", ["ct_caseA.nii.gz", "ct_caseB.nii.gz"])
@pytest.mark.parametrize("variant", STORAGE_VARIANTS, ids=[variant[0] for variant in STORAGE_VARIANTS])
def test_planes_independent_of_storage(
    tmp_path, reference_fixtures, case_rows, reference_planes, case_file, variant
):
    name, permutation, flips = variant
    original = sitk.ReadImage(str(reference_fixtures / case_file))
    _rewrite(original, tmp_path / name, permutation, flips)

    rewritten = load_ct(tmp_path / name)

    assert rewritten.GetDirection() != original.GetDirection()
    for row in (row for row in case_rows if row["image_file"] == case_file):
        result = extract_planes(rewritten, _lps_point(row))
        difference = np.abs(result.planes - reference_planes[f"{row['case']}_planes"]).max()
        assert difference <= 1e-4, f"{row['case']} from {name}: max difference {difference}"
        assert result.crop.center_index == tuple(int(row[f"center_index_{axis}"]) for axis in "ijk")


def test_lps_and_ras_storage_agree(reference_fixtures):
    # Case A is stored LPS in its NIfTI affine and case B RAS; both load with LPS geometry.
    case_a = load_ct(reference_fixtures / "ct_caseA.nii.gz")
    case_b = load_ct(reference_fixtures / "ct_caseB.nii.gz")

    np.testing.assert_allclose(case_a.GetOrigin(), (-61.3, -48.7, -133.0), atol=1e-4)
    np.testing.assert_allclose(case_a.GetDirection(), np.eye(3).ravel())
    np.testing.assert_allclose(case_b.GetOrigin(), (72.4, 55.1, -20.6), atol=1e-4)
    np.testing.assert_allclose(case_b.GetDirection(), np.diag([-1.0, -1.0, 1.0]).ravel())


def test_ras_point_converted_gives_same_planes(reference_fixtures, case_rows, reference_planes):
    images = {}
    for row in case_rows:
        image = images.setdefault(row["image_file"], load_ct(reference_fixtures / row["image_file"]))
        ras = [float(row["coordX_RAS"]), float(row["coordY_RAS"]), float(row["coordZ_RAS"])]

        result = extract_planes(image, ras_to_lps(ras))

        np.testing.assert_allclose(result.point_lps, _lps_point(row), atol=1e-9)
        assert np.abs(result.planes - reference_planes[f"{row['case']}_planes"]).max() <= 1e-4


def _rotation(axis: np.ndarray, degrees: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    angle = np.radians(degrees)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


def test_oblique_direction_samples_physical_points():
    gradient = np.array([6.0, -3.0, 9.0])
    direction = _rotation(np.array([1.0, 2.0, 0.5]), 25.0) @ np.diag([1.0, -1.0, 1.0])
    spacing = np.array([0.9, 0.8, 1.5])
    origin = np.array([-70.0, 40.0, -60.0])
    size = (160, 150, 90)

    k, j, i = np.meshgrid(*[np.arange(n) for n in size[::-1]], indexing="ij")
    points = origin + (np.stack([i, j, k], axis=-1) * spacing) @ direction.T
    image = sitk.GetImageFromArray((points @ gradient).astype(np.float32))
    image.SetSpacing(spacing.tolist())
    image.SetDirection(direction.ravel().tolist())
    image.SetOrigin(origin.tolist())
    center_index = np.array(size) / 2.0
    point = origin + (center_index * spacing) @ direction.T

    crop = crop_hu_cube(image, point)

    # Trilinear interpolation reproduces a linear ramp exactly at points inside the scan.
    lps_to_index = np.linalg.inv(direction @ np.diag(spacing))
    checked = 0
    for z, y, x in itertools.product(range(20, 81, 10), repeat=3):
        lps = crop.origin_lps + np.array([x, y, z], dtype=np.float64)
        index = lps_to_index @ (lps - origin)
        if np.all(index >= 0) and np.all(index <= np.array(size) - 1):
            assert crop.hu[z, y, x] == pytest.approx(float(lps @ gradient), abs=0.05)
            checked += 1
    assert checked > 200
