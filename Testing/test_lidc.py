"""Tests of the LIDC-to-NLST feature harmonisation, the LIDC label rule and the LIDC data set table.

Hand-made ratings cover every harmonisation rule with its boundaries; the real LIDC
metadata and volumes come from the shared data folder when present.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

from clipnodule.errors import InputError
from clipnodule.training.dataset_table import read_dataset_table
from clipnodule.training.lidc import (
    harmonise_lidc_ratings,
    harmonise_reader_ratings,
    lidc_dataset_table,
    lidc_malignancy_label,
)
from clipnodule.training.semantic_features import FEATURE_NAMES

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("rating", "value", "feature", "expected"),
    [
        ("internal_structure", 4, "cyst_like_spaces", "present"),
        ("internal_structure", 1, "cyst_like_spaces", "absent"),
        ("internal_structure", 2, "cyst_like_spaces", "absent"),
        ("internal_structure", 3, "cyst_like_spaces", "absent"),
        ("calcification", 4, "eccentric_calcification", "present"),
        ("calcification", 5, "eccentric_calcification", "absent"),
        ("calcification", 6, "eccentric_calcification", "absent"),
        ("calcification", 1, "eccentric_calcification", "absent"),
        ("sphericity", 3, "shape", "ovoid"),
        ("sphericity", 4, "shape", "round"),
        ("sphericity", 1, "shape", "ovoid"),
        ("sphericity", 5, "shape", "round"),
        ("margin", 3, "margin_conspicuity", "well marginated"),
        ("margin", 2, "margin_conspicuity", "poorly marginated"),
        ("margin", 5, "margin_conspicuity", "well marginated"),
        ("margin", 1, "margin_conspicuity", "poorly marginated"),
        ("lobulation", 3, "margin", "lobulated"),
        ("lobulation", 2, "margin", None),
        ("spiculation", 3, "margin", "spiculated"),
        ("spiculation", 2, "margin", None),
        ("texture", 5, "consistency", "solid"),
        ("texture", 4, "consistency", "part-solid"),
        ("texture", 3, "consistency", "part-solid"),
        ("texture", 2, "consistency", "part-solid"),
        ("texture", 1, "consistency", "pure ground glass"),
    ],
)
def test_table_a2_rule(rating, value, feature, expected) -> None:
    assert harmonise_lidc_ratings({rating: value})[feature] == expected


def test_lobulated_and_spiculated_margin() -> None:
    features = harmonise_lidc_ratings({"lobulation": 5, "spiculation": 3})

    assert features["margin"] == "lobulated;spiculated"


def test_margin_missing_without_lobulation_or_spiculation() -> None:
    features = harmonise_lidc_ratings({"lobulation": 1, "spiculation": 2, "margin": 5})

    assert features["margin"] is None
    assert features["margin_conspicuity"] == "well marginated"


def test_unrated_features_stay_missing() -> None:
    features = harmonise_lidc_ratings({"texture": 5})

    assert features == {
        "cyst_like_spaces": None,
        "eccentric_calcification": None,
        "shape": None,
        "margin_conspicuity": None,
        "margin": None,
        "consistency": "solid",
    }


def test_text_ratings_are_rejected() -> None:
    with pytest.raises(InputError, match="LIDC sphericity rating 'Round' is not a number"):
        harmonise_lidc_ratings({"sphericity": "Round"})


def test_unknown_rating_name_rejected() -> None:
    with pytest.raises(InputError, match="Unknown LIDC rating name.*malignancy"):
        harmonise_lidc_ratings({"malignancy": 5})


def test_median_over_readers() -> None:
    readers = [
        {"sphericity": 3, "margin": 2, "lobulation": 3, "spiculation": 1, "texture": 1},
        {"sphericity": 4, "margin": 3, "lobulation": 1, "spiculation": 1, "texture": 2},
        {"sphericity": 4, "margin": 1, "lobulation": 4, "spiculation": 5},
    ]
    features = harmonise_reader_ratings(readers)

    assert features["shape"] == "round"  # median 4
    assert features["margin_conspicuity"] == "poorly marginated"  # median 2
    assert features["margin"] == "lobulated"  # lobulation median 3, spiculation median 1
    assert features["consistency"] == "pure ground glass"  # median of the two given: 1.5


def test_median_half_values_at_thresholds() -> None:
    features = harmonise_reader_ratings([{"sphericity": 3, "texture": 4}, {"sphericity": 4, "texture": 5}])

    assert features["shape"] == "round"  # 3.5 > 3
    assert features["consistency"] == "solid"  # 4.5 > 4


def test_nominal_ratings_need_strict_majority() -> None:
    majority = harmonise_reader_ratings([{"internal_structure": 4}, {"internal_structure": 4}, {"internal_structure": 1}])
    tie = harmonise_reader_ratings([{"calcification": 4}, {"calcification": 6}])

    assert majority["cyst_like_spaces"] == "present"
    assert tie["eccentric_calcification"] == "absent"


def test_no_readers_rejected() -> None:
    with pytest.raises(InputError, match="No LIDC reader ratings"):
        harmonise_reader_ratings([])


@pytest.mark.parametrize(("rating", "label"), [(1, 0), (2, 0), (3, None), (4, 1), (5, 1), (2.5, None), (None, None)])
def test_malignancy_label_rule(rating, label) -> None:
    assert lidc_malignancy_label(rating) == label


@pytest.fixture(scope="module")
def lidc_dir(shared_dir) -> Path:
    return shared_dir / "data" / "lidc-voi"


def test_real_metadata_label_counts(lidc_dir) -> None:
    metadata = pd.read_csv(lidc_dir / "metadata.csv")
    table = lidc_dataset_table(lidc_dir)

    assert (metadata["Malignancy_value"] >= 4).sum() == 199
    assert (metadata["Malignancy_value"] <= 2).sum() == 310
    assert len(table) == 509
    assert int((table["malignant"] == 1).sum()) == 199
    assert int((table["malignant"] == 0).sum()) == 310
    assert table["pid"].nunique() == metadata.loc[metadata["Malignancy_value"] != 3, "patient_id"].nunique()


def test_real_table_keep_indeterminate(lidc_dir) -> None:
    table = lidc_dataset_table(lidc_dir, keep_indeterminate=True)

    assert len(table) == 787
    assert int(table["malignant"].isna().sum()) == 278


def test_real_table_columns_and_first_nodule(lidc_dir) -> None:
    table = lidc_dataset_table(lidc_dir)
    first = table[(table["pid"] == "LIDC-IDRI-0001") & (table["nodule_id"] == "1")].iloc[0]

    assert list(table.columns) == ["pid", "nodule_id", "image_path", "coordX", "coordY", "coordZ", "malignant", *FEATURE_NAMES]
    assert first["image_path"] == str(lidc_dir.resolve() / "images" / "LIDC-IDRI-0001_R_1.nii.gz")
    assert first["coordX"] == pytest.approx(56.20840547)
    assert first["coordY"] == pytest.approx(86.34341278)
    assert first["coordZ"] == pytest.approx(-115.8675792)
    assert first["malignant"] == 1
    assert first["longest_diameter_mm"] == pytest.approx(23.35064438)
    assert first["margin"] == "lobulated;spiculated"  # lobulation 3, spiculation 5
    assert first["shape"] == "ovoid"  # sphericity 3
    assert first["margin_conspicuity"] == "well marginated"  # margin 4
    assert first["consistency"] == "solid"  # texture 5
    assert first["cyst_like_spaces"] == "absent"  # soft tissue
    assert first["eccentric_calcification"] == "absent"  # calcification absent
    assert first["suspicion"] is None
    assert first["short_diameter_mm"] is None


def test_real_table_mapped_value_counts(lidc_dir) -> None:
    metadata = pd.read_csv(lidc_dir / "metadata.csv")
    table = lidc_dataset_table(lidc_dir, keep_indeterminate=True)

    assert int((table["cyst_like_spaces"] == "present").sum()) == int((metadata["InternalStructure_value"] == 4).sum()) == 1
    assert int((table["eccentric_calcification"] == "present").sum()) == int((metadata["Calcification_value"] == 4).sum()) == 2
    assert int((table["shape"] == "round").sum()) == int((metadata["Sphericity_value"] > 3).sum())
    assert int((table["consistency"] == "pure ground glass").sum()) == int((metadata["Texture_value"] < 2).sum())
    assert int(table["margin"].isna().sum()) == int(((metadata["Lobulation_value"] < 3) & (metadata["Spiculation_value"] < 3)).sum())
    assert table["suspicion"].isna().all()


def test_real_table_missing_image_rejected(tmp_path, lidc_dir) -> None:
    metadata = pd.read_csv(lidc_dir / "metadata.csv").head(3)
    metadata.to_csv(tmp_path / "metadata.csv", index=False)
    (tmp_path / "images").mkdir()

    with pytest.raises(InputError, match="3 LIDC image file"):
        lidc_dataset_table(tmp_path, keep_indeterminate=True)


def test_metadata_not_found(tmp_path) -> None:
    with pytest.raises(InputError, match="LIDC metadata not found"):
        lidc_dataset_table(tmp_path)


def _load_script():
    spec = importlib.util.spec_from_file_location("make_lidc_dataset", REPOSITORY_ROOT / "scripts" / "make_lidc_dataset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_writes_readable_table(tmp_path, lidc_dir) -> None:
    output = tmp_path / "tables" / "lidc.csv"
    status = _load_script().main(["--lidc-dir", str(lidc_dir), "--output", str(output), "--relative-paths"])
    raw = pd.read_csv(output, dtype=str)
    table = read_dataset_table(output)

    assert status == 0
    assert not Path(raw.loc[0, "image_path"]).is_absolute()
    assert len(table) == 509
    assert Path(table.loc[0, "image_path"]).is_file()
    assert table["margin"].dropna().isin(["lobulated", "spiculated", "lobulated;spiculated"]).all()


def test_script_keep_indeterminate_empty_labels(tmp_path, lidc_dir) -> None:
    output = tmp_path / "lidc.csv"
    _load_script().main(["--lidc-dir", str(lidc_dir), "--output", str(output), "--keep-indeterminate"])
    table = read_dataset_table(output, require_labels=False)

    assert len(table) == 787
    assert int(table["malignant"].isna().sum()) == 278
    with pytest.raises(InputError, match="column 'malignant': the label is empty"):
        read_dataset_table(output)
