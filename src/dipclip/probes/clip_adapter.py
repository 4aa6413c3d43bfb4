"""CLIP-Adapter (Gao et al., IJCV 2024; gaopengcuhk/CLIP-Adapter, ``clip_adapter.py``).

A bottleneck MLP on the UNNORMALISED image features ``f`` of the image encoder, blended residually and only then
normalised (their ``CustomCLIP.forward``)::

    a      = ReLU(W_up ReLU(W_down f))           W_down [D/4, D], W_up [D, D/4], no biases
    f'     = ratio * a + (1 - ratio) * f          ratio 0.2
    logits = exp(logit_scale) * (f' / |f'|) @ (t / |t|).T

with ``t`` the frozen class text features of one hand-written template per dataset (their ``CUSTOM_TEMPLATES``)
and CLIP's own logit scale. The head therefore takes the store's raw features (``takes_raw_features``). The adapter
acts on image features only, so other classes are scored by recomputing the text side (``scores_new_classes``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..backbones.loading import Backbone
from ..errors import DipclipError
from .base import FeatureHead, FeatureMethod, HeadOptimConfig

TextEncoder = Callable[[list[str], list[str]], torch.Tensor]


def zeroshot_encoder_of(backbone: Backbone) -> TextEncoder:
    """(class names, templates) -> normalised [C, D] class text features (one template: its normalised
    features, as their ``TextEncoder`` followed by the normalisation in ``forward``)."""
    from ..methods.zeroshot import zeroshot_text_features

    def encode(classnames: list[str], templates: list[str]) -> torch.Tensor:
        with torch.no_grad():
            return zeroshot_text_features(backbone, classnames, templates).float()

    return encode


class Adapter(nn.Module):
    """The authors' ``Adapter``: ``fc`` = Linear(D, D // reduction, bias=False), ReLU, Linear(D // reduction, D,
    bias=False), ReLU (the same parameter names, ``fc.0.weight`` and ``fc.2.weight``; PyTorch's default init)."""

    def __init__(self, dim: int, reduction: int):
        super().__init__()
        if dim // reduction < 1:
            raise DipclipError(f"the adapter's bottleneck {dim} // {reduction} is empty; use a smaller reduction")
        self.fc = nn.Sequential(nn.Linear(dim, dim // reduction, bias=False), nn.ReLU(),
                                nn.Linear(dim // reduction, dim, bias=False), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class ClipAdapterHead(FeatureHead):
    takes_raw_features = True  # the adapter acts on the image encoder's unnormalised output
    scores_new_classes = True

    def __init__(self, backbone: Backbone, classnames: list[str], settings: dict, encoder: TextEncoder,
                 logit_scale: float):
        super().__init__(backbone, classnames, settings)
        self.__dict__["encoder"] = encoder
        self.logit_scale = float(logit_scale)
        self.ratio = float(self.settings["ratio"])
        if not 0.0 <= self.ratio <= 1.0:
            raise DipclipError(f"the residual ratio must lie in [0, 1], got {self.ratio}")
        text = self._encode(list(classnames))
        self.register_buffer("_text", text, persistent=False)
        self.adapter = Adapter(text.shape[1], int(self.settings["reduction"])).to(text.device)

    def _encode(self, classnames: list[str]) -> torch.Tensor:
        text = self.encoder(classnames, list(self.settings["templates"])).float()
        if text.ndim != 2 or text.shape[0] != len(classnames):
            raise DipclipError(f"class text features {tuple(text.shape)} do not fit {len(classnames)} classes")
        return nn.functional.normalize(text, dim=-1)

    def on_new_classes(self, classnames: list[str]) -> None:
        """Their ``TextEncoder`` formats the classes it is given with the template of the dataset being
        evaluated: the current ``settings["templates"]`` (set them to the target's before a cross-dataset
        evaluation)."""
        self._text = self._encode(list(classnames)).to(self._text.device)

    def adapted(self, raw_image_features: torch.Tensor) -> torch.Tensor:
        """The blended features ``ratio * adapter(f) + (1 - ratio) * f``, normalised."""
        f = raw_image_features.to(self._text.dtype)
        mixed = self.ratio * self.adapter(f) + (1 - self.ratio) * f
        return mixed / mixed.norm(dim=-1, keepdim=True)

    def logits(self, image_features: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        text = self._text if text_features is None else text_features.to(self._text.dtype)
        return self.logit_scale * self.adapted(image_features) @ text.t()

    def text_features(self, merged: bool = False) -> torch.Tensor:
        return self._text


class ClipAdapter(FeatureMethod):
    name = "clip-adapter"
    summary = "CLIP-Adapter (Gao et al., IJCV 2024): residual bottleneck MLP on the image features, CE-trained"
    trained = True
    protocols = frozenset({"fewshot", "base2new", "xd", "dg"})
    # clip_adapter.py: Adapter(1024, 4), ratio = 0.2; templates: CUSTOM_TEMPLATES (one per dataset)
    defaults = {"templates": ["a photo of a {}."], "reduction": 4, "ratio": 0.2}
    # the repository points to CoOp's Dassl command (README "follow CoOp's command to run for ImageNet"):
    # CoOp configs/trainers/CoOp/rn50_ep50.yaml, SGD lr 0.002, momentum 0.9, wd 5e-4, 1 constant warm-up epoch
    optim_defaults = HeadOptimConfig(optimizer="sgd", lr=0.002, momentum=0.9, weight_decay=5e-4, warmup_epochs=1,
                                     warmup_lr=1e-5, schedule="epoch")

    def build(self, backbone: Backbone, classnames: list[str], settings: dict,
              text_encoder: TextEncoder | None = None, logit_scale: float | None = None) -> ClipAdapterHead:
        settings = {**self.defaults, **settings}
        encoder = text_encoder or zeroshot_encoder_of(backbone)
        if logit_scale is None:
            logit_scale = float(backbone.logit_scale)
        return ClipAdapterHead(backbone, classnames, settings, encoder, logit_scale)
