"""LoRA on the query, key and value projections of open_clip's attention blocks, through peft.

open_clip's `nn.MultiheadAttention` keeps q, k and v in one packed `in_proj_weight`, so
each one is first split into its own `nn.Linear` and peft then adapts those. No Qt or
Slicer imports.
"""

from __future__ import annotations

import logging
import math
import re

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

LORA_TARGET_PROJECTIONS = ("q_proj", "k_proj", "v_proj")
# Module names (relative to the CLIP model) that peft wraps with a LoRA adapter.
LORA_TARGET_PATTERN = r".*\.attn\.(q_proj|k_proj|v_proj)"
LORA_ADAPTER_NAME = "default"


class SplitQKVAttention(nn.Module):
    """Multi-head self-attention with separate q_proj, k_proj and v_proj linear layers.

    A drop-in replacement for the `nn.MultiheadAttention` that open_clip's
    ResidualAttentionBlock calls as `attn(q, k, v, need_weights=False, attn_mask=mask)`.
    The output equals `nn.MultiheadAttention` with the same weights (up to float
    rounding). Attention weights are not returned: the second output is always None.
    """

    def __init__(self, embed_dim: int, num_heads: int, batch_first: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.batch_first = batch_first
        self.dropout = dropout
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    @classmethod
    def from_multihead_attention(cls, attention: nn.MultiheadAttention) -> "SplitQKVAttention":
        """Build a split attention holding the weights of a packed `nn.MultiheadAttention`."""
        if not attention._qkv_same_embed_dim or attention.in_proj_weight is None:
            raise ValueError("only self-attention with a packed in_proj_weight can be split")
        if attention.in_proj_bias is None or attention.bias_k is not None:
            raise ValueError("only attention with in_proj biases and no bias_k/bias_v can be split")

        embed_dim = attention.embed_dim
        split = cls(embed_dim, attention.num_heads, attention.batch_first, attention.dropout)
        split.to(device=attention.in_proj_weight.device, dtype=attention.in_proj_weight.dtype)
        with torch.no_grad():
            for index, projection in enumerate((split.q_proj, split.k_proj, split.v_proj)):
                rows = slice(index * embed_dim, (index + 1) * embed_dim)
                projection.weight.copy_(attention.in_proj_weight[rows])
                projection.bias.copy_(attention.in_proj_bias[rows])
            split.out_proj.weight.copy_(attention.out_proj.weight)
            split.out_proj.bias.copy_(attention.out_proj.bias)
        return split

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = False,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, None]:
        if need_weights:
            raise NotImplementedError("SplitQKVAttention does not return attention weights; pass need_weights=False")
        if not self.batch_first:
            query, key, value = (tensor.transpose(0, 1) for tensor in (query, key, value))

        batch, query_length, _ = query.shape
        key_length = key.shape[1]
        q = self._heads(self.q_proj(query))
        k = self._heads(self.k_proj(key))
        v = self._heads(self.v_proj(value))

        mask = self._additive_mask(attn_mask, key_padding_mask, batch, query_length, key_length, q.dtype)
        dropout = self.dropout if self.training else 0.0
        causal = is_causal and mask is None
        output = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal)

        output = output.transpose(1, 2).reshape(batch, query_length, self.embed_dim)
        output = self.out_proj(output)
        if not self.batch_first:
            output = output.transpose(0, 1)
        return output, None

    def _heads(self, projected: torch.Tensor) -> torch.Tensor:
        batch, length, _ = projected.shape
        return projected.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def _additive_mask(
        self,
        attn_mask: torch.Tensor | None,
        key_padding_mask: torch.Tensor | None,
        batch: int,
        query_length: int,
        key_length: int,
        dtype: torch.dtype,
    ) -> torch.Tensor | None:
        # nn.MultiheadAttention semantics: a boolean True masks a position out, a float mask is added.
        mask = None
        if attn_mask is not None:
            mask = _as_additive(attn_mask, dtype)
            if mask.dim() == 3:
                mask = mask.view(batch, self.num_heads, query_length, key_length)
        if key_padding_mask is not None:
            padding = _as_additive(key_padding_mask, dtype).view(batch, 1, 1, key_length)
            mask = padding if mask is None else mask + padding
        return mask


