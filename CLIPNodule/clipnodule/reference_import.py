"""Conversion of the published CLIP_nodule checkpoints (github.com/luotingzhuang/CLIP_nodule) into our model.

Reads `args.txt` (with `ast`, never `eval`), `fold_<k>/best_both.pt` (with
`torch.load(weights_only=True)`) and, only on request, the joblib Beta-calibrator
pickles through an unpickler that admits a short list of betacal, scikit-learn and
numpy classes. No Qt or Slicer imports.
"""

from __future__ import annotations

import ast
import logging
import math
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .backbones import find_backbone_by_architecture
from .calibration import BetaCalibration
from .errors import BundleError
from .model import CLIPNoduleModel, ModelConfig, build_model, describe_key_problems

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "best_both.pt"
ARGS_NAME = "args.txt"
FOLD_PATTERN = re.compile(r"fold_(\d+)")

# The reference code's tuning names: "lora", "pt" (probe tuning), any name with "ft" (full).
REFERENCE_TUNING = {"lora": "lora", "pt": "probe"}

# Text-tower keys of OpenAI's CLIP layout, which the reference model keeps at top level.
TEXT_TOWER_PREFIXES = ("positional_embedding", "text_projection", "token_embedding.", "transformer.", "ln_final.")

# Class-weight buffers of the reference's cross-entropy losses; saved but not part of the model.
LOSS_BUFFER_KEYS = ("pred_criterion_val.weight", "pred_criterion_train.weight")

# Keys from which the architecture is read; their absence stops the import early.
ARCHITECTURE_KEYS = (
    "vision_model.conv1.weight",
    "vision_model.positional_embedding",
    "vision_model.proj",
    "positional_embedding",
    "token_embedding.weight",
    "ln_final.weight",
    "image_projection.projector.0.weight",
)

# OpenAI CLIP uses one attention head per 64 channels; head counts are not visible in shapes.
HEAD_WIDTH = 64
MIL_ATTENTION_DIM = 128


@dataclass
class ReferenceImport:
    """The published model converted to our layout, ready for `save_bundle`.

    `backbone_state_dict` is in open_clip layout with the pure pretrained weights (LoRA
    deltas removed); `fold_state_dicts[i]` is fold `folds[i]`'s `trainable_state_dict()`.
    """

    config: ModelConfig
    backbone_state_dict: dict[str, torch.Tensor]
    folds: list[int]
    fold_state_dicts: list[dict[str, torch.Tensor]]
    calibrations: list[BetaCalibration | None]
    manifest_extras: dict[str, Any] = field(default_factory=dict)

    def build_fold_model(self, position: int, device: str | torch.device = "cpu") -> CLIPNoduleModel:
        """Build the model of the fold at `position` (0-based index into `folds`), in eval mode."""
        model = build_model(self.config, device=device, backbone_state_dict=self.backbone_state_dict)
        model.load_trainable_state_dict(self.fold_state_dicts[position])
        return model.eval()


