"""The public inference API: load a bundle once, score many nodules.

    predictor = Predictor.from_bundle("Resources/models/clipnodule-demo-lidc")
    result = predictor.predict("chest_ct.nrrd", (-21.9, -120.5, -611.5))  # LPS mm
    print(result.risk, result.attention)

No Qt or Slicer imports. Points are LPS unless `coordinate_system="RAS"` is given.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from .coordinates import CoordinateSystem, lps_to_ras, to_lps
from .devices import resolve_device
from .errors import BundleError
from .hashing import sha256_file
from .result import FoldResult, NoduleResult


DEFAULT_BUNDLE_NAME = "clipnodule-demo-lidc"


def default_bundle_path() -> Path:
    """Return the bundle used when none is given: $CLIPNODULE_BUNDLE or the shipped demo."""
    configured = os.environ.get("CLIPNODULE_BUNDLE")
    if configured:
        return Path(configured)

    # The demo bundle sits in the extension's top-level Resources folder, two levels
    # above this package (CLIPNodule/clipnodule/).
    shipped = Path(__file__).resolve().parents[2] / "Resources" / "models" / DEFAULT_BUNDLE_NAME
    if not (shipped / "manifest.json").is_file():
        raise BundleError(
            f"No model bundle was given and the demo bundle is not at {shipped}; "
            "pass --bundle DIR or set CLIPNODULE_BUNDLE to a bundle folder."
        )
    return shipped


def input_checksum(path: str | os.PathLike) -> str:
    """Return the sha256 of an image file, or of a DICOM folder's sorted file checksums."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)

    digest = hashlib.sha256()
    for file in sorted(item for item in path.rglob("*") if item.is_file()):
        digest.update(file.relative_to(path).as_posix().encode("utf-8"))
        digest.update(sha256_file(file).encode("ascii"))
    return digest.hexdigest()


