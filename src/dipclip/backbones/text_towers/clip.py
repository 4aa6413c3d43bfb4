"""open_clip's own text transformers: causal CLIP towers pooled at the end-of-text token (with exact shortcuts)
and every other kind open_clip builds (non-causal SigLIP/SigLIP2/MobileCLIP towers, ``first``/``last``/``eos``
pooling, a projection with bias, CoCa's appended class token, padding masks), on one general path.

The general path is open_clip's ``TextTransformer.forward`` with embeddings in place of ``token_embedding(ids)``:
the same masks (built by open_clip's own method from the ids the embeddings stand for), the same pooling, at the
model's own context length. Three exact shortcuts apply only to causal towers pooled at a token, where they are
exact: the tower is causal, so a sequence may stop right after its pooled token (positions after it never reach
it); leading positions every class shares (SOS + context when the class name comes last) have the same hidden
states in every class, so :meth:`OpenClipTextTower.encode_prefix` runs them once and keeps each layer's keys and
values, which :meth:`OpenClipTextTower.forward` then attends to from the per-class positions only; and on that
path and in :meth:`OpenClipTextTower.forward_deep` the last block runs for the pooled position alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ...errors import DipclipError
from ..precision import cuda_autocast
from .base import PrefixCache, TextTowerBase

POOL_TYPES = ("argmax", "eos", "first", "last")


class OpenClipTextTower(TextTowerBase):
    """A thin view over an open_clip text transformer (shares its weights, copies nothing)."""

    kind = "open_clip text transformer"

    def __init__(self, clip_model: nn.Module):
        super().__init__()
        # open_clip.CLIP keeps the text modules on the model; CustomTextCLIP and CoCa keep them in `.text`.
        source = clip_model.text if isinstance(getattr(clip_model, "text", None), nn.Module) else clip_model
        required = ("token_embedding", "positional_embedding", "transformer", "ln_final")
        missing = [name for name in required if not hasattr(source, name)]
        if missing:
            raise DipclipError(
                f"this model's text tower ({type(source).__name__}) is neither an open_clip TextTransformer nor a "
                f"Hugging Face text encoder (missing {', '.join(missing)}); prompt tuning cannot reach its tokens"
            )
        self.source = [source]  # a list: the source module is not a submodule (its weights are already ours)
        self.pool_type = getattr(source, "text_pool_type", None) or getattr(source, "pool_type", "argmax")
        if self.pool_type not in POOL_TYPES:
            raise DipclipError(f"text pooling {self.pool_type!r} gives one feature per token, not per text; "
                               f"prompt tuning needs one of {', '.join(POOL_TYPES)}")
        self.eos_id = getattr(source, "text_eos_id", None) if source is clip_model else getattr(source, "eos_id", None)
        self.token_embedding = source.token_embedding
        self.positional_embedding = source.positional_embedding
        self.transformer = source.transformer
        self.ln_final = source.ln_final
        self.text_projection = getattr(source, "text_projection", None)
        self.cls_emb = getattr(source, "cls_emb", None)
        self.use_pad_mask = bool(getattr(source, "use_pad_mask", False)) and source is not clip_model
        mask = getattr(source, "attn_mask", None)
        self.register_buffer("attn_mask", None if mask is None else mask.clone(), persistent=False)
        # Truncation after the pooled token is exact only when nothing after it is attended to by it: a causal
        # mask, pooling at a token, no appended class token, no padding mask.
        self.causal = (mask is not None and self.cls_emb is None and not self.use_pad_mask
                       and self.pool_type in ("argmax", "eos", "first"))
        self.supports_deep_prompts = True
        self.requires_grad_(False)  # frozen backbone: gradients only ever reach the prompt embeddings

    @property
    def supports_prefix_cache(self) -> bool:
        """True when every block is open_clip's plain pre-norm block around ``nn.MultiheadAttention``
        (what CLIP text towers use); other block types take the exact but uncached path."""
        transformer = self.transformer
        if not self.causal or self.pool_type not in ("argmax", "eos") or not getattr(transformer, "batch_first", False):
            return False
        if getattr(transformer, "grad_checkpointing", False):
            return False
        for block in getattr(transformer, "resblocks", ()):
            attn = getattr(block, "attn", None)
            if not isinstance(attn, nn.MultiheadAttention) or hasattr(block, "ln_1_kv"):
                return False
            if not attn._qkv_same_embed_dim or attn.bias_k is not None or attn.add_zero_attn:
                return False
            if not all(hasattr(block, name) for name in ("ln_1", "ln_2", "mlp", "ls_1", "ls_2")):
                return False
        return len(getattr(transformer, "resblocks", ())) > 0

    @property
    def width(self) -> int:
        return self.token_embedding.weight.shape[1]

    @property
    def context_length(self) -> int:
        return self.positional_embedding.shape[0] - (0 if self.cls_emb is None else 1)

    @property
    def output_dim(self) -> int:
        proj = self.text_projection
        if proj is None:
            return self.width
        return proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1]

    @property
    def layers(self) -> int:
        return len(self.transformer.resblocks)

    def embed_tokens(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings [B, L, width] (no positional embedding yet)."""
        return self.token_embedding(token_ids)

    def pool_index(self, token_ids: torch.Tensor) -> torch.Tensor:
        """The pooled position of each sequence, as open_clip's ``text_global_pool`` picks it."""
        rows, length = token_ids.shape
        if self.cls_emb is not None:  # CoCa: the class token appended after the sequence
            return torch.full((rows,), length, dtype=torch.long, device=token_ids.device)
        if self.pool_type == "argmax":
            return token_ids.argmax(dim=-1)
        if self.pool_type == "eos":
            return (token_ids == self.eos_id).int().argmax(dim=-1)
        index = 0 if self.pool_type == "first" else length - 1
        return torch.full((rows,), index, dtype=torch.long, device=token_ids.device)

    def _cast(self, embeddings: torch.Tensor) -> torch.Tensor:
        cast_dtype = self.transformer.get_cast_dtype() if hasattr(self.transformer, "get_cast_dtype") else None
        return embeddings if cast_dtype is None else embeddings.to(cast_dtype)

    def _embed(self, embeddings: torch.Tensor, token_ids: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """open_clip's ``TextTransformer._embeds`` from embeddings: the class token appended, the masks built
        from the ids (by open_clip's own method), the positional embedding added."""
        x = self._cast(embeddings)
        length = x.shape[1]
        if self.cls_emb is not None:
            x = torch.cat([x, self.cls_emb.to(x.dtype).reshape(1, 1, -1).expand(x.shape[0], -1, -1)], dim=1)
            length += 1
        mask = None if self.attn_mask is None else self.attn_mask[:length, :length]
        if self.use_pad_mask or self.cls_emb is not None:
            extra = self.source[0]._build_additive_mask(token_ids[:, : embeddings.shape[1]], length, x.dtype)
            mask = extra if mask is None else mask.unsqueeze(0) + extra
        return x + self.positional_embedding[:length].to(x.dtype), mask

    @cuda_autocast
    def forward(self, embeddings: torch.Tensor, token_ids: torch.Tensor,
                prefix: PrefixCache | None = None) -> torch.Tensor:
        """Text features [B, output_dim] of prompt embeddings [B, L, width] (see :class:`TextTowerBase`).

        On a causal tower ``L`` may be shorter than the context length: positions after the pooled token never
        influence it. With ``prefix`` (from :meth:`encode_prefix`) ``embeddings`` are positions
        ``prefix.length ...`` only and ``token_ids`` still start at position 0.
        """
        index = self.pool_index(token_ids)
        if prefix is not None:
            return self._forward_after_prefix(embeddings, index, prefix)
        x, mask = self._embed(embeddings, token_ids)
        x = self.transformer(x, attn_mask=mask)
        return self._pool(x, index)

    @cuda_autocast
    def forward_deep(self, embeddings: torch.Tensor, token_ids: torch.Tensor,
                     deep_prompts: Sequence[torch.Tensor], start: int = 1) -> torch.Tensor:
        """Like :meth:`forward`, with layer-specific context tokens (MaPLe/PromptSRC deep prompts).

        At the input of layer ``i`` (1 <= i <= len(deep_prompts)) positions ``start : start + n`` are replaced
        by ``deep_prompts[i - 1]`` ([n, width], shared by every sequence); layer 0 sees ``embeddings`` as
        given. No prefix cache here (the shared positions change per layer), but the same exact truncation and,
        on causal towers, the same pooled-position-only last block.
        """
        if len(deep_prompts) >= self.layers:
            raise DipclipError(f"{len(deep_prompts)} deep prompts need more than the {self.layers} text layers")
        index = self.pool_index(token_ids)
        x, mask = self._embed(embeddings, token_ids)
        batch_first = getattr(self.transformer, "batch_first", True)
        blocks = self.transformer.resblocks
        for layer, block in enumerate(blocks):
            if 0 < layer <= len(deep_prompts):
                deep = deep_prompts[layer - 1].to(x.dtype)
                n = deep.shape[0]
                deep = deep.unsqueeze(0).expand(x.shape[0], -1, -1)
                x = torch.cat([x[:, :start], deep, x[:, start + n:]], dim=1)
            if layer == len(blocks) - 1 and self.supports_prefix_cache:
                x, _ = self._block(block, x, None, only=index)  # the last block for the pooled rows alone
                return self._pool(x, torch.zeros_like(index))
            if batch_first:
                x = block(x, attn_mask=mask)
            else:
                x = block(x.transpose(0, 1), attn_mask=mask).transpose(0, 1)
        return self._pool(x, index)

    def _pool(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        x = self.ln_final(x[torch.arange(x.shape[0], device=x.device), index])  # per-token norm: pool first
        proj = self.text_projection
        if proj is None:
            return x
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj

    @cuda_autocast
    def encode_prefix(self, prefix: torch.Tensor) -> PrefixCache:
        """Run the shared leading positions ``[P, width]`` once; keep every layer's keys and values."""
        if not self.supports_prefix_cache:
            raise RuntimeError("this text tower does not support prefix caching; check supports_prefix_cache")
        length = prefix.shape[0]
        x = self._cast(prefix).unsqueeze(0) + self.positional_embedding[:length].to(prefix.dtype)
        keys, values = [], []
        blocks = self.transformer.resblocks
        for i, block in enumerate(blocks):
            x, (k, v) = self._block(block, x, None, last=i == len(blocks) - 1)
            keys.append(k)
            values.append(v)
        return PrefixCache(length, keys, values)

    def _forward_after_prefix(self, embeddings: torch.Tensor, eot_index: torch.Tensor,
                              prefix: PrefixCache) -> torch.Tensor:
        start, length = prefix.length, embeddings.shape[1]
        x = self._cast(embeddings) + self.positional_embedding[start:start + length].to(embeddings.dtype)
        blocks = self.transformer.resblocks
        for index, (block, k, v) in enumerate(zip(blocks, prefix.keys, prefix.values, strict=True)):
            if index == len(blocks) - 1:  # only the EOT rows are pooled: the last block runs for them alone
                x, _ = self._block(block, x, (k, v), only=eot_index - start)
            else:
                x, _ = self._block(block, x, (k, v))
        return self._pool(x, torch.zeros_like(eot_index))

    def _block(self, block: nn.Module, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None,
               last: bool = False, only: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """open_clip's ``ResidualAttentionBlock`` written out, attending to ``past`` keys/values first.

        The same operations as ``block(x, attn_mask)``: pre-norm, fused q/k/v projection, causal scaled
        dot-product attention, out projection, layer scale, then the MLP. Returns this segment's own k, v.
        With ``only`` (one position per sequence) the output is ``[B, 1, width]`` for those positions: their
        queries attend to every key and value, the other positions' outputs are not computed.
        """
        attn: nn.MultiheadAttention = block.attn
        batch, length, width = x.shape
        heads = attn.num_heads
        q, k, v = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.reshape(batch, length, heads, width // heads).transpose(1, 2) for t in (q, k, v))
        own = (k, v)
        start = 0
        if past is not None:
            start = past[0].shape[2]
            k = torch.cat([past[0].expand(batch, -1, -1, -1), k], dim=2)
            v = torch.cat([past[1].expand(batch, -1, -1, -1), v], dim=2)
        if only is None:
            mask = self.attn_mask[start:start + length, :start + length].to(q.dtype)
        else:
            rows = torch.arange(batch, device=x.device)
            q, x = q[rows, :, only].unsqueeze(2), x[rows, only].unsqueeze(1)
            mask = self.attn_mask[start + only, :start + length].to(q.dtype)[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = attn.out_proj(out.transpose(1, 2).reshape(batch, q.shape[2], width))
        x = x + block.ls_1(out)
        if last and past is None:
            return x, own  # the prefix's last-layer output is never pooled: skip its MLP
        x = x + block.ls_2(block.mlp(block.ln_2(x)))
        return x, own
