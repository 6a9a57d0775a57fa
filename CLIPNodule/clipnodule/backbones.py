"""Registry of the CLIP backbones the nodule model can be built on, as open_clip configurations.

Each entry is data: an open_clip model name, an optional custom architecture config in
open_clip's JSON layout, and the default pretrained tag. No Qt or Slicer imports.
"""

from __future__ import annotations

import copy
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import BundleError, InputError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class BackboneSpec:
    """One CLIP backbone: open_clip model name, optional custom config and pretrained tag.

    `open_clip_config` is None for architectures that open_clip ships (looked up with
    `open_clip.get_model_config`). Otherwise it is a dict in open_clip's model-config
    layout (`embed_dim`, `quick_gelu`, `vision_cfg`, `text_cfg`) used to build the model.
    """

    open_clip_name: str
    open_clip_config: dict[str, Any] | None = None
    default_pretrained: str | None = None
    description: str = field(default="", compare=False)


def _tiny_config(width: int, layers: int) -> dict[str, Any]:
    # One attention head per 64 channels, as OpenAI CLIP and open_clip's default head_width.
    return {
        "embed_dim": 512,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 224, "layers": layers, "width": width, "patch_size": 32, "head_width": 64},
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": width,
            "heads": max(1, width // 64),
            "layers": layers,
        },
    }


BACKBONES: dict[str, BackboneSpec] = {
    "ViT-B-32-quickgelu": BackboneSpec(
        open_clip_name="ViT-B-32-quickgelu",
        open_clip_config=None,
        default_pretrained="openai",
        description="OpenAI CLIP ViT-B/32 with QuickGELU, the published model's backbone",
    ),
    "tiny-vit": BackboneSpec(
        open_clip_name="tiny-vit",
        open_clip_config=_tiny_config(width=64, layers=2),
        default_pretrained=None,
        description="random 2-layer, width-64 CLIP for tests (same shapes as the reference parity model)",
    ),
    "small-vit": BackboneSpec(
        open_clip_name="small-vit",
        open_clip_config=_tiny_config(width=128, layers=4),
        default_pretrained=None,
        description="random 4-layer, width-128 CLIP for the demo bundle",
    ),
}


def get_backbone(name: str) -> BackboneSpec:
    """Return the registered backbone `name`, or raise InputError listing the known names."""
    try:
        return BACKBONES[name]
    except KeyError:
        known = ", ".join(sorted(BACKBONES))
        raise InputError(f"Unknown backbone {name!r}; use one of: {known}.") from None


def backbone_architecture(name: str) -> dict[str, Any]:
    """Return the open_clip model config (a fresh copy) for the backbone `name`."""
    spec = get_backbone(name)
    if spec.open_clip_config is not None:
        return copy.deepcopy(spec.open_clip_config)

    import open_clip

    config = open_clip.get_model_config(spec.open_clip_name)
    if config is None:
        raise InputError(
            f"open_clip {open_clip.__version__} has no model config named {spec.open_clip_name!r}; "
            "install an open_clip_torch version that ships it."
        )
    return config


def find_backbone_by_architecture(architecture: dict[str, Any]) -> str | None:
    """Return the name of the registered backbone whose architecture equals `architecture`.

    Compares embed_dim, quick_gelu and the vision and text fields that `architecture`
    gives (image_size, layers, width, patch_size, heads; context_length, vocab_size).
    Returns None when no backbone matches.
    """
    for name in BACKBONES:
        if _architecture_matches(backbone_architecture(name), architecture):
            return name
    return None


def _architecture_matches(config: dict[str, Any], architecture: dict[str, Any]) -> bool:
    if config.get("embed_dim") != architecture.get("embed_dim"):
        return False
    if bool(config.get("quick_gelu", False)) != bool(architecture.get("quick_gelu", False)):
        return False

    vision = config["vision_cfg"]
    vision_heads = vision["width"] // vision.get("head_width", 64)
    vision_expected = architecture["vision_cfg"]
    vision_actual = {**vision, "heads": vision_heads}
    for key, value in vision_expected.items():
        if vision_actual.get(key) != value:
            return False

    text = config["text_cfg"]
    for key, value in architecture["text_cfg"].items():
        if text.get(key) != value:
            return False
    return True


# Keys that OpenAI's TorchScript checkpoints carry besides the weights.
_OPENAI_NON_WEIGHT_KEYS = ("input_resolution", "context_length", "vocab_size")


def read_backbone_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a CLIP state dict from an OpenAI or open_clip weights file, as float32 tensors.

    Accepts `.safetensors`, a plain state dict saved with `torch.save` (read with
    `weights_only=True`, so no arbitrary unpickling), optionally nested under
    "state_dict" and prefixed "module.", and OpenAI's TorchScript `.pt` archives
    (read with `torch.jit.load`, which restores TorchScript modules only).
    Raises BundleError when the file is missing or unreadable.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise BundleError(f"Backbone weights file not found: {path}; check the path given as the weights file.")

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state_dict = load_file(str(path), device="cpu")
    elif zipfile.is_zipfile(path) and _is_torchscript_archive(path):
        # NOTE: torch.jit.load is deprecated in torch 2.14. It compiles the archive's TorchScript
        # code (not Python code), and it stays because OpenAI ships ViT-B-32.pt only in this format.
        state_dict = torch.jit.load(str(path), map_location="cpu").state_dict()
    else:
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except (RuntimeError, pickle.UnpicklingError, EOFError) as error:
            raise BundleError(
                f"Cannot read backbone weights from {path}: {error}. "
                "Give a .safetensors file, a torch state dict or OpenAI's TorchScript .pt file."
            ) from error
        state_dict = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else loaded
        if not isinstance(state_dict, dict):
            raise BundleError(f"{path} contains a {type(state_dict).__name__}, not a state dict of tensors.")

    cleaned: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key in _OPENAI_NON_WEIGHT_KEYS:
            continue
        if key.startswith("module."):
            key = key[len("module."):]
        if not isinstance(value, torch.Tensor):
            raise BundleError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor.")
        cleaned[key] = value.float() if value.is_floating_point() else value
    return cleaned


def _is_torchscript_archive(path: Path) -> bool:
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") or "/code/" in name for name in archive.namelist())


def find_cached_pretrained(name: str, tag: str) -> Path | None:
    """Return the local file of open_clip's pretrained weights `tag` for backbone `name`, if cached.

    Looks in the Hugging Face hub cache (where open_clip 3 downloads) and in
    `~/.cache/clip` (open_clip's cache for direct URL downloads). Never downloads.
    """
    import open_clip

    spec = get_backbone(name)
    pretrained = open_clip.get_pretrained_cfg(spec.open_clip_name, tag)
    if not pretrained:
        known = ", ".join(open_clip.list_pretrained_tags_by_model(spec.open_clip_name)) or "none"
        raise InputError(f"Backbone {name!r} has no open_clip pretrained tag {tag!r}; known tags: {known}.")

    hub_entry = pretrained.get("hf_hub", "")
    if hub_entry:
        from huggingface_hub import try_to_load_from_cache

        # An entry ending in "/" names a repository whose default weights file open_clip picks.
        repo_id, filename = os.path.split(hub_entry)
        candidates = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        for candidate in candidates:
            cached = try_to_load_from_cache(repo_id=repo_id, filename=candidate)
            if isinstance(cached, str) and os.path.isfile(cached):
                return Path(cached)

    url = pretrained.get("url", "")
    if url:
        cached_url = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        if cached_url.is_file():
            return cached_url
    return None
