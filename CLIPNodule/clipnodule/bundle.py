"""Model bundle on disk: manifest.json, per-fold safetensors weights and an optional backbone file.

A bundle is the model's complete description. Loading verifies every file's sha256
before deserialising anything and never unpickles. No Qt or Slicer imports.

Layout:
    manifest.json            format_version 1, model config, checksums, calibration, prompts
    backbone.safetensors     frozen CLIP weights, only for backbones open_clip cannot provide
    fold_<k>.safetensors     trainable_state_dict() of fold k (LoRA factors, heads, logit_scale)
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from . import __version__
from .calibration import BetaCalibration
from .errors import BundleError, InputError
from .hashing import sha256_file
from .intensity import CLIP_MEAN, CLIP_STD, HU_MAX, HU_MIN

if TYPE_CHECKING:
    import torch

    from .model import CLIPNoduleModel, ModelConfig

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
BACKBONE_FILE = "backbone.safetensors"
FOLD_FILE_PATTERN = "fold_{index}.safetensors"
PLANE_CONVENTION_NAME = "clip-nodule-reference-v1"

# Preprocessing of the published model: 1 mm grid, 100 mm cube padded with 0 HU, HU window
# [-1000, 500] scaled to [0, 1], nine 50 mm planes resized to 224 pixels, CLIP normalisation.
PREPROCESSING: dict[str, Any] = {
    "spacing_mm": 1.0,
    "crop_size_mm": 100,
    "plane_size_mm": 50,
    "image_size": 224,
    "hu_window": [HU_MIN, HU_MAX],
    "pad_hu": 0.0,
    "clip_mean": list(CLIP_MEAN),
    "clip_std": list(CLIP_STD),
}

DEFAULT_ATTRIBUTION = (
    "Method: Zhuang et al., 'Vision-Language Model-Based Semantic-Guided Imaging Biomarker for "
    "Lung Nodule Malignancy Prediction', Journal of Biomedical Informatics, 2025. "
    "Backbone: OpenAI CLIP through open_clip."
)

REQUIRED_MANIFEST_KEYS = (
    "format_version", "name", "version", "description", "created", "model", "backbone",
    "preprocessing", "plane_convention", "lora", "folds", "files", "zero_shot",
    "intended_use", "licence",
)
REQUIRED_FOLD_KEYS = ("index", "file", "sha256", "calibration")


@dataclass
class FoldModel:
    """One fold of a loaded bundle: its model in eval mode and its Beta calibration (or None)."""

    index: int
    model: "CLIPNoduleModel"
    calibration: BetaCalibration | None


@dataclass
class Bundle:
    """A loaded model bundle: folder, validated manifest, model config, fold models and prompts."""

    path: Path
    manifest: dict[str, Any]
    config: "ModelConfig"
    folds: list[FoldModel]
    prompt_set: dict[str, Any] | None


# Saving.


def save_bundle(
    path: str | Path,
    *,
    config: "ModelConfig",
    fold_state_dicts: list[dict[str, "torch.Tensor"]],
    calibrations: list[BetaCalibration | None],
    backbone_state_dict: dict[str, "torch.Tensor"] | None,
    name: str,
    version: str,
    description: str,
    intended_use: str,
    licence: str,
    training_summary: dict[str, Any] | None = None,
    prompt_set: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    fold_summaries: list[dict[str, Any] | None] | None = None,
    attribution: str = DEFAULT_ATTRIBUTION,
    overwrite: bool = False,
) -> Path:
    """Write a model bundle folder and return its path.

    fold_state_dicts[k] is fold k's `trainable_state_dict()`; calibrations[k] its Beta
    calibration or None. backbone_state_dict (`model.backbone_state_dict()`) is required
    when the backbone has no named pretrained weights (config.pretrained is None) and is
    not written otherwise, because open_clip provides those weights. prompt_set defaults
    to the published zero-shot prompts (None for vision-only models). The manifest is
    written last, so a folder without manifest.json is an incomplete export.
    Raises InputError for inconsistent arguments or a non-empty folder without overwrite.
    """
    from safetensors.torch import save_file

    from .zeroshot import DEFAULT_PROMPT_SET, validate_prompt_set

    folder = Path(path)
    _check_save_arguments(config, fold_state_dicts, calibrations, fold_summaries, name, version)
    _prepare_folder(folder, overwrite)

    needs_backbone_file = config.pretrained is None and config.tuning != "full"
    if needs_backbone_file and backbone_state_dict is None:
        raise InputError(
            f"backbone {config.backbone!r} has no named pretrained weights (pretrained=None), so the "
            "bundle must contain them; pass backbone_state_dict=model.backbone_state_dict()"
        )
    if backbone_state_dict is not None and not needs_backbone_file:
        reason = "full fine-tuning stores every weight per fold" if config.tuning == "full" else (
            f"open_clip provides pretrained {config.pretrained!r}"
        )
        logger.info("Not writing %s: %s", BACKBONE_FILE, reason)

    if config.vision_only:
        prompt_set = None
    else:
        prompt_set = validate_prompt_set(copy.deepcopy(prompt_set or DEFAULT_PROMPT_SET))

    files: dict[str, str] = {}
    if needs_backbone_file:
        backbone_path = folder / BACKBONE_FILE
        save_file(_contiguous_cpu(backbone_state_dict), str(backbone_path), metadata={"format": "pt"})
        _make_world_readable(backbone_path)
        files[BACKBONE_FILE] = sha256_file(backbone_path)

    folds = []
    for index, (state_dict, calibration) in enumerate(zip(fold_state_dicts, calibrations)):
        file_name = FOLD_FILE_PATTERN.format(index=index)
        fold_path = folder / file_name
        save_file(_contiguous_cpu(state_dict), str(fold_path), metadata={"format": "pt", "fold": str(index)})
        _make_world_readable(fold_path)
        files[file_name] = sha256_file(fold_path)

        entry: dict[str, Any] = {
            "index": index,
            "file": file_name,
            "sha256": files[file_name],
            "calibration": calibration.to_dict() if calibration is not None else None,
        }
        if fold_summaries is not None and fold_summaries[index] is not None:
            entry["validation"] = fold_summaries[index]
        folds.append(entry)

    manifest = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "version": version,
        "description": description,
        "created": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        "library_version": __version__,
        "model": {**config.to_dict(), "weights_path": None},
        "backbone": _backbone_section(config, BACKBONE_FILE if needs_backbone_file else None, files),
        "preprocessing": copy.deepcopy(PREPROCESSING),
        "plane_convention": {"name": PLANE_CONVENTION_NAME, "plane_names": list(_plane_names())},
        "lora": _lora_section(config),
        "folds": folds,
        "files": files,
        "zero_shot": prompt_set,
        "training_data": training_summary or {},
        "intended_use": intended_use,
        "licence": licence,
        "attribution": attribution,
    }
    if extra:
        clashes = sorted(set(extra) & set(manifest))
        if clashes:
            raise InputError(f"extra manifest entries {clashes} would replace standard keys; rename them")
        manifest.update(extra)

    text = json.dumps(manifest, indent=2, ensure_ascii=False, allow_nan=False)
    (folder / MANIFEST_FILE).write_text(text + "\n", encoding="utf-8")
    logger.info("Saved bundle %s %s with %d folds to %s", name, version, len(folds), folder)
    return folder


def _check_save_arguments(
    config: "ModelConfig",
    fold_state_dicts: list[dict[str, "torch.Tensor"]],
    calibrations: list[BetaCalibration | None],
    fold_summaries: list[dict[str, Any] | None] | None,
    name: str,
    version: str,
) -> None:
    if not fold_state_dicts:
        raise InputError("a bundle needs at least one fold; fold_state_dicts is empty")
    if len(calibrations) != len(fold_state_dicts):
        raise InputError(
            f"got {len(calibrations)} calibrations for {len(fold_state_dicts)} folds; "
            "pass one BetaCalibration or None per fold"
        )
    if fold_summaries is not None and len(fold_summaries) != len(fold_state_dicts):
        raise InputError(
            f"got {len(fold_summaries)} fold summaries for {len(fold_state_dicts)} folds; pass one per fold or None"
        )
    if not name.strip() or not version.strip():
        raise InputError(f"bundle name {name!r} and version {version!r} must not be empty")

    # Every fold comes from the same architecture, so the key sets and shapes must agree.
    reference = {key: tuple(tensor.shape) for key, tensor in fold_state_dicts[0].items()}
    for index, state_dict in enumerate(fold_state_dicts[1:], start=1):
        shapes = {key: tuple(tensor.shape) for key, tensor in state_dict.items()}
        if shapes != reference:
            differing = sorted(set(shapes) ^ set(reference)) or sorted(
                key for key in shapes if shapes[key] != reference[key]
            )
            raise InputError(
                f"fold {index} weights differ from fold 0 in keys or shapes ({', '.join(differing[:5])}); "
                f"all folds must come from the same {config.backbone!r} {config.tuning!r} model"
            )


def _prepare_folder(folder: Path, overwrite: bool) -> None:
    if folder.exists() and not folder.is_dir():
        raise InputError(f"bundle path {folder} is a file; give a folder path")
    folder.mkdir(parents=True, exist_ok=True)

    existing = sorted(item.name for item in folder.iterdir())
    if existing and not overwrite:
        raise InputError(
            f"bundle folder {folder} is not empty ({', '.join(existing[:5])}); "
            "choose a new folder or pass overwrite=True"
        )

    # Only files that a bundle writes are removed, so stale folds of an earlier export go away.
    for item in folder.iterdir():
        if item.is_file() and (item.name in (MANIFEST_FILE, BACKBONE_FILE) or _is_fold_file_name(item.name)):
            item.unlink()


def _is_fold_file_name(file_name: str) -> bool:
    stem = file_name.removesuffix(".safetensors")
    return file_name.endswith(".safetensors") and stem.startswith("fold_") and stem[5:].isdigit()


def _make_world_readable(path: Path) -> None:
    # safetensors 0.8 writes through a private temporary file (mode 0600); a bundle is
    # shared read-only data, for example inside an installed Slicer extension.
    path.chmod(0o644)


def _contiguous_cpu(state_dict: dict[str, "torch.Tensor"]) -> dict[str, "torch.Tensor"]:
    return {key: tensor.detach().to("cpu").contiguous() for key, tensor in state_dict.items()}


def _backbone_section(config: "ModelConfig", weights_file: str | None, files: dict[str, str]) -> dict[str, Any]:
    section: dict[str, Any] = {
        "name": config.backbone,
        "pretrained": config.pretrained,
        "weights_file": weights_file,
        "sha256": files.get(weights_file) if weights_file else None,
    }
    if weights_file is not None:
        section["note"] = "base CLIP weights are stored in the bundle"
        return section
    if config.pretrained is None:
        section["note"] = "full fine-tuning: every backbone weight is stored in the fold files"
        return section

    base_file = _resolve_base_weights_file(config)
    if base_file is not None:
        section["sha256"] = sha256_file(base_file)
        section["sha256_of"] = base_file.name
        section["note"] = f"sha256 of the base weights file {base_file.name} used when the bundle was saved"
    else:
        section["note"] = (
            f"base weights come from open_clip pretrained {config.pretrained!r}; no local weights "
            "file was found when the bundle was saved, so no sha256 is recorded"
        )
    return section


def _resolve_base_weights_file(config: "ModelConfig") -> Path | None:
    """Return the local file the base weights come from (weights_path or open_clip's cache), if any."""
    if config.weights_path and Path(config.weights_path).is_file():
        return Path(config.weights_path)
    if not config.pretrained:
        return None

    from .backbones import find_cached_pretrained

    try:
        return find_cached_pretrained(config.backbone, config.pretrained)
    except InputError as error:
        logger.warning("Cannot look up cached weights for %s: %s", config.backbone, error)
        return None


def _lora_section(config: "ModelConfig") -> dict[str, Any] | None:
    if config.tuning != "lora":
        return None
    return {
        "rank": config.lora_rank,
        "alpha": config.lora_alpha,
        "dropout": config.lora_dropout,
        "scaling": "rslora",
        "targets": ["q_proj", "k_proj", "v_proj"],
    }


def _plane_names() -> tuple[str, ...]:
    from .planes import PLANE_NAMES

    return PLANE_NAMES


# Reading and verifying.


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Read and validate a bundle's manifest.json; raise BundleError naming the missing or invalid entry."""
    folder = Path(path)
    manifest_path = folder / MANIFEST_FILE
    if not folder.is_dir():
        raise BundleError(f"model bundle folder not found: {folder}; check the path or download the bundle")
    if not manifest_path.is_file():
        raise BundleError(
            f"{manifest_path} not found; the folder is not a model bundle or the export did not finish. "
            "Re-download or re-export the bundle"
        )

    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"{manifest_path} is not valid JSON ({error}); re-download or re-export the bundle") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{manifest_path} must contain a JSON object")

    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{manifest_path}: format_version {version!r} is not supported by clipnodule {__version__}, "
            f"which reads format_version {FORMAT_VERSION}; update clipnodule or re-export the bundle"
        )
    missing = [key for key in REQUIRED_MANIFEST_KEYS if key not in manifest]
    if missing:
        raise BundleError(f"{manifest_path} lacks required keys: {', '.join(missing)}; re-export the bundle")

    _validate_files_section(manifest, manifest_path)
    _validate_folds_section(manifest, manifest_path)
    return manifest