def convert_reference_checkpoints(checkpoint_dir: str | Path, trust_calibrators: bool = False) -> ReferenceImport:
    """Convert the reference checkpoint folder into a ReferenceImport.

    Expects `args.txt` and `fold_<k>/best_both.pt` for each fold, and with
    `trust_calibrators` also `fold_<k>/cal_<k>.pkl`. Raises BundleError naming every
    missing, unexpected or mis-shaped key, unsupported settings and refused pickles.
    """
    checkpoint_dir = Path(checkpoint_dir)
    arguments = read_reference_args(_find_args_file(checkpoint_dir))
    fold_paths = _find_fold_checkpoints(checkpoint_dir)
    tuning = _our_tuning(arguments)

    first_state = read_reference_checkpoint(fold_paths[0][1])
    architecture = infer_reference_architecture(first_state)
    rank = _lora_rank(first_state, arguments) if tuning == "lora" else int(arguments.get("r", 2))
    config = _model_config(arguments, architecture, tuning, rank)
    logger.info("Reference model %r: backbone %s, tuning %s", arguments.get("model"), config.backbone, tuning)

    model = build_model(config)
    scaling = config.lora_alpha / math.sqrt(config.lora_rank)

    backbone: dict[str, torch.Tensor] | None = None
    fold_state_dicts = []
    for position, (fold, path) in enumerate(fold_paths):
        state = first_state if position == 0 else read_reference_checkpoint(path)
        check_reference_keys(state, architecture, tuning, rank, path)
        converted = convert_reference_state_dict(state, tuning, scaling)
        converted.update({key: value for key, value in model.state_dict().items() if key.startswith("clip.logit_")})
        model.load_state_dict(converted, strict=True)

        fold_backbone = model.backbone_state_dict()
        if backbone is None:
            backbone = fold_backbone
        elif tuning != "full":
            _check_same_backbone(backbone, fold_backbone, fold, fold_paths[0][0])
        fold_state_dicts.append(model.trainable_state_dict())
        logger.info("Converted fold %d from %s", fold, path)

    calibrations: list[BetaCalibration | None] = [None] * len(fold_paths)
    if trust_calibrators:
        calibrations = [read_trusted_calibrator(_calibrator_path(path, fold)) for fold, path in fold_paths]
    else:
        logger.warning(
            "Calibrators not imported: the fold_<k>/cal_<k>.pkl files are pickles and are read only "
            "with --calibrators trusted. The bundle gives uncalibrated probabilities."
        )

    extras = {
        "source": "CLIP_nodule checkpoints (github.com/luotingzhuang/CLIP_nodule)",
        "checkpoint_dir": str(checkpoint_dir.resolve()),
        "reference_model_name": arguments.get("model"),
        "reference_tuning": arguments.get("tuning"),
        "reference_args": {key: _json_safe(value) for key, value in arguments.items()},
        "architecture": architecture,
        "calibrators_imported": bool(trust_calibrators),
        "lora_weights": "pretrained base recovered as stored weight - scaling * B @ A" if tuning == "lora" else None,
    }
    class_weights = first_state.get("pred_criterion_val.weight")
    if class_weights is not None:
        extras["reference_class_weights"] = [float(value) for value in class_weights]

    return ReferenceImport(
        config=config,
        backbone_state_dict=backbone,
        folds=[fold for fold, _ in fold_paths],
        fold_state_dicts=fold_state_dicts,
        calibrations=calibrations,
        manifest_extras=extras,
    )


REFERENCE_INTENDED_USE = (
    "Research use: one-year malignancy risk of a lung nodule on chest CT, converted from the "
    "authors' published checkpoints. Not a medical device; not validated for clinical decisions."
)
REFERENCE_LICENCE = (
    "The CLIP_nodule code is AGPL-3.0. The licence of the published weights is not stated by the "
    "authors; check it with them before clinical or commercial use. OpenAI CLIP weights: MIT."
)


def write_reference_bundle(
    imported: ReferenceImport,
    output: str | Path,
    name: str = "clip-nodule-published",
    version: str = "1.0",
    overwrite: bool = False,
) -> Path:
    """Save `imported` as a model bundle folder at `output` and return its path."""
    from .bundle import save_bundle

    calibrated = all(calibration is not None for calibration in imported.calibrations)
    fold_count = f"{len(imported.folds)} fold{'s' if len(imported.folds) != 1 else ''}"
    description = (
        f"Published CLIP_nodule model ({fold_count}, "
        f"{'calibrated' if calibrated else 'without calibration'}), imported from the authors' checkpoints."
    )
    return save_bundle(
        output,
        config=imported.config,
        fold_state_dicts=imported.fold_state_dicts,
        calibrations=imported.calibrations,
        backbone_state_dict=imported.backbone_state_dict,
        name=name,
        version=version,
        description=description,
        intended_use=REFERENCE_INTENDED_USE,
        licence=REFERENCE_LICENCE,
        extra={"reference_import": {**imported.manifest_extras, "fold_indices": imported.folds}},
        overwrite=overwrite,
    )


