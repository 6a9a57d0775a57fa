"""The CLIP nodule model: open_clip towers with LoRA, attention-MIL image head, text head, classifiers.

`build_model(ModelConfig)` creates it; bundles store `trainable_state_dict()` per fold and
the frozen backbone separately. Parameter names are bundle keys and must stay stable.
No Qt or Slicer imports.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import backbone_architecture, find_cached_pretrained, get_backbone, read_backbone_weights
from .errors import BundleError, InputError
from .heads import AttentionMIL, TextProjectionHead
from .lora import apply_lora, lora_layers, pack_attention_state_dict, split_attention_modules

logger = logging.getLogger(__name__)

TUNING_MODES = ("lora", "probe", "full")
# The published model clamps the log logit scale to [0, ln 100], so the scale is at most 100.
MAX_LOG_LOGIT_SCALE = math.log(100.0)
# Parameters of the open_clip model that the nodule model does not use (it has its own logit_scale).
UNUSED_CLIP_KEYS = ("logit_scale", "logit_bias")
# Text-tower attributes of open_clip's CLIP class, removed in vision-only models.
TEXT_TOWER_ATTRIBUTES = ("transformer", "token_embedding", "positional_embedding", "ln_final", "text_projection")
HEAD_PREFIXES = ("mil_head.", "text_head.", "classifier_image.", "classifier_text.")


@dataclass
class ModelConfig:
    """Architecture and tuning settings of a CLIP nodule model; stored in bundle manifests."""

    backbone: str = "ViT-B-32-quickgelu"
    pretrained: str | None = "openai"
    weights_path: str | None = None
    tuning: str = "lora"
    vision_only: bool = False
    lora_rank: int = 2
    lora_alpha: float = 1.0
    lora_dropout: float = 0.25
    embed_dim: int = 256
    text_dropout: float = 0.1
    init_temperature: float = 0.07
    num_classes: int = 2

    def __post_init__(self) -> None:
        if self.tuning not in TUNING_MODES:
            raise InputError(f"Unknown tuning mode {self.tuning!r}; use one of: {', '.join(TUNING_MODES)}.")
        if self.lora_rank < 1:
            raise InputError(f"LoRA rank must be at least 1, got {self.lora_rank}.")
        if not 0.0 < self.init_temperature:
            raise InputError(f"Initial temperature must be positive, got {self.init_temperature}.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ModelConfig":
        """Build a config from a dict, raising BundleError on unknown fields."""
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise BundleError(f"Unknown model config fields: {', '.join(unknown)}; the bundle was made by a newer version.")
        return cls(**values)


class CLIPNoduleModel(nn.Module):
    """CLIP towers (open_clip, split q/k/v attention, optional LoRA) with the nodule heads.

    Images are (B, planes, 3, H, W) CLIP-normalised planes; the image branch pools the
    planes with attention-MIL. Text is tokenised with the backbone's open_clip tokenizer.
    Embeddings are returned before L2 normalisation unless a name says otherwise.
    """

    def __init__(self, config: ModelConfig, clip_model: nn.Module, tokenizer: Any) -> None:
        super().__init__()
        self.config = config
        self.clip = clip_model
        self.tokenizer = tokenizer
        feature_dim = _clip_output_dim(clip_model)

        self.mil_head = AttentionMIL(feature_dim, config.embed_dim)
        self.classifier_image = nn.Linear(config.embed_dim, config.num_classes)
        if config.vision_only:
            self.text_head = None
            self.classifier_text = None
        else:
            self.text_head = TextProjectionHead(feature_dim, config.embed_dim, config.text_dropout)
            self.classifier_text = nn.Linear(config.embed_dim, config.num_classes)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / config.init_temperature)))

        self.set_trainable(config.tuning)

    # Encoders.

    def encode_image(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode (B, planes, 3, H, W) pixels into (embedding (B, embed_dim), attention (B, planes))."""
        if pixels.dim() != 5 or pixels.shape[2] != 3:
            raise InputError(f"Expected pixels of shape (B, planes, 3, H, W), got {tuple(pixels.shape)}.")
        batch, planes = pixels.shape[:2]

        features = self.clip.encode_image(pixels.flatten(0, 1))
        features = features.float().view(batch, planes, -1)
        return self.mil_head(features)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Encode (N, context_length) token ids into (N, embed_dim) text embeddings."""
        self._require_text("encode_text")
        features = self.clip.encode_text(tokens)
        return self.text_head(features.float())

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Tokenise `texts` with the backbone's open_clip tokenizer into (N, context_length) ids."""
        self._require_text("tokenize")
        return self.tokenizer(list(texts)).long()

    def text_embeddings_normalized(self, texts: list[str]) -> torch.Tensor:
        """Return L2-normalised (N, embed_dim) embeddings of `texts`."""
        tokens = self.tokenize(texts).to(self.logit_scale.device)
        return F.normalize(self.encode_text(tokens), dim=-1)

    # Outputs.

    def image_probabilities(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the image branch and return class-1 probability, attention and embeddings.

        Keys: "probability" (B,), "logits" (B, num_classes), "attention" (B, planes),
        "embedding" (B, embed_dim, L2-normalised). Call in eval mode for inference.
        """
        embedding, attention = self.encode_image(pixels)
        embedding = F.normalize(embedding, dim=-1)
        logits = self.classifier_image(embedding)
        probability = F.softmax(logits, dim=-1)[:, 1]
        return {"probability": probability, "logits": logits, "attention": attention, "embedding": embedding}

    def compute_logits(self, image_embedding: torch.Tensor, text_embedding: torch.Tensor) -> torch.Tensor:
        """Return image-to-text similarity logits, scale exp(logit_scale) clamped to [1, 100]."""
        scale = torch.clamp(self.logit_scale, 0.0, MAX_LOG_LOGIT_SCALE).exp()
        return scale * image_embedding @ text_embedding.t()

    def forward(self, pixels: torch.Tensor, tokens: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Return the training outputs: normalised embeddings, attention and logits.

        Keys: "image_embedding", "attention", "logits_image"; with `tokens` (not in
        vision-only models) also "text_embedding", "logits_text", "logits_per_image",
        "logits_per_text".
        """
        image_embedding, attention = self.encode_image(pixels)
        image_embedding = F.normalize(image_embedding, dim=-1)
        outputs = {
            "image_embedding": image_embedding,
            "attention": attention,
            "logits_image": self.classifier_image(image_embedding),
        }
        if tokens is None or self.config.vision_only:
            return outputs

        text_embedding = F.normalize(self.encode_text(tokens), dim=-1)
        logits_per_image = self.compute_logits(image_embedding, text_embedding)
        outputs["text_embedding"] = text_embedding
        outputs["logits_text"] = self.classifier_text(text_embedding)
        outputs["logits_per_image"] = logits_per_image
        outputs["logits_per_text"] = logits_per_image.t()
        return outputs

    # Trainable parameters and state.

    def set_trainable(self, tuning: str) -> None:
        """Freeze every parameter, then unfreeze what `tuning` trains.

        lora: LoRA factors, heads, classifiers and logit_scale. probe: heads, classifiers
        and logit_scale. full: every parameter. logit_scale stays frozen in vision-only
        models because they have no contrastive loss.
        """
        if tuning not in TUNING_MODES:
            raise InputError(f"Unknown tuning mode {tuning!r}; use one of: {', '.join(TUNING_MODES)}.")
        if tuning == "lora" and not lora_layers(self.clip):
            raise InputError("Tuning mode 'lora' needs a model built with LoRA adapters (ModelConfig.tuning='lora').")

        trainable = set(self._trainable_keys(tuning))
        for name, parameter in self.named_parameters():
            parameter.requires_grad_(name in trainable)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Return detached copies of exactly what training changes for the configured tuning mode."""
        state = self.state_dict()
        return {key: state[key].detach().clone().contiguous() for key in self._trainable_keys(self.config.tuning)}

    def load_trainable_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load tensors saved by `trainable_state_dict`, raising BundleError on any key or shape mismatch."""
        own = self.state_dict()
        expected = self._trainable_keys(self.config.tuning)
        missing = sorted(set(expected) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(expected))
        misshaped = sorted(
            f"{key} (stored {tuple(state_dict[key].shape)}, model {tuple(own[key].shape)})"
            for key in set(expected) & set(state_dict)
            if tuple(state_dict[key].shape) != tuple(own[key].shape)
        )
        _raise_on_key_problems("fold weights", missing, unexpected, misshaped)

        with torch.no_grad():
            for key in expected:
                own[key].copy_(state_dict[key])

    def backbone_state_dict(self) -> dict[str, torch.Tensor]:
        """Return the frozen CLIP weights in open_clip's own key layout (packed q/k/v, no LoRA).

        Passing the result to `build_model(config, backbone_state_dict=...)` rebuilds the
        same backbone.
        """
        state = {key: tensor.detach().clone() for key, tensor in self.clip.state_dict().items()}
        packed = pack_attention_state_dict(state)
        return {key: tensor.contiguous() for key, tensor in packed.items() if key not in UNUSED_CLIP_KEYS}

    def _trainable_keys(self, tuning: str) -> list[str]:
        keys = list(self.state_dict())
        if tuning == "full":
            keys = [key for key in keys if not _is_unused_clip_key(key)]
            return [key for key in keys if key != "logit_scale"] if self.config.vision_only else keys

        selected = [key for key in keys if key.startswith(HEAD_PREFIXES)]
        if not self.config.vision_only:
            selected.append("logit_scale")
        if tuning == "lora":
            selected += [key for key in keys if ".lora_A." in key or ".lora_B." in key]
        return selected

    def _require_text(self, operation: str) -> None:
        if self.config.vision_only:
            raise InputError(f"{operation} needs the text tower, but this is a vision-only model.")


def build_model(
    config: ModelConfig,
    device: str | torch.device = "cpu",
    backbone_state_dict: dict[str, torch.Tensor] | None = None,
) -> CLIPNoduleModel:
    """Build a CLIPNoduleModel for `config`, with backbone weights from the first source given.

    Sources in order: `backbone_state_dict` (open_clip layout, as `backbone_state_dict()`
    returns); `config.weights_path` (an OpenAI or open_clip weights file); open_clip's
    cached pretrained weights `config.pretrained`; otherwise random initialisation.
    Heads are randomly initialised. Raises BundleError when pretrained weights are not
    cached locally (nothing is downloaded).
    """
    import open_clip

    spec = get_backbone(config.backbone)
    architecture = backbone_architecture(config.backbone)

    if backbone_state_dict is not None or config.weights_path:
        clip_model = open_clip.CLIP(**architecture)
        if backbone_state_dict is not None:
            weights, source = backbone_state_dict, "the given backbone state dict"
        else:
            weights, source = read_backbone_weights(config.weights_path), str(config.weights_path)
        if config.vision_only:
            # Vision-only backbones are saved without the text tower; full CLIP files still load.
            _remove_text_tower(clip_model)
            weights = {key: value for key, value in weights.items() if not _is_text_tower_key(key)}
        load_clip_state_dict(clip_model, weights, source=source)
    elif config.pretrained:
        clip_model = _create_pretrained_clip(config.backbone, config.pretrained)
    else:
        logger.info("Backbone %s initialised randomly (no pretrained weights requested)", config.backbone)
        clip_model = open_clip.CLIP(**architecture)

    if config.vision_only:
        _remove_text_tower(clip_model)

    split_attention_modules(clip_model)
    if config.tuning == "lora":
        apply_lora(clip_model, config.lora_rank, config.lora_alpha, config.lora_dropout)

    tokenizer = None if config.vision_only else _tokenizer_for(spec.open_clip_name, spec.open_clip_config, architecture)
    model = CLIPNoduleModel(config, clip_model, tokenizer)
    return model.to(device)


def load_clip_state_dict(clip_model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load CLIP weights in open_clip layout into `clip_model`, raising BundleError on any mismatch.

    `logit_scale` and `logit_bias` may be absent because the nodule model has its own scale.
    """
    own = clip_model.state_dict()
    # Non-persistent buffers (open_clip's causal attn_mask) are rebuilt by the model; TorchScript
    # archives store them anyway, so they are skipped rather than reported.
    rebuilt_buffers = {name for name, _ in clip_model.named_buffers()} - set(own)
    state_dict = {key: value for key, value in state_dict.items() if key not in rebuilt_buffers}
    missing = sorted(key for key in set(own) - set(state_dict) if key not in UNUSED_CLIP_KEYS)
    unexpected = sorted(set(state_dict) - set(own))
    misshaped = sorted(
        f"{key} (stored {tuple(state_dict[key].shape)}, model {tuple(own[key].shape)})"
        for key in set(own) & set(state_dict)
        if tuple(state_dict[key].shape) != tuple(own[key].shape)
    )
    _raise_on_key_problems(f"backbone weights from {source}", missing, unexpected, misshaped)

    with torch.no_grad():
        for key, tensor in state_dict.items():
            own[key].copy_(tensor)


def _create_pretrained_clip(backbone: str, tag: str) -> nn.Module:
    import open_clip

    spec = get_backbone(backbone)
    cached = find_cached_pretrained(backbone, tag)
    if cached is None:
        raise BundleError(
            f"Pretrained weights {tag!r} for backbone {backbone!r} are not in the local open_clip or "
            "Hugging Face cache, and nothing is downloaded here. Download the weights file (for OpenAI "
            "ViT-B/32: ViT-B-32.pt from OpenAI, or open_clip_model.safetensors from the Hugging Face repository "
            "timm/vit_base_patch32_clip_224.openai) and pass its path as the backbone weights file "
            "(ModelConfig.weights_path)."
        )
    logger.info("Loading %s weights %r from %s", backbone, tag, cached)
    return open_clip.create_model(spec.open_clip_name, pretrained=str(cached), device="cpu")


def _remove_text_tower(clip_model: nn.Module) -> None:
    for attribute in TEXT_TOWER_ATTRIBUTES:
        if hasattr(clip_model, attribute):
            setattr(clip_model, attribute, None)


def _is_text_tower_key(key: str) -> bool:
    return any(key == attribute or key.startswith(attribute + ".") for attribute in TEXT_TOWER_ATTRIBUTES)


def _tokenizer_for(open_clip_name: str, custom_config: dict[str, Any] | None, architecture: dict[str, Any]) -> Any:
    import open_clip

    if custom_config is None:
        return open_clip.get_tokenizer(open_clip_name)
    context_length = architecture["text_cfg"].get("context_length", 77)
    return open_clip.SimpleTokenizer(context_length=context_length)


def _clip_output_dim(clip_model: nn.Module) -> int:
    return int(clip_model.visual.output_dim)


def _is_unused_clip_key(key: str) -> bool:
    return key in {f"clip.{name}" for name in UNUSED_CLIP_KEYS}


def describe_key_problems(missing: list[str], unexpected: list[str], misshaped: list[str]) -> list[str]:
    """Return one phrase per kind of state-dict mismatch, for error messages that list the keys."""
    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected)}")
    if misshaped:
        problems.append(f"mis-shaped keys: {', '.join(misshaped)}")
    return problems


def _raise_on_key_problems(subject: str, missing: list[str], unexpected: list[str], misshaped: list[str]) -> None:
    problems = describe_key_problems(missing, unexpected, misshaped)
    if problems:
        raise BundleError(
            f"The {subject} do not match the model architecture ({'; '.join(problems)}). "
            "Check that the bundle or weights file was made for this backbone and tuning mode."
        )