def _validate_files_section(manifest: dict[str, Any], manifest_path: Path) -> None:
    files = manifest["files"]
    if not isinstance(files, dict) or not files:
        raise BundleError(f"{manifest_path}: 'files' must map each file name to its sha256")

    for name, digest in files.items():
        relative = PurePosixPath(name)
        if relative.is_absolute() or ".." in relative.parts or name in ("", MANIFEST_FILE):
            raise BundleError(f"{manifest_path}: file entry {name!r} must be a plain path inside the bundle")
        if not name.endswith(".safetensors"):
            raise BundleError(
                f"{manifest_path}: file entry {name!r} is not a .safetensors file; "
                "bundles hold safetensors weights only (no pickles)"
            )
        if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
            raise BundleError(f"{manifest_path}: sha256 of {name!r} is {digest!r}, not 64 lowercase hex digits")

    weights_file = manifest["backbone"].get("weights_file") if isinstance(manifest["backbone"], dict) else None
    if weights_file is not None and weights_file not in files:
        raise BundleError(f"{manifest_path}: backbone weights file {weights_file!r} is not listed under 'files'")


def _validate_folds_section(manifest: dict[str, Any], manifest_path: Path) -> None:
    folds = manifest["folds"]
    if not isinstance(folds, list) or not folds:
        raise BundleError(f"{manifest_path}: 'folds' must be a non-empty list")

    seen: set[int] = set()
    for position, fold in enumerate(folds):
        if not isinstance(fold, dict):
            raise BundleError(f"{manifest_path}: fold entry #{position} is not a JSON object")
        missing = [key for key in REQUIRED_FOLD_KEYS if key not in fold]
        if missing:
            raise BundleError(f"{manifest_path}: fold entry #{position} lacks {', '.join(missing)}")
        if not isinstance(fold["index"], int) or fold["index"] in seen:
            raise BundleError(f"{manifest_path}: fold entry #{position} has an invalid or repeated index {fold['index']!r}")
        seen.add(fold["index"])
        if manifest["files"].get(fold["file"]) != fold["sha256"]:
            raise BundleError(
                f"{manifest_path}: fold {fold['index']} file {fold['file']!r} is not listed under 'files' "
                "with the same sha256; re-export the bundle"
            )


