"""Radiologist semantic features of a lung nodule (the NLST feature set) as data.

Defines each feature's table column, report name, kind and allowed values, normalises
raw table values and computes the rarity sampling weights. Depends on numpy and pandas
only (no torch, Qt or Slicer).

The feature set is Table A1 of Zhuang et al., J Biomed Inform 2025: UCLA radiologists'
annotations of 1,261 NLST nodules. Missing values are common (airway cut-off is 72 %
missing) and are kept missing, never imputed.
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pandas as pd

from ..errors import InputError

MULTI_VALUE_SEPARATOR = ";"
"""Separator between the several values of a multi-valued feature (margin) in a table cell."""

PRESENT = "present"
ABSENT = "absent"

DIAMETER_BINS_MM = (10.0, 20.0, 30.0, 40.0, 50.0)
"""Bin edges (mm) that turn diameters into classes for the rarity weights (Table A1 bins)."""

_MISSING_TOKENS = frozenset({"", "n/a", "na", "nan", "none", "null"})


class FeatureKind(str, enum.Enum):
    """Value type of a feature, which decides how its cells are stored and validated."""

    CATEGORICAL = "categorical"
    MULTI = "multi"
    BINARY = "binary"
    NUMERIC = "numeric"


class FeatureGroup(str, enum.Enum):
    """Section of Table A1 that a feature belongs to. The report impression groups features by it."""

    GENERAL = "general"
    INTERNAL = "internal"
    EXTERNAL = "external"
    ASSESSMENT = "assessment"


@dataclass(frozen=True)
class FeatureSpec:
    """One semantic feature: table column, report name, kind, allowed values and aliases."""

    name: str
    display_name: str
    kind: FeatureKind
    group: FeatureGroup
    values: tuple[str, ...] = ()
    aliases: tuple[tuple[str, str], ...] = ()

    def alias_map(self) -> dict[str, str]:
        """Map from accepted spellings (lower case) to canonical values."""
        mapping = {value: value for value in self.values}
        mapping.update(dict(self.aliases))
        return mapping


_BINARY_VALUES = (PRESENT, ABSENT)
_BINARY_ALIASES = (
    ("yes", PRESENT),
    ("no", ABSENT),
    ("true", PRESENT),
    ("false", ABSENT),
    ("1", PRESENT),
    ("0", ABSENT),
    ("1.0", PRESENT),
    ("0.0", ABSENT),
)


def _binary(name: str, display_name: str, group: FeatureGroup, *extra_aliases: tuple[str, str]) -> FeatureSpec:
    return FeatureSpec(
        name,
        display_name,
        FeatureKind.BINARY,
        group,
        _BINARY_VALUES,
        _BINARY_ALIASES + tuple(extra_aliases),
    )


FEATURES: list[FeatureSpec] = [
    FeatureSpec("longest_diameter_mm", "Longest axial diameter (mm)", FeatureKind.NUMERIC, FeatureGroup.GENERAL),
    FeatureSpec("short_diameter_mm", "Short diameter (mm)", FeatureKind.NUMERIC, FeatureGroup.GENERAL),
    FeatureSpec(
        "margin",
        "Nodule margins",
        FeatureKind.MULTI,
        FeatureGroup.GENERAL,
        ("smooth", "lobulated", "spiculated", "ill-defined", "notched"),
        (("ill defined", "ill-defined"), ("illdefined", "ill-defined")),
    ),
    FeatureSpec(
        "consistency",
        "Nodule consistency",
        FeatureKind.CATEGORICAL,
        FeatureGroup.GENERAL,
        ("solid", "part-solid", "pure ground glass", "semi-consolidation", "peri-cystic"),
        (
            ("part solid", "part-solid"),
            ("partsolid", "part-solid"),
            ("pure ground-glass", "pure ground glass"),
            ("ground glass", "pure ground glass"),
            ("ground-glass", "pure ground glass"),
            ("ggo", "pure ground glass"),
            ("semiconsolidation", "semi-consolidation"),
            ("semi consolidation", "semi-consolidation"),
            ("pericystic", "peri-cystic"),
            ("peri cystic", "peri-cystic"),
        ),
    ),
    FeatureSpec(
        "shape",
        "Nodule shape",
        FeatureKind.CATEGORICAL,
        FeatureGroup.GENERAL,
        ("irregular", "ovoid", "polygonal", "round"),
    ),
    FeatureSpec(
        "margin_conspicuity",
        "Nodule margin conspicuity",
        FeatureKind.CATEGORICAL,
        FeatureGroup.GENERAL,
        ("well marginated", "poorly marginated"),
        (
            ("well margined", "well marginated"),
            ("well-marginated", "well marginated"),
            ("well-margined", "well marginated"),
            ("poorly margined", "poorly marginated"),
            ("poorly-marginated", "poorly marginated"),
            ("poorly-margined", "poorly marginated"),
        ),
    ),
    _binary("reticulation", "Nodule reticulation", FeatureGroup.INTERNAL),
    _binary("cyst_like_spaces", "Cyst-like spaces", FeatureGroup.INTERNAL),
    _binary("necrosis", "Necrosis", FeatureGroup.INTERNAL),
    _binary("eccentric_calcification", "Eccentric calcification", FeatureGroup.INTERNAL),
    _binary("cavitation", "Cavitation", FeatureGroup.INTERNAL),
    _binary("intranodular_bronchiectasis", "Intra-nodular bronchiectasis", FeatureGroup.INTERNAL),
    _binary("airway_cutoff", "Airway cutoff", FeatureGroup.INTERNAL),
    _binary("vascular_convergence", "Vascular convergence", FeatureGroup.EXTERNAL),
    # Table A1 counts mild and obvious dimpling as present pleural retraction.
    _binary(
        "pleural_retraction",
        "Pleural retraction",
        FeatureGroup.EXTERNAL,
        ("mild dimpling", PRESENT),
        ("obvious dimpling", PRESENT),
    ),
    _binary("pleural_attachment", "Pleural attachment", FeatureGroup.EXTERNAL),
    _binary("paracicatricial_emphysema", "Paracicatricial emphysema", FeatureGroup.EXTERNAL),
    _binary("septal_stretching", "Septal stretching", FeatureGroup.EXTERNAL),
    FeatureSpec(
        "suspicion",
        "Level of suspicion for lung cancer",
        FeatureKind.CATEGORICAL,
        FeatureGroup.ASSESSMENT,
        ("very low", "moderately low", "intermediate", "moderately high", "high"),
    ),
]

FEATURES_BY_NAME: dict[str, FeatureSpec] = {spec.name: spec for spec in FEATURES}
FEATURE_NAMES: tuple[str, ...] = tuple(FEATURES_BY_NAME)


def is_missing(value: Any) -> bool:
    """Return True for None, NaN, pandas NA and empty or 'N/A'-like strings."""
    if value is None or value is pd.NA:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    if isinstance(value, str) and value.strip().lower() in _MISSING_TOKENS:
        return True
    return False


def _canonical_text(value: Any) -> str:
    text = str(value).strip().lower().replace("_", " ")
    return re.sub(r"\s+", " ", text)


def _invalid_value_error(spec: FeatureSpec, value: Any) -> InputError:
    allowed = ", ".join(repr(item) for item in spec.values)
    hint = f" (several may apply, separated by '{MULTI_VALUE_SEPARATOR}')" if spec.kind is FeatureKind.MULTI else ""
    return InputError(
        f"Invalid value {value!r} for semantic feature {spec.name!r}; "
        f"use one of {allowed}{hint}, or leave the cell empty when unknown."
    )


def _normalize_numeric(spec: FeatureSpec, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(
            f"Invalid value {value!r} for semantic feature {spec.name!r}; "
            "give a diameter in millimetres (a positive number), or leave the cell empty when unknown."
        ) from None
    if not math.isfinite(number) or number <= 0:
        raise InputError(
            f"Invalid value {value!r} for semantic feature {spec.name!r}; "
            "a diameter must be a positive, finite number of millimetres."
        )
    return number


def _normalize_multi(spec: FeatureSpec, value: Any) -> str | None:
    accepted = spec.alias_map()
    chosen: set[str] = set()
    for part in re.split(r"[;,]", str(value)):
        if is_missing(part):
            continue
        canonical = accepted.get(_canonical_text(part))
        if canonical is None:
            raise _invalid_value_error(spec, part.strip())
        chosen.add(canonical)
    if not chosen:
        return None
    ordered = [item for item in spec.values if item in chosen]
    return MULTI_VALUE_SEPARATOR.join(ordered)


def normalize_feature_value(spec: FeatureSpec, value: Any) -> str | float | None:
    """Return the canonical form of one raw cell value, None when missing.

    Categorical and binary values become lower-case canonical strings ('yes' -> 'present').
    Multi-valued cells ('Spiculated, lobulated') become the allowed values in the order of
    `spec.values`, joined by ';'. Numeric values become positive floats. Raise InputError
    naming the feature, the value and the allowed values when a value is invalid.
    """
    if is_missing(value):
        return None
    if spec.kind is FeatureKind.NUMERIC:
        return _normalize_numeric(spec, value)
    if spec.kind is FeatureKind.MULTI:
        return _normalize_multi(spec, value)
    canonical = spec.alias_map().get(_canonical_text(value))
    if canonical is None:
        raise _invalid_value_error(spec, value)
    return canonical


def split_multi_value(value: str | None) -> list[str]:
    """Return the values stored in a multi-valued cell ('lobulated;spiculated')."""
    if value is None or is_missing(value):
        return []
    return [part for part in str(value).split(MULTI_VALUE_SEPARATOR) if part]


def feature_columns(table: pd.DataFrame) -> list[str]:
    """Return the semantic feature columns present in `table`, in FEATURES order."""
    return [spec.name for spec in FEATURES if spec.name in table.columns]


def normalize_feature_columns(
    table: pd.DataFrame,
    describe_row: Callable[[int], str] | None = None,
    max_errors: int = 10,
) -> pd.DataFrame:
    """Return a copy of `table` with every semantic feature column in canonical form.

    Missing cells become None (numeric columns: NaN). `describe_row(i)` turns the 0-based
    position of a row into the text used in error messages. All invalid cells are
    collected and the first `max_errors` are reported in one InputError. A short diameter
    larger than the longest diameter is also an error.
    """
    describe = describe_row or (lambda position: f"row {position + 1}")
    normalized = table.copy()
    problems: list[str] = []

    for name in feature_columns(table):
        spec = FEATURES_BY_NAME[name]
        cells: list[Any] = []
        for position, raw in enumerate(table[name].tolist()):
            try:
                cells.append(normalize_feature_value(spec, raw))
            except InputError as error:
                problems.append(f"{describe(position)}, column {name!r}: {error}")
                cells.append(None)
        if spec.kind is FeatureKind.NUMERIC:
            normalized[name] = pd.Series([np.nan if cell is None else cell for cell in cells], index=table.index, dtype="float64")
        else:
            normalized[name] = pd.Series(cells, index=table.index, dtype="object")

    if "longest_diameter_mm" in normalized.columns and "short_diameter_mm" in normalized.columns:
        longest = normalized["longest_diameter_mm"].to_numpy(dtype=float)
        short = normalized["short_diameter_mm"].to_numpy(dtype=float)
        for position in np.flatnonzero(short > longest):
            problems.append(
                f"{describe(int(position))}, column 'short_diameter_mm': the short diameter "
                f"{short[position]:g} mm is larger than the longest diameter {longest[position]:g} mm; "
                "check whether the two columns are swapped."
            )

    if problems:
        shown = "\n".join(f"  - {problem}" for problem in problems[:max_errors])
        more = f"\n  ... and {len(problems) - max_errors} more" if len(problems) > max_errors else ""
        raise InputError(f"{len(problems)} invalid semantic feature value(s):\n{shown}{more}")
    return normalized


def _feature_classes(spec: FeatureSpec, column: pd.Series) -> pd.Series:
    """Return each row's class for the rarity count, None where the value is missing."""
    if spec.kind is FeatureKind.NUMERIC:
        numbers = pd.to_numeric(column, errors="coerce").to_numpy(dtype=float)
        bins = np.digitize(numbers, DIAMETER_BINS_MM)
        classes = [None if math.isnan(number) else int(bin_index) for number, bin_index in zip(numbers, bins)]
        return pd.Series(classes, index=column.index, dtype="object")
    # A multi-valued margin counts as one class per combination ('lobulated;spiculated').
    return column.map(lambda cell: normalize_feature_value(spec, cell)).astype("object")


