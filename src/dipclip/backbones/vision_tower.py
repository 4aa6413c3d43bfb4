"""The one place that touches open_clip's image-tower internals, for methods with vision prompts (MaPLe,
PromptSRC): learned tokens appended to the patch sequence and replaced at each of the first layers.

Without prompts it computes exactly ``encode_image`` of the wrapped model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import DipclipError
from .precision import autocast_for


class VisionTower(nn.Module):
    """A thin view over an open_clip ``VisionTransformer`` (shares its weights)."""

    def __init__(self, clip_model: nn.Module):
        super().__init__()
        visual = clip_model.visual
        required = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer", "ln_post")
        missing = [name for name in required if not hasattr(visual, name)]
        if missing or getattr(visual, "attn_pool", None) is not None:
            raise DipclipError(
                f"vision prompts need an open_clip ViT image tower with a class token; {type(visual).__name__} "
                "is not one (ResNet and attention-pooled towers are not supported for MaPLe/PromptSRC)"
            )
        self.visual = visual

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
        for index, block in enumerate(v.transformer.resblocks):
            if 0 < index <= len(deep_prompts) and n:
                deep = deep_prompts[index - 1].to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
                x = torch.cat([x[:, :-n], deep], dim=1)
            x = block(x)
        if n:
            x = x[:, :-n]
        pooled, _ = v._pool(x)
        return pooled @ v.proj if v.proj is not None else pooled
