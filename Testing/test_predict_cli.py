"""End-to-end tests of `clipnodule predict` and `clipnodule planes` on the real example CT.

The example CT (pyradiomics 3.0.1 source archive, fetched through pip) is skipped with
a reason when the package registry cannot be reached. The model is a tiny randomly
initialised CLIP saved as a real bundle by the test.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from clipnodule.cli import main
from clipnodule.coordinates import lps_to_ras
from clipnodule.errors import CLIPNoduleError


@pytest.fixture(scope="module")
def example_ct():
    from clipnodule.example_data import fetch_example_ct

    try:
        return fetch_example_ct()
    except CLIPNoduleError as error:
        pytest.skip(f"example CT unavailable (package registry unreachable?): {error}")


def write_flipped_copy(source: Path, target: Path) -> None:
    """Store the same physical image with the x and y axes reversed (direction diag(-1, -1, 1))."""
    image = sitk.ReadImage(str(source))
    array = sitk.GetArrayFromImage(image)[:, ::-1, ::-1]
    flipped = sitk.GetImageFromArray(np.ascontiguousarray(array))
    flipped.SetSpacing(image.GetSpacing())
    size = image.GetSize()
    flipped.SetOrigin(image.TransformIndexToPhysicalPoint((size[0] - 1, size[1] - 1, 0)))
    direction = np.array(image.GetDirection()).reshape(3, 3) @ np.diag([-1.0, -1.0, 1.0])
    flipped.SetDirection(direction.ravel().tolist())
    sitk.WriteImage(flipped, str(target))


def test_predict_writes_three_outputs(example_ct, tiny_bundle, tmp_path):
    output = tmp_path / "out"
    point = [f"{value:.4f}" for value in example_ct.nodule_center_lps]
    status = main([
        "predict", "--image", str(example_ct.image_path), "--point", *point,
        "--bundle", str(tiny_bundle), "--device", "cpu", "--pid", "P1", "--nodule-id", "1", "--output", str(output),
    ])
    assert status == 0

    result = json.loads((output / "result.json").read_text())
    assert 0.0 < result["risk"] < 1.0
    assert result["calibrated"] is True
    assert len(result["folds"]) == 5
    assert len(result["plane_names"]) == 9
    for fold in result["folds"]:
        assert len(fold["attention"]) == 9
        assert abs(sum(fold["attention"]) - 1.0) < 1e-5
    calibrated = [fold["calibrated_probability"] for fold in result["folds"]]
    assert abs(result["risk"] - np.mean(calibrated)) < 1e-9
    assert np.allclose(result["point_ras"], lps_to_ras(result["point_lps"]))
    assert result["model"] == {"name": "tiny-test", "version": "0"}
    assert len(result["input_sha256"]) == 64
    assert result["semantic_report"]["margin"]["most_likely"] in result["semantic_report"]["margin"]["probabilities"]

    with open(output / "result.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 1
    expected_columns = ["pid", "nodule_id"] + [f"raw_{k}" for k in range(5)] + ["ensemble"]
    expected_columns += [f"calibrated_{k}" for k in range(5)] + ["calibrated_ensemble"]
    assert list(rows[0].keys()) == expected_columns
    assert abs(float(rows[0]["calibrated_ensemble"]) - result["risk"]) < 1e-9

    assert (output / "planes.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_predict_same_risk_flipped_ras(example_ct, tiny_bundle, tmp_path):
    flipped = tmp_path / "lung1_flipped.nrrd"
    write_flipped_copy(example_ct.image_path, flipped)
    point_lps = np.array(example_ct.nodule_center_lps)
    point_ras = lps_to_ras(point_lps)

    status_lps = main([
        "predict", "--image", str(example_ct.image_path), "--point", *map(str, point_lps),
        "--bundle", str(tiny_bundle), "--device", "cpu", "--output", str(tmp_path / "lps"),
    ])
    status_ras = main([
        "predict", "--image", str(flipped), "--point", *map(str, point_ras), "--coordinate-system", "RAS",
        "--bundle", str(tiny_bundle), "--device", "cpu", "--output", str(tmp_path / "ras"),
    ])
    assert status_lps == 0
    assert status_ras == 0

    lps = json.loads((tmp_path / "lps" / "result.json").read_text())
    ras = json.loads((tmp_path / "ras" / "result.json").read_text())
    assert abs(lps["risk"] - ras["risk"]) <= 1e-4
    assert np.allclose(lps["attention"], ras["attention"], atol=1e-4)
    assert np.allclose(lps["point_lps"], ras["point_lps"])


def test_planes_command_writes_npy(example_ct, tmp_path):
    point = [str(value) for value in example_ct.nodule_center_lps]
    status = main(["planes", "--image", str(example_ct.image_path), "--point", *point, "--output", str(tmp_path)])
    assert status == 0

    planes = np.load(tmp_path / "planes.npy")
    assert planes.shape == (9, 224, 224)
    assert planes.dtype == np.float32
    # Lung parenchyma around a nodule: some pixels near air (0 after scaling) and some soft tissue.
    assert planes.min() < 0.1
    assert planes.max() > 0.6
    assert (tmp_path / "planes.png").is_file()


def test_point_outside_scan_one_line_error(example_ct, tiny_bundle, tmp_path, capsys):
    status = main([
        "predict", "--image", str(example_ct.image_path), "--point", "500", "500", "500",
        "--bundle", str(tiny_bundle), "--device", "cpu", "--output", str(tmp_path),
    ])
    captured = capsys.readouterr()
    assert status == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("clipnodule predict: error:")
    assert "500" in lines[0]
    assert "Traceback" not in captured.err
    assert not (tmp_path / "result.json").exists()


def test_missing_point_message(capsys):
    status = main(["planes", "--image", "scan.nii.gz", "--output", "unused"])
    captured = capsys.readouterr()
    assert status == 2
    assert "--point X Y Z" in captured.err


def test_output_existing_file_rejected(example_ct, tmp_path, capsys):
    existing = tmp_path / "afile"
    existing.write_text("not a folder")
    point = [str(value) for value in example_ct.nodule_center_lps]

    status = main([
        "predict", "--image", str(example_ct.image_path), "--point", *point,
        "--bundle", str(tmp_path / "no-bundle-needed"), "--output", str(existing),
    ])
    captured = capsys.readouterr()
    assert status == 2
    assert "is an existing file" in captured.err
    assert "Traceback" not in captured.err


def test_missing_image_fails_before_bundle(tmp_path, capsys):
    # The bundle path does not exist either: the CT error must come first.
    status = main([
        "predict", "--image", str(tmp_path / "absent.nrrd"), "--point", "0", "0", "0",
        "--bundle", str(tmp_path / "absent-bundle"), "--output", str(tmp_path / "out"),
    ])
    captured = capsys.readouterr()
    assert status == 2
    assert "absent.nrrd" in captured.err
    assert "absent-bundle" not in captured.err


def test_corrupt_bundle_rejected(tiny_bundle, tmp_path, example_ct, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_bundle, broken)
    fold_file = broken / "fold_0.safetensors"
    data = bytearray(fold_file.read_bytes())
    data[-1] ^= 0xFF
    fold_file.write_bytes(bytes(data))

    status = main([
        "predict", "--example", "--bundle", str(broken), "--device", "cpu", "--output", str(tmp_path / "out"),
    ])
    captured = capsys.readouterr()
    assert status == 2
    assert "fold_0.safetensors" in captured.err
    assert not (tmp_path / "out" / "result.json").exists()
