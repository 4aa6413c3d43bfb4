"""The one place that touches image-tower internals, for methods with vision prompts (MaPLe, PromptSRC,
``--vision-dip``): learned tokens appended after the patch tokens and replaced at each of the first layers.

Towers with a token sequence are covered: open_clip's own ``VisionTransformer`` (class token, average or
attentional pooling as in CoCa) and timm ``VisionTransformer`` / ``Eva`` trunks inside open_clip's
``TimmModel`` (class or register tokens, token / average / MAP pooling, EVA02's rotary embedding). The prompt
tokens join the sequence before the tower's pre-norm, are replaced at the input of layers 1..depth-1 and are
dropped after the last block, so pooling, final norm, head and projection see only the tower's own tokens
and run exactly as the tower runs them. Under EVA's rotary embedding the prompt tokens are not rotated (as
the class token is not): rope covers patch positions only.

Towers without a token sequence (ModifiedResNet, ConvNeXt, ...) are refused; their frozen features come
from open_clip's ``encode_image`` (see :meth:`Backbone.encode_images`).

Without prompts it computes ``encode_image`` of the wrapped model. For open_clip class-token ViTs there is
one exact shortcut: the image feature is read from the class token alone, so the last block runs its
attention query, MLP and residuals for that one token (keys and values still come from every token). That
removes about 10/12 of the last block's work, 7% of a 12-layer tower, and changes features by float
rounding only (tested to 1e-5).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import DipclipError
from .precision import autocast_for

REQUIRED = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer", "ln_post")
TEXT_SIDE_METHODS = "coop, dip, cocoop, kgcoop, prograd, dept"


def is_open_clip_vit(visual: nn.Module) -> bool:
    """open_clip's ``VisionTransformer`` (or anything shaped like it)."""
    return all(hasattr(visual, name) for name in REQUIRED) and hasattr(visual, "_pool")


