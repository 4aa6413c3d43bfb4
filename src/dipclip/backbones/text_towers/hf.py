"""Hugging Face text encoders (open_clip's ``HFTextEncoder``: BERT, RoBERTa, XLM-R, mT5's encoder, ...).

open_clip runs them from token ids: ``transformer(input_ids, attention_mask=ids != pad)``, then its pooler
(mean, max, the class token or the model's own pooler output) and its projection. Prompt methods replace some
token embeddings by learned vectors, so :class:`HFTextTower` runs the same model from ``inputs_embeds`` with
the same attention mask, pooler and projection; for hand-written prompts (the embeddings of the ids) the two
paths agree exactly.

One thing a model derives from ids differently than from embeddings: RoBERTa-style position ids (XLM-R,
CamemBERT, ...) count non-padding tokens from ``padding_idx + 1`` when given ids, but number every position
sequentially when given embeddings. The two differ at padding positions only, which the attention mask hides,
yet this tower passes the ids' position ids explicitly, so both paths compute the very same thing.

The tower is bidirectional (:attr:`causal` False: every sequence runs at full length), has no prefix cache and
no deep prompts (MaPLe, PromptSRC), which need open_clip's own text transformer.
"""

from __future__ import annotations

import torch
from torch import nn

from ...errors import DipclipError
from ..precision import autocast_for
from .base import PrefixCache, TextTowerBase

# A sequence limit for towers whose positions are relative (T5/mT5: no position table to run out of).
RELATIVE_POSITIONS_CONTEXT = 512


class HFTextTower(TextTowerBase):
    """A thin view over an open_clip ``HFTextEncoder`` (shares its weights, copies nothing).

    ``context_length``: the length the model's tokenizer pads to (the config's ``text_cfg.context_length``);
    without it, the longest sequence the model's position table allows.
    """

    causal = False
    supports_prefix_cache = False
    supports_deep_prompts = False

    def __init__(self, encoder: nn.Module, context_length: int | None = None):
        super().__init__()
        transformer = getattr(encoder, "transformer", None)
        config = getattr(encoder, "config", None)
        if transformer is None or config is None or not hasattr(encoder, "pooler") or not hasattr(encoder, "proj"):
            raise DipclipError(f"this model's text tower ({type(encoder).__name__}) is not an open_clip "
                               "HFTextEncoder (needs transformer, config, pooler and proj)")
        self.encoder = encoder
        self.model_type = str(getattr(config, "model_type", "") or type(transformer).__name__)
        self.kind = f"Hugging Face text encoder ({self.model_type})"
        pad = getattr(config, "pad_token_id", None)
        if pad is None:
            raise DipclipError(f"the {self.kind} has no pad_token_id in its config; open_clip masks padding by it")
        self.pad_id = int(pad)
        self._context_length = None if context_length is None else int(context_length)
        self.requires_grad_(False)  # frozen backbone: gradients only ever reach the prompt embeddings

    # ---- facts ---------------------------------------------------------------------------------------------

    @property
    def transformer(self) -> nn.Module:
        """The Hugging Face model open_clip runs (for encoder-decoder models such as mT5: the encoder stack)."""
        return self.encoder.transformer

    @property
    def config(self):
        return self.encoder.config

    @property
    def token_embedding(self) -> nn.Module:
        return self.transformer.get_input_embeddings()

    @property
    def device(self) -> torch.device:
        return self.token_embedding.weight.device

    @property
    def width(self) -> int:
        return int(self.token_embedding.weight.shape[1])

    @property
    def context_length(self) -> int:
        if self._context_length is not None:
            return self._context_length
        table = getattr(self.config, "max_position_embeddings", None)
        if not table:
            return RELATIVE_POSITIONS_CONTEXT
        offset = self._position_offset()
        return int(table) - (0 if offset is None else offset + 1)  # RoBERTa's table starts after padding_idx

    @context_length.setter
    def context_length(self, value: int) -> None:
        self._context_length = int(value)

    @property
    def output_dim(self) -> int:
        return int(self.encoder.output_dim)

    @property
    def layers(self) -> int:
        for name in ("num_hidden_layers", "num_layers", "encoder_layers", "n_layers"):
            value = getattr(self.config, name, None)
            if isinstance(value, int) and value > 0:
                return value
        raise DipclipError(f"cannot tell how many layers the {self.kind} has (no layer count in its config)")

    @property
    def pooler_type(self) -> str:
        return type(self.encoder.pooler).__name__

    # ---- the surface ---------------------------------------------------------------------------------------

    def embed_tokens(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings [B, L, width] (position embeddings, if any, are added inside the model)."""
        return self.token_embedding(token_ids)

    def pool_index(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Position 0 for class-token poolers; mean and max pooling pool every position (never asked, since the
        tower is not causal)."""
        if getattr(self.encoder.pooler, "cls_token_position", None) is None:
            raise DipclipError(f"the {self.kind} pools with {self.pooler_type}, over every position, not at one")
        position = int(self.encoder.pooler.cls_token_position)
        return torch.full((token_ids.shape[0],), position, dtype=torch.long, device=token_ids.device)

    def forward(self, embeddings: torch.Tensor, token_ids: torch.Tensor,
                prefix: PrefixCache | None = None) -> torch.Tensor:
        """Text features [B, output_dim] of token embeddings [B, L, width]: the model from ``inputs_embeds`` with
        the padding mask of ``token_ids`` [B, L], then open_clip's pooler and projection (``HFTextEncoder.forward``
        with embeddings in place of ids). Under CUDA in bf16 autocast; the result is fp32."""
        if prefix is not None:
            raise RuntimeError("this text tower does not support prefix caching; check supports_prefix_cache")
        if embeddings.shape[:2] != token_ids.shape:
            raise DipclipError(f"the {self.kind} needs token ids for every embedding: got embeddings "
                               f"{tuple(embeddings.shape)} and ids {tuple(token_ids.shape)}")
        attention_mask = (token_ids != self.pad_id).long()
        inputs = {"inputs_embeds": embeddings, "attention_mask": attention_mask}
        position_ids = self._position_ids(token_ids)
        if position_ids is not None:
            inputs["position_ids"] = position_ids
        with autocast_for(embeddings.device):
            out = self.transformer(**inputs)
            pooled = self.encoder.pooler(out, attention_mask)
            projected = self.encoder.proj(pooled)
        return projected.float()

    # ---- RoBERTa-style position ids ------------------------------------------------------------------------

    def _position_offset(self) -> int | None:
        """``padding_idx`` for models whose position ids count from the ids' padding (RoBERTa, XLM-R, ...)."""
        embeddings = getattr(self.transformer, "embeddings", None)
        if embeddings is None or not hasattr(embeddings, "create_position_ids_from_input_ids"):
            return None
        padding_idx = getattr(embeddings, "padding_idx", None)
        return None if padding_idx is None else int(padding_idx)

    def _position_ids(self, token_ids: torch.Tensor) -> torch.Tensor | None:
        """The position ids the model would derive from ``token_ids`` where it derives them from ids otherwise
        than from embeddings; None where both agree (the model numbers positions itself)."""
        padding_idx = self._position_offset()
        if padding_idx is None:
            return None
        return self.transformer.embeddings.create_position_ids_from_input_ids(token_ids, padding_idx)
