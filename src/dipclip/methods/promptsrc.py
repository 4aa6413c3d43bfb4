"""PromptSRC (Khattak et al., ICCV 2023): independent deep vision and language prompts, regularised by frozen CLIP.

Prompts (IVLP): 4 text tokens initialised from "a photo of a" plus deep text prompts for text layers
1..depth-1, and 4 vision tokens appended after the patch tokens with deep replacements for vision layers
1..depth-1, all deep/vision tokens N(0, 0.02); depth 9 on both sides, no coupling. At ViT-B/16 widths:
4*512 + 8*4*512 + 9*4*768 = 46,080 numbers.

Loss (the published repository's ``forward_backward``)::

    CE + 25 * L1(text features, frozen text features) + 10 * L1(image features, frozen image features)
       + KL(p_frozen || p_prompt) summed and divided by B * C (T = 1)

The frozen text feature of a class is the normalised mean of CLIP's unnormalised features over the 60
ImageNet templates below; the frozen logits use the plain image tower and those features.

Gaussian prompt aggregation (GPA): after epoch e (1-based) the learned tensors are added with weight
g(e) / sum_e' g(e'), g a Gaussian over epochs with mean 0.75 * epochs and std 1 -- the published base-to-new
GPA_MEAN 15 and GPA_STD 1 at 20 epochs, scaled for other run lengths (the published 50-epoch few-shot configs
use 30/30 or 45/5 instead); the aggregate replaces the prompts at the end of training and is kept in the
checkpoint, so ``--resume`` is exact. Published recipe: SGD lr 0.0025, batch 4, 20 epochs
(``--batch-size 4 --epochs 20``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..backbones.loading import Backbone
from ..prompts.class_prompts import clean_classname
from .base import OptimConfig, PromptCLIP, PromptConfig, PromptMethod, density_levers, parameterize
from .maple import DeepPromptCLIP

# The 60 of CLIP's 80 ImageNet prompt templates (OpenAI's prompt-engineering notebook) that PromptSRC averages.
PROMPTSRC_TEMPLATES = (
    "a photo of a {}.", "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.",
    "a photo of the hard to see {}.", "a low resolution photo of the {}.", "a rendering of a {}.",
    "graffiti of a {}.", "a bad photo of the {}.", "a cropped photo of the {}.", "a tattoo of a {}.",
    "the embroidered {}.", "a photo of a hard to see {}.", "a bright photo of a {}.", "a photo of a clean {}.",
    "a photo of a dirty {}.", "a dark photo of the {}.", "a drawing of a {}.", "a photo of my {}.",
    "the plastic {}.", "a photo of the cool {}.", "a close-up photo of a {}.", "a black and white photo of the {}.",
    "a painting of the {}.", "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.",
    "a bright photo of the {}.", "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.", "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.",
    "a rendering of the {}.", "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.",
    "a close-up photo of the {}.", "the origami {}.", "the {} in a video game.", "a sketch of a {}.",
    "a doodle of the {}.", "a origami {}.", "a low resolution photo of a {}.", "the toy {}.",
    "a rendition of the {}.", "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.",
    "a photo of a nice {}.", "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.",
    "a sketch of the {}.", "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.",
)
N_CTX_VISION = 4
GPA_MEAN_FRACTION, GPA_STD = 0.75, 1.0  # published base-to-new: GPA_MEAN 15, GPA_STD 1 at 20 epochs


class PromptSRCCLIP(DeepPromptCLIP):
    """IVLP: text prompts (shallow + deep) and vision prompts learned independently."""

    def __init__(self, backbone: Backbone, classnames: list[str], prompt_cfg: PromptConfig):
        super().__init__(backbone, classnames, prompt_cfg)
        generator = torch.Generator().manual_seed(prompt_cfg.init_seed + 2)
        inits = torch.randn(self.depth, N_CTX_VISION, self.vision.width, generator=generator) * 0.02
        if prompt_cfg.parameterization == "dip" and prompt_cfg.vision_dip:
            # the vision prompt matrices as DIP too (the paper found little gain there: off by default)
            self.vision_ctx = nn.ModuleList(parameterize(init, prompt_cfg, backbone.device, seed_offset=100 + i)
                                            for i, init in enumerate(inits))
        else:
            self.vision_ctx = nn.ParameterList(nn.Parameter(init.to(backbone.device)) for init in inits)

    def vision_prompts(self, merged: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if isinstance(self.vision_ctx, nn.ModuleList):
            prompts = [m.merged() if merged else m() for m in self.vision_ctx]
        else:
            prompts = list(self.vision_ctx)
        return prompts[0], prompts[1:]


def gpa_weights(epochs: int) -> list[float]:
    """Normalised Gaussian weights of epochs 1..epochs: mean 0.75 * epochs, std 1 (15 and 1 at 20 epochs)."""
    mean = GPA_MEAN_FRACTION * epochs
    raw = [math.exp(-0.5 * ((e - mean) / GPA_STD) ** 2) for e in range(1, epochs + 1)]
    total = sum(raw)
    return [w / total for w in raw]


@torch.no_grad()
def frozen_text_features(backbone: Backbone, classnames: list[str]) -> torch.Tensor:
    """Normalised mean of CLIP's unnormalised text features over :data:`PROMPTSRC_TEMPLATES` [C, D]."""
    names = [clean_classname(c) for c in classnames]
    total = None
    for template in PROMPTSRC_TEMPLATES:
        ids = backbone.tokenize([template.format(name) for name in names])
        features = backbone.text.encode_token_ids(ids).float()
        total = features if total is None else total + features
    return nn.functional.normalize(total / len(PROMPTSRC_TEMPLATES), dim=-1)