# Reading the reference files.


def read_reference_args(path: str | Path) -> dict[str, Any]:
    """Parse the `str(argparse.Namespace)` text of `args.txt` into a dict, without evaluating code.

    Values that are not Python literals are kept as their source text.
    """
    text = Path(path).read_text(encoding="utf-8").strip()
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as error:
        raise BundleError(f"{path} is not a printed argparse Namespace: {error}") from error

    call = tree.body
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "Namespace"):
        raise BundleError(f"{path} does not contain Namespace(...); expected the args.txt written by train.py.")
    if call.args:
        raise BundleError(f"{path}: Namespace(...) has positional values; expected keyword values only.")

    arguments: dict[str, Any] = {}
    for keyword in call.keywords:
        try:
            arguments[keyword.arg] = ast.literal_eval(keyword.value)
        except ValueError:
            arguments[keyword.arg] = ast.unparse(keyword.value)
    return arguments


def read_reference_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Load one fold's `{"model": state_dict}` with `torch.load(weights_only=True)`."""
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        raise BundleError(
            f"Cannot read {path} as a tensor-only checkpoint ({error}). Only weights are loaded from "
            "reference checkpoints; a file holding other Python objects is not unpickled."
        ) from error

    state = loaded.get("model", loaded) if isinstance(loaded, dict) else None
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise BundleError(f"{path} does not hold {{'model': state_dict}} with tensors only.")
    return dict(state)


def _find_args_file(checkpoint_dir: Path) -> Path:
    if not checkpoint_dir.is_dir():
        raise BundleError(f"Reference checkpoint folder not found: {checkpoint_dir}.")
    path = checkpoint_dir / ARGS_NAME
    if not path.is_file():
        raise BundleError(f"{ARGS_NAME} not found in {checkpoint_dir}; it is written by the reference train.py.")
    return path


def _find_fold_checkpoints(checkpoint_dir: Path) -> list[tuple[int, Path]]:
    folds = []
    for child in checkpoint_dir.iterdir():
        match = FOLD_PATTERN.fullmatch(child.name)
        if match and child.is_dir():
            folds.append((int(match[1]), child / CHECKPOINT_NAME))
    if not folds:
        raise BundleError(f"No fold_<k> folders in {checkpoint_dir}; expected fold_0/{CHECKPOINT_NAME} and so on.")

    missing = [str(path) for _, path in folds if not path.is_file()]
    if missing:
        raise BundleError(f"Fold checkpoints not found: {', '.join(missing)}.")
    return sorted(folds)


def _calibrator_path(checkpoint_path: Path, fold: int) -> Path:
    return checkpoint_path.parent / f"cal_{fold}.pkl"


# Architecture and key checks.


