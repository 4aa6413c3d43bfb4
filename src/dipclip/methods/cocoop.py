"""CoCoOp (Zhou et al., CVPR 2022): the context is shifted per image by a small meta-network.

ctx_i = ctx + pi(f_i), with pi = Linear(D, D/16) - ReLU - Linear(D/16, width) applied to the normalised
image feature f_i (D = the joint embedding size). Class prompts are encoded once per image, so training
costs C text passes per image (published: batch 1, 10 epochs, lr 0.002). At ViT-B/16 widths the meta-net
adds 33,312 numbers to CoOp's 2,048 (35,360 in all).
"""

from __future__ import annotations

import torch
from torch import nn

from ..backbones.loading import Backbone
from .base import OptimConfig, PromptCLIP, PromptConfig, PromptMethod


class CoCoOpCLIP(PromptCLIP):
    image_conditioned = True

    def __init__(self, backbone: Backbone, classnames: list[str], prompt_cfg: PromptConfig):
        super().__init__(backbone, classnames, prompt_cfg)
        dim, width = backbone.text.output_dim, backbone.text.width
        hidden = max(dim // 16, 1)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(prompt_cfg.init_seed)
            self.meta_net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, width))
        self.meta_net.to(backbone.device)

    def logits(self, image_features: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        if text_features is not None:  # a fixed classifier was given: behave as a plain prompt
            return super().logits(image_features, text_features)
        ctx = self.context_matrix()  # a class-specific one's rows in the current class order
        shifts = self.meta_net(image_features)
        rows = []
        for feature, shift in zip(image_features, shifts, strict=True):
            shifted = ctx + shift.unsqueeze(-2)  # broadcasts over context tokens (and classes if class-specific)
            text = nn.functional.normalize(self.class_prompts(shifted).float(), dim=-1)
            rows.append(feature @ text.t())
        logits = self.backbone.logit_scale * torch.stack(rows)
        bias = self.backbone.logit_bias
        return logits if bias is None else logits + bias.to(logits.dtype)


class CoCoOp(PromptMethod):
    name = "cocoop"
    summary = "CoCoOp: CoOp context + a per-image shift from a meta-net (Linear-ReLU-Linear)"
    prompt_defaults = PromptConfig(parameterization="full")
    optim_defaults = OptimConfig(lr=0.002)

    def build(self, backbone: Backbone, classnames: list[str], prompt_cfg: PromptConfig) -> PromptCLIP:
        return CoCoOpCLIP(backbone, classnames, prompt_cfg)
