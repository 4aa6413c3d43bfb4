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

Gaussian prompt aggregation (GPA): after epoch e (1-based) the prompts are added with weight
g(e) / sum_e' g(e'), g a Gaussian over epochs with mean ``prompt.gpa_mean`` and std ``prompt.gpa_std``
(published base-to-new: 15 and 1 at 20 epochs; few-shot 30/30 or 45/5 at 50; cross-dataset 6/10). Without
a mean, 0.75 * epochs (15 at 20 epochs, scaled for other run lengths). The aggregate replaces the prompts at
the end of training and is kept in the checkpoint, so ``--resume`` is exact. With DIP the aggregate is the
weighted mean of the *merged* prompts P0 + A_e @ B_e (what the authors' state-dict average is for a plain
prompt), not P0 + mean(A) @ mean(B); that mean is no longer a rank-r update, so the aggregated model keeps
each DIP prompt as one full matrix (stored so in its adapter; ``trainable_params`` still counts what was
trained). Published recipe: SGD lr 0.0025, batch 4, 20 epochs (``--batch-size 4 --epochs 20``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..backbones.loading import Backbone
from ..errors import DipclipError
from ..prompts import FullRankContext, LowRankContext
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
GPA_MEAN_FRACTION = 0.75  # without a configured mean: 0.75 * epochs (the published 15 at 20 epochs)


class AggregatedContext(FullRankContext):
    """A DIP prompt after GPA: the weighted mean of its merged prompts, kept whole (no longer rank r)."""

    kind = "dip-gpa"

    def __init__(self, initial: torch.Tensor, matrix: torch.Tensor):
        super().__init__(initial)
        with torch.no_grad():
            self.ctx.copy_(matrix.to(self.ctx.dtype))


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
        self.trained_numbers = super().num_trainable()

    def num_trainable(self) -> int:
        """The numbers training learns (unchanged when GPA folds DIP prompts into whole matrices)."""
        return self.trained_numbers

    def low_rank_modules(self) -> dict[str, LowRankContext]:
        return {name: m for name, m in self.named_modules() if isinstance(m, LowRankContext)}

    def gpa_snapshot(self) -> dict[str, torch.Tensor]:
        """What GPA averages: each DIP prompt merged (``<module>.merged``), every other learned tensor as is."""
        low = self.low_rank_modules()
        snapshot = {f"{name}.merged": m.merged() for name, m in low.items()}
        for name, p in self.learnable_named_parameters():
            if name.rpartition(".")[0] not in low:
                snapshot[name] = p.detach()
        return snapshot

    def fold(self, name: str, matrix: torch.Tensor) -> None:
        """Replace the DIP prompt ``name`` by the whole matrix ``matrix`` (its initial prompt is kept)."""
        module = self.get_submodule(name)
        parent_name, _, child = name.rpartition(".")
        parent = self.get_submodule(parent_name) if parent_name else self
        setattr(parent, child, AggregatedContext(module.initial, matrix).to(module.initial.device))

    def load_aggregate(self, aggregate: dict[str, torch.Tensor]) -> None:
        """Make the model the GPA model: DIP prompts become their averaged merged matrices, the rest is loaded."""
        plain = {}
        for key, tensor in aggregate.items():
            if key.endswith(".merged"):
                self.fold(key.removesuffix(".merged"), tensor)
            else:
                plain[key] = tensor
        expected = dict(self.learnable_named_parameters())
        with torch.no_grad():
            for key, tensor in plain.items():
                expected[key].copy_(tensor.to(expected[key].device, expected[key].dtype))

    def load_learnable_state(self, state: dict[str, torch.Tensor]) -> None:
        """Also takes a GPA adapter of a DIP model, where each DIP prompt is stored as one matrix (``.ctx``)."""
        for name, module in self.low_rank_modules().items():
            if f"{name}.ctx" in state and f"{name}.A" not in state:
                self.fold(name, module.initial)
        super().load_learnable_state(state)

    def vision_prompts(self, merged: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if isinstance(self.vision_ctx, nn.ModuleList):
            prompts = [m.merged() if merged else m() for m in self.vision_ctx]
        else:
            prompts = list(self.vision_ctx)
        return prompts[0], prompts[1:]


def gpa_weights(epochs: int, mean: float | None = None, std: float = 1.0) -> list[float]:
    """Normalised Gaussian weights of epochs 1..epochs (mean None: 0.75 * epochs)."""
    mean = GPA_MEAN_FRACTION * epochs if mean is None else mean
    raw = [math.exp(-0.5 * ((e - mean) / std) ** 2) for e in range(1, epochs + 1)]
    total = sum(raw)
    if total == 0:
        raise DipclipError(f"GPA mean {mean} and std {std} give every one of the {epochs} epochs weight 0; "
                           "use a mean within the epochs or a larger std")
    return [w / total for w in raw]


@torch.no_grad()
def frozen_text_features(backbone: Backbone, classnames: list[str]) -> torch.Tensor:
    """Normalised mean of CLIP's unnormalised text features over :data:`PROMPTSRC_TEMPLATES` [C, D]."""
    names = [clean_classname(c) for c in classnames]
    # tokenized in one call, so that a model missing words warns once, not once per template
    ids = backbone.tokenize([template.format(name) for template in PROMPTSRC_TEMPLATES for name in names])
    total = None
    for start in range(0, len(ids), len(names)):
        features = backbone.text.encode_token_ids(ids[start:start + len(names)]).float()
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
        frozen_logits = model.backbone.logits(frozen_image, frozen_text)
        l1 = nn.functional.l1_loss
        loss = (self.text_weight * l1(model.last_text_features, frozen_text)
                + self.image_weight * l1(model.last_image_features, frozen_image))
        kl = nn.functional.kl_div(logits.log_softmax(dim=-1), frozen_logits.log_softmax(dim=-1), reduction="sum",
                                  log_target=True) / logits.numel()
        loss = loss + kl
        levers = density_levers(model)
        return loss if levers is None else loss + levers

    def end_epoch(self, model: PromptCLIP, epoch: int, epochs: int) -> None:
        cfg = model.prompt_cfg
        weight = gpa_weights(epochs, cfg.gpa_mean, cfg.gpa_std)[epoch]
        for name, tensor in model.gpa_snapshot().items():
            weighted = tensor.detach().cpu().double() * weight
            self.aggregate[name] = weighted if name not in self.aggregate else self.aggregate[name] + weighted

    def end_training(self, model: PromptCLIP, epochs: int) -> None:
        if self.aggregate:
            model.load_aggregate({name: t.float() for name, t in self.aggregate.items()})

    def training_state(self) -> dict[str, torch.Tensor]:
        return {f"gpa.{name}": t.clone() for name, t in self.aggregate.items()}

    def load_training_state(self, state: dict[str, torch.Tensor]) -> None:
        self.aggregate = {name.removeprefix("gpa."): t.double() for name, t in state.items()}
