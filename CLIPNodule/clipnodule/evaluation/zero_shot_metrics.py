"""AUROC of zero-shot semantic-feature probabilities against radiologist labels.

A prediction column `zeroshot_<feature>_<value>` contains the softmax probability of one
value. Binary features (two value columns) get the standard AUROC of the positive value.
Features with more values get the one-vs-rest AUROC per value, averaged with weights equal
to each value's support as in sklearn's roc_auc_score(multi_class="ovr",
average="weighted"). Cells listing several values separated by ";" (margin) are
multi-label. No torch, Qt or Slicer imports.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from clipnodule.errors import InputError

logger = logging.getLogger(__name__)

ZERO_SHOT_PREFIX = "zeroshot_"
MISSING_VALUES = frozenset({"", "nan", "na", "n/a", "none", "missing"})

# For a binary feature, the value whose probability is scored as positive.
POSITIVE_VALUES = ("present", "yes", "true", "1")

VALUE_SEPARATOR = ";"


@dataclass
class ZeroShotFeatureResult:
    """Zero-shot AUROC of one semantic feature with the label distribution behind it."""

    feature: str
    kind: str
    auroc: float | None
    n: int
    class_percent: dict[str, float] = field(default_factory=dict)
    note: str = ""

    def as_dict(self) -> dict[str, object]:
        return {"feature": self.feature, "kind": self.kind, "auroc": self.auroc, "n": self.n,
                "class_percent": self.class_percent, "note": self.note}


def normalize_value_name(value: object) -> str:
    """Return a label value as a column suffix: lower case, runs of other characters become '_'."""
    return re.sub(r"[^a-z0-9]+", "_", str(value).strip().lower()).strip("_")


def _compact_name(name: str) -> str:
    return "".join(character for character in name.lower() if character.isalnum())


def feature_value_columns(columns: list[str], feature: str, features: list[str]) -> dict[str, str]:
    """Return {value: column} of the `zeroshot_<feature>_<value>` columns of `feature`.

    A column that also starts with the prefix of a longer feature name in `features`
    belongs to that feature (`zeroshot_margin_conspicuity_*` is not a margin value).
    """
    prefix = f"{ZERO_SHOT_PREFIX}{normalize_value_name(feature)}_"
    longer_prefixes = [f"{ZERO_SHOT_PREFIX}{normalize_value_name(other)}_" for other in features
                       if other != feature]
    longer_prefixes = [other for other in longer_prefixes if other.startswith(prefix) and other != prefix]

    # Appending "_" also matches the longer feature's own most-likely column
    # (`zeroshot_margin_conspicuity`, which contains text, not a probability).
    value_columns: dict[str, str] = {}
    for column in columns:
        if column.startswith(prefix) and not any(f"{column}_".startswith(other) for other in longer_prefixes):
            value_columns[column[len(prefix):]] = column
    return value_columns


def _label_sets(cells: pd.Series) -> list[set[str] | None]:
    """Return each label cell as a set of normalised values, or None when missing."""
    label_sets: list[set[str] | None] = []
    for cell in cells:
        if cell is None or (isinstance(cell, float) and np.isnan(cell)):
            label_sets.append(None)
            continue
        if isinstance(cell, (float, np.floating)) and float(cell).is_integer():
            cell = int(cell)
        values = {normalize_value_name(part) for part in str(cell).split(VALUE_SEPARATOR)}
        values = {value for value in values if value not in MISSING_VALUES}
        label_sets.append(values or None)
    return label_sets


def weighted_ovr_auroc(indicators: np.ndarray, probabilities: np.ndarray) -> float | None:
    """Return the support-weighted mean of per-class AUROCs (indicators and probabilities: rows x classes).

    Classes with no positive or no negative row have no AUROC and weight 0. Returns None
    when no class has both.
    """
    aurocs: list[float] = []
    supports: list[float] = []
    for column in range(indicators.shape[1]):
        support = int(indicators[:, column].sum())
        if 0 < support < indicators.shape[0]:
            aurocs.append(float(roc_auc_score(indicators[:, column], probabilities[:, column])))
            supports.append(support)
    if not aurocs:
        return None
    return float(np.average(aurocs, weights=supports))


def evaluate_feature(feature: str, label_cells: pd.Series, predictions: pd.DataFrame,
                     value_columns: dict[str, str]) -> ZeroShotFeatureResult:
    """Return the zero-shot AUROC and class distribution of one feature on joined rows."""
    label_sets = _label_sets(label_cells)
    n_rows = len(label_sets)
    known = [index for index, values in enumerate(label_sets) if values is not None]

    values_in_order = list(value_columns)
    unknown_values = sorted({value for index in known for value in label_sets[index]} - set(values_in_order))
    if unknown_values:
        raise InputError(f"semantic feature '{feature}' has the values {unknown_values} without prediction "
                         f"columns; expected columns such as '{ZERO_SHOT_PREFIX}{normalize_value_name(feature)}_"
                         f"{unknown_values[0]}' (available values: {values_in_order})")

    class_percent = {value: 100.0 * sum(value in label_sets[index] for index in known) / n_rows
                     for value in values_in_order}
    if len(known) < n_rows:
        class_percent["n/a"] = 100.0 * (n_rows - len(known)) / n_rows

    multi_label = any(len(label_sets[index]) > 1 for index in known)
    kind = "binary" if len(values_in_order) == 2 and not multi_label else (
        "multi-label" if multi_label else "multi-class")

    indicators = np.array([[value in label_sets[index] for value in values_in_order] for index in known],
                          dtype=np.int64).reshape(len(known), len(values_in_order))
    probabilities = predictions.iloc[known][[value_columns[value] for value in values_in_order]]
    probabilities = probabilities.to_numpy(dtype=np.float64)

    if kind == "binary":
        positive = next((value for value in POSITIVE_VALUES if value in values_in_order), sorted(values_in_order)[1])
        column = values_in_order.index(positive)
        if 0 < indicators[:, column].sum() < len(known):
            auroc = float(roc_auc_score(indicators[:, column], probabilities[:, column]))
            return ZeroShotFeatureResult(feature, kind, auroc, len(known), class_percent,
                                         f"positive value: {positive}")
        return ZeroShotFeatureResult(feature, kind, None, len(known), class_percent,
                                     "AUROC undefined: only one value occurs in the labels")

    auroc = weighted_ovr_auroc(indicators, probabilities)
    note = "" if auroc is not None else "AUROC undefined: no value has both positive and negative rows"
    return ZeroShotFeatureResult(feature, kind, auroc, len(known), class_percent, note)


def evaluate_zero_shot(semantic_labels: pd.DataFrame, predictions: pd.DataFrame,
                       source: str = "semantic labels") -> list[ZeroShotFeatureResult]:
    """Return the zero-shot AUROC of every feature column of `semantic_labels` with prediction columns.

    Rows are joined on `pid` and `nodule_id` (on `pid` alone when the semantic labels
    have no `nodule_id`). Feature columns without `zeroshot_<feature>_*` predictions are
    skipped with a log message.
    """
    keys = ["pid", "nodule_id"] if "nodule_id" in semantic_labels.columns else ["pid"]
    if "nodule_id" in keys and "nodule_id" not in predictions.columns:
        raise InputError("zero-shot evaluation by nodule needs a 'nodule_id' column in the predictions; "
                         "add it or remove 'nodule_id' from the semantic labels")

    features = [column for column in semantic_labels.columns if column not in ("pid", "nodule_id")]
    prediction_columns = [column for column in predictions.columns if column.startswith(ZERO_SHOT_PREFIX)]
    if not prediction_columns:
        raise InputError(f"the predictions have no '{ZERO_SHOT_PREFIX}<feature>_<value>' columns to compare with "
                         f"{source}; rerun the prediction with the zero-shot report enabled")

    joined = predictions[keys + prediction_columns].merge(semantic_labels, on=keys, how="inner",
                                                         suffixes=("", "_label"))
    if joined.empty:
        raise InputError(f"no prediction rows match the rows of {source} on {' and '.join(keys)}; "
                         "check that both files use the same ids")

    # Label columns and prompt features may spell a name differently ("airway_cutoff"
    # against "airway cut-off"). The predictions' most-likely text columns name each
    # prompt feature, so names are matched with separators removed.
    prompt_features = {
        _compact_name(column[len(ZERO_SHOT_PREFIX):]): column[len(ZERO_SHOT_PREFIX):]
        for column in prediction_columns
        if not pd.api.types.is_numeric_dtype(predictions[column])
    }
    matched = {feature: prompt_features.get(_compact_name(feature), feature) for feature in features}

    results: list[ZeroShotFeatureResult] = []
    for feature in features:
        value_columns = feature_value_columns(prediction_columns, matched[feature], list(matched.values()))
        if len(value_columns) < 2:
            logger.info("Skipping semantic feature '%s': no zero-shot prediction columns for it", feature)
            continue
        label_column = feature if feature not in prediction_columns else f"{feature}_label"
        results.append(evaluate_feature(feature, joined[label_column], joined, value_columns))
    return results
