"""The one place that touches open_clip's text internals.

Prompt methods replace some token embeddings by learned vectors, so they cannot call
``encode_text(ids)``; they need the pieces: token embedding, positional embedding, the causal
transformer, the final norm, the projection and the pooling at the end-of-text (EOT) token.
Everything else in dipclip drives the text tower through :class:`TextTower`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import DipclipError


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

    def forward(self, embeddings: torch.Tensor, eot_index: torch.Tensor) -> torch.Tensor:
        """Text features [B, output_dim] of prompt embeddings [B, L, width], pooled at ``eot_index``.

        ``L`` may be shorter than the context length: the transformer is causal, so positions after the
        EOT token never influence it, and a truncated sequence gives the same EOT output.
        """
        length = embeddings.shape[1]
        cast_dtype = self.transformer.get_cast_dtype() if hasattr(self.transformer, "get_cast_dtype") else None
        x = embeddings if cast_dtype is None else embeddings.to(cast_dtype)
        x = x + self.positional_embedding[:length].to(x.dtype)
        mask = None if self.attn_mask is None else self.attn_mask[:length, :length]
        x = self.transformer(x, attn_mask=mask)
        x = self.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), eot_index]
        proj = self.text_projection
        if proj is None:
            return x
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj

    def encode_token_ids(self, token_ids: torch.Tensor) -> torch.Tensor:
        """The same as open_clip's ``encode_text`` (unnormalised), for hand-written prompts."""
        return self(self.embed_tokens(token_ids), token_ids.argmax(dim=-1))
