"""Heads on top of the CLIP towers: attention-MIL pooling of the nine planes and the text projection.

Layer names (projector, attention, projection, fc, layer_norm) are stored in model
bundles and must stay stable. No Qt or Slicer imports.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class AttentionMIL(nn.Module):
    """Attention-based multiple-instance pooling (Ilse et al. 2018) over the planes of a nodule.

    Each plane feature is projected (linear + ReLU) to `embed_dim`, scored by a
    tanh attention network, and the scores are softmaxed over the planes of each nodule.
    The nodule embedding is the attention-weighted sum of the projected planes.
    """

    def __init__(self, feature_dim: int = 512, embed_dim: int = 256, attention_dim: int = 128) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        self.projector = nn.Sequential(nn.Linear(feature_dim, embed_dim), nn.ReLU())
        self.attention = nn.Sequential(nn.Linear(embed_dim, attention_dim), nn.Tanh(), nn.Linear(attention_dim, 1))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool `features` (B, planes, feature_dim) into (embedding (B, embed_dim), attention (B, planes))."""
        if features.dim() != 3 or features.shape[-1] != self.feature_dim:
            raise ValueError(f"expected features of shape (B, planes, {self.feature_dim}), got {tuple(features.shape)}")

        projected = self.projector(features)
        scores = self.attention(projected).squeeze(-1)
        attention = F.softmax(scores, dim=1)

        embedding = torch.bmm(attention.unsqueeze(1), projected).squeeze(1)
        return embedding, attention


class TextProjectionHead(nn.Module):
    """Projection of the CLIP text feature: linear, GELU, linear, dropout, residual add, LayerNorm."""

    def __init__(self, input_dim: int = 512, embed_dim: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        self.projection = nn.Linear(input_dim, embed_dim)
        self.gelu = nn.GELU()
        self.fc = nn.Linear(embed_dim, embed_dim)
        self.dropout = nn.Dropout(dropout)
        self.layer_norm = nn.LayerNorm(embed_dim)

        # Kaiming-normal weights, as the published model initialises this head.
        nn.init.kaiming_normal_(self.projection.weight)
        nn.init.kaiming_normal_(self.fc.weight)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        projected = self.projection(features)
        hidden = self.fc(self.gelu(projected))
        hidden = self.dropout(hidden)
        return self.layer_norm(hidden + projected)
