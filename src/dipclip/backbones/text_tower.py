"""The one place that touches open_clip's text internals.

Prompt methods replace some token embeddings by learned vectors, so they cannot call
``encode_text(ids)``; they need the pieces: token embedding, positional embedding, the causal
transformer, the final norm, the projection and the pooling at the end-of-text (EOT) token.
Everything else in dipclip drives the text tower through :class:`TextTower`.

Two exact shortcuts live here because they need the transformer's pieces. The tower is causal, so a
sequence may stop right after its EOT token (positions after it never reach it); and leading positions that
every class shares (SOS + context when the class name comes last) have the same hidden states in every
class, so :meth:`TextTower.encode_prefix` runs them once and keeps each layer's keys and values, which
:meth:`TextTower.forward` then attends to from the per-class positions only. On that path and in
:meth:`TextTower.forward_deep` the last block runs for each sequence's EOT position alone (its query against
every key and value), since no other position's last-layer output is pooled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import DipclipError
from .precision import cuda_autocast


@dataclass
class PrefixCache:
    """Per-layer keys and values ``[1, heads, P, head_dim]`` of the first ``length`` positions."""

    length: int
    keys: list[torch.Tensor]
    values: list[torch.Tensor]


class TextTower(nn.Module):
    """A thin view over an open_clip text transformer (shares its weights, copies nothing)."""

    def __init__(self, clip_model: nn.Module):
        super().__init__()
        # open_clip.CLIP keeps the text modules on the model; CustomTextCLIP keeps them in `.text`.
        source = clip_model.text if isinstance(getattr(clip_model, "text", None), nn.Module) else clip_model
        required = ("token_embedding", "positional_embedding", "transformer", "ln_final")
        missing = [name for name in required if not hasattr(source, name)]
        if missing:
            raise DipclipError(
                f"this model's text tower ({type(source).__name__}) is not an open_clip TextTransformer "
                f"(missing {', '.join(missing)}); prompt tuning needs a CLIP-style causal text transformer"
            )
        if getattr(source, "cls_emb", None) is not None:
            raise DipclipError("text towers with a CLS embedding (CoCa-style) are not supported for prompt tuning")
        pool_type = getattr(source, "text_pool_type", None) or getattr(source, "pool_type", "argmax")
        if pool_type != "argmax":
            raise DipclipError(
                f"text pooling {pool_type!r} is not supported; dipclip needs EOT (argmax) pooling as in OpenAI CLIP"
            )
        self.token_embedding = source.token_embedding
        self.positional_embedding = source.positional_embedding
        self.transformer = source.transformer
        self.ln_final = source.ln_final
        self.text_projection = getattr(source, "text_projection", None)
        mask = getattr(source, "attn_mask", None)
        self.register_buffer("attn_mask", None if mask is None else mask.clone(), persistent=False)
        self.causal = mask is not None
        self.requires_grad_(False)  # frozen backbone: gradients only ever reach the prompt embeddings

    @property
    def supports_prefix_cache(self) -> bool:
        """True when every block is open_clip's plain pre-norm block around ``nn.MultiheadAttention``
        (what CLIP text towers use); other block types take the exact but uncached path."""
        transformer = self.transformer
        if not self.causal or not getattr(transformer, "batch_first", False):
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
        return self.positional_embedding.shape[0]

    @property
    def output_dim(self) -> int:
        proj = self.text_projection
        if proj is None:
            return self.width
        return proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1]

    def embed_tokens(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings [B, L, width] (no positional embedding yet)."""
        return self.token_embedding(token_ids)

    def _cast(self, embeddings: torch.Tensor) -> torch.Tensor:
        cast_dtype = self.transformer.get_cast_dtype() if hasattr(self.transformer, "get_cast_dtype") else None
        return embeddings if cast_dtype is None else embeddings.to(cast_dtype)

    @cuda_autocast
    def forward(self, embeddings: torch.Tensor, eot_index: torch.Tensor,
                prefix: PrefixCache | None = None) -> torch.Tensor:
        """Text features [B, output_dim] of prompt embeddings [B, L, width], pooled at ``eot_index``.

        ``L`` may be shorter than the context length: the transformer is causal, so positions after the
        EOT token never influence it, and a truncated sequence gives the same EOT output. With ``prefix``
        (from :meth:`encode_prefix`) ``embeddings`` are positions ``prefix.length ...`` only and
        ``eot_index`` still counts from the start of the sequence.
        """
        if prefix is not None:
            return self._forward_after_prefix(embeddings, eot_index, prefix)
        length = embeddings.shape[1]
        x = self._cast(embeddings)
        x = x + self.positional_embedding[:length].to(x.dtype)
        mask = None if self.attn_mask is None else self.attn_mask[:length, :length]
        x = self.transformer(x, attn_mask=mask)
        return self._pool(x, eot_index)

    @property
    def layers(self) -> int:
        return len(self.transformer.resblocks)

    @cuda_autocast
    def forward_deep(self, embeddings: torch.Tensor, eot_index: torch.Tensor,
                     deep_prompts: Sequence[torch.Tensor], start: int = 1) -> torch.Tensor:
        """Like :meth:`forward`, with layer-specific context tokens (MaPLe/PromptSRC deep prompts).

        At the input of layer ``i`` (1 <= i <= len(deep_prompts)) positions ``start : start + n`` are replaced
        by ``deep_prompts[i - 1]`` ([n, width], shared by every sequence); layer 0 sees ``embeddings`` as
        given. No prefix cache here (the shared positions change per layer), but the same exact truncation and
        the same EOT-only last block.
        """
        if len(deep_prompts) >= self.layers:
            raise DipclipError(f"{len(deep_prompts)} deep prompts need more than the {self.layers} text layers")
        length = embeddings.shape[1]
        x = self._cast(embeddings)
        x = x + self.positional_embedding[:length].to(x.dtype)
        mask = None if self.attn_mask is None else self.attn_mask[:length, :length]
        batch_first = getattr(self.transformer, "batch_first", True)
        blocks = self.transformer.resblocks
        for index, block in enumerate(blocks):
            if 0 < index <= len(deep_prompts):
                deep = deep_prompts[index - 1].to(x.dtype)
                n = deep.shape[0]
                deep = deep.unsqueeze(0).expand(x.shape[0], -1, -1)
                x = torch.cat([x[:, :start], deep, x[:, start + n:]], dim=1)
            if index == len(blocks) - 1 and self.supports_prefix_cache:
                x, _ = self._block(block, x, None, only=eot_index)  # the last block for the EOT rows alone
                return self._pool(x, torch.zeros_like(eot_index))
            if batch_first:
                x = block(x, attn_mask=mask)
            else:
                x = block(x.transpose(0, 1), attn_mask=mask).transpose(0, 1)
        return self._pool(x, eot_index)

    def _pool(self, x: torch.Tensor, eot_index: torch.Tensor) -> torch.Tensor:
        x = self.ln_final(x[torch.arange(x.shape[0], device=x.device), eot_index])  # per-token norm: pool first
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

    def encode_token_ids(self, token_ids: torch.Tensor) -> torch.Tensor:
        """The same as open_clip's ``encode_text`` (unnormalised), for hand-written prompts.

        Full length on purpose: it is the bit-for-bit reference, and hand-written prompts are encoded once.
        """
        return self(self.embed_tokens(token_ids), token_ids.argmax(dim=-1))