def rarity_weights(table: pd.DataFrame, floor: float = 0.0) -> np.ndarray:
    """Return per-nodule sampling weights that favour rare semantic feature values.

    For each feature column, a nodule scores log(1 / f), where f is the frequency of its
    class among the nodules with a known value. Diameters are binned at 10, 20, 30, 40
    and 50 mm, and a margin combination counts as one class. Missing values score 0.
    The weight is the sum over features, min-max normalised to [0, 1], so the nodule with
    the rarest feature profile gets 1 and the most common one gets 0. `floor` maps the
    result to [floor, 1] instead, so that a weighted sampler can still draw the most common
    nodule. When all sums are equal (or no feature column exists) every weight is 1.
    """
    if not 0.0 <= floor <= 1.0:
        raise InputError(f"The rarity weight floor {floor!r} must lie in [0, 1].")

    scores = np.zeros(len(table), dtype=np.float64)
    for name in feature_columns(table):
        classes = _feature_classes(FEATURES_BY_NAME[name], table[name])
        known = classes.notna()
        if not known.any():
            continue
        frequencies = classes[known].map(classes[known].value_counts(normalize=True))
        scores[known.to_numpy()] += -np.log(frequencies.to_numpy(dtype=float))

    if len(scores) == 0:
        return scores
    low, high = scores.min(), scores.max()
    if math.isclose(low, high, rel_tol=0.0, abs_tol=1e-12):
        return np.ones(len(table), dtype=np.float64)
    unit = (scores - low) / (high - low)
    return floor + (1.0 - floor) * unit
