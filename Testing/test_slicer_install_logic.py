"""Dependency installation of the Slicer modules: what is missing, the confirmation text, the pip call.

Slicer's confirmation dialog, pip_install and the PyTorch extension cannot run here, so
the test passes recording functions in their place; the package checks are real.
"""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "CLIPNodule"))

from CLIPNoduleLib import install_logic  # noqa: E402
from CLIPNoduleLib.install_logic import InstallLogic, Requirement  # noqa: E402

TOO_NEW = Requirement("numpy", "numpy", "999.0")
ABSENT = Requirement("clipnodule-no-such-package", "clipnodule_no_such_package", "1.0")


class Recorder:
    """Stands in for Slicer's dialog, pip_install and PyTorch installer, and records the calls."""

    def __init__(self, answer: bool = True) -> None:
        self.answer = answer
        self.dialogs: list[str] = []
        self.pip_calls: list[str] = []
        self.torch_calls: list[tuple[str, str]] = []

    def confirm(self, text: str) -> bool:
        self.dialogs.append(text)
        return self.answer

    def pip_install(self, requirements: str) -> None:
        self.pip_calls.append(requirements)

    def install_torch(self, minimum_torch: str, minimum_torchvision: str) -> bool:
        self.torch_calls.append((minimum_torch, minimum_torchvision))
        return True


def test_version_tuple():
    assert install_logic.version_tuple("2.5.1+cu121") == (2, 5, 1)
    assert install_logic.version_tuple("1.1.11") == (1, 1, 11)
    assert install_logic.version_tuple("2.0rc1") == (2, 0)
    assert install_logic.version_tuple("0.19.6") >= install_logic.version_tuple("0.19")


def test_missing_requirements_real_packages():
    numpy_version = importlib.metadata.version("numpy")
    satisfied = Requirement("numpy", "numpy", numpy_version)
    assert install_logic.missing_requirements([satisfied, TOO_NEW, ABSENT]) == [TOO_NEW, ABSENT]


def test_nothing_missing_asks_nothing():
    recorder = Recorder()
    logic = InstallLogic(recorder.confirm, recorder.pip_install, recorder.install_torch, torch_present=lambda: True)
    assert logic.ensure([Requirement("numpy", "numpy", "1.0")]) is True
    assert recorder.dialogs == []
    assert recorder.pip_calls == []


def test_declined_installs_nothing():
    recorder = Recorder(answer=False)
    logic = InstallLogic(recorder.confirm, recorder.pip_install, recorder.install_torch, torch_present=lambda: False)
    assert logic.ensure([ABSENT]) is False
    assert len(recorder.dialogs) == 1
    assert recorder.pip_calls == []
    assert recorder.torch_calls == []


def test_one_dialog_lists_every_package():
    recorder = Recorder()
    logic = InstallLogic(recorder.confirm, recorder.pip_install, recorder.install_torch, torch_present=lambda: False)
    with pytest.raises(RuntimeError, match="still missing after installation: clipnodule-no-such-package>=1.0"):
        logic.ensure([ABSENT, Requirement("numpy", "numpy", "1.0")])

    assert len(recorder.dialogs) == 1
    dialog = recorder.dialogs[0]
    assert "clipnodule-no-such-package>=1.0" in dialog
    assert "torch>=2.2" in dialog
    assert "torchvision>=0.17" in dialog
    assert "numpy>=" not in dialog
    assert recorder.torch_calls == [("2.2", "0.17")]


def test_pip_call_pins_slicer_packages():
    recorder = Recorder()
    logic = InstallLogic(recorder.confirm, recorder.pip_install, recorder.install_torch, torch_present=lambda: True)
    with pytest.raises(RuntimeError):
        logic.ensure([ABSENT])

    assert len(recorder.pip_calls) == 1
    arguments = recorder.pip_calls[0].split()
    assert arguments[0] == "clipnodule-no-such-package>=1.0"
    for distribution in ("numpy", "SimpleITK", "requests"):
        version = importlib.metadata.version(distribution)
        assert f"{distribution}=={version}" in arguments
    assert not any(argument.startswith(("numpy>", "SimpleITK>", "requests>")) for argument in arguments)


def test_requirement_lists_exclude_slicer_packages():
    protected = {requirement.distribution for requirement in install_logic.SLICER_PROTECTED}
    for requirements in (install_logic.INFERENCE_REQUIREMENTS, install_logic.TRAINING_REQUIREMENTS):
        names = {requirement.distribution for requirement in requirements}
        assert not names & protected
        assert "torch" not in names
        assert "torchvision" not in names
    assert {"open_clip_torch", "peft", "safetensors"} <= {r.distribution for r in install_logic.INFERENCE_REQUIREMENTS}
    assert {"torchio", "nlpaug"} <= {r.distribution for r in install_logic.TRAINING_REQUIREMENTS}


def test_inference_requirements_import_names_real():
    # Every listed package installed in the test environment must import under the listed name.
    import importlib

    for requirement in install_logic.INFERENCE_REQUIREMENTS:
        if install_logic.installed_version(requirement.distribution) is not None:
            importlib.import_module(requirement.import_name)
