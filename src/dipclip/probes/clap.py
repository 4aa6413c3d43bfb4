"""ZS-LP and CLAP (Silva-Rodriguez et al., CVPR 2024; jusiro/CLAP ``trainers/adapters.py``).

ZS-LP: a linear probe whose class prototypes start at the zero-shot text prototypes; logits are
``logit_scale * cos(f, w_c)`` (features and prototypes normalised in the forward, CLIP's fixed logit scale).
CLAP adds the class-adaptive constraint ``mean_c lambda_c * ||w_c - t_c||^2`` to the cross-entropy, with
``lambda_c`` the mean zero-shot softmax probability of class c over its training samples (the 20 augmented
views), computed once before training and kept fixed (the "l2" constraint the paper's runs use; no outer
Augmented-Lagrangian update). No hyperparameter search: CLAP's point is a validation-free recipe.

The prototypes ``t_c`` are the authors' ones: the mean over templates of the *unnormalised* text-encoder outputs
(their ``_get_base_text_features``), which sets the constraint's scale and the SGD step relative to ``||w_c||``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..prompts.class_prompts import clean_classname
from .base import FeatureData, FeatureHead, FeatureMethod, HeadOptimConfig


def raw_text_prototypes(backbone, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """[C, D]: per class, the mean over templates of the text features, not normalised (as CLAP's base)."""
    names = [clean_classname(c) for c in classnames]
    total = None
    with torch.no_grad():
        for template in templates:
            ids = backbone.tokenize([template.format(name) for name in names])
            features = backbone.text.encode_token_ids(ids).float()
            total = features if total is None else total + features
    return total / len(templates)


def class_performance(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """CLAP's multiplier init: per class, the mean softmax probability of the true class over its samples."""
    onehot = nn.functional.one_hot(labels.long(), num_classes).to(logits.dtype)
    return torch.diag(torch.softmax(logits, dim=-1).t() @ onehot) / onehot.sum(0)


class ZeroShotLinearHead(FeatureHead):
    """logits = s * normalize(f) @ normalize(W)^T with W learnable, initialised at the zero-shot prototypes."""

    def __init__(self, backbone, classnames: list[str], settings: dict, base: torch.Tensor, logit_scale: float):
        super().__init__(backbone, classnames, settings)
        self.prototypes = nn.Parameter(base.detach().clone().float())
        self.register_buffer("_base", base.detach().clone().float())  # rebuilt from the backbone, not stored
        self.register_buffer("_multipliers", torch.zeros(len(classnames)))
        self.logit_scale = float(logit_scale)

    def logits(self, image_features: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        features = nn.functional.normalize(image_features.to(self.prototypes), dim=-1)
        return self.logit_scale * features @ nn.functional.normalize(self.prototypes, dim=-1).t()

    def constraint(self) -> torch.Tensor:
        return (self._multipliers * (self.prototypes - self._base).pow(2).sum(-1)).mean()

    def text_features(self, merged: bool = False) -> torch.Tensor:
        return nn.functional.normalize(self._base, dim=-1)

    def linear_classifier(self) -> tuple[torch.Tensor, None]:
        # only on normalised features (the feature store's): then logits are one linear map
        return self.logit_scale * nn.functional.normalize(self.prototypes.detach(), dim=-1), None


class ZeroShotLinearProbe(FeatureMethod):
    name = "zslp"
    summary = "linear probe initialised at the zero-shot prototypes, cosine logits (CLAP's ZS-LP)"
    trained = True
    protocols = frozenset({"fewshot", "xd", "dg"})
    constrained = False
    defaults = {"augment_views": 20, "logit_scale": None, "zeroshot_weights": None, "templates": None}
    # jusiro/CLAP configs/trainers/SGD_lr1e-1_B256_ep300.yaml + Dassl's default momentum 0.9
    optim_defaults = HeadOptimConfig(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=0.0, warmup_epochs=1,
                                 warmup_lr=1e-5)
    epochs = 300
    batch_size = 256

    def build(self, backbone, classnames: list[str], settings: dict) -> ZeroShotLinearHead:
        base = settings.get("zeroshot_weights")
        if base is None:
            base = raw_text_prototypes(backbone, classnames, settings.get("templates") or ["a photo of a {}."])
        scale = settings.get("logit_scale")
        if scale is None:
            scale = backbone.logit_scale
            scale = float(scale() if callable(scale) else scale)
        return ZeroShotLinearHead(backbone, classnames, settings, torch.as_tensor(base), float(scale))

    def fit(self, head: ZeroShotLinearHead, data: FeatureData, stage: str) -> dict:
        if stage != "before" or not self.constrained:
            return {}
        views, labels = data.views(int(head.settings["augment_views"]))
        features = views.reshape(-1, views.shape[-1])
        labels = labels.repeat(views.shape[0])
        with torch.no_grad():
            logits = head.logits(features)  # prototypes are still the zero-shot ones here
            head._multipliers.copy_(class_performance(logits, labels, len(head.train_classnames)))
        return {"multipliers_mean": head._multipliers.mean().item()}

    def loss(self, head: ZeroShotLinearHead, image_features: torch.Tensor, labels: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = head.logits(image_features)
        loss = nn.functional.cross_entropy(logits, labels)
        if self.constrained:
            loss = loss + head.constraint()
        return loss, logits

    def training_state(self) -> dict[str, torch.Tensor]:
        return {}


class CLAP(ZeroShotLinearProbe):
    name = "clap"
    summary = "ZS-LP with CLAP's class-adaptive L2 constraint to the zero-shot prototypes (no validation search)"
    constrained = True
