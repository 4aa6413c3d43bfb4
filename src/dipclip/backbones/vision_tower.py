"""The one place that touches open_clip's image-tower internals, for methods with vision prompts (MaPLe,
PromptSRC): learned tokens appended to the patch sequence and replaced at each of the first layers.

Without prompts it computes ``encode_image`` of the wrapped model, with one exact shortcut: the image
feature is read from the class token alone, so the last block runs its attention query, MLP and residuals
for that one token (keys and values still come from every token). That removes about 10/12 of the last
block's work, 7% of a 12-layer tower, and changes features by float rounding only (tested to 1e-5).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import DipclipError
from .precision import autocast_for

REQUIRED = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer", "ln_post")


def is_class_token_vit(visual: nn.Module) -> bool:
    """An open_clip ViT whose feature is its class token (no attention pooling), batch-first blocks."""
    return (all(hasattr(visual, name) for name in REQUIRED) and getattr(visual, "attn_pool", None) is None
            and getattr(visual, "pool_type", "tok") == "tok" and getattr(visual.transformer, "batch_first", True))


def class_token_block_applies(block: nn.Module) -> bool:
    """The last-block shortcut is written for open_clip's plain ``ResidualAttentionBlock``; any other block
    (custom attention, cross-attention) runs in full, which is trivially exact."""
    from open_clip.transformer import ResidualAttentionBlock

    return (type(block) is ResidualAttentionBlock and isinstance(block.attn, nn.MultiheadAttention)
            and not hasattr(block, "ln_1_kv"))


def class_token_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``block(x)[:, :1]`` without computing the other tokens' outputs: they are never read again."""
    normed = block.ln_1(x)
    attended = block.attention(q_x=normed[:, :1], k_x=normed, v_x=normed)
    y = x[:, :1] + block.ls_1(attended)
    return y + block.ls_2(block.mlp(block.ln_2(y)))


class VisionTower(nn.Module):
    """A thin view over an open_clip ``VisionTransformer`` (shares its weights)."""

    def __init__(self, clip_model: nn.Module):
        super().__init__()
        visual = clip_model.visual
        if not is_class_token_vit(visual):
            raise DipclipError(
                f"vision prompts need an open_clip ViT image tower with a class token; {type(visual).__name__} "
                "is not one (ResNet and attention-pooled towers are not supported for MaPLe/PromptSRC)"
            )
        self.visual = visual
        self.class_token_shortcut = class_token_block_applies(visual.transformer.resblocks[-1])

    @property
    def width(self) -> int:
        return self.visual.class_embedding.shape[-1]

    @property
    def layers(self) -> int:
        return len(self.visual.transformer.resblocks)

    def forward(self, images: torch.Tensor, prompts: torch.Tensor | None = None,
                deep_prompts: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        """Image features [B, D]. ``prompts`` [n, width] are appended after the patch tokens (before
        ``ln_pre``); ``deep_prompts[i]`` replaces those n tokens at the input of layer i + 1.
        Runs under bf16 autocast on CUDA; returns fp32."""
        with autocast_for(images.device):
            return self._forward(images, prompts, deep_prompts).float()

    def _forward(self, images: torch.Tensor, prompts: torch.Tensor | None,
                 deep_prompts: Sequence[torch.Tensor]) -> torch.Tensor:
        v = self.visual
        x = v.conv1(images)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = v.class_embedding.to(x.dtype).reshape(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        x = v.patch_dropout(x)
        n = 0
        if prompts is not None:
            n = prompts.shape[0]
            x = torch.cat([x, prompts.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)], dim=1)
        x = v.ln_pre(x)
        blocks = v.transformer.resblocks
        for index, block in enumerate(blocks):
            if 0 < index <= len(deep_prompts) and n:
                deep = deep_prompts[index - 1].to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
                x = torch.cat([x[:, :-n], deep], dim=1)
            if index == len(blocks) - 1 and self.class_token_shortcut:
                x = class_token_block(block, x)  # [B, 1, width]: only the class token is pooled
            else:
                x = block(x)
        if n and x.shape[1] > 1:
            x = x[:, :-n]
        pooled, _ = v._pool(x)
        return pooled @ v.proj if v.proj is not None else pooled
