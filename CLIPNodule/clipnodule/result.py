"""The documented result of scoring one nodule, matching `result.json` field for field.

No torch, Qt or Slicer imports: results can be read, written and compared anywhere.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass
class FoldResult:
    """One fold's output for one nodule.

    raw_probability is the image classifier's softmax probability of malignancy.
    calibrated_probability is that value after the fold's Beta calibration, or None
    when the bundle has no calibration for the fold. attention contains the nine MIL
    attention weights in plane order (they sum to 1).
    """

    index: int
    raw_probability: float
    calibrated_probability: float | None
    attention: list[float]


@dataclasses.dataclass
class NoduleResult:
    """Calibrated one-year malignancy risk of one nodule and everything behind it.

    risk is the mean over folds of the calibrated probabilities ("calibrated_ensemble"
    of the published tool). When any fold lacks calibration, risk is the mean of the
    raw probabilities and `calibrated` is False. attention is the mean over folds of
    the per-plane attention. semantic_report maps each zero-shot feature to
    {"most_likely": value, "probabilities": {value: p}}, averaged over folds; it is
    None for vision-only models. planes and frames are kept for display and are not
    written to JSON.
    """

    risk: float
    calibrated: bool
    raw_ensemble: float
    folds: list[FoldResult]
    attention: list[float]
    plane_names: list[str]
    semantic_report: dict[str, dict[str, Any]] | None
    point_lps: list[float]
    point_ras: list[float]
    model_name: str
    model_version: str
    input_sha256: str | None
    run_time_s: float
    device: str
    pid: str | None = None
    nodule_id: str | None = None
    image_path: str | None = None
    planes: np.ndarray | None = dataclasses.field(default=None, repr=False)
    frames: list[Any] | None = dataclasses.field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready dictionary written as result.json."""
        return {
            "pid": self.pid,
            "nodule_id": self.nodule_id,
            "image_path": self.image_path,
            "input_sha256": self.input_sha256,
            "point_lps": self.point_lps,
            "point_ras": self.point_ras,
            "model": {"name": self.model_name, "version": self.model_version},
            "risk": self.risk,
            "calibrated": self.calibrated,
            "raw_ensemble": self.raw_ensemble,
            "folds": [dataclasses.asdict(fold) for fold in self.folds],
            "plane_names": self.plane_names,
            "attention": self.attention,
            "semantic_report": self.semantic_report,
            "device": self.device,
            "run_time_s": self.run_time_s,
        }

    def to_csv_row(self) -> dict[str, Any]:
        """Return one row in the published CSV layout.

        Columns: pid, nodule_id, raw_<k>, ensemble, calibrated_<k>, calibrated_ensemble.
        Calibrated columns are empty when the bundle has no calibration.
        """
        row: dict[str, Any] = {"pid": self.pid or "", "nodule_id": self.nodule_id or ""}
        for fold in self.folds:
            row[f"raw_{fold.index}"] = fold.raw_probability
        row["ensemble"] = self.raw_ensemble
        for fold in self.folds:
            value = fold.calibrated_probability
            row[f"calibrated_{fold.index}"] = "" if value is None else value
        row["calibrated_ensemble"] = self.risk if self.calibrated else ""
        return row