def infer_reference_architecture(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Read the CLIP architecture from tensor shapes, in open_clip's model-config layout."""
    missing = [key for key in ARCHITECTURE_KEYS if key not in state]
    if missing:
        raise BundleError(f"Reference checkpoint lacks keys needed to read the architecture: {', '.join(missing)}.")

    conv = state["vision_model.conv1.weight"]
    vision_width = int(conv.shape[0])
    patch_size = int(conv.shape[-1])
    grid = round(math.sqrt(state["vision_model.positional_embedding"].shape[0] - 1))
    text_width = int(state["ln_final.weight"].shape[0])

    return {
        "embed_dim": int(state["vision_model.proj"].shape[1]),
        "quick_gelu": True,
        "vision_cfg": {
            "image_size": patch_size * grid,
            "layers": _count_blocks(state, "vision_model.transformer.resblocks."),
            "width": vision_width,
            "patch_size": patch_size,
            "heads": max(1, vision_width // HEAD_WIDTH),
        },
        "text_cfg": {
            "context_length": int(state["positional_embedding"].shape[0]),
            "vocab_size": int(state["token_embedding.weight"].shape[0]),
            "width": text_width,
            "heads": max(1, text_width // HEAD_WIDTH),
            "layers": _count_blocks(state, "transformer.resblocks."),
        },
    }


def _count_blocks(state: dict[str, torch.Tensor], prefix: str) -> int:
    indices = [int(key[len(prefix):].split(".", 1)[0]) for key in state if key.startswith(prefix)]
    return max(indices) + 1 if indices else 0


def expected_reference_shapes(
    architecture: dict[str, Any], tuning: str, rank: int, head_dim: int, num_classes: int = 2
) -> dict[str, tuple[int, ...]]:
    """Return every key of a reference state dict with this architecture, with its shape."""
    vision = architecture["vision_cfg"]
    text = architecture["text_cfg"]
    embed_dim = architecture["embed_dim"]
    vision_width = vision["width"]
    text_width = text["width"]
    grid = vision["image_size"] // vision["patch_size"]
    patch = vision["patch_size"]

    shapes: dict[str, tuple[int, ...]] = {
        "positional_embedding": (text["context_length"], text_width),
        "text_projection": (text_width, embed_dim),
        "token_embedding.weight": (text["vocab_size"], text_width),
        "ln_final.weight": (text_width,),
        "ln_final.bias": (text_width,),
        "logit_scale": (),
        "vision_model.class_embedding": (vision_width,),
        "vision_model.positional_embedding": (grid * grid + 1, vision_width),
        "vision_model.proj": (vision_width, embed_dim),
        "vision_model.conv1.weight": (vision_width, 3, patch, patch),
    }
    for name in ("ln_pre", "ln_post"):
        shapes[f"vision_model.{name}.weight"] = (vision_width,)
        shapes[f"vision_model.{name}.bias"] = (vision_width,)
    for index in range(vision["layers"]):
        shapes.update(_block_shapes(f"vision_model.transformer.resblocks.{index}", vision_width, tuning, rank))
    for index in range(text["layers"]):
        shapes.update(_block_shapes(f"transformer.resblocks.{index}", text_width, tuning, rank))

    heads = {
        "image_projection.projector.0": (head_dim, embed_dim),
        "image_projection.attention.0": (MIL_ATTENTION_DIM, head_dim),
        "image_projection.attention.2": (1, MIL_ATTENTION_DIM),
        "semantic_projection.projection": (head_dim, embed_dim),
        "semantic_projection.fc": (head_dim, head_dim),
        "classifier_image": (num_classes, head_dim),
        "classifier_text": (num_classes, head_dim),
    }
    for prefix, (rows, columns) in heads.items():
        shapes[f"{prefix}.weight"] = (rows, columns)
        shapes[f"{prefix}.bias"] = (rows,)
    shapes["semantic_projection.layer_norm.weight"] = (head_dim,)
    shapes["semantic_projection.layer_norm.bias"] = (head_dim,)
    return shapes


def _block_shapes(prefix: str, width: int, tuning: str, rank: int) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    if tuning == "lora":
        for projection in ("q_proj", "k_proj", "v_proj"):
            shapes[f"{prefix}.attn.{projection}.weight"] = (width, width)
            shapes[f"{prefix}.attn.{projection}.bias"] = (width,)
            shapes[f"{prefix}.attn.{projection}.w_lora_A"] = (rank, width)
            shapes[f"{prefix}.attn.{projection}.w_lora_B"] = (width, rank)
        shapes[f"{prefix}.attn.proj.weight"] = (width, width)
        shapes[f"{prefix}.attn.proj.bias"] = (width,)
    else:
        shapes[f"{prefix}.attn.in_proj_weight"] = (3 * width, width)
        shapes[f"{prefix}.attn.in_proj_bias"] = (3 * width,)
        shapes[f"{prefix}.attn.out_proj.weight"] = (width, width)
        shapes[f"{prefix}.attn.out_proj.bias"] = (width,)

    mlp_width = 4 * width
    for name in ("ln_1", "ln_2"):
        shapes[f"{prefix}.{name}.weight"] = (width,)
        shapes[f"{prefix}.{name}.bias"] = (width,)
    shapes[f"{prefix}.mlp.c_fc.weight"] = (mlp_width, width)
    shapes[f"{prefix}.mlp.c_fc.bias"] = (mlp_width,)
    shapes[f"{prefix}.mlp.c_proj.weight"] = (width, mlp_width)
    shapes[f"{prefix}.mlp.c_proj.bias"] = (width,)
    return shapes


def check_reference_keys(
    state: dict[str, torch.Tensor], architecture: dict[str, Any], tuning: str, rank: int, source: str | Path
) -> None:
    """Raise BundleError listing every missing, unexpected and mis-shaped key of a reference state dict."""
    head_dim = int(state["image_projection.projector.0.weight"].shape[0])
    expected = expected_reference_shapes(architecture, tuning, rank, head_dim)

    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected) - set(LOSS_BUFFER_KEYS))
    misshaped = sorted(
        f"{key} (stored {tuple(state[key].shape)}, expected {expected[key]})"
        for key in set(expected) & set(state)
        if tuple(state[key].shape) != expected[key]
    )
    problems = describe_key_problems(missing, unexpected, misshaped)
    if problems:
        raise BundleError(
            f"{source} does not match the published CLIP_nodule layout ({'; '.join(problems)}). "
            "Nothing was imported; check that the folder holds the authors' best_both.pt files."
        )


# Conversion.


def convert_reference_state_dict(
    state: dict[str, torch.Tensor], tuning: str, scaling: float
) -> dict[str, torch.Tensor]:
    """Map a checked reference state dict onto CLIPNoduleModel keys (without open_clip's own logit_scale).

    With LoRA, the stored q/k/v weights are already merged (W0 + scaling * B @ A,
    because the reference saves after `model.eval()`), so the pretrained W0 is recovered
    by subtracting the delta in float64.
    """
    converted: dict[str, torch.Tensor] = {}
    attention_key = re.compile(r"(?P<block>.+\.resblocks\.\d+)\.attn\.(?P<rest>.+)")

    for key, tensor in state.items():
        if key in LOSS_BUFFER_KEYS:
            continue
        match = attention_key.fullmatch(key)
        if match is None:
            converted[_our_key(key)] = tensor.clone()
            continue

        block = _our_key(match["block"])
        rest = match["rest"]
        if tuning == "lora":
            _convert_lora_attention_key(state, key, block, rest, scaling, converted)
        else:
            _convert_packed_attention_key(tensor, block, rest, converted)
    return converted


def _our_key(key: str) -> str:
    if key.startswith("vision_model."):
        return "clip.visual." + key[len("vision_model."):]
    if key.startswith(TEXT_TOWER_PREFIXES):
        return "clip." + key
    if key.startswith("image_projection."):
        return "mil_head." + key[len("image_projection."):]
    if key.startswith("semantic_projection."):
        return "text_head." + key[len("semantic_projection."):]
    return key


def _convert_lora_attention_key(
    state: dict[str, torch.Tensor],
    key: str,
    block: str,
    rest: str,
    scaling: float,
    converted: dict[str, torch.Tensor],
) -> None:
    projection, _, parameter = rest.partition(".")
    target = f"{block}.attn"
    if projection == "proj":
        converted[f"{target}.out_proj.{parameter}"] = state[key].clone()
    elif parameter == "weight":
        lora_a = state[key.replace(".weight", ".w_lora_A")].double()
        lora_b = state[key.replace(".weight", ".w_lora_B")].double()
        base = state[key].double() - scaling * (lora_b @ lora_a)
        converted[f"{target}.{projection}.base_layer.weight"] = base.to(state[key].dtype)
    elif parameter == "bias":
        converted[f"{target}.{projection}.base_layer.bias"] = state[key].clone()
    elif parameter == "w_lora_A":
        converted[f"{target}.{projection}.lora_A.default.weight"] = state[key].clone()
    elif parameter == "w_lora_B":
        converted[f"{target}.{projection}.lora_B.default.weight"] = state[key].clone()


def _convert_packed_attention_key(
    tensor: torch.Tensor, block: str, rest: str, converted: dict[str, torch.Tensor]
) -> None:
    target = f"{block}.attn"
    if rest.startswith("out_proj."):
        converted[f"{target}.{rest}"] = tensor.clone()
        return

    kind = "weight" if rest == "in_proj_weight" else "bias"
    for projection, part in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3, dim=0)):
        converted[f"{target}.{projection}.{kind}"] = part.clone()


