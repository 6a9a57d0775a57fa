"""Tests of the CT-to-crop step and the whole plane extraction against the published pipeline.

The reference crops and planes were made by the published code from two synthetic CTs
(one stored LPS, one stored RAS), each with three nodules, one near the volume edge.
"""

from __future__ import annotations

import csv
import time

import numpy as np
import pytest
import SimpleITK as sitk

from clipnodule.crop import crop_hu_cube, one_mm_grid
from clipnodule.image_io import load_ct
from clipnodule.preprocess import extract_planes

CASE_IDS = ["caseA_n0", "caseA_n1", "caseA_n2", "caseB_n0", "caseB_n1", "caseB_n2"]


@pytest.fixture(scope="module")
def cases(reference_fixtures):
    with open(reference_fixtures / "crop_from_ct_cases.csv", newline="") as handle:
        rows = {row["case"]: row for row in csv.DictReader(handle)}
    with np.load(reference_fixtures / "crop_from_ct.npz") as data:
        arrays = {key: data[key] for key in data.files}
    file_names = {row["image_file"] for row in rows.values()}
    images = {name: load_ct(reference_fixtures / name) for name in file_names}
    return rows, arrays, images


def _vector(row: dict, prefix: str, axes: str = "XYZ") -> np.ndarray:
    return np.array([float(row[prefix + axis]) for axis in axes])


@pytest.mark.parametrize("case", CASE_IDS)
def test_crop_matches_reference(cases, case):
    rows, arrays, images = cases
    row = rows[case]

    crop = crop_hu_cube(images[row["image_file"]], _vector(row, "coord"))

    assert crop.hu.shape == (100, 100, 100)
    assert crop.hu.dtype == np.float32
    assert np.abs(crop.hu - arrays[f"{case}_crop_hu"]).max() <= 0.05
    np.testing.assert_allclose(crop.origin_lps, _vector(row, "crop_origin_lps_", "xyz"), atol=1e-3)
    assert crop.center_index == tuple(int(row[f"center_index_{axis}"]) for axis in "ijk")
    assert str(crop.grid_shape) == row["grid_shape"]


@pytest.mark.parametrize("case", CASE_IDS)
def test_extract_planes_matches_reference(cases, case):
    rows, arrays, images = cases
    row = rows[case]
    expected = arrays[f"{case}_planes"]

    result = extract_planes(images[row["image_file"]], _vector(row, "coord"))

    assert result.planes.shape == (9, 224, 224)
    assert result.planes.dtype == np.float32
    for index in range(9):
        plane, reference = result.planes[index], expected[index]
        assert np.abs(plane - reference).mean() <= 0.01, f"plane {index}"
        assert np.corrcoef(plane.ravel(), reference.ravel())[0, 1] >= 0.99, f"plane {index}"
    assert np.abs(result.planes - expected).max() <= 1e-4


def test_edge_nodule_pads_with_zero_hu(cases):
    rows, _, images = cases
    row = rows["caseA_n2"]

    crop = crop_hu_cube(images[row["image_file"]], _vector(row, "coord"))

    # The nodule lies about 6 mm from the min-x edge: the 1 mm grid starts at crop x index 45.
    assert np.all(crop.hu[:, :, :45] == 0.0)
    assert np.all(crop.hu[:, :, 45:].min(axis=(0, 1)) < 0.0)
    assert crop.hu[50, 50, 50] > 0.0


def test_grid_rule_case_a(cases):
    _, _, images = cases
    grid = one_mm_grid(images["ct_caseA.nii.gz"])

    # 159 * 0.7 + 1 = 112.3 -> 112 points; 59 * 2.5 + 1 = 148.5 -> 148 (half to even).
    assert grid.shape == (112, 112, 148)
    last_x = -61.3 + 159 * 0.7
    np.testing.assert_allclose(grid.origin_lps, [last_x - 111, -48.7 + 159 * 0.7 - 111, -133.0], atol=1e-4)


def test_crop_reads_only_region_fast():
    image = sitk.Image((512, 512, 300), sitk.sitkInt16)
    image.SetSpacing((0.7, 0.7, 1.0))
    image[257, 257, 150] = 400

    extract_planes(image, (180.0, 180.0, 150.0))
    started = time.perf_counter()
    result = extract_planes(image, (180.0, 180.0, 150.0))
    elapsed = time.perf_counter() - started

    assert result.crop.hu.max() > 0.0
    # Loose bound for slow CI machines; about 0.2 s was measured on two 2026 server cores.
    assert elapsed < 3.0
