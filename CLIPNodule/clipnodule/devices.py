"""Choice of the torch device for inference and training.

No Qt or Slicer imports. "auto" selects CUDA when torch reports a usable GPU, else the CPU.
"""

from __future__ import annotations

import logging

from .errors import InputError

logger = logging.getLogger(__name__)

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(requested: str = "auto") -> str:
    """Return the torch device string to use for the `requested` choice.

    A request for CUDA on a machine without a usable GPU logs a warning and returns
    "cpu", so that a scene or a cohort run still completes. The result records the device.
    """
    import torch

    choice = (requested or "auto").lower()
    if choice not in DEVICE_CHOICES and not choice.startswith("cuda:"):
        raise InputError(f"Unknown device {requested!r}: use one of {', '.join(DEVICE_CHOICES)}.")

    if choice == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda" if choice == "auto" else choice
    if choice != "auto":
        logger.warning("CUDA was requested but torch finds no usable GPU; running on the CPU instead.")
    return "cpu"