def verify_bundle_files(path: str | Path, manifest: dict[str, Any] | None = None) -> None:
    """Check that every file listed in the manifest exists and matches its sha256.

    Raises BundleError naming the first missing, truncated or modified file.
    NOTE: manifest.json cannot list its own sha256, so an edit to it (for example to a
    calibration value) is caught only if it breaks the manifest's validation.
    """
    folder = Path(path)
    if manifest is None:
        manifest = read_manifest(folder)

    for name, expected in manifest["files"].items():
        file_path = folder / name
        if not file_path.is_file():
            raise BundleError(
                f"bundle file {name} is missing from {folder}; re-download or re-export the bundle"
            )
        actual = sha256_file(file_path)
        if actual != expected:
            raise BundleError(
                f"bundle file {name} ({file_path.stat().st_size} bytes) has sha256 {actual}, but the manifest "
                f"lists {expected}; the file is truncated or modified. Re-download or re-export the bundle"
            )

    # Documentation beside the weights (a model card, a README) is expected and never loaded.
    unlisted = sorted(
        item.name for item in folder.iterdir()
        if item.is_file() and item.name != MANIFEST_FILE and item.name not in manifest["files"]
        and item.suffix.lower() not in {".md", ".txt"}
    )
    if unlisted:
        logger.warning("Ignoring files in %s that the manifest does not list: %s", folder, ", ".join(unlisted))