def _as_additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if mask.dtype == torch.bool:
        additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
        return additive.masked_fill(mask, float("-inf"))
    return mask.to(dtype)


def split_attention_modules(model: nn.Module) -> list[str]:
    """Replace every packed `nn.MultiheadAttention` in `model` by a SplitQKVAttention.

    Returns the qualified names of the replaced modules.
    """
    targets = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.MultiheadAttention)]
    for name, module in targets:
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child_name, SplitQKVAttention.from_multihead_attention(module))
    return [name for name, _ in targets]


def apply_lora(model: nn.Module, rank: int = 2, alpha: float = 1.0, dropout: float = 0.25) -> list[str]:
    """Add a peft LoRA adapter to q_proj, k_proj and v_proj of every split attention in `model`.

    Uses rsLoRA scaling, alpha / sqrt(rank), as the published model does (1/sqrt(2) for
    rank 2, alpha 1). `model` must already have gone through `split_attention_modules`.
    peft freezes every other parameter of `model`. Returns the adapted module names.
    """
    from peft import LoraConfig, inject_adapter_in_model

    pattern = re.compile(LORA_TARGET_PATTERN)
    targets = [name for name, _ in model.named_modules() if pattern.fullmatch(name)]
    if not targets:
        raise ValueError("no attention q_proj/k_proj/v_proj layers found; call split_attention_modules first")

    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        use_rslora=True,
        target_modules=LORA_TARGET_PATTERN,
        bias="none",
    )
    inject_adapter_in_model(config, model, adapter_name=LORA_ADAPTER_NAME)

    expected_scaling = alpha / math.sqrt(rank)
    for name in targets:
        scaling = model.get_submodule(name).scaling[LORA_ADAPTER_NAME]
        if not math.isclose(scaling, expected_scaling, rel_tol=1e-12):
            raise RuntimeError(f"peft set LoRA scaling {scaling} on {name}, expected alpha/sqrt(rank) = {expected_scaling}")
    logger.debug("Added rank-%d LoRA to %d projections", rank, len(targets))
    return targets


def lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Return the peft LoRA layers of `model` by qualified name."""
    from peft.tuners.lora import LoraLayer

    return {name: module for name, module in model.named_modules() if isinstance(module, LoraLayer)}


def pack_attention_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convert split q/k/v attention keys back into open_clip's packed layout.

    `<block>.attn.q_proj.weight` (or `.q_proj.base_layer.weight` under peft), with k and
    v, becomes `<block>.attn.in_proj_weight`, rows q then k then v; biases likewise.
    LoRA factors are dropped, so the result contains the frozen base weights only.
    """
    packed: dict[str, torch.Tensor] = {}
    pieces: dict[str, dict[str, torch.Tensor]] = {}
    split_key = re.compile(r"(?P<prefix>.*\.attn)\.(?P<proj>q_proj|k_proj|v_proj)\.(?:base_layer\.)?(?P<kind>weight|bias)")

    for key, tensor in state_dict.items():
        if ".lora_" in key:
            continue
        match = split_key.fullmatch(key)
        if match is None:
            packed[key] = tensor
            continue
        packed_key = f"{match['prefix']}.in_proj_{match['kind']}"
        pieces.setdefault(packed_key, {})[match["proj"]] = tensor

    for packed_key, parts in pieces.items():
        missing = [name for name in LORA_TARGET_PROJECTIONS if name not in parts]
        if missing:
            raise KeyError(f"{packed_key}: missing {', '.join(missing)}")
        packed[packed_key] = torch.cat([parts[name] for name in LORA_TARGET_PROJECTIONS], dim=0)
    return packed
