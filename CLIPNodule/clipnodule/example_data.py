"""The bundled example: a real chest CT with a ~15 mm right-upper-lobe nodule.

The CT and its nodule label ship inside the source distribution of pyradiomics 3.0.1
on PyPI (`data/lung1_image.nrrd`, `data/lung1_label.nrrd`). This module fetches that
archive once through pip (no other download), checks its sha256, extracts the two
files into a cache folder and derives the nodule centre from the label. No Qt or Slicer.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from .errors import CLIPNoduleError
from .hashing import sha256_file

logger = logging.getLogger(__name__)

SDIST_NAME = "pyradiomics-3.0.1.tar.gz"
SDIST_SHA256 = "47c57f441d6cb7973fa3b2ea48d3948df78e3348e1c69e1e2ff19001601fc2f5"
MEMBERS = {
    "image": "pyradiomics-3.0.1/data/lung1_image.nrrd",
    "label": "pyradiomics-3.0.1/data/lung1_label.nrrd",
}


@dataclasses.dataclass(frozen=True)
class ExampleCT:
    """Paths of the example CT and its nodule label, and the nodule centre (LPS mm)."""

    image_path: Path
    label_path: Path
    nodule_center_lps: tuple[float, float, float]


def default_cache_dir() -> Path:
    """Return the folder for cached downloads: $CLIPNODULE_CACHE or ~/.cache/clipnodule."""
    configured = os.environ.get("CLIPNODULE_CACHE")
    if configured:
        return Path(configured)
    return Path.home() / ".cache" / "clipnodule"


def fetch_example_ct(cache_dir: str | os.PathLike | None = None) -> ExampleCT:
    """Return the example CT, downloading the pyradiomics 3.0.1 sdist through pip once."""
    folder = Path(cache_dir) if cache_dir else default_cache_dir() / "example-lung1"
    image_path = folder / "lung1_image.nrrd"
    label_path = folder / "lung1_label.nrrd"

    if not (image_path.is_file() and label_path.is_file()):
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="clipnodule-example-") as download_dir:
            archive = _download_sdist(Path(download_dir))
            _extract_members(archive, {"image": image_path, "label": label_path})

    center = nodule_center_from_label(label_path)
    logger.info("Example CT: %s, nodule centre (LPS mm) %s", image_path, np.round(center, 2).tolist())
    return ExampleCT(image_path, label_path, tuple(float(value) for value in center))


def nodule_center_from_label(label_path: str | os.PathLike) -> np.ndarray:
    """Return the LPS centroid (mm) of the non-zero voxels of a label image."""
    import SimpleITK as sitk

    label = sitk.ReadImage(str(label_path))
    voxels = np.argwhere(sitk.GetArrayFromImage(label) > 0)
    if voxels.size == 0:
        raise CLIPNoduleError(f"The label image {label_path} marks no voxel; it cannot give a nodule centre.")

    # The array is (z, y, x); ITK indices are (x, y, z).
    mean_index = voxels.mean(axis=0)[::-1]
    return np.asarray(label.TransformContinuousIndexToPhysicalPoint(mean_index.tolist()))


def _download_sdist(download_dir: Path) -> Path:
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-build-isolation",
        "--no-binary", ":all:", "pyradiomics==3.0.1", "-d", str(download_dir),
    ]
    logger.info("Downloading the example CT (pyradiomics 3.0.1 source archive, 34 MB) through pip")
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    archive = download_dir / SDIST_NAME
    if completed.returncode != 0 or not archive.is_file():
        last_line = (completed.stderr or completed.stdout).strip().splitlines()[-1:] or ["no output"]
        raise CLIPNoduleError(
            f"pip could not download pyradiomics==3.0.1 ({last_line[0]}). The example CT needs the "
            "PyPI registry and setuptools, wheel and numpy installed; or pass your own CT with --image."
        )

    digest = sha256_file(archive)
    if digest != SDIST_SHA256:
        raise CLIPNoduleError(
            f"The downloaded {SDIST_NAME} has sha256 {digest}, expected {SDIST_SHA256}; "
            "the registry returned a different file, so it is not used."
        )
    return archive


def _extract_members(archive: Path, targets: dict[str, Path]) -> None:
    with tarfile.open(archive, "r:gz") as tar:
        for key, target in targets.items():
            member = tar.getmember(MEMBERS[key])
            source = tar.extractfile(member)
            if source is None:
                raise CLIPNoduleError(f"{MEMBERS[key]} in {archive.name} is not a regular file.")
            partial = target.with_suffix(target.suffix + ".part")
            partial.write_bytes(source.read())
            partial.replace(target)
