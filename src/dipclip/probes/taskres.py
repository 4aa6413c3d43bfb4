"""TaskRes: Task Residual Tuning (Yu et al., CVPR 2023; geekyutao/TaskRes, ``trainers/taskres.py``).

A learnable residual ``R`` [C, D] (zeros at the start) added to the frozen text classifier ``T`` [C, D]::

    W      = T + alpha * R                         (their TaskResLearner.forward)
    logits = exp(logit_scale) * (f / |f|) @ (W / |W|).T

``T`` (the "regular base") is the mean over the templates of the UNNORMALISED text features
(``_get_base_text_features``: ``torch.stack(text_encoder(...)).mean(1)``, no normalisation before the mean), so
the residual's weight relative to the base follows CLIP's text-feature norms. ``alpha`` (``RESIDUAL_SCALE``) is 0.5
(1.0 on Flowers). ``R`` is per class: new classes cannot be scored; a subset of the training classes (ImageNet-A/R
from ImageNet) takes the rows of those classes, as their ``load_model`` does for the base and the residual.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..backbones.loading import Backbone
from ..errors import DipclipError
from .base import FeatureHead, FeatureMethod, HeadOptimConfig

BaseEncoder = Callable[[list[str], list[str]], torch.Tensor]


@torch.no_grad()
def raw_template_mean(backbone: Backbone, classnames: Sequence[str], templates: Sequence[str],
                      chunk_size: int = 256) -> torch.Tensor:
    """[C, D]: per class, the mean over ``templates`` of the unnormalised text features (their regular base)."""
    from ..methods.zeroshot import template_text_features

    return torch.stack(template_text_features(backbone, classnames, templates, chunk_size), dim=1).mean(1)


def base_encoder_of(backbone: Backbone) -> BaseEncoder:
    return lambda classnames, templates: raw_template_mean(backbone, classnames, templates)


class TaskResHead(FeatureHead):
    def __init__(self, backbone: Backbone, classnames: list[str], settings: dict, encoder: BaseEncoder,
                 logit_scale: float):
        super().__init__(backbone, classnames, settings)
        base = encoder(list(classnames), list(self.settings["templates"])).float()
        if base.ndim != 2 or base.shape[0] != len(classnames):
            raise DipclipError(f"base text features {tuple(base.shape)} do not fit {len(classnames)} classes")
        self.register_buffer("_base", base, persistent=False)  # rebuilt from the backbone and the templates
        self.text_feature_residuals = nn.Parameter(torch.zeros_like(base))
        self.alpha = float(self.settings["residual_scale"])
        self.logit_scale = float(logit_scale)
        self.rows: torch.Tensor | None = None  # rows of the training classes for the current ones (None: all)

    def set_classnames(self, classnames: list[str]) -> None:
        """The training classes, or a subset of them matched by name (their ImageNet-A/R clipping)."""
        if list(classnames) == self.train_classnames:
            self._classnames, self.rows = list(classnames), None
            return
        from ..methods.dept import head_rows

        rows = head_rows(self.train_classnames, list(classnames))
        if rows is None:
            raise DipclipError(f"{self.origin} learned one residual per training class, so it can only score its "
                               f"{len(self.train_classnames)} training classes or a subset of them (ImageNet-A/R "
                               "from ImageNet); some asked classes are not among them")
        self._classnames, self.rows = list(classnames), rows.to(self._base.device)

    def classifier(self) -> torch.Tensor:
        """``normalize(T + alpha * R)`` for the current classes [C, D]."""
        weights = self._base + self.alpha * self.text_feature_residuals
        if self.rows is not None:
            weights = weights[self.rows]
        return weights / weights.norm(dim=-1, keepdim=True)

    def logits(self, image_features: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        text = self.classifier() if text_features is None else text_features
        f = image_features / image_features.norm(dim=-1, keepdim=True)
        return self.logit_scale * f @ text.t()

    def text_features(self, merged: bool = False) -> torch.Tensor:
        return self.classifier()

    def linear_classifier(self) -> tuple[torch.Tensor, None]:
        # on normalised features (the feature store's) the logits are one linear map
        return self.logit_scale * self.classifier().detach(), None


class TaskRes(FeatureMethod):
    name = "taskres"
    summary = "TaskRes (Yu et al., CVPR 2023): learnable residual added to the frozen zero-shot text classifier"
    trained = True
    protocols = frozenset({"fewshot", "dg"})
    # train_regular.sh: RESIDUAL_SCALE 0.5 (oxford_flowers 1.0); base templates: CUSTOM_TEMPLATES, ImageNet the
    # 7 IMAGENET_TEMPLATES_SELECT plus "a photo of a {}." (per dataset in the recipe JSON)
    defaults = {"templates": ["a photo of a {}."], "residual_scale": 0.5}
    # configs/trainers/TaskRes/adam_lr2e-3_B256_ep200.yaml with Dassl's adam: torch.optim.Adam (L2 weight decay
    # 5e-4 added to the gradient, betas 0.9/0.999), 1 warm-up epoch at 1e-5, cosine per epoch
    optim_defaults = HeadOptimConfig(optimizer="adam", lr=0.002, momentum=0.9, weight_decay=5e-4, warmup_epochs=1,
                                     warmup_lr=1e-5, eps=1e-8, schedule="epoch")

    def build(self, backbone: Backbone, classnames: list[str], settings: dict,
              text_encoder: BaseEncoder | None = None, logit_scale: float | None = None) -> TaskResHead:
        settings = {**self.defaults, **settings}
        encoder = text_encoder or base_encoder_of(backbone)
        if logit_scale is None:
            logit_scale = float(backbone.logit_scale)
        return TaskResHead(backbone, classnames, settings, encoder, logit_scale)
