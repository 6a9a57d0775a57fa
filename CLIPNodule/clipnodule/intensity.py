"""HU window and CLIP normalisation of the nine planes, as the published model was trained.

Core library module: no Qt or Slicer imports. torch is imported only inside
`clip_normalize`, so that HU scaling and plane extraction run without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

HU_MIN = -1000.0
HU_MAX = 500.0

# OpenAI CLIP image statistics per RGB channel (torchvision Normalize, float32).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def scale_hu(hu: np.ndarray) -> np.ndarray:
    """Clip HU to [HU_MIN, HU_MAX] and scale linearly to [0, 1] in float32.

    The float32 expression is the one the published pipeline evaluates, so the result
    matches it bit for bit. Padding voxels of 0 HU become 2/3.
    """
    hu32 = np.asarray(hu, dtype=np.float32)
    clipped = np.clip(hu32, np.float32(HU_MIN), np.float32(HU_MAX))
    return (clipped - np.float32(HU_MIN)) / np.float32(HU_MAX - HU_MIN)


def clip_normalize(planes: "np.ndarray | torch.Tensor") -> "torch.Tensor":
    """Repeat each plane to three channels and normalise with the CLIP mean and std.

    `planes` is (9, 224, 224) in [0, 1] (any leading shape `(..., H, W)` works); the
    result is a float32 tensor of shape (..., 3, H, W).
    """
    import torch

    tensor = torch.as_tensor(planes, dtype=torch.float32)
    if tensor.ndim < 2:
        raise ValueError(f"planes must have shape (..., H, W); got {tuple(tensor.shape)}")

    rgb = tensor.unsqueeze(-3).expand(*tensor.shape[:-2], 3, *tensor.shape[-2:])
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=torch.float32).view(3, 1, 1)
    return (rgb - mean) / std