def _check_same_backbone(
    reference: dict[str, torch.Tensor], other: dict[str, torch.Tensor], fold: int, first_fold: int
) -> None:
    # Recovered base weights differ between folds by float32 rounding of W0 + delta - delta.
    differing = [
        key for key, tensor in reference.items()
        if not torch.allclose(tensor, other[key], rtol=1e-5, atol=1e-6)
    ]
    if differing:
        raise BundleError(
            f"Fold {fold}'s frozen CLIP weights differ from fold {first_fold}'s in: {', '.join(sorted(differing)[:10])}"
            f"{' and more' if len(differing) > 10 else ''}. The folds were not trained from the same "
            "backbone, so they cannot share one bundle backbone."
        )


def _our_tuning(arguments: dict[str, Any]) -> str:
    tuning = str(arguments.get("tuning", ""))
    if tuning in REFERENCE_TUNING:
        ours = REFERENCE_TUNING[tuning]
    elif "ft" in tuning:
        ours = "full"
    else:
        raise BundleError(f"args.txt has tuning={tuning!r}; the importer supports 'lora', 'pt' and 'ft'.")

    if ours == "lora":
        unsupported = []
        if arguments.get("encoder", "both") != "both":
            unsupported.append(f"encoder={arguments.get('encoder')!r} (supported: 'both')")
        if arguments.get("position", "all") != "all":
            unsupported.append(f"position={arguments.get('position')!r} (supported: 'all')")
        if sorted(arguments.get("params", ["q", "k", "v"])) != ["k", "q", "v"]:
            unsupported.append(f"params={arguments.get('params')!r} (supported: ['q', 'k', 'v'])")
        if unsupported:
            raise BundleError(
                "The reference model uses LoRA settings this model cannot represent: " + "; ".join(unsupported) + "."
            )
    return ours


