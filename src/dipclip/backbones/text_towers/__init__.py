"""Text towers behind one surface (:class:`~.base.TextTowerBase`): open_clip's own text transformers
(:mod:`.clip`, causal or not, any pooling, CoCa's class token) and Hugging Face encoders (:mod:`.hf`)."""

from __future__ import annotations

from torch import nn

from .base import PrefixCache, TextTowerBase

__all__ = ["PrefixCache", "TextTowerBase", "text_tower_for"]


def text_tower_for(clip_model: nn.Module, context_length: int | None = None) -> TextTowerBase:
    """The text tower view of an open_clip model (``CLIP``, ``CustomTextCLIP`` or ``CoCa``); ``context_length``:
    the tokenizer's, for Hugging Face encoders (whose position tables are longer than what the model reads)."""
    from open_clip.hf_model import HFTextEncoder

    text = getattr(clip_model, "text", None)
    if isinstance(text, HFTextEncoder):
        from .hf import HFTextTower

        return HFTextTower(text, context_length)
    from .clip import OpenClipTextTower

    return OpenClipTextTower(clip_model)
