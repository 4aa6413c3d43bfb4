"""KgCoOp (Yao et al., CVPR 2023): CoOp plus a pull towards the hand-crafted prompt's text features.

Loss = CE + W * mean_c (1 - cos(w_c, w_c^clip)), where w_c is the learned class text feature and w_c^clip
the zero-shot feature of "a photo of a {class}." (W = 8, as published). The hand-crafted features are
computed once per class list.
"""

from __future__ import annotations

import torch

from .base import OptimConfig, PromptCLIP, PromptConfig, PromptMethod, density_levers
from .zeroshot import zeroshot_text_features


class KgCoOp(PromptMethod):
    name = "kgcoop"
    summary = "KgCoOp: CoOp + W * (1 - cos(learned, hand-crafted text features)), W = 8"
    prompt_defaults = PromptConfig(parameterization="full")
    optim_defaults = OptimConfig(lr=0.002)
    option_names = ("kg_weight",)
    kg_weight = 8.0  # W, from the recipe
    template = "a photo of a {}."

    def anchor_features(self, model: PromptCLIP) -> torch.Tensor:
        key = tuple(model.classnames)
        cached = getattr(model, "_kg_anchor", None)
        if cached is None or cached[0] != key:
            cached = (key, zeroshot_text_features(model.backbone, model.classnames, [self.template]))
            model._kg_anchor = cached
        return cached[1]

    def extra_loss(self, model: PromptCLIP, image_features: torch.Tensor, logits: torch.Tensor,
                   labels: torch.Tensor) -> torch.Tensor | None:
        learned = model.last_text_features
        anchor = self.anchor_features(model)
        loss = self.kg_weight * (1.0 - (learned * anchor).sum(dim=-1)).mean()  # both are unit vectors
        levers = density_levers(model)
        return loss if levers is None else loss + levers
