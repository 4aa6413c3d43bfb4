"""ProGrad (Zhu et al., ICCV 2023): update the prompt only along directions that do not contradict zero-shot CLIP.

Per step: g_ce = grad of the cross-entropy, g_kl = grad of KL(p_zero-shot || p_prompt) (the "general
knowledge" direction). When they conflict (g_ce . g_kl < 0), the component of g_ce against g_kl is removed:
g = g_ce - (g_ce . g_kl / |g_kl|^2) g_kl; otherwise g = g_ce. The zero-shot classifier uses the hand-crafted
prompt "a photo of a {}." and is computed once per class list.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import OptimConfig, PromptCLIP, PromptConfig, PromptMethod
from .zeroshot import zeroshot_text_features


class ProGrad(PromptMethod):
    name = "prograd"
    summary = "ProGrad: CoOp with the CE gradient projected off the zero-shot KL gradient when they conflict"
    prompt_defaults = PromptConfig(parameterization="full")
    optim_defaults = OptimConfig(lr=0.002)
    template = "a photo of a {}."
    temperature = 1.0

    def zero_shot_logits(self, model: PromptCLIP, image_features: torch.Tensor) -> torch.Tensor:
        key = tuple(model.classnames)
        cached = getattr(model, "_prograd_anchor", None)
        if cached is None or cached[0] != key:
            cached = (key, zeroshot_text_features(model.backbone, model.classnames, [self.template]))
            model._prograd_anchor = cached
        return model.backbone.logit_scale * image_features @ cached[1].t()

    def training_step(self, model: PromptCLIP, image_features: torch.Tensor, labels: torch.Tensor,
                      optimizer: torch.optim.Optimizer) -> tuple[torch.Tensor, torch.Tensor]:
        loss, logits = self.loss(model, image_features, labels)
        t = self.temperature
        with torch.no_grad():
            target = (self.zero_shot_logits(model, image_features) / t).softmax(dim=-1)
        kl = nn.functional.kl_div((logits / t).log_softmax(dim=-1), target, reduction="batchmean") * t * t
        params = model.trainable_parameters()
        g_ce = torch.autograd.grad(loss, params, retain_graph=True)
        g_kl = torch.autograd.grad(kl, params)
        flat_ce = torch.cat([g.reshape(-1) for g in g_ce])
        flat_kl = torch.cat([g.reshape(-1) for g in g_kl])
        dot = torch.dot(flat_ce, flat_kl)
        if dot < 0:
            flat_ce = flat_ce - dot / flat_kl.square().sum().clamp_min(1e-20) * flat_kl
        optimizer.zero_grad(set_to_none=True)
        offset = 0
        for p in params:
            p.grad = flat_ce[offset: offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        optimizer.step()
        return loss.detach(), logits.detach()
