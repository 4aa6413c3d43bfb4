"""LoRA on the attention projections of open_clip towers, without touching the frozen backbone.

CLIP-LoRA (Zanella & Ben Ayed, CVPRW 2024) replaces each ``nn.MultiheadAttention`` by separate q/k/v/out
``nn.Linear`` copies with a low-rank branch (their ``loralib/layers.py``: ``LinearLoRA`` inside
``PlainMultiheadAttentionLoRA``). dipclip keeps the shared backbone as it is and runs each block itself:
the same operations as open_clip's ``ResidualAttentionBlock`` (pre-norm, fused in-projection, scaled
dot-product attention, out-projection, layer scale, MLP), with each adapted projection's output increased by

    delta(x) = scaling * dropout(x) @ (B @ A).T,   scaling = alpha / sqrt(rank)

(their ``LoRALayer.scaling`` is ``lora_alpha / math.sqrt(r)``, not LoRA's ``alpha / r``), where ``x`` is the
projection's input, ``A`` [rank, in] starts as ``kaiming_uniform_(a=sqrt(5))`` and ``B`` [out, rank] at zero,
so an untrained adapter gives exactly the frozen model. The dropout acts on the low-rank branch only, in
training. Their eval mode merges ``W + scaling * B @ A`` into the weight: the same numbers up to rounding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import DipclipError

PROJECTIONS = ("q", "k", "v", "o")
# their --position choices (run_utils.py); on 12-layer towers these are their INDEX_POSITIONS tables
POSITIONS = ("all", "bottom", "mid", "up", "half-up", "half-bottom", "top3")


def layer_indices(position: str | Sequence[int], layers: int) -> list[int]:
    """The blocks that get LoRA: one of their named positions or explicit 0-based indices.

    Their tables (loralib/utils.py ``INDEX_POSITIONS_TEXT``/``INDEX_POSITIONS_VISION``) are written for
    12-layer towers (and ViT-L/14's 24-layer image tower for half-up, half-bottom, all); here ``all``,
    ``half-bottom`` (first half), ``half-up`` (second half) and ``top3`` (last three) hold for any depth and
    ``bottom``/``mid``/``up`` (thirds: 0-3, 4-7, 8-11) only for 12 layers, as in theirs.
    """
    if not isinstance(position, str):
        indices = sorted({int(i) for i in position})
        if not indices or indices[0] < 0 or indices[-1] >= layers:
            raise DipclipError(f"LoRA layer indices {list(position)} do not fit a tower of {layers} layers")
        return indices
    if position == "all":
        return list(range(layers))
    if position == "half-bottom":
        return list(range(layers // 2))
    if position == "half-up":
        return list(range(layers // 2, layers))
    if position == "top3":
        return list(range(max(0, layers - 3), layers))
    if position in ("bottom", "mid", "up"):
        if layers != 12:
            raise DipclipError(f"LoRA position {position!r} is defined for 12-layer towers (CLIP-LoRA's table); "
                               f"this tower has {layers}: give layer indices or all/half-up/half-bottom/top3")
        start = {"bottom": 0, "mid": 4, "up": 8}[position]
        return list(range(start, start + 4))
    raise DipclipError(f"unknown LoRA position {position!r}; use one of {', '.join(POSITIONS)} or layer indices")


class LoRADelta(nn.Module):
    """``scaling * dropout(x) @ (B @ A).T``: the low-rank branch of one projection (their ``LinearLoRA``)."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float, dropout: float,
                 generator: torch.Generator, device: torch.device | str = "cpu"):
        super().__init__()
        if rank < 1:
            raise DipclipError(f"LoRA rank must be >= 1, got {rank}")
        if not 0 <= dropout < 1:
            raise DipclipError(f"LoRA dropout must be in [0, 1), got {dropout}")
        # nn.init.kaiming_uniform_(A, a=sqrt(5)): U(-b, b) with b = sqrt(6 / ((1 + a^2) * fan_in)) = 1/sqrt(fan_in)
        bound = math.sqrt(6.0 / ((1.0 + 5.0) * in_features))
        a = (torch.rand(rank, in_features, generator=generator) * 2 - 1) * bound
        self.A = nn.Parameter(a.to(device))
        self.B = nn.Parameter(torch.zeros(out_features, rank, device=device))
        self.scaling = float(alpha) / math.sqrt(rank)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(x)
        return (x @ (self.B @ self.A).to(x.dtype).transpose(0, 1)) * self.scaling

    def merged_delta(self) -> torch.Tensor:
        """``scaling * B @ A`` [out, in]: what their eval mode adds to the projection's weight."""
        return (self.B @ self.A) * self.scaling


def check_block(block: nn.Module, where: str) -> None:
    """LoRA is written for open_clip's plain ``ResidualAttentionBlock`` around ``nn.MultiheadAttention``."""
    from open_clip.transformer import ResidualAttentionBlock

    attn = getattr(block, "attn", None)
    if type(block) is not ResidualAttentionBlock or not isinstance(attn, nn.MultiheadAttention) \
            or hasattr(block, "ln_1_kv") or not attn._qkv_same_embed_dim or attn.bias_k is not None \
            or attn.add_zero_attn:
        raise DipclipError(f"CLIP-LoRA needs open_clip's ResidualAttentionBlock with nn.MultiheadAttention in the "
                           f"{where}; this model has {type(block).__name__}")


def lora_block(block: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor | None,
               deltas: dict[str, LoRADelta]) -> torch.Tensor:
    """open_clip's ``ResidualAttentionBlock.forward`` on batch-first ``x`` [B, L, width] with LoRA branches
    added to the q/k/v projections (of the pre-norm output) and the out projection (of the heads' output).

    ``attn_mask``: None, additive [L, L], or [B * heads, L, L] (``nn.MultiheadAttention``'s 3-D layout).
    """
    attn: nn.MultiheadAttention = block.attn
    batch, length, width = x.shape
    heads = attn.num_heads
    y = block.ln_1(x)
    q, k, v = F.linear(y, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    if "q" in deltas:
        q = q + deltas["q"](y)
    if "k" in deltas:
        k = k + deltas["k"](y)
    if "v" in deltas:
        v = v + deltas["v"](y)
    q, k, v = (t.reshape(batch, length, heads, width // heads).transpose(1, 2) for t in (q, k, v))
    mask = None
    if attn_mask is not None:
        mask = attn_mask.to(q.dtype)
        if mask.dim() == 3:
            mask = mask.view(batch, heads, length, length)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    out = out.transpose(1, 2).reshape(batch, length, width)
    projected = F.linear(out, attn.out_proj.weight, attn.out_proj.bias)
    if "o" in deltas:
        projected = projected + deltas["o"](out)
    x = x + block.ls_1(projected)
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def run_blocks(blocks: Sequence[nn.Module], x: torch.Tensor, attn_mask: torch.Tensor | None,
               deltas: dict[int, dict[str, LoRADelta]]) -> torch.Tensor:
    """Every block of a tower on batch-first ``x``: with LoRA where ``deltas`` has the layer, else the block
    written out the same way (so one code path runs every layer)."""
    for index, block in enumerate(blocks):
        x = lora_block(block, x, attn_mask, deltas.get(index, {}))
    return x