def _lora_rank(state: dict[str, torch.Tensor], arguments: dict[str, Any]) -> int:
    key = next((key for key in state if key.endswith(".w_lora_A")), None)
    if key is None:
        raise BundleError("args.txt sets tuning='lora', but the checkpoint has no w_lora_A keys.")
    rank = int(state[key].shape[0])
    if "r" in arguments and int(arguments["r"]) != rank:
        raise BundleError(f"args.txt gives LoRA rank r={arguments['r']} but {key} has rank {rank}.")
    return rank


def _model_config(arguments: dict[str, Any], architecture: dict[str, Any], tuning: str, rank: int) -> ModelConfig:
    backbone = find_backbone_by_architecture(architecture)
    if backbone is None:
        raise BundleError(
            f"No registered backbone has the architecture of this checkpoint ({architecture}); "
            "add a matching entry to clipnodule.backbones.BACKBONES."
        )
    return ModelConfig(
        backbone=backbone,
        pretrained=None,
        weights_path=None,
        tuning=tuning,
        vision_only=False,
        lora_rank=rank,
        lora_alpha=float(arguments.get("alpha", 1.0)),
        lora_dropout=float(arguments.get("dropout_rate", 0.25)),
        embed_dim=int(arguments.get("out_dim", 256)),
        text_dropout=float(arguments.get("dropout", 0.1)),
        init_temperature=float(arguments.get("tau", 0.07)),
        num_classes=2,
    )


