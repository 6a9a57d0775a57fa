"""Python dependencies of the CLIPNodule modules, installed on first use and never at import.

No Qt and no MRML. torch (and torchvision) come through the PyTorch extension's
`PyTorchUtils` logic, which picks the wheel matching the GPU driver. Everything else
goes through `slicer.util.pip_install` after one confirmation that lists every package
with its minimum version. Slicer's own numpy, SimpleITK and requests are never
installed or upgraded: they are only checked, and the pip command pins them to their
installed versions. The Slicer calls are injected, so the logic is testable.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
import re
from typing import Callable, Sequence

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Requirement:
    """A pip distribution, the module it provides and the minimum version the library needs."""

    distribution: str
    import_name: str
    minimum: str

    @property
    def specifier(self) -> str:
        """The pip requirement string, for example "peft>=0.11"."""
        return f"{self.distribution}>={self.minimum}"


TORCH = Requirement("torch", "torch", "2.2")
TORCHVISION = Requirement("torchvision", "torchvision", "0.17")

# Packages that Slicer ships and that other modules rely on: checked, never replaced.
SLICER_PROTECTED: tuple[Requirement, ...] = (
    Requirement("numpy", "numpy", "1.26"),
    Requirement("SimpleITK", "SimpleITK", "2.3"),
    Requirement("requests", "requests", "2.0"),
)

INFERENCE_REQUIREMENTS: tuple[Requirement, ...] = (
    Requirement("scipy", "scipy", "1.11"),
    Requirement("open_clip_torch", "open_clip", "2.24"),
    Requirement("peft", "peft", "0.11"),
    Requirement("safetensors", "safetensors", "0.4"),
    Requirement("matplotlib", "matplotlib", "3.7"),
    Requirement("tqdm", "tqdm", "4.66"),
    Requirement("pandas", "pandas", "2.0"),
    Requirement("scikit-learn", "sklearn", "1.3"),
)

TRAINING_REQUIREMENTS: tuple[Requirement, ...] = INFERENCE_REQUIREMENTS + (
    Requirement("torchio", "torchio", "0.19"),
    Requirement("nlpaug", "nlpaug", "1.1.11"),
    Requirement("betacal", "betacal", "1.1"),
)


def version_tuple(version: str) -> tuple[int, ...]:
    """Return the leading numeric release parts of a version string ("2.5.1+cu121" -> (2, 5, 1))."""
    parts = []
    for piece in version.split("+")[0].split("."):
        match = re.match(r"\d+", piece)
        if match is None:
            break
        parts.append(int(match.group()))
    return tuple(parts)


def installed_version(distribution: str) -> str | None:
    """Return the installed version of a distribution, or None when it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def is_satisfied(requirement: Requirement) -> bool:
    """Return True when the distribution is installed at or above its minimum version."""
    version = installed_version(requirement.distribution)
    return version is not None and version_tuple(version) >= version_tuple(requirement.minimum)


def missing_requirements(requirements: Sequence[Requirement]) -> list[Requirement]:
    """Return the requirements that are absent or older than their minimum."""
    return [requirement for requirement in requirements if not is_satisfied(requirement)]


def protected_package_problems() -> list[str]:
    """Return one message per Slicer-shipped package (numpy, SimpleITK, requests) that is missing or too old."""
    problems = []
    for requirement in SLICER_PROTECTED:
        version = installed_version(requirement.distribution)
        if version is None:
            problems.append(f"{requirement.distribution} is missing from Slicer's Python; reinstall Slicer.")
        elif version_tuple(version) < version_tuple(requirement.minimum):
            problems.append(
                f"{requirement.distribution} {version} is older than {requirement.minimum}; "
                "use a newer Slicer release (CLIPNodule does not replace Slicer's own packages)."
            )
    return problems


def confirmation_text(to_install: Sequence[Requirement], torch_needed: bool) -> str:
    """Return the text of the one confirmation dialog: every package and its minimum version."""
    lines = ["CLIPNodule needs these Python packages, which are not installed yet:", ""]
    if torch_needed:
        lines.append(f"  {TORCH.specifier} and {TORCHVISION.specifier} (through the PyTorch extension)")
    lines.extend(f"  {requirement.specifier}" for requirement in to_install)
    lines += ["", "They are downloaded from the Python Package Index into Slicer's Python. This can take several minutes."]
    return "\n".join(lines)


