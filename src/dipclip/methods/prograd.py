"""ProGrad (Zhu et al., ICCV 2023): update the prompt only along directions that do not contradict zero-shot CLIP.

Per step and per learned tensor (as the authors' Dassl trainer does it, tensor by tensor): g_ce = grad of the
cross-entropy, g_kl = grad of KL(p_zero-shot || p_prompt) (the "general knowledge" direction). When they
conflict (g_ce . g_kl < 0), g = g_ce - lambda * (g_ce . g_kl / |g_kl|^2) g_kl; otherwise g = g_ce.
``lambda`` is ``prompt.prograd_lambda`` (LOSS.LAMBDA: 1 by default; the README's 8/16-shot Flowers, DTD and
EuroSAT numbers use 0.8). With ``prograd+dip`` the learned tensors are A and B, so each is projected apart.

The zero-shot teacher uses ProGrad's own per-dataset template (``PROGRAD_TEMPLATES``, e.g. pets "a type of pet,
a photo of a {}."), computed once per class list. With an init text (``CTX_INIT``), ProGrad's layout: the
init text is the template's words before the class name, the context is zeros followed by the embeddings of
the init's first W tokens, W = its count of space-separated *words*, and the init's tokens past W stay as
fixed words before the class name. For "a type of pet, a photo of a" (8 words, 9 tokens: the comma is a
token) the learned context ends in "... , a photo of" and the last "a" is a fixed word, as in the authors'
code. n_ctx must be at least W (published: N_CTX 16).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from ..backbones.loading import Backbone
from ..errors import DipclipError
from .base import OptimConfig, PromptCLIP, PromptConfig, PromptMethod
from .templates import FALLBACK_TEMPLATE, PROGRAD_TEMPLATES
from .zeroshot import zeroshot_text_features


def template_prefix(template: str) -> str:
    """The words of a template before its class name ("a type of pet, a photo of a {}." -> "a type of pet, a
    photo of a"): ProGrad's init text."""
    prefix = template.split("{}")[0].replace("_", " ").strip()
    if not prefix:
        raise DipclipError(f"template {template!r} has no words before the class name to initialise ProGrad's "
                           "context from; pass --init-text or --random-init")
    return prefix


class ProGradCLIP(PromptCLIP):
    def initial_context(self, backbone: Backbone, cfg: PromptConfig, n_classes: int) -> tuple[torch.Tensor, str]:
        if not cfg.init_text:
            return super().initial_context(backbone, cfg, n_classes)
        text = cfg.init_text.replace("_", " ")
        words = len(text.split(" "))
        if words > cfg.n_ctx:
            raise DipclipError(f"ProGrad's init text {text!r} has {words} words but n_ctx is {cfg.n_ctx}; pass "
                               f"--n-ctx {max(16, words)} (ProGrad's published value is 16) or --random-init")
        tokens = backbone.tokenizer.encode(text)
        with torch.no_grad():
            start = backbone.content_start
            embedded = backbone.text.embed_tokens(backbone.tokenize([text]))[0, start: start + words]
        init = torch.zeros(cfg.n_ctx, backbone.text.width, dtype=embedded.dtype, device=embedded.device)
        init[cfg.n_ctx - words:] = embedded
        if cfg.class_specific:
            init = init.unsqueeze(0).repeat(n_classes, 1, 1)
        tail = backbone.tokenizer.decode(tokens[words:]).strip() if len(tokens) > words else ""
        return init, tail


class ProGrad(PromptMethod):
    name = "prograd"
    summary = "ProGrad: CoOp with the CE gradient projected off the zero-shot KL gradient when they conflict"
    prompt_defaults = PromptConfig(parameterization="full")
    optim_defaults = OptimConfig(lr=0.002)
    dataset_templates = PROGRAD_TEMPLATES
    temperature = 1.0

    def prompt_config(self, dataset: str | None = None, **overrides) -> PromptConfig:
        """Without an explicit init text, the context starts from the dataset template's words (CTX_INIT)."""
        cfg = super().prompt_config(dataset=dataset, **overrides)
        if overrides.get("init_text") is None and cfg.init_text is not None:
            cfg = replace(cfg, init_text=template_prefix(cfg.template or FALLBACK_TEMPLATE))
        return cfg.validate()

    def build(self, backbone: Backbone, classnames: list[str], prompt_cfg: PromptConfig) -> PromptCLIP:
        return ProGradCLIP(backbone, classnames, prompt_cfg)

    def zero_shot_logits(self, model: PromptCLIP, image_features: torch.Tensor) -> torch.Tensor:
        template = model.prompt_cfg.template or FALLBACK_TEMPLATE
        key = (tuple(model.classnames), template)
        cached = getattr(model, "_prograd_anchor", None)
        if cached is None or cached[0] != key:
            cached = (key, zeroshot_text_features(model.backbone, model.classnames, [template]))
            model._prograd_anchor = cached
        return model.backbone.logits(image_features, cached[1])

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
        optimizer.zero_grad(set_to_none=True)
        for p, ce, general in zip(params, g_ce, g_kl, strict=True):
            p.grad = project_conflict(ce, general, model.prompt_cfg.prograd_lambda)
        optimizer.step()
        return loss.detach(), logits.detach()


def project_conflict(grad: torch.Tensor, general: torch.Tensor, lam: float) -> torch.Tensor:
    """One tensor's ProGrad gradient: ``grad`` minus ``lam`` times its component along ``general`` when the two
    point against each other; unchanged otherwise (also when either is zero, where the authors' cosine is NaN)."""
    dot = torch.dot(grad.flatten(), general.flatten())
    norm_sq = general.square().sum()
    if dot < 0 and norm_sq > 0 and grad.square().sum() > 0:
        return grad - lam * dot / norm_sq * general
    return grad.clone()