# Loading.


def load_bundle(
    path: str | Path,
    device: "str | torch.device" = "cpu",
    folds: list[int] | None = None,
    weights_path: str | Path | None = None,
) -> Bundle:
    """Verify and load a bundle: one model per selected fold, in eval mode, on `device`.

    Every listed file's sha256 is checked before any file is deserialised. The backbone is
    built once. Each further fold model is a deep copy that reuses the frozen tensors
    (everything the fold file does not contain) instead of copying them. So in 'lora' and
    'probe' bundles five folds take about one backbone of memory plus five sets of LoRA
    factors and heads, while in 'full' bundles each fold has its own copy of every weight.
    Because folds share tensors, do not modify a fold model's frozen weights in place.
    weights_path overrides where named pretrained base weights (for example OpenAI's
    ViT-B-32.pt) are read from. By default they come from open_clip's cache.
    """
    from .model import ModelConfig
    from .zeroshot import validate_prompt_set

    started = time.perf_counter()
    folder = Path(path)
    manifest = read_manifest(folder)
    _check_compatibility(manifest, folder)
    verify_bundle_files(folder, manifest)

    try:
        config = ModelConfig.from_dict(manifest["model"])
    except (TypeError, InputError) as error:
        raise BundleError(f"{folder / MANIFEST_FILE}: invalid 'model' entry ({error}); re-export the bundle") from None

    prompt_set = manifest["zero_shot"]
    if prompt_set is not None:
        try:
            validate_prompt_set(prompt_set)
        except InputError as error:
            raise BundleError(f"{folder / MANIFEST_FILE}: invalid 'zero_shot' prompt set: {error}") from None

    selected = _select_folds(manifest, folds, folder)
    calibrations = {fold["index"]: _read_calibration(fold, folder) for fold in selected}

    base = _build_base_model(config, manifest, folder, device, weights_path)
    trainable_keys = set(base.trainable_state_dict())
    fold_models = []
    for position, fold in enumerate(selected):
        model = base if position == 0 else _copy_sharing_frozen(base, trainable_keys)
        state_dict = _read_safetensors(folder / fold["file"], device)
        try:
            model.load_trainable_state_dict(state_dict)
        except BundleError as error:
            raise BundleError(f"bundle file {fold['file']}: {error}") from None
        model.eval()
        fold_models.append(FoldModel(index=fold["index"], model=model, calibration=calibrations[fold["index"]]))

    logger.info(
        "Loaded bundle %s %s (%d of %d folds) from %s on %s in %.1f s",
        manifest["name"], manifest["version"], len(fold_models), len(manifest["folds"]),
        folder, device, time.perf_counter() - started,
    )
    return Bundle(path=folder, manifest=manifest, config=config, folds=fold_models, prompt_set=prompt_set)


