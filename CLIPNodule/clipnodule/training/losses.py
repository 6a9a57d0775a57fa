"""Training losses: symmetric InfoNCE (CLIP) loss and class-weighted cross-entropy for both classifiers.

Total loss = CLIP loss + image cross-entropy + text cross-entropy, with equal weights;
a vision-only model uses the image cross-entropy alone. Depends on torch (no Qt or Slicer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError


@dataclass
class LossTerms:
    """The total loss and its parts (scalar tensors); `clip` and `text` are zero in vision-only models."""

    total: torch.Tensor
    clip: torch.Tensor
    image: torch.Tensor
    text: torch.Tensor

    def as_floats(self) -> dict[str, float]:
        return {name: float(value.detach()) for name, value in vars(self).items()}


def clip_loss(logits_per_image: torch.Tensor, logits_per_text: torch.Tensor) -> torch.Tensor:
    """Return the symmetric InfoNCE loss: the mean of image-to-text and text-to-image cross-entropy.

    Row i of `logits_per_image` (B, B) scores image i against every text of the batch;
    the matching pair is on the diagonal. The logits already carry the learnable scale
    (clamped to at most 100 by the model).
    """
    if logits_per_image.dim() != 2 or logits_per_image.shape[0] != logits_per_image.shape[1]:
        raise InputError(f"CLIP logits must be a square (B, B) matrix, got {tuple(logits_per_image.shape)}.")
    targets = torch.arange(logits_per_image.shape[0], device=logits_per_image.device)
    return 0.5 * (F.cross_entropy(logits_per_image, targets) + F.cross_entropy(logits_per_text, targets))


def inverse_frequency_weights(labels: Sequence[int], num_classes: int = 2) -> torch.Tensor:
    """Return class weights n / (num_classes * n_c), so the rarer class (usually malignant) weighs more.

    A class that does not occur gets weight 1. Raises InputError for labels outside
    [0, num_classes).
    """
    values = np.asarray(labels, dtype=np.int64)
    if values.size == 0:
        raise InputError("Cannot compute class weights from an empty label list.")
    if values.min() < 0 or values.max() >= num_classes:
        raise InputError(f"Labels must lie in [0, {num_classes - 1}], got values from {values.min()} to {values.max()}.")
    counts = np.bincount(values, minlength=num_classes).astype(np.float64)
    weights = np.where(counts > 0, values.size / (num_classes * np.maximum(counts, 1.0)), 1.0)
    return torch.tensor(weights, dtype=torch.float32)


class CLIPNoduleLoss(nn.Module):
    """Total training loss of the CLIP nodule model from its `forward` outputs.

    `class_weights` (num_classes,) weigh both cross-entropy terms; compute them from the
    training fold's labels with `inverse_frequency_weights`.
    """

    def __init__(self, class_weights: torch.Tensor, vision_only: bool = False) -> None:
        super().__init__()
        self.register_buffer("class_weights", class_weights.float())
        self.vision_only = vision_only

    def forward(self, outputs: dict[str, torch.Tensor], labels: torch.Tensor) -> LossTerms:
        weights = self.class_weights.to(outputs["logits_image"].device)
        image = F.cross_entropy(outputs["logits_image"].float(), labels, weight=weights)
        zero = image.new_zeros(())
        if self.vision_only:
            return LossTerms(total=image, clip=zero, image=image, text=zero)

        missing = [key for key in ("logits_text", "logits_per_image", "logits_per_text") if key not in outputs]
        if missing:
            raise InputError(f"Model outputs lack {', '.join(missing)}; pass text tokens, or train vision-only.")
        contrastive = clip_loss(outputs["logits_per_image"].float(), outputs["logits_per_text"].float())
        text = F.cross_entropy(outputs["logits_text"].float(), labels, weight=weights)
        return LossTerms(total=contrastive + image + text, clip=contrastive, image=image, text=text)
