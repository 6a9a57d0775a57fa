"""Crash-safe training checkpoints: atomic JSON and safetensors files, optimizer state without pickles.

Every write goes to a temporary file in the target folder that is then renamed over the
target, so an interrupted run leaves either the old or the new file, never half a file.
Depends on torch and safetensors (no Qt or Slicer).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import InputError

MODEL_PREFIX = "model."
OPTIMIZER_PREFIX = "optimizer."


def _write_atomic(path: Path, write: Callable[[str], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(temporary)
        # mkstemp creates the file as 0600; checkpoints and logs are ordinary readable files.
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write `data` as indented JSON to `path` atomically."""
    text = json.dumps(data, indent=2, allow_nan=False) + "\n"

    def write(temporary: str) -> None:
        Path(temporary).write_text(text, encoding="utf-8")

    _write_atomic(Path(path), write)


def save_tensors_atomic(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Save CPU copies of `tensors` as a safetensors file at `path` atomically."""
    from safetensors.torch import save_file

    prepared = {key: tensor.detach().to("cpu").contiguous() for key, tensor in tensors.items()}

    def write(temporary: str) -> None:
        save_file(prepared, temporary, metadata=metadata)

    _write_atomic(Path(path), write)


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file and return (tensors on the CPU, metadata)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as stream:
            metadata = dict(stream.metadata() or {})
            tensors = {key: stream.get_tensor(key) for key in stream.keys()}
    except (SafetensorError, OSError) as error:
        raise InputError(f"Cannot read the checkpoint {path}: {error}. Delete it and train that fold again.") from None
    return tensors, metadata


def optimizer_state_to_tensors(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], str]:
    """Flatten `optimizer.state_dict()` into tensors keyed 'state.<param>.<name>' and a JSON string.

    The JSON contains the parameter groups and any non-tensor per-parameter values, so the
    optimizer can be restored without pickles.
    """
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for parameter_id, values in state_dict["state"].items():
        for name, value in values.items():
            key = f"state.{parameter_id}.{name}"
            if isinstance(value, torch.Tensor):
                tensors[key] = value
            else:
                scalars[key] = value
    description = json.dumps({"param_groups": state_dict["param_groups"], "scalars": scalars})
    return tensors, description


def optimizer_state_from_tensors(tensors: dict[str, torch.Tensor], description: str) -> dict[str, Any]:
    """Rebuild an optimizer state dict from `optimizer_state_to_tensors` output."""
    parsed = json.loads(description)
    state: dict[int, dict[str, Any]] = {}
    for key, value in [*tensors.items(), *parsed["scalars"].items()]:
        _, parameter_id, name = key.split(".", 2)
        state.setdefault(int(parameter_id), {})[name] = value
    return {"state": state, "param_groups": parsed["param_groups"]}


def save_training_checkpoint(
    path: str | Path,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any] | None,
    metadata: dict[str, str] | None = None,
) -> None:
    """Save trainable weights (and optionally the optimizer state) in one safetensors file."""
    tensors = {f"{MODEL_PREFIX}{key}": value for key, value in model_state.items()}
    info = dict(metadata or {})
    if optimizer_state is not None:
        optimizer_tensors, description = optimizer_state_to_tensors(optimizer_state)
        tensors.update({f"{OPTIMIZER_PREFIX}{key}": value for key, value in optimizer_tensors.items()})
        info["optimizer"] = description
    save_tensors_atomic(path, tensors, info)


def load_training_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None, dict[str, str]]:
    """Read a checkpoint written by `save_training_checkpoint`: (weights, optimizer state or None, metadata)."""
    tensors, metadata = load_tensors(path)
    model_state = {key[len(MODEL_PREFIX):]: value for key, value in tensors.items() if key.startswith(MODEL_PREFIX)}
    optimizer_tensors = {
        key[len(OPTIMIZER_PREFIX):]: value for key, value in tensors.items() if key.startswith(OPTIMIZER_PREFIX)
    }
    optimizer_state = None
    if "optimizer" in metadata:
        optimizer_state = optimizer_state_from_tensors(optimizer_tensors, metadata["optimizer"])
    return model_state, optimizer_state, metadata