def _check_compatibility(manifest: dict[str, Any], folder: Path) -> None:
    """Reject bundles whose preprocessing or plane convention differ from what this library implements."""
    manifest_path = folder / MANIFEST_FILE
    preprocessing = manifest["preprocessing"]
    if not isinstance(preprocessing, dict):
        raise BundleError(f"{manifest_path}: 'preprocessing' must be a JSON object")
    for key, expected in PREPROCESSING.items():
        if preprocessing.get(key) != expected:
            raise BundleError(
                f"{manifest_path}: preprocessing {key} is {preprocessing.get(key)!r}, but clipnodule "
                f"{__version__} implements {expected!r}; use a clipnodule version made for this bundle"
            )

    convention = manifest["plane_convention"]
    names = list(_plane_names())
    if not isinstance(convention, dict) or convention.get("name") != PLANE_CONVENTION_NAME:
        raise BundleError(
            f"{manifest_path}: plane convention {convention!r} is not {PLANE_CONVENTION_NAME!r}, the only "
            f"convention clipnodule {__version__} implements"
        )
    if convention.get("plane_names") != names:
        raise BundleError(
            f"{manifest_path}: plane names {convention.get('plane_names')!r} differ from this library's order {names!r}"
        )


def _select_folds(manifest: dict[str, Any], folds: list[int] | None, folder: Path) -> list[dict[str, Any]]:
    available = {fold["index"]: fold for fold in manifest["folds"]}
    if folds is None:
        return [available[index] for index in sorted(available)]

    unknown = [index for index in folds if index not in available]
    if unknown or not folds:
        raise InputError(
            f"fold selection {folds!r} is invalid for bundle {folder}; choose from folds {sorted(available)}"
        )
    return [available[index] for index in dict.fromkeys(folds)]


