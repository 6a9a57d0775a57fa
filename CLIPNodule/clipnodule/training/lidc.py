"""LIDC-IDRI radiologist ratings mapped onto the NLST semantic features, and the LIDC data set table.

Implements the harmonisation of Zhuang et al., J Biomed Inform 2025, Table A2, the usual
LIDC malignancy label rule, and the table builder for a folder of LIDC nodule volumes.
Depends on numpy and pandas only (no torch, Qt or Slicer).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from statistics import median
from typing import Any, Mapping, Sequence

import pandas as pd

from ..errors import InputError
from .semantic_features import ABSENT, FEATURE_NAMES, MULTI_VALUE_SEPARATOR, PRESENT

logger = logging.getLogger(__name__)

# LIDC rating codes of the two nominal ratings (LIDC-IDRI XML schema).
INTERNAL_STRUCTURE_AIR = 4  # 1 soft tissue, 2 fluid, 3 fat, 4 air
CALCIFICATION_NON_CENTRAL = 4  # 1 popcorn, 2 laminated, 3 solid, 4 non-central, 5 central, 6 absent

ORDINAL_RATINGS = ("sphericity", "margin", "lobulation", "spiculation", "texture")
NOMINAL_RATINGS = ("internal_structure", "calcification")
RATING_NAMES = (*NOMINAL_RATINGS, *ORDINAL_RATINGS)

# Column of the aggregated rating in the LIDC metadata.csv, per rating name.
METADATA_RATING_COLUMNS = {
    "internal_structure": "InternalStructure_value",
    "calcification": "Calcification_value",
    "sphericity": "Sphericity_value",
    "margin": "Margin_value",
    "lobulation": "Lobulation_value",
    "spiculation": "Spiculation_value",
    "texture": "Texture_value",
}
METADATA_REQUIRED_COLUMNS = (
    "patient_id",
    "nodule_id",
    "coordX",
    "coordY",
    "coordZ",
    "diameter_mm",
    "Malignancy_value",
    *METADATA_RATING_COLUMNS.values(),
)


def _rating_number(name: str, value: Any) -> float | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"The LIDC {name} rating {value!r} is not a number; LIDC ratings are integer codes.") from None
    if not math.isfinite(number):
        raise InputError(f"The LIDC {name} rating {value!r} is not a finite number.")
    return number


def _median_over_readers(readers: Sequence[Mapping[str, Any]], name: str) -> float | None:
    values = [number for reader in readers if (number := _rating_number(name, reader.get(name))) is not None]
    return float(median(values)) if values else None


def _majority_indicator(readers: Sequence[Mapping[str, Any]], name: str, code: int) -> str | None:
    """Return 'present' when more than half of the readers who gave `name` chose `code`."""
    values = [number for reader in readers if (number := _rating_number(name, reader.get(name))) is not None]
    if not values:
        return None
    # The median of the 0/1 indicators, with a tie (median 0.5) counted as absent.
    chosen = sum(1 for number in values if number == code)
    return PRESENT if chosen * 2 > len(values) else ABSENT


def _margin_value(lobulation: float | None, spiculation: float | None) -> str | None:
    margins = []
    if lobulation is not None and lobulation >= 3:
        margins.append("lobulated")
    if spiculation is not None and spiculation >= 3:
        margins.append("spiculated")
    # Table A2 maps only lobulation and spiculation. A nodule with neither is not
    # recorded as 'smooth' because LIDC has no smooth-margin rating, so it stays missing.
    return MULTI_VALUE_SEPARATOR.join(margins) if margins else None


def _consistency_value(texture: float | None) -> str | None:
    if texture is None:
        return None
    if texture > 4:
        return "solid"
    if texture >= 2:
        return "part-solid"
    return "pure ground glass"


def harmonise_reader_ratings(readers: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Map the LIDC ratings of one nodule, by one or several readers, onto NLST features.

    Each reader is a mapping with some of the keys `RATING_NAMES` (LIDC integer codes;
    missing keys or None are unknown). Ordinal ratings take the median over the readers
    who gave them, and the Table A2 thresholds apply to that median, which may be a half
    value with an even number of readers (sphericity 3.5 -> round). The nominal ratings
    become present when more than half of the readers chose the code (internal structure
    air, calcification non-central). Table A2 rules:
    internal structure air -> cyst-like spaces present, else absent;
    calcification non-central -> eccentric calcification present, else absent;
    sphericity > 3 -> round, else ovoid; margin >= 3 -> well marginated, else poorly;
    lobulation >= 3 -> lobulated margin; spiculation >= 3 -> spiculated margin;
    texture > 4 -> solid, 2 to 4 -> part-solid, < 2 -> pure ground glass.
    Returns {feature name: canonical value or None} for the mapped features only.
    """
    if not readers:
        raise InputError("No LIDC reader ratings given; pass at least one reader's ratings.")
    unknown = sorted({key for reader in readers for key in reader} - set(RATING_NAMES))
    if unknown:
        raise InputError(f"Unknown LIDC rating name(s) {', '.join(unknown)}; use {', '.join(RATING_NAMES)}.")

    sphericity = _median_over_readers(readers, "sphericity")
    margin = _median_over_readers(readers, "margin")
    lobulation = _median_over_readers(readers, "lobulation")
    spiculation = _median_over_readers(readers, "spiculation")
    texture = _median_over_readers(readers, "texture")

    shape = None
    if sphericity is not None:
        shape = "round" if sphericity > 3 else "ovoid"

    conspicuity = None
    if margin is not None:
        conspicuity = "well marginated" if margin >= 3 else "poorly marginated"

    return {
        "cyst_like_spaces": _majority_indicator(readers, "internal_structure", INTERNAL_STRUCTURE_AIR),
        "eccentric_calcification": _majority_indicator(readers, "calcification", CALCIFICATION_NON_CENTRAL),
        "shape": shape,
        "margin_conspicuity": conspicuity,
        "margin": _margin_value(lobulation, spiculation),
        "consistency": _consistency_value(texture),
    }