def protected_pins() -> list[str]:
    """Return "name==version" pins of the installed numpy, SimpleITK and requests.

    Added to the pip command, they are already satisfied, so pip keeps them and fails
    rather than replacing them when a new package would need another version.
    """
    pins = []
    for requirement in SLICER_PROTECTED:
        version = installed_version(requirement.distribution)
        if version is not None:
            pins.append(f"{requirement.distribution}=={version}")
    return pins


class InstallLogic:
    """Installs what a CLIPNodule module needs, after one confirmation.

    `confirm(text) -> bool` shows the dialog, `pip_install(requirements)` runs pip in
    Slicer's Python and `install_torch(minimum_torch, minimum_torchvision) -> bool`
    installs torch. `InstallLogic.for_slicer()` wires them to the Slicer application.
    """

    def __init__(
        self,
        confirm: Callable[[str], bool],
        pip_install: Callable[[str], None],
        install_torch: Callable[[str, str], bool],
        torch_present: Callable[[], bool] | None = None,
    ) -> None:
        self._confirm = confirm
        self._pip_install = pip_install
        self._install_torch = install_torch
        self._torch_present = torch_present or (lambda: is_satisfied(TORCH) and is_satisfied(TORCHVISION))

    @classmethod
    def for_slicer(cls) -> "InstallLogic":
        """Return an InstallLogic that uses Slicer's dialogs, pip_install and the PyTorch extension."""
        import slicer

        def install_torch(minimum_torch: str, minimum_torchvision: str) -> bool:
            try:
                import PyTorchUtils
            except ImportError:
                raise RuntimeError(
                    "CLIPNodule needs the PyTorch extension to install torch: install 'PyTorch' from the "
                    "Extensions Manager, restart Slicer and try again."
                ) from None
            torch_logic = PyTorchUtils.PyTorchUtilsLogic()
            torch = torch_logic.installTorch(
                askConfirmation=False,
                torchVersionRequirement=f">={minimum_torch}",
                torchvisionVersionRequirement=f">={minimum_torchvision}",
            )
            return torch is not None

        return cls(
            confirm=lambda text: bool(slicer.util.confirmOkCancelDisplay(text, "Install Python packages")),
            pip_install=slicer.util.pip_install,
            install_torch=install_torch,
        )

    def ensure(self, requirements: Sequence[Requirement] = INFERENCE_REQUIREMENTS) -> bool:
        """Install whatever of torch and `requirements` is missing; return True when all are present.

        Returns False, installing nothing, when the user declines. Raises RuntimeError
        when numpy, SimpleITK or requests is missing or too old, or when an install fails.
        """
        problems = protected_package_problems()
        if problems:
            raise RuntimeError(" ".join(problems))

        torch_needed = not self._torch_present()
        to_install = missing_requirements(requirements)
        if not torch_needed and not to_install:
            return True

        if not self._confirm(confirmation_text(to_install, torch_needed)):
            logger.info("Installation of %s declined", ", ".join(r.specifier for r in to_install) or "torch")
            return False

        if torch_needed:
            logger.info("Installing torch through the PyTorch extension")
            if not self._install_torch(TORCH.minimum, TORCHVISION.minimum):
                raise RuntimeError("torch was not installed; install it from the PyTorch Utils module and retry.")

        if to_install:
            # One space-separated string: older Slicer releases split pip_install's
            # argument on whitespace and accept no list.
            arguments = " ".join([requirement.specifier for requirement in to_install] + protected_pins())
            logger.info("pip install %s", arguments)
            self._pip_install(arguments)

        still_missing = missing_requirements(to_install)
        if still_missing:
            raise RuntimeError(
                "These packages are still missing after installation: "
                + ", ".join(requirement.specifier for requirement in still_missing)
                + "; see the Python console for pip's messages."
            )
        return True