def _read_calibration(fold: dict[str, Any], folder: Path) -> BetaCalibration | None:
    if fold["calibration"] is None:
        return None
    try:
        return BetaCalibration.from_dict(fold["calibration"])
    except InputError as error:
        raise BundleError(f"{folder / MANIFEST_FILE}: fold {fold['index']} calibration is invalid: {error}") from None


def _read_safetensors(file_path: Path, device: "str | torch.device") -> dict[str, "torch.Tensor"]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(file_path), device=str(device))
    except (SafetensorError, OSError, ValueError) as error:
        raise BundleError(
            f"bundle file {file_path.name} cannot be read as safetensors ({error}); re-download or re-export the bundle"
        ) from None


def _build_base_model(
    config: "ModelConfig",
    manifest: dict[str, Any],
    folder: Path,
    device: "str | torch.device",
    weights_path: str | Path | None,
) -> "CLIPNoduleModel":
    from .model import build_model

    weights_file = manifest["backbone"].get("weights_file")
    if weights_file is not None:
        backbone = _read_safetensors(folder / weights_file, "cpu")
        try:
            return build_model(config, device=device, backbone_state_dict=backbone)
        except BundleError as error:
            raise BundleError(f"bundle file {weights_file}: {error}") from None

    if config.tuning == "full":
        # The fold files overwrite every backbone weight, so pretrained weights are not needed.
        return build_model(dataclasses.replace(config, pretrained=None, weights_path=None), device=device)

    if weights_path is not None:
        config = dataclasses.replace(config, weights_path=str(weights_path))
        _compare_base_weights(Path(weights_path), manifest)
    elif config.pretrained is not None:
        cached = _resolve_base_weights_file(config)
        if cached is not None:
            _compare_base_weights(cached, manifest)
    return build_model(config, device=device)


