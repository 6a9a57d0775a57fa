"""Read prediction, label and semantic-label CSV tables and join them for evaluation.

Plain pandas and numpy only: no torch, Qt or Slicer imports.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from clipnodule.errors import InputError

logger = logging.getLogger(__name__)

LABEL_COLUMN = "malignant"

# Label cells with these values (case-insensitive, after stripping spaces) mean "no
# label": such rows are excluded and counted. Any other value except 0 and 1 is an error.
MISSING_LABEL_VALUES = frozenset({"", "nan", "na", "n/a", "none", "unknown", "indeterminate"})

KEY_DTYPES = {"pid": str, "nodule_id": str}


@dataclass
class LabelTable:
    """Malignancy labels: one row per nodule (with `nodule_id`) or per patient."""

    frame: pd.DataFrame
    has_nodule_id: bool
    excluded_rows: int
    source: str


@dataclass
class EvaluationTable:
    """Scores joined with labels: one row per evaluation unit (patient or nodule).

    `frame` has the columns `pid`, `malignant` (0/1), the score columns and, at nodule
    level, `nodule_id`. Bootstrap resampling draws whole patients, so `frame.pid`
    identifies the resampling cluster at both levels.
    """

    frame: pd.DataFrame
    level: str
    score_columns: list[str]
    source: str
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def labels(self) -> np.ndarray:
        return self.frame[LABEL_COLUMN].to_numpy(dtype=np.int64)

    def scores(self, column: str) -> np.ndarray:
        return self.frame[column].to_numpy(dtype=np.float64)

    def patient_codes(self) -> np.ndarray:
        """Return an integer code per row, equal for rows of the same patient."""
        codes, _ = pd.factorize(self.frame["pid"], sort=True)
        return codes.astype(np.int64)


def read_csv_table(path: str | Path, description: str) -> pd.DataFrame:
    """Read a CSV file with `pid` and `nodule_id` as strings, raising InputError on failure."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{description} file not found: {path}; pass the path of an existing CSV file")

    try:
        frame = pd.read_csv(path, dtype=KEY_DTYPES, keep_default_na=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise InputError(f"{description} file {path} is not a readable CSV table ({error}); "
                         "save it as comma-separated text with a header row") from error

    frame.columns = [str(column).strip() for column in frame.columns]
    if frame.empty:
        raise InputError(f"{description} file {path} has no data rows; add at least one row below the header")
    return frame


def check_ids(frame: pd.DataFrame, path: str | Path) -> None:
    """Strip spaces from `pid` (and `nodule_id`) and raise InputError when one is empty."""
    for column in ("pid", "nodule_id"):
        if column not in frame.columns:
            continue
        frame[column] = frame[column].str.strip()
        empty = frame[column].isna() | (frame[column] == "")
        if empty.any():
            # The frame keeps the index of the file's data rows, and line 1 is the header.
            row = int(frame.index[empty.to_numpy()][0]) + 2
            raise InputError(f"column '{column}' in {Path(path).name} is empty in {int(empty.sum())} rows "
                             f"(first at line {row}); fill in the id or remove those rows")


def require_columns(frame: pd.DataFrame, columns: list[str], path: str | Path, hint: str = "") -> None:
    """Raise InputError naming the first of `columns` that `frame` lacks."""
    for column in columns:
        if column not in frame.columns:
            available = ", ".join(frame.columns[:12])
            raise InputError(f"missing column '{column}' in {Path(path).name} (columns found: {available}); "
                             f"add the column{hint}")


def find_fold_columns(columns: list[str]) -> list[str]:
    """Return the per-fold score columns: `calibrated_<k>` if present, else `raw_<k>`, by k."""
    for prefix in ("calibrated", "raw"):
        pattern = re.compile(rf"^{prefix}_(\d+)$")
        matches = [(int(match.group(1)), column) for column in columns if (match := pattern.match(column))]
        if matches:
            return [column for _, column in sorted(matches)]
    return []


def check_scores(frame: pd.DataFrame, columns: list[str], path: str | Path) -> None:
    """Raise InputError when a score column is not numeric or contains NaN."""
    for column in columns:
        values = pd.to_numeric(frame[column], errors="coerce")
        bad_text = values.isna() & frame[column].notna()
        if bad_text.any():
            example = frame.loc[bad_text, column].iloc[0]
            raise InputError(f"column '{column}' in {Path(path).name} contains the non-numeric value "
                             f"{example!r}; scores must be numbers")

        missing = values.isna()
        if missing.any():
            patients = ", ".join(frame.loc[missing, "pid"].astype(str).head(5))
            raise InputError(f"column '{column}' in {Path(path).name} contains {int(missing.sum())} NaN "
                             f"(empty) scores, for example pid {patients}; rerun the prediction for "
                             "those rows or remove them")
        frame[column] = values.astype(np.float64)


def load_predictions(path: str | Path, score_column: str,
                     fold_columns: list[str] | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Read a prediction CSV, check its key and score columns and return it with its fold columns.

    Without `fold_columns`, the fold columns are the file's `calibrated_<k>` columns, else
    its `raw_<k>` columns.
    """
    frame = read_csv_table(path, "predictions")
    if fold_columns is None:
        fold_columns = find_fold_columns(frame.columns.tolist())
    score_columns = list(dict.fromkeys([score_column, *fold_columns]))
    require_columns(frame, ["pid"], path, " with the patient id of each row")
    require_columns(frame, score_columns, path, " or choose another with --score-column / --fold-columns")
    check_ids(frame, path)

    if "nodule_id" in frame.columns:
        duplicated = frame.duplicated(["pid", "nodule_id"])
        if duplicated.any():
            first = frame.loc[duplicated].iloc[0]
            raise InputError(f"{Path(path).name} has several rows for pid {first['pid']} nodule_id "
                             f"{first['nodule_id']}; keep one prediction per nodule")

    check_scores(frame, score_columns, path)
    return frame, fold_columns


def _parse_label(value: object) -> float:
    """Return 0.0 or 1.0 for a valid label, NaN for a missing one and -1.0 for an invalid one."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return np.nan
    text = str(value).strip().lower()
    if text in MISSING_LABEL_VALUES:
        return np.nan
    try:
        number = float(text)
    except ValueError:
        return -1.0
    return number if number in (0.0, 1.0) else -1.0


def load_labels(path: str | Path) -> LabelTable:
    """Read a label CSV (`pid`, optional `nodule_id`, `malignant` 0/1) and drop missing labels."""
    frame = read_csv_table(path, "labels")
    require_columns(frame, ["pid", LABEL_COLUMN], path, " with 1 for malignant and 0 for benign")

    parsed = frame[LABEL_COLUMN].map(_parse_label).astype(np.float64)
    invalid = parsed == -1.0
    if invalid.any():
        examples = ", ".join(repr(str(value)) for value in frame.loc[invalid, LABEL_COLUMN].unique()[:5])
        raise InputError(f"column '{LABEL_COLUMN}' in {Path(path).name} must be 0 or 1, found {examples}; "
                         "write 1 for malignant, 0 for benign, and leave the cell empty (or write "
                         "'indeterminate') to exclude a row")

    frame[LABEL_COLUMN] = parsed
    missing = frame[LABEL_COLUMN].isna()
    excluded = int(missing.sum())
    if excluded:
        logger.info("Excluded %d rows of %s with missing or indeterminate labels", excluded, path)
    frame = frame.loc[~missing].copy()
    frame[LABEL_COLUMN] = frame[LABEL_COLUMN].astype(np.int64)
    check_ids(frame, path)

    has_nodule_id = "nodule_id" in frame.columns
    if frame.empty:
        raise InputError(f"{Path(path).name} has no rows with a 0/1 label in column '{LABEL_COLUMN}'")
    return LabelTable(frame=frame, has_nodule_id=has_nodule_id, excluded_rows=excluded, source=str(path))


def join_nodules(predictions: pd.DataFrame, labels: LabelTable, score_columns: list[str],
                 source: str) -> EvaluationTable:
    """Join nodule predictions with nodule labels on (`pid`, `nodule_id`)."""
    if not labels.has_nodule_id:
        raise InputError(f"nodule-level evaluation needs a 'nodule_id' column in {Path(labels.source).name}; "
                         "add it or use --level patient")
    require_columns(predictions, ["nodule_id"], source, " or use --level patient")

    duplicated = labels.frame.duplicated(["pid", "nodule_id"])
    if duplicated.any():
        first = labels.frame.loc[duplicated].iloc[0]
        raise InputError(f"{Path(labels.source).name} has several labels for pid {first['pid']} nodule_id "
                         f"{first['nodule_id']}; keep one label per nodule")

    label_frame = labels.frame[["pid", "nodule_id", LABEL_COLUMN]]
    merged = predictions.merge(label_frame, on=["pid", "nodule_id"], how="left", indicator=True)
    unlabelled = int((merged["_merge"] == "left_only").sum())
    merged = merged.loc[merged["_merge"] == "both"].drop(columns="_merge")

    keys = set(zip(predictions["pid"], predictions["nodule_id"]))
    unpredicted = sum(1 for key in zip(label_frame["pid"], label_frame["nodule_id"]) if key not in keys)

    frame = merged[["pid", "nodule_id", LABEL_COLUMN, *score_columns]].reset_index(drop=True)
    frame[LABEL_COLUMN] = frame[LABEL_COLUMN].astype(np.int64)
    counts = {"unlabelled_predictions": unlabelled, "labels_without_prediction": unpredicted,
              "excluded_label_rows": labels.excluded_rows}
    return _finish(frame, "nodule", score_columns, source, labels, counts)


def aggregate_patients(frame: pd.DataFrame, score_columns: list[str]) -> pd.DataFrame:
    """Reduce nodule rows to patient rows: the maximum of each score and of `malignant`."""
    aggregations = {column: "max" for column in score_columns}
    if LABEL_COLUMN in frame.columns:
        aggregations[LABEL_COLUMN] = "max"
    return frame.groupby("pid", sort=True).agg(aggregations).reset_index()


def join_patients(predictions: pd.DataFrame, labels: LabelTable, score_columns: list[str],
                  source: str) -> EvaluationTable:
    """Join patient-level scores and labels on `pid`.

    A patient's score is the maximum over all of its predicted nodules, and its label is
    the maximum over all of its labelled rows, so a patient is malignant when any of its
    nodules is.
    """
    patient_scores = aggregate_patients(predictions[["pid", *score_columns]], score_columns)
    patient_labels = aggregate_patients(labels.frame[["pid", LABEL_COLUMN]], [])

    merged = patient_scores.merge(patient_labels, on="pid", how="left", indicator=True)
    unlabelled = int((merged["_merge"] == "left_only").sum())
    merged = merged.loc[merged["_merge"] == "both"].drop(columns="_merge")
    unpredicted = int((~patient_labels["pid"].isin(patient_scores["pid"])).sum())

    # NOTE: a patient whose labelled nodules are all benign counts as benign even when
    # another of its nodules has a missing label.
    frame = merged[["pid", LABEL_COLUMN, *score_columns]].reset_index(drop=True)
    frame[LABEL_COLUMN] = frame[LABEL_COLUMN].astype(np.int64)
    counts = {"unlabelled_predictions": unlabelled, "labels_without_prediction": unpredicted,
              "excluded_label_rows": labels.excluded_rows}
    return _finish(frame, "patient", score_columns, source, labels, counts)


def _finish(frame: pd.DataFrame, level: str, score_columns: list[str], source: str, labels: LabelTable,
            counts: dict[str, int]) -> EvaluationTable:
    unit = "patients" if level == "patient" else "nodules"
    if frame.empty:
        raise InputError(f"no {unit} in {Path(source).name} have a label in {Path(labels.source).name}; "
                         "check that both files use the same pid (and nodule_id) values")
    if counts["unlabelled_predictions"]:
        logger.warning("%d %s in %s have no label and are excluded", counts["unlabelled_predictions"], unit,
                       source)
    if frame[LABEL_COLUMN].nunique() < 2:
        only = int(frame[LABEL_COLUMN].iloc[0])
        raise InputError(f"all {len(frame)} labelled {unit} of {Path(source).name} have malignant={only}; "
                         "AUROC and AUPRC need both benign and malignant cases")

    counts = {**counts, "evaluated": len(frame), "positives": int(frame[LABEL_COLUMN].sum())}
    return EvaluationTable(frame=frame, level=level, score_columns=score_columns, source=source, counts=counts)


def join_labels(predictions: pd.DataFrame, labels: LabelTable, score_columns: list[str], level: str,
                source: str) -> EvaluationTable:
    """Join predictions with labels at `level` ('patient' or 'nodule')."""
    if level == "patient":
        return join_patients(predictions, labels, score_columns, source)
    if level == "nodule":
        return join_nodules(predictions, labels, score_columns, source)
    raise InputError(f"level {level!r} is not supported; use 'patient' or 'nodule'")


def load_semantic_labels(path: str | Path) -> pd.DataFrame:
    """Read a semantic-label CSV: `pid`, optional `nodule_id` and one column per feature."""
    frame = read_csv_table(path, "semantic labels")
    require_columns(frame, ["pid"], path, " with the patient id of each row")
    check_ids(frame, path)
    if len(frame.columns) <= (2 if "nodule_id" in frame.columns else 1):
        raise InputError(f"{Path(path).name} has no feature columns besides pid and nodule_id; "
                         "add one column per semantic feature (for example 'margin')")
    return frame