def is_class_token_vit(visual: nn.Module) -> bool:
    """An open_clip ViT whose feature is its class token (no attention pooling), batch-first blocks: where
    the class-token shortcut is exact. Every other tower runs open_clip's own ``encode_image``."""
    return (is_open_clip_vit(visual) and getattr(visual, "attn_pool", None) is None
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


def tower_name(visual: nn.Module) -> str:
    """How a message names an image tower: ``ModifiedResNet``, ``timm ConvNeXt (TimmModel)``."""
    trunk = getattr(visual, "trunk", None)
    if trunk is not None:
        return f"timm {type(trunk).__name__} (TimmModel)"
    return type(visual).__name__


def timm_kind(visual: nn.Module) -> str | None:
    """``"vit"`` or ``"eva"`` for a ``TimmModel`` whose trunk is exactly timm's VisionTransformer or Eva
    (subclasses such as the distilled DeiT change the embedding or the head, so they are not assumed)."""
    trunk = getattr(visual, "trunk", None)
    if trunk is None or not hasattr(visual, "head"):
        return None
    try:
        from timm.models.eva import Eva
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:  # pragma: no cover - timm towers need timm anyway
        return None
    return {VisionTransformer: "vit", Eva: "eva"}.get(type(trunk))


def refusal(visual: nn.Module) -> str:
    """The one line a vision-prompt method gets for a tower it cannot prompt."""
    has_tokens = is_open_clip_vit(visual) or hasattr(getattr(visual, "trunk", None), "num_prefix_tokens")
    why = ("its token sequence is not one dipclip knows how to prompt (open_clip VisionTransformer, timm "
           "VisionTransformer and Eva are)" if has_tokens else "it has no token sequence to put prompts into")
    return (f"vision prompts (MaPLe, PromptSRC, --vision-dip) need a ViT-style image tower; this model's image "
            f"tower is {tower_name(visual)}, and {why}; on this model use a text-side method: {TEXT_SIDE_METHODS}")


def supports_vision_prompts(visual: nn.Module) -> bool:
    return is_open_clip_vit(visual) or timm_kind(visual) is not None


def _no_rotation(rope: torch.Tensor, n: int) -> torch.Tensor:
    """``rope`` (``[..., N, 2 * dim]``: sin then cos) extended by ``n`` positions with sin 0 and cos 1: the
    identity rotation, so appended prompt tokens pass the rotary embedding unchanged (exactly: x*1 + r*0)."""
    sin, _ = rope.chunk(2, dim=-1)
    shape = (*rope.shape[:-2], n, sin.shape[-1])
    pad = torch.cat([rope.new_zeros(shape), rope.new_ones(shape)], dim=-1)
    return torch.cat([rope, pad], dim=-2)


class VisionTower(nn.Module):
    """A thin view over a ViT-style image tower (shares its weights): open_clip's ``VisionTransformer`` or a
    timm ``VisionTransformer`` / ``Eva`` trunk in open_clip's ``TimmModel``."""

    def __init__(self, clip_model: nn.Module):
        super().__init__()
        visual = clip_model.visual
        if not supports_vision_prompts(visual):
            raise DipclipError(refusal(visual))
        self.visual = visual
        self.kind = "open_clip" if is_open_clip_vit(visual) else timm_kind(visual)
        self.class_token_shortcut = (is_class_token_vit(visual)
                                     and class_token_block_applies(visual.transformer.resblocks[-1]))

    @property
    def blocks(self) -> Sequence[nn.Module]:
        return self.visual.transformer.resblocks if self.kind == "open_clip" else self.visual.trunk.blocks

    @property
    def width(self) -> int:
        if self.kind == "open_clip":
            return self.visual.class_embedding.shape[-1]
        return self.visual.trunk.embed_dim

    @property
    def layers(self) -> int:
        return len(self.blocks)

    def forward(self, images: torch.Tensor, prompts: torch.Tensor | None = None,
                deep_prompts: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        """Image features [B, D]. ``prompts`` [n, width] are appended after the patch tokens (before the
        tower's pre-norm); ``deep_prompts[i]`` replaces those n tokens at the input of layer i + 1.
        Runs under bf16 autocast on CUDA; returns fp32."""
        with autocast_for(images.device):
            return self._forward(images, prompts, deep_prompts).float()

    def _forward(self, images: torch.Tensor, prompts: torch.Tensor | None,
                 deep_prompts: Sequence[torch.Tensor]) -> torch.Tensor:
        n = 0 if prompts is None else prompts.shape[0]
        x, rope = self._embed(images)
        if n:
            x = torch.cat([x, prompts.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)], dim=1)
            if rope is not None:
                rope = _no_rotation(rope, n)
        x = self._pre_norm(x)
        x = self._blocks(x, n, deep_prompts, rope)
        if n and x.shape[1] > 1:  # after the class-token shortcut only the class token is left
            x = x[:, :-n]
        return self._head(x)

    def _embed(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The token sequence before the pre-norm (prefix tokens, patches with positions), and EVA's rope."""
        if self.kind == "open_clip":
            v = self.visual
            x = v.conv1(images)
            x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
            cls = v.class_embedding.to(x.dtype).reshape(1, 1, -1).expand(x.shape[0], -1, -1)
            x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
            return v.patch_dropout(x), None
        trunk = self.visual.trunk
        x = trunk.patch_embed(images)
        if self.kind == "eva":
            x, rope = trunk._pos_embed(x)  # patch dropout included
            if rope is not None and not isinstance(rope, torch.Tensor):
                raise DipclipError(f"vision prompts support EVA's concatenated sin/cos rotary embedding; "
                                   f"{type(trunk.rope).__name__} gives {type(rope).__name__}")
            return x, rope
        return trunk.patch_drop(trunk._pos_embed(x)), None

    def _pre_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual.ln_pre(x) if self.kind == "open_clip" else self.visual.trunk.norm_pre(x)

    def _blocks(self, x: torch.Tensor, n: int, deep_prompts: Sequence[torch.Tensor],
                rope: torch.Tensor | None) -> torch.Tensor:
        blocks = self.blocks
        seq_first = self.kind == "open_clip" and not getattr(self.visual.transformer, "batch_first", True)
        mixed = self.kind == "eva" and getattr(self.visual.trunk, "rope_mixed", False) and rope is not None
        for index, block in enumerate(blocks):
            if 0 < index <= len(deep_prompts) and n:
                deep = deep_prompts[index - 1].to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
                x = torch.cat([x[:, :-n], deep], dim=1)
            if self.kind == "eva":
                x = block(x, rope=rope[index] if mixed else rope)
            elif index == len(blocks) - 1 and self.class_token_shortcut:
                x = class_token_block(block, x)  # [B, 1, width]: only the class token is pooled
            elif seq_first:
                x = block(x.transpose(0, 1)).transpose(0, 1)
            else:
                x = block(x)
        return x

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        """Pooling, final norm, head and projection, as the tower runs them on its own tokens."""
        if self.kind == "open_clip":
            v = self.visual
            pooled, _ = v._pool(x)
            return pooled @ v.proj if v.proj is not None else pooled
        trunk = self.visual.trunk
        return self.visual.head(trunk.forward_head(trunk.norm(x)))