def harmonise_lidc_ratings(ratings: Mapping[str, Any]) -> dict[str, Any]:
    """Map one set of LIDC ratings (one reader, or ratings already aggregated) onto NLST features."""
    return harmonise_reader_ratings([ratings])


def lidc_malignancy_label(rating: float | None) -> int | None:
    """Return 1 for a malignancy rating >= 4, 0 for <= 2, None for 3 (indeterminate) or unknown."""
    if rating is None or (isinstance(rating, float) and math.isnan(rating)):
        return None
    if rating >= 4:
        return 1
    if rating <= 2:
        return 0
    return None


def read_lidc_metadata(lidc_dir: str | Path) -> pd.DataFrame:
    """Read `metadata.csv` of an LIDC volume folder and check its columns."""
    path = Path(lidc_dir).expanduser() / "metadata.csv"
    if not path.is_file():
        raise InputError(f"LIDC metadata not found: {path}. Give the folder that contains metadata.csv and images/.")
    metadata = pd.read_csv(path)
    missing = [column for column in METADATA_REQUIRED_COLUMNS if column not in metadata.columns]
    if missing:
        raise InputError(f"The LIDC metadata {path} lacks the column(s) {', '.join(missing)}.")
    return metadata


def lidc_image_name(patient_id: str, nodule_id: Any) -> str:
    """Return the file name of a nodule volume: '<patient>_R_<nodule>.nii.gz'."""
    return f"{patient_id}_R_{nodule_id}.nii.gz"


def _semantic_row(record: Mapping[str, Any]) -> dict[str, Any]:
    # metadata.csv contains one rating per nodule, already aggregated over readers by the
    # source's maximum-voting rule, so the per-reader median cannot be recomputed from it.
    ratings = {name: record[column] for name, column in METADATA_RATING_COLUMNS.items()}
    features: dict[str, Any] = {name: None for name in FEATURE_NAMES}
    features.update(harmonise_lidc_ratings(ratings))
    features["longest_diameter_mm"] = float(record["diameter_mm"])
    # Suspicion stays missing: it is an NLST radiologist feature, and the only LIDC
    # counterpart is the malignancy rating, which is the label itself and would leak it.
    features["suspicion"] = None
    return features


def lidc_dataset_table(
    lidc_dir: str | Path,
    keep_indeterminate: bool = False,
    relative_to: str | Path | None = None,
) -> pd.DataFrame:
    """Build the data set table of an LIDC volume folder (metadata.csv and images/).

    Returns the published columns `pid, nodule_id, image_path, coordX, coordY, coordZ,
    malignant` (coordinates in LPS mm, from metadata.csv) followed by the semantic feature
    columns. `malignant` follows the LIDC rule (rating >= 4 -> 1, <= 2 -> 0); nodules rated
    3 are left out unless `keep_indeterminate`, which keeps them with a missing label.
    `image_path` is absolute, or relative to `relative_to` when given. Raises InputError
    when an image file is missing.
    """
    lidc_dir = Path(lidc_dir).expanduser().resolve()
    metadata = read_lidc_metadata(lidc_dir)

    rows: list[dict[str, Any]] = []
    missing_images: list[Path] = []
    for record in metadata.to_dict(orient="records"):
        label = lidc_malignancy_label(float(record["Malignancy_value"]))
        if label is None and not keep_indeterminate:
            continue
        image = lidc_dir / "images" / lidc_image_name(record["patient_id"], record["nodule_id"])
        if not image.is_file():
            missing_images.append(image)
        image_path = str(image)
        if relative_to is not None:
            image_path = os.path.relpath(image, Path(relative_to).expanduser().resolve())
        rows.append(
            {
                "pid": str(record["patient_id"]),
                "nodule_id": str(record["nodule_id"]),
                "image_path": image_path,
                "coordX": float(record["coordX"]),
                "coordY": float(record["coordY"]),
                "coordZ": float(record["coordZ"]),
                "malignant": label,
                **_semantic_row(record),
            }
        )

    if missing_images:
        listed = ", ".join(str(path) for path in missing_images[:5])
        raise InputError(f"{len(missing_images)} LIDC image file(s) listed in metadata.csv are missing, for example {listed}.")

    table = pd.DataFrame(rows, columns=["pid", "nodule_id", "image_path", "coordX", "coordY", "coordZ", "malignant", *FEATURE_NAMES])
    table["malignant"] = table["malignant"].astype("Int64")
    logger.info(
        "LIDC table from %s: %d nodules (%d malignant, %d benign, %d indeterminate).",
        lidc_dir,
        len(table),
        int((table["malignant"] == 1).sum()),
        int((table["malignant"] == 0).sum()),
        int(table["malignant"].isna().sum()),
    )
    return table

