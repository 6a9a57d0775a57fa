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
