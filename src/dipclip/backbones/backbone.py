"""The frozen CLIP every method runs on (:class:`Backbone`): its model, text tower and tokenizer, the facts
adapters are checked against, and the one line each run prints about its weights."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property

import torch
from torch import nn

from ..errors import DipclipError, warn
from . import tokenizers
from .precision import autocast_for
from .text_towers import TextTowerBase
from .vision_tower import VisionTower, is_class_token_vit


def normalize_image_features(raw: torch.Tensor) -> torch.Tensor:
    """L2-normalised image features from the projected fp32 ones: the one place image features are normalised
    (:meth:`Backbone.encode_images`, the feature store's stored copies, DePT's similarity logits)."""
    return nn.functional.normalize(raw, dim=-1)


@dataclass
class Backbone:
    """A frozen CLIP with its own tokenizer and the facts adapters are checked against."""

    model: nn.Module
    text: TextTowerBase
    tokenizer: tokenizers.Tokenizer
    name: str
    pretrained: str
    identity: str
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    model_arg: str | None = None  # what the user passed as --model, so an adapter can rebuild its backbone
    model_config: dict | None = None  # the config JSON's content, so it rebuilds without that file
    weights_file: str | None = None  # the absolute path of a --pretrained weights file
    known_tokens: frozenset[int] | None = None  # a pruned vocabulary (dipclip-tiny); None: the full one
    _warned_words: set[str] = field(default_factory=set, repr=False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.exp()

    @property
    def logit_bias(self) -> torch.Tensor | None:
        """SigLIP-style models' learned logit bias (``scale * cos + bias``); None for CLIP-style ones. A bias
        shared by every class changes no softmax, cross-entropy, KL or argmax: it matters only for sigmoid
        probabilities and for exported logits."""
        bias = getattr(self.model, "logit_bias", None)
        return None if bias is None else bias.reshape(())

    def logits(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """The model's own logits of normalised features: ``scale * image @ text.T`` (+ the logit bias)."""
        logits = self.logit_scale * image_features @ text_features.t()
        bias = self.logit_bias
        return logits if bias is None else logits + bias.to(logits.dtype)

    @cached_property
    def content_start(self) -> int:
        """Position of a text's first token: after SOS for CLIP (1), 0 for SigLIP's tokenizer (no BOS), after
        [CLS] or <s> for BERT-style ones. Found by tokenizing two one-letter texts and seeing where they differ."""
        a, b = self.tokenizer(["x"])[0], self.tokenizer(["y"])[0]
        differ = (a != b).nonzero()
        if len(differ) != 1:
            raise DipclipError(f"cannot find where text starts in {self.name}'s tokenizer ('x' and 'y' differ at "
                               f"{len(differ)} positions, expected 1)")
        return int(differ[0, 0])

    def to(self, device: torch.device | str) -> Backbone:
        self.model.to(device)
        self.text.to(device)
        return self

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        if self.known_tokens is not None:
            self._warn_unknown_words(texts)
        return self.tokenizer(texts).to(self.device)

    def unknown_words(self, texts: list[str]) -> list[str]:
        """Words of ``texts`` with a token outside :attr:`known_tokens` (they would embed as zero vectors)."""
        if self.known_tokens is None:
            return []
        found: list[str] = []
        for text in texts:
            for word in text.split():
                if any(token not in self.known_tokens for token in self.tokenizer.encode(word)):
                    shown = word.strip(".,;:!?\"'()[]{}").lower() or word
                    if shown not in found:
                        found.append(shown)
        return found

    def _warn_unknown_words(self, texts: list[str]) -> None:
        """One line per new set of unknown words: silently zero-embedded class names give wrong numbers."""
        new = [word for word in self.unknown_words(texts) if word not in self._warned_words]
        if not new:
            return
        self._warned_words.update(new)
        shown = ", ".join(repr(word) for word in new[:12]) + (f" and {len(new) - 12} more" if len(new) > 12 else "")
        if os.environ.get("RANK", "0") == "0":
            warn(f"{self.name} does not know the word(s) {shown} (in class names or templates): they embed as "
                 "zero vectors and carry no meaning; use words it knows, or a full CLIP such as --model ViT-B-16 "
                 "--pretrained openai")

    @cached_property
    def vision(self) -> VisionTower | None:
        """The image tower with the class-token shortcut (open_clip ViTs pooled by their class token), or None
        for every other tower (ResNet, timm, attention or average pooling), which runs open_clip's own
        ``encode_image``."""
        return VisionTower(self.model) if is_class_token_vit(self.model.visual) else None

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """L2-normalised image features in fp32 (the image tower is frozen, so never with grad);
        ``normalize=False`` gives the projected features before normalisation (DePT's head takes those)."""
        if self.vision is not None:
            features = self.vision(images)
        else:
            with autocast_for(images.device):
                features = self.model.encode_image(images, normalize=False)  # CoCa normalises by default
        return normalize_image_features(features.float()) if normalize else features.float()

    def describe(self) -> dict:
        return {
            "model": self.name,
            "model_arg": self.model_arg,
            "pretrained": self.pretrained,
            "identity": self.identity,
            "text_width": self.text.width,
            "embed_dim": self.text.output_dim,
            "image_size": self.image_size,
            **({"model_config": self.model_config} if self.model_config is not None else {}),
            **({"weights_file": self.weights_file} if self.weights_file is not None else {}),
        }


def weights_line(backbone: Backbone) -> str:
    """The one line every run prints about its weights (random ones say so loudly)."""
    if backbone.pretrained == "none":
        return (f"weights: RANDOM (--pretrained none) for {backbone.name}: results are those of an untrained "
                f"CLIP [{backbone.identity}]")
    return f"weights: {backbone.pretrained} for {backbone.name} [{backbone.identity}]"
