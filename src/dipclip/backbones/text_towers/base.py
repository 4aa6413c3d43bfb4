"""The surface every text tower offers to prompts and methods, whatever open_clip built underneath.

Prompt methods replace some token embeddings by learned vectors, so they cannot call ``encode_text(ids)``:
they hand the tower embeddings ``[B, L, width]`` together with the token ids those embeddings stand for
(``token_ids [B, L]``: the placeholder ids at the learned positions), from which the tower derives what
depends on ids (padding and class-token attention masks, the pooled position). ``L`` may be shorter than the
context length only where :attr:`TextTowerBase.causal` says positions after the pooled one never reach it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ...errors import DipclipError


@dataclass
class PrefixCache:
    """Per-layer keys and values ``[1, heads, P, head_dim]`` of the first ``length`` positions."""

    length: int
    keys: list[torch.Tensor]
    values: list[torch.Tensor]


class TextTowerBase(nn.Module):
    """What :class:`~dipclip.prompts.class_prompts.ClassPrompts` and the methods rely on.

    - ``width``: token embedding width; ``context_length``: the model's own (77, 64, 32, ...);
      ``output_dim``: the text feature size; ``layers``: blocks (deep prompts need one per depth).
    - ``causal``: True when a sequence may stop right after its pooled position (:meth:`pool_index`) and give
      the same feature (open_clip's causal towers pooled at a token). False means: always the full sequence.
    - ``supports_prefix_cache``: :meth:`encode_prefix` and ``forward(..., prefix=)`` are available.
    - ``supports_deep_prompts``: :meth:`forward_deep` is available (MaPLe, PromptSRC).
    """

    kind = "text tower"
    causal = False
    supports_prefix_cache = False
    supports_deep_prompts = False

    width: int
    context_length: int
    output_dim: int
    layers: int

    def embed_tokens(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings [B, L, width] (positions are added inside the tower)."""
        raise NotImplementedError

    def pool_index(self, token_ids: torch.Tensor) -> torch.Tensor:
        """The position whose output is pooled, per sequence [B] (used to truncate causal sequences)."""
        raise NotImplementedError

    def forward(self, embeddings: torch.Tensor, token_ids: torch.Tensor,
                prefix: PrefixCache | None = None) -> torch.Tensor:
        """Unnormalised text features [B, output_dim]. ``token_ids`` cover positions 0.. of the sequences;
        with ``prefix`` the embeddings are the positions after ``prefix.length`` only."""
        raise NotImplementedError

    def forward_deep(self, embeddings: torch.Tensor, token_ids: torch.Tensor,
                     deep_prompts: Sequence[torch.Tensor], start: int = 1) -> torch.Tensor:
        """Like :meth:`forward`, with positions ``start : start + n`` replaced by ``deep_prompts[i - 1]`` at the
        input of layer ``i`` (MaPLe/PromptSRC deep prompts)."""
        self.require_deep_prompts()
        raise NotImplementedError

    def require_deep_prompts(self) -> None:
        """Refuse deep text prompts up front (before any data is read) on towers that cannot take them."""
        if self.supports_deep_prompts:
            return
        raise DipclipError(f"deep text prompts (MaPLe, PromptSRC) need an open_clip text transformer; this model's "
                           f"text tower is a {self.kind}; use coop, dip, cocoop, kgcoop, prograd or dept")

    def encode_prefix(self, prefix: torch.Tensor) -> PrefixCache:
        raise RuntimeError("this text tower does not support prefix caching; check supports_prefix_cache")

    def encode_token_ids(self, token_ids: torch.Tensor) -> torch.Tensor:
        """The tower's features of hand-written prompts (the same as open_clip's ``encode_text``)."""
        return self(self.embed_tokens(token_ids), token_ids)