def _compare_base_weights(file_path: Path, manifest: dict[str, Any]) -> None:
    # A mismatch is only logged: the same weights exist in several file formats
    # (OpenAI's TorchScript .pt, open_clip's .safetensors), each with its own sha256.
    expected = manifest["backbone"].get("sha256")
    if expected is None or not file_path.is_file():
        return
    actual = sha256_file(file_path)
    if actual != expected:
        logger.warning(
            "Base weights %s have sha256 %s, but the bundle was saved with %s (%s); "
            "check that they are the same pretrained weights",
            file_path, actual, expected, manifest["backbone"].get("sha256_of", "unknown file"),
        )


def _copy_sharing_frozen(base: "CLIPNoduleModel", trainable_keys: set[str]) -> "CLIPNoduleModel":
    """Deep-copy a model, reusing (not copying) every tensor outside trainable_keys, and the tokenizer."""
    memo: dict[int, Any] = {}
    for name, tensor in [*base.named_parameters(), *base.named_buffers()]:
        if name not in trainable_keys:
            memo[id(tensor)] = tensor
    if getattr(base, "tokenizer", None) is not None:
        memo[id(base.tokenizer)] = base.tokenizer
    return copy.deepcopy(base, memo)


# Description.


def describe_bundle(path: str | Path, verify: bool = True) -> str:
    """Return a multi-line summary of a bundle for the command line, after verifying its checksums.

    Raises BundleError like load_bundle when a file is missing or modified (with verify=True).
    """
    folder = Path(path)
    manifest = read_manifest(folder)
    if verify:
        verify_bundle_files(folder, manifest)

    model = manifest["model"]
    backbone = manifest["backbone"]
    lines = [
        f"{manifest['name']} {manifest['version']}",
        f"  folder:        {folder}",
        f"  description:   {manifest['description']}",
        f"  created:       {manifest['created']} (clipnodule {manifest.get('library_version', 'unknown')})",
        f"  backbone:      {backbone.get('name')} pretrained={backbone.get('pretrained')} "
        f"sha256={backbone.get('sha256') or 'not recorded'}",
        f"  tuning:        {model.get('tuning')}{' (vision only)' if model.get('vision_only') else ''}",
    ]
    if manifest["lora"]:
        lora = manifest["lora"]
        lines.append(f"  LoRA:          rank {lora['rank']}, alpha {lora['alpha']}, dropout {lora['dropout']}, {lora['scaling']}")

    lines.append(f"  folds:         {len(manifest['folds'])}")
    for fold in manifest["folds"]:
        calibration = fold["calibration"]
        calibration_text = (
            f"beta a={calibration['a']:.4g} b={calibration['b']:.4g} c={calibration['c']:.4g}"
            if calibration else "no calibration"
        )
        size = _file_size_text(folder / fold["file"])
        lines.append(f"    fold {fold['index']}: {fold['file']} ({size}), {calibration_text}")

    prompt_set = manifest["zero_shot"]
    features = [feature["name"] for feature in prompt_set["features"]] if prompt_set else []
    lines.append(f"  zero-shot:     {len(features)} features" + (f" ({', '.join(features)})" if features else ""))
    lines.append(f"  intended use:  {manifest['intended_use']}")
    lines.append(f"  licence:       {manifest['licence']}")
    if manifest.get("training_data"):
        lines.append(f"  training data: {json.dumps(manifest['training_data'], sort_keys=True)}")
    lines.append(
        f"  checksums:     {len(manifest['files'])} files "
        + ("verified (sha256 matches the manifest)" if verify else "not verified")
    )
    return "\n".join(lines)


def _file_size_text(file_path: Path) -> str:
    try:
        size = os.path.getsize(file_path)
    except OSError:
        return "missing"
    return f"{size / 1e6:.1f} MB" if size >= 1e5 else f"{size / 1e3:.1f} kB"
