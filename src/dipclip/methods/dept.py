"""DePT (Zhang et al., CVPR 2024): a prompt method plus a decoupled, channel-adjusted head for the base classes.

Follows the authors' code (Koorye/DePT, ``ExtrasLinearProbeCoOp``): channel-wise transforms (cwT: a learned
scale, init 1, and shift, init 0, per feature channel) on the text and on the image features, then a linear
classifier over the training classes, fed during training with both the transformed image features and the
transformed text features of each image's class (labels repeated). Loss = 0.3 * CE(prompt similarity logits)
+ 0.7 * CE(head logits). At inference on the training classes the logits are fused the same way
(0.3 * similarity + 0.7 * head); on any other class list (new classes, other datasets) only the prompt's
similarity logits are used, so new-class accuracy is the prompt's own. The head and the cwT layers learn at
6.5 x the prompt's learning rate (the authors' staged lr; published: SGD lr 0.0035, batch 4, 10 epochs).

One difference: dipclip stores L2-normalised image features, so cwT acts on normalised image features (the
authors apply it to the projected features before normalisation). The text side uses the unnormalised
text features, as theirs.
"""

from __future__ import annotations

import torch
from torch import nn

from ..backbones.loading import Backbone
from .base import OptimConfig, PromptCLIP, PromptConfig, PromptMethod

HEAD_WEIGHT = 0.7
HEAD_LR_SCALE = 6.5


class ChannelTransform(nn.Module):
    """y = scale * x + shift per channel (the authors' cwT/FiLM without conditioning)."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))
        self.shift = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


class DePTCLIP(PromptCLIP):
    has_class_head = True

    def __init__(self, backbone: Backbone, classnames: list[str], prompt_cfg: PromptConfig):
        super().__init__(backbone, classnames, prompt_cfg)
        dim = backbone.text.output_dim
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(prompt_cfg.init_seed)
            self.text_transform = ChannelTransform(dim)
            self.image_transform = ChannelTransform(dim)
            self.head = nn.Linear(dim, len(classnames))
        self.to(backbone.device)

    @property
    def head_active(self) -> bool:
        return self.classnames == self.train_classnames

    @property
    def image_conditioned(self) -> bool:  # the fused logits are not a fixed text classifier
        return self.head_active

    def param_groups(self) -> list[dict]:
        head = [p for name, p in self.learnable_named_parameters() if name.split(".")[0] in
                ("head", "text_transform", "image_transform")]
        prompt = [p for name, p in self.learnable_named_parameters() if name.split(".")[0] not in
                  ("head", "text_transform", "image_transform")]
        return [{"params": prompt, "lr_scale": 1.0}, {"params": head, "lr_scale": HEAD_LR_SCALE}]

    def raw_text_features(self) -> torch.Tensor:
        return self.class_prompts(self.context()).float()

    def logits(self, image_features: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        if text_features is not None or not self.head_active:
            return super().logits(image_features, text_features)
        raw = self.raw_text_features()
        self.last_raw_text_features = raw
        similarity = self.backbone.logit_scale * image_features @ nn.functional.normalize(raw, dim=-1).t()
        head = self.head(self.image_transform(image_features))
        return (1 - HEAD_WEIGHT) * similarity + HEAD_WEIGHT * head


class DePT(PromptMethod):
    name = "dept"
    summary = "DePT: CoOp prompt + channel-adjusted linear head on the base classes (fused 0.3/0.7)"
    prompt_defaults = PromptConfig(parameterization="full")
    optim_defaults = OptimConfig(lr=0.0035)

    def build(self, backbone: Backbone, classnames: list[str], prompt_cfg: PromptConfig) -> PromptCLIP:
        return DePTCLIP(backbone, classnames, prompt_cfg)

    def loss(self, model: PromptCLIP, image_features: torch.Tensor, labels: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
        raw = model.raw_text_features()
        similarity = model.backbone.logit_scale * image_features @ nn.functional.normalize(raw, dim=-1).t()
        head_inputs = torch.cat([model.text_transform(raw[labels]), model.image_transform(image_features)])
        head_logits = model.head(head_inputs)
        loss = (1 - HEAD_WEIGHT) * nn.functional.cross_entropy(similarity, labels) + \
            HEAD_WEIGHT * nn.functional.cross_entropy(head_logits, torch.cat([labels, labels]))
        extra = self.extra_loss(model, image_features, similarity, labels)
        fused = (1 - HEAD_WEIGHT) * similarity + HEAD_WEIGHT * head_logits[len(labels):]
        return (loss if extra is None else loss + extra), fused
