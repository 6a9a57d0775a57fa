"""Reading and validating a nodule data set table (CSV) for training, text generation and cohorts.

The layout is the published model's CSV: `pid, nodule_id, image_path, coordX, coordY,
coordZ, malignant` with LPS millimetre coordinates, plus optional semantic feature
columns. Depends on pandas only (no torch, Qt or Slicer).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pandas as pd

from ..errors import InputError
from .semantic_features import feature_columns, normalize_feature_columns

logger = logging.getLogger(__name__)

COORDINATE_COLUMNS = ("coordX", "coordY", "coordZ")
REQUIRED_COLUMNS = ("pid", "nodule_id", "image_path", *COORDINATE_COLUMNS, "malignant")
EXPECTED_HEADER = ",".join(REQUIRED_COLUMNS)

_MAX_LISTED_PROBLEMS = 10
_MAX_LISTED_MISSING_IMAGES = 5


def describe_row(position: int) -> str:
    """Name a row for error messages from its 0-based position among the data rows.

    'data row 3' counts data rows from 1; with the header in row 1, that row is
    spreadsheet row 4 (also line 4 of the file when no cell spans several lines).
    """
    return f"data row {position + 1} (spreadsheet row {position + 2})"


def _raise_problems(path: Path, problems: list[str]) -> None:
    shown = "\n".join(f"  - {problem}" for problem in problems[:_MAX_LISTED_PROBLEMS])
    more = ""
    if len(problems) > _MAX_LISTED_PROBLEMS:
        more = f"\n  ... and {len(problems) - _MAX_LISTED_PROBLEMS} more"
    raise InputError(f"Invalid data set table {path}: {len(problems)} problem(s):\n{shown}{more}")


def _read_raw_table(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise InputError(f"Data set table not found: {path}. Give the path of a CSV file with header {EXPECTED_HEADER}.")
    try:
        # Read every cell as text so that this module, not pandas, decides what is missing or invalid.
        table = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise InputError(f"Could not read the data set table {path} as CSV: {error}") from None
    table.columns = [str(column).strip() for column in table.columns]
    return table.reset_index(drop=True)


def _check_columns(path: Path, table: pd.DataFrame, require_labels: bool) -> None:
    needed = [column for column in REQUIRED_COLUMNS if require_labels or column != "malignant"]
    missing = [column for column in needed if column not in table.columns]
    if missing:
        raise InputError(
            f"The data set table {path} lacks the required column(s) {', '.join(missing)}. "
            f"Expected header: {EXPECTED_HEADER} (coordinates in LPS millimetres), optionally "
            f"followed by semantic feature columns; found: {', '.join(table.columns) or 'no columns'}."
        )
    duplicated = sorted({column for column in table.columns if list(table.columns).count(column) > 1})
    if duplicated:
        raise InputError(f"The data set table {path} has duplicate column name(s) {', '.join(duplicated)}; keep one of each.")


def _parse_identifiers(table: pd.DataFrame, problems: list[str]) -> None:
    for column in ("pid", "nodule_id"):
        table[column] = table[column].str.strip()
        for position in table.index[table[column] == ""]:
            problems.append(f"{describe_row(position)}, column {column!r}: the value is empty; every nodule needs a {column}.")

    duplicated = table.duplicated(subset=["pid", "nodule_id"], keep=False) & (table["pid"] != "")
    groups = table[duplicated].groupby(["pid", "nodule_id"], sort=False).groups
    for (pid, nodule_id), positions in groups.items():
        rows = ", ".join(str(position + 1) for position in positions)
        problems.append(
            f"data rows {rows}, columns 'pid' and 'nodule_id': the pair ({pid!r}, {nodule_id!r}) occurs more than once; "
            "each nodule must appear in one row."
        )


def _parse_coordinates(table: pd.DataFrame, problems: list[str]) -> None:
    for column in COORDINATE_COLUMNS:
        values: list[float] = []
        for position, text in enumerate(table[column].tolist()):
            try:
                number = float(text)
            except (TypeError, ValueError):
                number = math.nan
            if not math.isfinite(number):
                problems.append(
                    f"{describe_row(position)}, column {column!r}: {text!r} is not a finite number; "
                    "give the nodule centre in LPS millimetres."
                )
            values.append(number)
        table[column] = pd.Series(values, index=table.index, dtype="float64")


def _parse_labels(table: pd.DataFrame, require_labels: bool, problems: list[str]) -> None:
    if "malignant" not in table.columns:
        table["malignant"] = pd.Series(pd.NA, index=table.index, dtype="Int64")
        return

    labels: list[int | None] = []
    for position, text in enumerate(table["malignant"].tolist()):
        stripped = str(text).strip()
        if stripped == "":
            if require_labels:
                problems.append(
                    f"{describe_row(position)}, column 'malignant': the label is empty; "
                    "training and evaluation need 0 (benign) or 1 (malignant) for every nodule."
                )
            labels.append(None)
            continue
        try:
            number = float(stripped)
        except ValueError:
            number = math.nan
        if number not in (0.0, 1.0):
            problems.append(f"{describe_row(position)}, column 'malignant': {stripped!r} is not 0 (benign) or 1 (malignant).")
            labels.append(None)
            continue
        labels.append(int(number))
    table["malignant"] = pd.array(labels, dtype="Int64")


def _resolve_image_paths(table: pd.DataFrame, folder: Path, check_images: bool, problems: list[str]) -> None:
    resolved: list[str] = []
    not_found: list[str] = []
    for position, text in enumerate(table["image_path"].tolist()):
        stripped = str(text).strip()
        if stripped == "":
            problems.append(f"{describe_row(position)}, column 'image_path': the value is empty; give the CT file or DICOM folder.")
            resolved.append("")
            continue
        candidate = Path(stripped).expanduser()
        if not candidate.is_absolute():
            candidate = folder / candidate
        candidate = candidate.resolve()
        if check_images and not candidate.exists():
            not_found.append(f"{describe_row(position)}: {candidate}")
        resolved.append(str(candidate))
    table["image_path"] = resolved

    if not_found:
        listed = "; ".join(not_found[:_MAX_LISTED_MISSING_IMAGES])
        more = f" (first {_MAX_LISTED_MISSING_IMAGES} shown)" if len(not_found) > _MAX_LISTED_MISSING_IMAGES else ""
        problems.append(
            f"column 'image_path': {len(not_found)} image file(s) or folder(s) not found{more}: {listed}. "
            f"Relative paths are resolved against the table's folder {folder}."
        )


def read_dataset_table(path: str | Path, require_labels: bool = True, check_images: bool = True) -> pd.DataFrame:
    """Read and validate a data set CSV; return one row per nodule.

    The result starts with `pid` and `nodule_id` (stripped strings), `image_path` (absolute,
    relative paths resolved against the CSV's folder), `coordX/Y/Z` (float64, LPS mm) and
    `malignant` (nullable Int64: 0, 1, or missing when `require_labels` is False). The
    semantic feature columns present follow (canonical values, see `semantic_features`),
    then any other columns unchanged. Every problem found is collected and raised in one InputError
    that names the data row and the column. `check_images=False` skips the existence check
    of image paths, for jobs that read no images.
    """
    path = Path(path).expanduser().resolve()
    table = _read_raw_table(path)
    _check_columns(path, table, require_labels)

    problems: list[str] = []
    _parse_identifiers(table, problems)
    _parse_coordinates(table, problems)
    _parse_labels(table, require_labels, problems)
    _resolve_image_paths(table, path.parent, check_images, problems)

    try:
        table = normalize_feature_columns(table, describe_row=describe_row, max_errors=_MAX_LISTED_PROBLEMS)
    except InputError as error:
        problems.append(str(error))

    if problems:
        _raise_problems(path, problems)

    semantic = feature_columns(table)
    others = [column for column in table.columns if column not in REQUIRED_COLUMNS and column not in semantic]
    ordered = table[[*REQUIRED_COLUMNS, *semantic, *others]]
    logger.info(
        "Read %d nodules of %d patients from %s (%d semantic feature columns).",
        len(ordered),
        ordered["pid"].nunique(),
        path,
        len(semantic),
    )
    return ordered