class Predictor:
    """A loaded five-fold ensemble that scores nodules on one device."""

    def __init__(self, bundle, device: str = "cpu") -> None:
        from .zeroshot import encode_prompt_set

        self.bundle = bundle
        self.device = device
        self.model_name = str(bundle.manifest.get("name", "unnamed model"))
        self.model_version = str(bundle.manifest.get("version", "unknown"))

        # The zero-shot prompts are fixed per bundle, so their text embeddings are
        # computed once per fold here rather than for every nodule.
        self._prompt_embeddings: dict[int, dict] = {}
        if bundle.prompt_set and not bundle.config.vision_only:
            for fold in bundle.folds:
                self._prompt_embeddings[fold.index] = encode_prompt_set(fold.model, bundle.prompt_set)

    @classmethod
    def from_bundle(
        cls,
        path: str | os.PathLike | None = None,
        device: str = "auto",
        folds: Sequence[int] | None = None,
    ) -> "Predictor":
        """Load the bundle at `path` (default: `default_bundle_path()`) onto `device`."""
        from .bundle import load_bundle

        bundle_path = Path(path) if path is not None else default_bundle_path()
        resolved = resolve_device(device)
        bundle = load_bundle(bundle_path, device=resolved, folds=list(folds) if folds is not None else None)
        return cls(bundle, device=resolved)

    def predict(
        self,
        image,
        point: Sequence[float],
        coordinate_system: str | CoordinateSystem = "LPS",
        pid: str | None = None,
        nodule_id: str | None = None,
    ) -> NoduleResult:
        """Score the nodule at `point` (mm, in `coordinate_system`) of a CT.

        `image` is a path (file or DICOM folder) or an already loaded SimpleITK image
        in Hounsfield units. The image is checked before any risk is computed.
        """
        from .ct_checks import check_ct_image
        from .image_io import load_ct
        from .preprocess import extract_planes

        started = time.perf_counter()
        point_lps = to_lps(point, coordinate_system)

        image_path = None
        checksum = None
        if isinstance(image, (str, os.PathLike)):
            image_path = str(image)
            checksum = input_checksum(image_path)
            image = load_ct(image_path)
        else:
            # load_ct checks files; an image built in memory (for example from a Slicer
            # volume node) gets the same Hounsfield-unit and geometry checks here.
            check_ct_image(image, "the in-memory image")

        nodule_planes = extract_planes(image, point_lps)
        result = self.predict_planes([nodule_planes], pids=[pid], nodule_ids=[nodule_id])[0]
        result.image_path = image_path
        result.input_sha256 = checksum
        result.run_time_s = time.perf_counter() - started
        return result

    def predict_planes(
        self,
        nodule_planes: Sequence,
        pids: Sequence[str | None] | None = None,
        nodule_ids: Sequence[str | None] | None = None,
    ) -> list[NoduleResult]:
        """Score a batch of already extracted `NodulePlanes` in one model pass per fold."""
        import torch
        import torch.nn.functional as functional

        from .intensity import clip_normalize
        from .planes import PLANE_NAMES
        from .zeroshot import average_reports, zero_shot_report

        started = time.perf_counter()
        count = len(nodule_planes)
        pids = list(pids) if pids is not None else [None] * count
        nodule_ids = list(nodule_ids) if nodule_ids is not None else [None] * count

        pixels = torch.stack([clip_normalize(item.planes) for item in nodule_planes]).to(self.device)

        raw = np.zeros((len(self.bundle.folds), count))
        calibrated: list[np.ndarray | None] = []
        attention = np.zeros((len(self.bundle.folds), count, len(PLANE_NAMES)))
        reports_per_fold = []
        with torch.inference_mode():
            for position, fold in enumerate(self.bundle.folds):
                embedding, fold_attention = fold.model.encode_image(pixels)
                embedding = functional.normalize(embedding, dim=-1)
                logits = fold.model.classifier_image(embedding)
                raw[position] = torch.softmax(logits.float(), dim=-1)[:, 1].cpu().numpy()
                attention[position] = fold_attention.float().cpu().numpy()
                calibrated.append(fold.calibration.predict(raw[position]) if fold.calibration else None)

                if fold.index in self._prompt_embeddings:
                    reports_per_fold.append(
                        zero_shot_report(
                            fold.model, embedding, self.bundle.prompt_set,
                            text_cache=self._prompt_embeddings[fold.index],
                        )
                    )

        all_calibrated = all(values is not None for values in calibrated)
        ensemble_reports = average_reports(reports_per_fold) if reports_per_fold else None
        elapsed = time.perf_counter() - started
        results = []
        for item_index, item in enumerate(nodule_planes):
            folds = [
                FoldResult(
                    index=fold.index,
                    raw_probability=float(raw[position, item_index]),
                    calibrated_probability=(
                        None if calibrated[position] is None else float(calibrated[position][item_index])
                    ),
                    attention=[float(value) for value in attention[position, item_index]],
                )
                for position, fold in enumerate(self.bundle.folds)
            ]
            raw_ensemble = float(raw[:, item_index].mean())
            risk = (
                float(np.mean([fold.calibrated_probability for fold in folds])) if all_calibrated else raw_ensemble
            )
            report = ensemble_reports[item_index] if ensemble_reports else None

            point_lps = np.asarray(item.point_lps, dtype=float)
            results.append(
                NoduleResult(
                    risk=risk,
                    calibrated=all_calibrated,
                    raw_ensemble=raw_ensemble,
                    folds=folds,
                    attention=[float(value) for value in attention[:, item_index].mean(axis=0)],
                    plane_names=list(PLANE_NAMES),
                    semantic_report=report,
                    point_lps=point_lps.tolist(),
                    point_ras=lps_to_ras(point_lps).tolist(),
                    model_name=self.model_name,
                    model_version=self.model_version,
                    input_sha256=None,
                    run_time_s=elapsed / max(count, 1),
                    device=self.device,
                    pid=pids[item_index],
                    nodule_id=nodule_ids[item_index],
                    planes=item.planes,
                    frames=getattr(item, "frames", None),
                )
            )
        return results
