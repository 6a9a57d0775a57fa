"""Patient-level data splits for training: a held-out test set and k-fold cross-validation.

Nodules of one patient always land in the same part, so no patient is in two folds or in
both the test set and a fold. Depends on numpy, pandas and scikit-learn (no torch, Qt or Slicer).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputError
from .checkpoints import write_json_atomic

logger = logging.getLogger(__name__)

SPLIT_FORMAT_VERSION = 1


@dataclass(frozen=True)
class DataSplit:
    """Patient ids of the held-out test set and of each cross-validation fold's validation part.

    Fold k trains on every development patient (not in the test set) outside
    `fold_patients[k]` and validates on `fold_patients[k]`.
    """

    test_patients: tuple[str, ...]
    fold_patients: tuple[tuple[str, ...], ...]
    seed: int
    test_fraction: float

    @property
    def n_folds(self) -> int:
        return len(self.fold_patients)

    @property
    def development_patients(self) -> tuple[str, ...]:
        return tuple(sorted(pid for fold in self.fold_patients for pid in fold))

    def fold_masks(self, table: pd.DataFrame, fold: int) -> tuple[np.ndarray, np.ndarray]:
        """Return boolean (train, validation) row masks of `table` for fold `fold`."""
        if not 0 <= fold < self.n_folds:
            raise InputError(f"Fold {fold} does not exist; this split has folds 0 to {self.n_folds - 1}.")
        pids = table["pid"].astype(str)
        validation = pids.isin(self.fold_patients[fold]).to_numpy()
        train = pids.isin(self.development_patients).to_numpy() & ~validation
        return train, validation

    def test_mask(self, table: pd.DataFrame) -> np.ndarray:
        """Return the boolean row mask of `table` for the held-out test patients."""
        return table["pid"].astype(str).isin(self.test_patients).to_numpy()

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": SPLIT_FORMAT_VERSION,
            "seed": self.seed,
            "test_fraction": self.test_fraction,
            "test_patients": list(self.test_patients),
            "fold_patients": [list(fold) for fold in self.fold_patients],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DataSplit":
        if data.get("format_version") != SPLIT_FORMAT_VERSION:
            raise InputError(
                f"Split file format version {data.get('format_version')!r} is not {SPLIT_FORMAT_VERSION}; "
                "delete the split file to make a new split."
            )
        return cls(
            test_patients=tuple(str(pid) for pid in data["test_patients"]),
            fold_patients=tuple(tuple(str(pid) for pid in fold) for fold in data["fold_patients"]),
            seed=int(data["seed"]),
            test_fraction=float(data["test_fraction"]),
        )


def patient_labels(table: pd.DataFrame) -> pd.Series:
    """Return one label per patient: 1 when any of the patient's nodules is malignant, else 0."""
    labels = table["malignant"].astype("Int64")
    if labels.isna().any():
        raise InputError("Every nodule needs a malignant label (0 or 1) to split the data for training.")
    return labels.groupby(table["pid"].astype(str)).max().astype(int)


def check_split(split: DataSplit) -> None:
    """Raise InputError when a patient is in two folds, or in the test set and a fold."""
    seen: dict[str, str] = {pid: "the test set" for pid in split.test_patients}
    if len(seen) != len(split.test_patients):
        raise InputError("The test set lists a patient twice; make a new split.")
    for index, fold in enumerate(split.fold_patients):
        for pid in fold:
            if pid in seen:
                raise InputError(f"Patient {pid!r} is in fold {index} and in {seen[pid]}; make a new split.")
            seen[pid] = f"fold {index}"