class PromptSRC(PromptMethod):
    name = "promptsrc"
    summary = "PromptSRC: independent deep V-L prompts + L1/KL consistency with frozen CLIP + Gaussian aggregation"
    prompt_defaults = PromptConfig(n_ctx=4, init_text="a photo of a", parameterization="full", prompt_depth=9)
    optim_defaults = OptimConfig(lr=0.0025)
    text_weight = 25.0
    image_weight = 10.0

    def __init__(self) -> None:
        self.aggregate: dict[str, torch.Tensor] = {}

    def build(self, backbone: Backbone, classnames: list[str], prompt_cfg: PromptConfig) -> PromptCLIP:
        return PromptSRCCLIP(backbone, classnames, prompt_cfg)

    def frozen_text(self, model: PromptCLIP) -> torch.Tensor:
        key = tuple(model.classnames)
        cached = getattr(model, "_src_text", None)
        if cached is None or cached[0] != key:
            cached = (key, frozen_text_features(model.backbone, model.classnames))
            model._src_text = cached
        return cached[1]

    def extra_loss(self, model: PromptCLIP, images: torch.Tensor, logits: torch.Tensor,
                   labels: torch.Tensor) -> torch.Tensor | None:
        frozen_text = self.frozen_text(model)
        frozen_image = model.backbone.encode_images(images)
        frozen_logits = model.backbone.logit_scale * frozen_image @ frozen_text.t()
        l1 = nn.functional.l1_loss
        loss = (self.text_weight * l1(model.last_text_features, frozen_text)
                + self.image_weight * l1(model.last_image_features, frozen_image))
        kl = nn.functional.kl_div(logits.log_softmax(dim=-1), frozen_logits.log_softmax(dim=-1), reduction="sum",
                                  log_target=True) / logits.numel()
        loss = loss + kl
        levers = density_levers(model)
        return loss if levers is None else loss + levers

    def end_epoch(self, model: PromptCLIP, epoch: int, epochs: int) -> None:
        weight = gpa_weights(epochs)[epoch]
        for name, tensor in model.learnable_state().items():
            weighted = tensor.detach().cpu().double() * weight
            self.aggregate[name] = weighted if name not in self.aggregate else self.aggregate[name] + weighted

    def end_training(self, model: PromptCLIP, epochs: int) -> None:
        if self.aggregate:
            model.load_learnable_state({name: t.float() for name, t in self.aggregate.items()})

    def training_state(self) -> dict[str, torch.Tensor]:
        return {f"gpa.{name}": t.clone() for name, t in self.aggregate.items()}

    def load_training_state(self, state: dict[str, torch.Tensor]) -> None:
        self.aggregate = {name.removeprefix("gpa."): t.double() for name, t in state.items()}
