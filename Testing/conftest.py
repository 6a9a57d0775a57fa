"""Shared pytest fixtures: the location of the shared data folder beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]


def _find_shared_dir() -> Path | None:
    configured = os.environ.get("CLIPNODULE_SHARED_DIR")
    candidate = Path(configured) if configured else REPOSITORY_ROOT.parent / "shared"
    return candidate if (candidate / "fixtures").is_dir() else None


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """Return the shared data folder (fixtures, LIDC volumes, DICOM series), or skip."""
    found = _find_shared_dir()
    if found is None:
        pytest.skip(
            "shared data folder not found beside the checkout (../shared); "
            "set CLIPNODULE_SHARED_DIR to run the tests that use real CT and fixtures"
        )
    return found


@pytest.fixture(scope="session")
def reference_fixtures(shared_dir: Path) -> Path:
    """Return the folder of reference parity fixtures."""
    return shared_dir / "fixtures" / "reference"


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """Return a five-fold bundle of the randomly initialised tiny-vit model, with Beta calibrations.

    The folds share one random backbone; each has its own random heads (the LoRA
    factors start at zero), so the folds give different probabilities.
    """
    torch = pytest.importorskip("torch")
    from clipnodule.bundle import save_bundle
    from clipnodule.calibration import BetaCalibration
    from clipnodule.model import ModelConfig, build_model

    torch.manual_seed(0)
    config = ModelConfig(backbone="tiny-vit", pretrained=None)
    base = build_model(config)

    fold_state_dicts = []
    for fold in range(5):
        torch.manual_seed(100 + fold)
        model = build_model(config)
        fold_state_dicts.append({key: value.clone() for key, value in model.trainable_state_dict().items()})

    path = tmp_path_factory.mktemp("bundle") / "tiny"
    save_bundle(
        path,
        config=config,
        fold_state_dicts=fold_state_dicts,
        calibrations=[BetaCalibration(a=1.1 + 0.1 * k, b=0.9, c=0.05 * k) for k in range(5)],
        backbone_state_dict=base.backbone_state_dict(),
        name="tiny-test",
        version="0",
        description="random tiny model for tests",
        intended_use="tests only",
        licence="Apache-2.0",
    )
    return path