def make_split(table: pd.DataFrame, n_folds: int = 5, test_fraction: float = 0.2, seed: int = 0) -> DataSplit:
    """Split the patients of `table` into a held-out test set and `n_folds` folds.

    The test set is `test_fraction` of the patients, stratified by patient label (any
    malignant nodule); 0 means no test set. The remaining nodules are split with
    scikit-learn's StratifiedGroupKFold (groups = patients, stratified by nodule label,
    shuffled with `seed`). Raises InputError when there are too few patients or labels.
    """
    from sklearn.model_selection import StratifiedGroupKFold, train_test_split

    if n_folds < 2:
        raise InputError(f"Cross-validation needs at least 2 folds, got {n_folds}.")
    if not 0.0 <= test_fraction < 1.0:
        raise InputError(f"The test fraction must be in [0, 1), got {test_fraction}.")

    by_patient = patient_labels(table)
    patients = by_patient.index.to_numpy()
    if by_patient.nunique() < 2:
        raise InputError("The data set has only one class; training needs benign (0) and malignant (1) nodules.")

    test_patients: np.ndarray = np.array([], dtype=object)
    development = patients
    if test_fraction > 0.0:
        # Patient-level stratification keeps the malignant share of the test set close to the whole set's.
        try:
            development, test_patients = train_test_split(
                patients, test_size=test_fraction, random_state=seed, stratify=by_patient.to_numpy()
            )
        except ValueError as error:
            # scikit-learn rejects a stratified split with a class of one patient or a test set
            # smaller than the number of classes.
            raise InputError(
                f"Cannot split {len(patients)} patients ({int(by_patient.sum())} with a malignant nodule) "
                f"into a stratified test set of fraction {test_fraction}: {error} "
                "Add patients of the rarer class or change the test fraction (0 means no test set)."
            ) from None

    rows = table[table["pid"].astype(str).isin(set(development))]
    if rows["pid"].nunique() < n_folds:
        raise InputError(
            f"{rows['pid'].nunique()} development patients cannot fill {n_folds} folds; "
            "use fewer folds, a smaller test fraction or more patients."
        )
    labels = rows["malignant"].astype(int).to_numpy()
    minority = int(min(np.bincount(labels, minlength=2)))
    if minority < n_folds:
        logger.warning(
            "Only %d nodules of the rarer class for %d folds: some validation folds will lack a class.",
            minority, n_folds,
        )

    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    pids = rows["pid"].astype(str).to_numpy()
    folds = []
    for _, validation_rows in splitter.split(np.zeros(len(rows)), labels, groups=pids):
        folds.append(tuple(sorted(set(pids[validation_rows]))))

    split = DataSplit(
        test_patients=tuple(sorted(str(pid) for pid in test_patients)),
        fold_patients=tuple(folds),
        seed=seed,
        test_fraction=test_fraction,
    )
    check_split(split)
    logger.info(
        "Split %d patients: %d in the test set, folds of %s patients.",
        len(patients), len(split.test_patients), ", ".join(str(len(fold)) for fold in folds),
    )
    return split


def save_split(split: DataSplit, path: str | Path) -> None:
    """Write the split as JSON, atomically (a temporary file renamed over `path`)."""
    write_json_atomic(path, split.to_dict())


def load_split(path: str | Path) -> DataSplit:
    """Read a split written by `save_split` and check that no patient is in two parts."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise InputError(f"Cannot read the split file {path}: {error}; delete it to make a new split.") from None
    split = DataSplit.from_dict(data)
    check_split(split)
    return split


def load_or_make_split(
    table: pd.DataFrame, path: str | Path, n_folds: int = 5, test_fraction: float = 0.2, seed: int = 0
) -> DataSplit:
    """Reuse the split saved at `path`, or make one with `make_split` and save it there.

    A saved split is reused only when it covers exactly the patients of `table` with the
    same number of folds, seed and test fraction. Otherwise it raises InputError naming what differs.
    """
    path = Path(path)
    if not path.is_file():
        split = make_split(table, n_folds=n_folds, test_fraction=test_fraction, seed=seed)
        save_split(split, path)
        return split

    split = load_split(path)
    saved_patients = set(split.test_patients) | set(split.development_patients)
    table_patients = set(table["pid"].astype(str))
    differences = []
    if saved_patients != table_patients:
        differences.append(
            f"patients ({len(table_patients - saved_patients)} new, {len(saved_patients - table_patients)} gone)"
        )
    if split.n_folds != n_folds:
        differences.append(f"folds ({split.n_folds} saved, {n_folds} requested)")
    if split.seed != seed:
        differences.append(f"seed ({split.seed} saved, {seed} requested)")
    if not np.isclose(split.test_fraction, test_fraction):
        differences.append(f"test fraction ({split.test_fraction} saved, {test_fraction} requested)")
    if differences:
        raise InputError(
            f"The saved split {path} does not match this run: {'; '.join(differences)}. "
            "Use the original settings or a new output folder."
        )
    logger.info("Reusing the split saved in %s", path)
    return split