def _json_safe(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    return repr(value)


# Calibrators.

# The classes a betacal calibrator pickled with joblib.dump needs, and nothing else.
ALLOWED_PICKLE_GLOBALS = frozenset({
    ("betacal", "BetaCalibration"),
    ("betacal.beta_calibration", "_BetaCal"),
    ("betacal.beta_calibration", "_BetaAMCal"),
    ("sklearn.linear_model._logistic", "LogisticRegression"),
    ("joblib.numpy_pickle", "NumpyArrayWrapper"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy.core.multiarray", "_reconstruct"),
})


def _restricted_unpickler_class() -> type:
    from joblib.numpy_pickle import NumpyUnpickler

    class RestrictedJoblibUnpickler(NumpyUnpickler):
        """joblib's unpickler (which reads joblib's inline numpy arrays) admitting only ALLOWED_PICKLE_GLOBALS."""

        def find_class(self, module: str, name: str) -> Any:
            if (module, name) not in ALLOWED_PICKLE_GLOBALS:
                raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a calibrator pickle")
            return super().find_class(module, name)

    return RestrictedJoblibUnpickler


def read_trusted_calibrator(path: str | Path) -> BetaCalibration:
    """Read a joblib-pickled betacal BetaCalibration and return its map as a BetaCalibration.

    The pickle may only reference the classes in ALLOWED_PICKLE_GLOBALS; any other
    global (for example os.system) stops the read before it is called.
    """
    from joblib.numpy_pickle import _validate_fileobject_and_memmap

    path = Path(path)
    if not path.is_file():
        raise BundleError(f"Calibrator not found: {path}; import without --calibrators trusted to skip calibration.")

    unpickler_class = _restricted_unpickler_class()
    try:
        with open(path, "rb") as handle:
            with _validate_fileobject_and_memmap(handle, str(path), None) as (stream, _):
                if isinstance(stream, str):
                    raise BundleError(f"{path} uses joblib's pre-0.10 format, which is not read.")
                calibrator = unpickler_class(str(path), stream, ensure_native_byte_order=True).load()
    except (pickle.UnpicklingError, AttributeError, EOFError, ValueError, TypeError) as error:
        raise BundleError(f"Refused or failed to read calibrator {path}: {error}.") from error
    return _beta_map_from_calibrator(calibrator, path)


def _beta_map_from_calibrator(calibrator: Any, path: Path) -> BetaCalibration:
    inner = getattr(calibrator, "calibrator_", None)
    if inner is None:
        raise BundleError(f"{path} does not hold a fitted betacal BetaCalibration.")

    kind = type(inner).__name__
    regression = getattr(inner, "lr_", None)
    if regression is None:
        if kind != "_BetaCal":
            raise BundleError(f"{path}: the {kind} calibrator has no fitted logistic regression (lr_).")
        return BetaCalibration.from_map(*(float(value) for value in inner.map_))
    coefficients = [float(value) for value in regression.coef_[0]]
    intercept = float(regression.intercept_[0]) if getattr(regression, "fit_intercept", True) else 0.0

    if kind == "_BetaAMCal":
        # One feature ln(s / (1 - s)), so a = b.
        return BetaCalibration(a=coefficients[0], b=coefficients[0], c=intercept)

    # _BetaCal ('abm'): features [ln s, -ln(1 - s)]; betacal drops a feature whose
    # coefficient came out negative and records that as a = 0 or b = 0 in map_.
    map_a, map_b = float(inner.map_[0]), float(inner.map_[1])
    if len(coefficients) == 2:
        a, b = coefficients
    elif map_a == 0.0:
        a, b = 0.0, coefficients[0]
    elif map_b == 0.0:
        a, b = coefficients[0], 0.0
    else:
        raise BundleError(f"{path}: betacal map_ {list(inner.map_)} does not fit a one-coefficient regression.")
    return BetaCalibration(a=a, b=b, c=intercept)
