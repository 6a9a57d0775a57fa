"""Tests of the data set table reader, semantic feature normalisation and rarity weights.

Tables are small CSV files written into pytest's temporary folder; image files are empty
placeholders because the reader only checks that they exist.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clipnodule.errors import InputError
from clipnodule.training.dataset_table import EXPECTED_HEADER, read_dataset_table
from clipnodule.training.semantic_features import (
    FEATURE_NAMES,
    FEATURES_BY_NAME,
    FeatureKind,
    normalize_feature_value,
    rarity_weights,
)

HEADER = "pid,nodule_id,image_path,coordX,coordY,coordZ,malignant"


def _write(folder: Path, text: str, images: tuple[str, ...] = ("a.nii.gz", "b.nii.gz", "c.nii.gz")) -> Path:
    (folder / "images").mkdir(exist_ok=True)
    for name in images:
        (folder / "images" / name).write_bytes(b"")
    path = folder / "table.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_valid_table_types_and_paths(tmp_path) -> None:
    path = _write(
        tmp_path,
        f"{HEADER},margin,consistency,necrosis,longest_diameter_mm,site\n"
        "P1,1,images/a.nii.gz,1.5,-2,3e1,1,\"Spiculated, lobulated\",Part solid,No,12,left\n"
        f"P1,2,{tmp_path / 'images' / 'b.nii.gz'},0,0,0,0,,GGO,,,right\n",
    )
    table = read_dataset_table(path)

    assert list(table.columns[:7]) == HEADER.split(",")
    assert list(table.columns[7:]) == ["longest_diameter_mm", "margin", "consistency", "necrosis", "site"]
    assert table["pid"].tolist() == ["P1", "P1"]
    assert table["nodule_id"].tolist() == ["1", "2"]
    assert table["image_path"].tolist() == [str(tmp_path / "images" / "a.nii.gz"), str(tmp_path / "images" / "b.nii.gz")]
    assert table["coordX"].tolist() == [1.5, 0.0]
    assert table["coordZ"].tolist() == [30.0, 0.0]
    assert str(table["malignant"].dtype) == "Int64"
    assert table["malignant"].tolist() == [1, 0]
    assert table["margin"].tolist() == ["lobulated;spiculated", None]
    assert table["consistency"].tolist() == ["part-solid", "pure ground glass"]
    assert table["necrosis"].tolist() == ["absent", None]
    assert table["longest_diameter_mm"].iloc[0] == 12.0
    assert math.isnan(table["longest_diameter_mm"].iloc[1])
    assert table["site"].tolist() == ["left", "right"]


def test_missing_columns_listed(tmp_path) -> None:
    path = _write(tmp_path, "pid,image_path,coordX,coordY\nP1,images/a.nii.gz,1,2\n")

    with pytest.raises(InputError) as error:
        read_dataset_table(path)
    message = str(error.value)
    assert "lacks the required column(s) nodule_id, coordZ, malignant" in message
    assert EXPECTED_HEADER in message
    assert "LPS millimetres" in message


def test_labels_optional_when_not_required(tmp_path) -> None:
    path = _write(tmp_path, "pid,nodule_id,image_path,coordX,coordY,coordZ\nP1,1,images/a.nii.gz,1,2,3\n")
    table = read_dataset_table(path, require_labels=False)

    assert table["malignant"].isna().all()
    with pytest.raises(InputError, match="lacks the required column.*malignant"):
        read_dataset_table(path)


def test_non_numeric_coordinate_names_row_and_column(tmp_path) -> None:
    path = _write(tmp_path, f"{HEADER}\nP1,1,images/a.nii.gz,1,2,3,0\nP2,1,images/b.nii.gz,1,abc,3,1\n")

    with pytest.raises(InputError) as error:
        read_dataset_table(path)
    message = str(error.value)
    assert "1 problem(s)" in message
    assert "data row 2 (spreadsheet row 3), column 'coordY': 'abc' is not a finite number" in message


def test_nan_and_empty_coordinates_rejected(tmp_path) -> None:
    path = _write(tmp_path, f"{HEADER}\nP1,1,images/a.nii.gz,nan,2,3,0\nP2,1,images/b.nii.gz,1,2,,1\nP3,1,images/c.nii.gz,1,2,inf,1\n")

    with pytest.raises(InputError) as error:
        read_dataset_table(path)
    message = str(error.value)
    assert "data row 1 (spreadsheet row 2), column 'coordX': 'nan'" in message
    assert "data row 2 (spreadsheet row 3), column 'coordZ': ''" in message
    assert "data row 3 (spreadsheet row 4), column 'coordZ': 'inf'" in message


@pytest.mark.parametrize("label", ["2", "yes", "0.5", "-1"])
def test_invalid_label_rejected(tmp_path, label) -> None:
    path = _write(tmp_path, f"{HEADER}\nP1,1,images/a.nii.gz,1,2,3,{label}\n")

    with pytest.raises(InputError, match=rf"data row 1 \(spreadsheet row 2\), column 'malignant': '{label}' is not 0"):
        read_dataset_table(path, require_labels=False)


def test_empty_label_rejected_when_required(tmp_path) -> None:
    path = _write(tmp_path, f"{HEADER}\nP1,1,images/a.nii.gz,1,2,3,\nP2,1,images/b.nii.gz,1,2,3,1.0\n")

    with pytest.raises(InputError, match=r"data row 1 \(spreadsheet row 2\), column 'malignant': the label is empty"):
        read_dataset_table(path)
    assert read_dataset_table(path, require_labels=False)["malignant"].tolist()[1] == 1


def test_duplicate_nodule_rejected(tmp_path) -> None:
    path = _write(tmp_path, f"{HEADER}\nP1,1,images/a.nii.gz,1,2,3,0\nP2,1,images/b.nii.gz,1,2,3,0\nP1, 1,images/c.nii.gz,4,5,6,1\n")

    with pytest.raises(InputError, match=r"data rows 1, 3, columns 'pid' and 'nodule_id': the pair \('P1', '1'\) occurs more than once"):
        read_dataset_table(path)


def test_empty_identifier_rejected(tmp_path) -> None:
    path = _write(tmp_path, f"{HEADER}\n,1,images/a.nii.gz,1,2,3,0\n")

    with pytest.raises(InputError, match=r"data row 1 \(spreadsheet row 2\), column 'pid': the value is empty"):
        read_dataset_table(path)


def test_missing_images_collected(tmp_path) -> None:
    rows = "".join(f"P{index},1,images/none{index}.nii.gz,1,2,3,0\n" for index in range(7))
    path = _write(tmp_path, f"{HEADER}\n{rows}P9,1,images/a.nii.gz,1,2,3,1\n")

    with pytest.raises(InputError) as error:
        read_dataset_table(path)
    message = str(error.value)
    assert "7 image file(s) or folder(s) not found (first 5 shown)" in message
    assert "data row 5 (spreadsheet row 6)" in message
    assert "none4.nii.gz" in message
    assert "none5.nii.gz" not in message
    assert f"resolved against the table's folder {tmp_path}" in message
    assert len(read_dataset_table(path, check_images=False)) == 8


def test_invalid_semantic_value_names_row_and_column(tmp_path) -> None:
    path = _write(tmp_path, f"{HEADER},shape,margin\nP1,1,images/a.nii.gz,1,2,3,0,round,smooth\nP2,1,images/b.nii.gz,1,2,3,1,oval,wavy;smooth\n")

    with pytest.raises(InputError) as error:
        read_dataset_table(path)
    message = str(error.value)
    assert "data row 2 (spreadsheet row 3), column 'shape': Invalid value 'oval'" in message
    assert "data row 2 (spreadsheet row 3), column 'margin': Invalid value 'wavy'" in message
    assert "'irregular', 'ovoid', 'polygonal', 'round'" in message


def test_short_diameter_above_longest_rejected(tmp_path) -> None:
    path = _write(tmp_path, f"{HEADER},longest_diameter_mm,short_diameter_mm\nP1,1,images/a.nii.gz,1,2,3,0,5,8\n")

    with pytest.raises(InputError, match=r"data row 1 \(spreadsheet row 2\), column 'short_diameter_mm'.*8 mm is larger"):
        read_dataset_table(path)


def test_table_not_found(tmp_path) -> None:
    with pytest.raises(InputError, match=f"Data set table not found: {tmp_path / 'none.csv'}"):
        read_dataset_table(tmp_path / "none.csv")


def test_feature_list_matches_table_a1() -> None:
    assert len(FEATURE_NAMES) == 19
    assert FEATURES_BY_NAME["margin"].kind is FeatureKind.MULTI
    assert FEATURES_BY_NAME["airway_cutoff"].values == ("present", "absent")
    assert FEATURES_BY_NAME["suspicion"].values == ("very low", "moderately low", "intermediate", "moderately high", "high")
    assert FEATURES_BY_NAME["consistency"].values == ("solid", "part-solid", "pure ground glass", "semi-consolidation", "peri-cystic")


@pytest.mark.parametrize(
    ("name", "raw", "expected"),
    [
        ("margin", "Ill defined; SPICULATED", "spiculated;ill-defined"),
        ("margin", "smooth,smooth", "smooth"),
        ("margin", " ; ", None),
        ("margin_conspicuity", "Well margined", "well marginated"),
        ("pleural_retraction", "Mild dimpling", "present"),
        ("cavitation", 0, "absent"),
        ("cavitation", True, "present"),
        ("suspicion", "Moderately_High", "moderately high"),
        ("short_diameter_mm", "4.5", 4.5),
        ("shape", "N/A", None),
    ],
)
def test_normalize_feature_value(name, raw, expected) -> None:
    assert normalize_feature_value(FEATURES_BY_NAME[name], raw) == expected


@pytest.mark.parametrize("raw", ["-3", "0", "inf", "large"])
def test_invalid_diameter_rejected(raw) -> None:
    with pytest.raises(InputError, match="longest_diameter_mm"):
        normalize_feature_value(FEATURES_BY_NAME["longest_diameter_mm"], raw)


def test_rarity_weights_exact_values() -> None:
    table = pd.DataFrame(
        {
            "shape": ["round", "round", "round", "ovoid", None],
            "necrosis": ["absent", "absent", "absent", "absent", "present"],
        }
    )
    weights = rarity_weights(table)

    # Scores: rows 0-2 log(4/3) + log(5/4); row 3 log(4) + log(5/4); row 4 (shape missing) log(5).
    scores = np.array([math.log(4 / 3) + math.log(5 / 4)] * 3 + [math.log(4) + math.log(5 / 4), math.log(5)])
    expected = (scores - scores.min()) / (scores.max() - scores.min())
    assert weights == pytest.approx(expected)
    assert weights[3] == pytest.approx(1.0)
    assert weights[0] == pytest.approx(0.0)


def test_rarity_weights_diameter_bins_and_margin_combinations() -> None:
    table = pd.DataFrame(
        {
            "longest_diameter_mm": [5.0, 6.0, 9.9, 10.0],
            "margin": ["smooth", "smooth", "smooth", "lobulated;spiculated"],
        }
    )
    weights = rarity_weights(table)

    assert weights.tolist() == pytest.approx([0.0, 0.0, 0.0, 1.0])


def test_rarity_weights_all_equal_and_floor() -> None:
    same = pd.DataFrame({"shape": ["round", "round"], "other": [1, 2]})
    varied = pd.DataFrame({"shape": ["round", "round", "ovoid"]})

    assert rarity_weights(same).tolist() == [1.0, 1.0]
    assert rarity_weights(pd.DataFrame({"pid": ["a", "b"]})).tolist() == [1.0, 1.0]
    assert rarity_weights(varied, floor=0.1).tolist() == pytest.approx([0.1, 0.1, 1.0])
    with pytest.raises(InputError, match="floor 1.5"):
        rarity_weights(varied, floor=1.5)


def test_rarity_weights_on_lidc(shared_dir) -> None:
    from clipnodule.training.lidc import lidc_dataset_table

    table = lidc_dataset_table(shared_dir / "data" / "lidc-voi", keep_indeterminate=True)
    weights = rarity_weights(table)

    assert weights.shape == (len(table),)
    assert weights.min() == pytest.approx(0.0)
    assert weights.max() == pytest.approx(1.0)
    assert ((weights >= 0.0) & (weights <= 1.0)).all()
    # The only nodule with cyst-like spaces (LIDC internal structure 'air') has a rare profile.
    air = table.index[table["cyst_like_spaces"] == "present"]
    assert len(air) == 1
    assert weights[air[0]] > np.quantile(weights, 0.9)
