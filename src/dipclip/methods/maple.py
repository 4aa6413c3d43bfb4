"""MaPLe (Khattak et al., CVPR 2023): deep multimodal prompts, vision prompts coupled to the text prompts.

Text side: 2 context tokens initialised from the first 2 tokens of "a photo of a"; the rest of the init text
("of a") stays as fixed words, so a class prompt reads ``[SOS] P_1 P_2 of a <name>. [EOT]``. At the input of
text layers 1..depth-1 the context positions are replaced by layer-specific learned tokens (N(0, 0.02)).
Vision side: at layer 0 the tokens ``Linear_0(P)`` are appended after the patch tokens, and at layers
1..depth-1 they are replaced by ``Linear_i(deep text prompt i)`` (one Linear(text width -> vision width)
per layer; as in the authors' code the deep ones start as copies of one Linear, Linear_0 has its own
init). Loss: cross-entropy. Depth is clipped to the layer count of both towers (small test models).

At ViT-B/16 widths (text 512, vision 768, depth 9): 2*512 + 8*2*512 + 9*(512*768 + 768) = 3,555,072 numbers.
Published recipe: SGD lr 0.0035, batch 4, 5 epochs (``--batch-size 4 --epochs 5``).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..backbones.loading import Backbone
from ..backbones.vision_tower import VisionTower
from ..errors import DipclipError
from .base import OptimConfig, PromptCLIP, PromptConfig, PromptMethod, parameterize


def effective_depth(backbone: Backbone, vision: VisionTower, depth: int) -> int:
    """The prompt depth actually used: at most the layer count of either tower."""
    return max(1, min(depth, backbone.text.layers, vision.layers))


class DeepPromptCLIP(PromptCLIP):
    """CLIP with prompts in both towers: the shallow text context, deep text prompts for text layers
    1..depth-1, and vision prompts (how they are made is up to the subclass). Image features depend on the
    prompts, so ``logits`` takes images."""

    image_prompted = True

    def __init__(self, backbone: Backbone, classnames: list[str], prompt_cfg: PromptConfig):
        super().__init__(backbone, classnames, prompt_cfg)
        if prompt_cfg.class_specific or prompt_cfg.class_position != "end":
            raise DipclipError("deep prompts (MaPLe, PromptSRC) need a shared context with the class name at the end")
        backbone.text.require_deep_prompts()
        self.__dict__["vision"] = VisionTower(backbone.model)  # a view on frozen weights: not a submodule
        self.depth = effective_depth(backbone, self.vision, prompt_cfg.prompt_depth)
        generator = torch.Generator().manual_seed(prompt_cfg.init_seed + 1)
        n, width = prompt_cfg.n_ctx, backbone.text.width
        inits = torch.randn(self.depth - 1, n, width, generator=generator) * 0.02
        self.deep_text = nn.ModuleList(parameterize(init, prompt_cfg, backbone.device, seed_offset=1 + i)
                                       for i, init in enumerate(inits))

    def deep_text_prompts(self, merged: bool = False) -> list[torch.Tensor]:
        return [d.merged() if merged else d() for d in self.deep_text]

    def vision_prompts(self, merged: bool = False) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        """(prompts appended at layer 0 [n, vision width], replacements for layers 1..depth-1)."""
        raise NotImplementedError

    def text_features(self, merged: bool = False) -> torch.Tensor:
        ctx = self.context.merged() if merged else self.context()
        prompts = self.class_prompts
        embeddings = prompts.assemble(ctx)
        length = int(prompts.eot_index.max()) + 1 if self.backbone.text.causal else embeddings.shape[1]
        features = self.backbone.text.forward_deep(embeddings[:, :length], prompts.token_ids[:, :length],
                                                   self.deep_text_prompts(merged), start=prompts.ctx_start)
        return nn.functional.normalize(features.float(), dim=-1)

    def image_features(self, images: torch.Tensor, merged: bool = False) -> torch.Tensor:
        shallow, deep = self.vision_prompts(merged)
        return nn.functional.normalize(self.vision(images, shallow, deep).float(), dim=-1)

    def logits(self, images: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of raw images [B, 3, H, W] (the vision prompts act inside the image tower)."""
        if text_features is None:
            text_features = self.text_features()
            self.last_text_features = text_features
        image_features = self.image_features(images)
        self.last_image_features = image_features  # for losses that need them again (PromptSRC)
        return self.backbone.logits(image_features, text_features)


class MaPLeCLIP(DeepPromptCLIP):
    keeps_init_tail = True  # "a photo of a" with 2 tokens: "a photo" learned, "of a" fixed

    def __init__(self, backbone: Backbone, classnames: list[str], prompt_cfg: PromptConfig):
        super().__init__(backbone, classnames, prompt_cfg)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(prompt_cfg.init_seed)
            first = nn.Linear(backbone.text.width, self.vision.width)
            deep = nn.Linear(backbone.text.width, self.vision.width)
        # as MaPLe's code: the layer-0 map has its own init, the deep maps are copies of one Linear (same init)
        self.projections = nn.ModuleList([first, *(copy.deepcopy(deep) for _ in range(self.depth - 1))])
        self.projections.to(backbone.device)

    def vision_prompts(self, merged: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Each layer's vision prompts are a linear map of that layer's text prompts (the coupling)."""
        ctx = self.context.merged() if merged else self.context()
        text = [ctx, *self.deep_text_prompts(merged)]
        mapped = [proj(t) for proj, t in zip(self.projections, text, strict=True)]
        return mapped[0], mapped[1:]


class MaPLe(PromptMethod):
    name = "maple"
    summary = "MaPLe: deep text prompts + vision prompts coupled through per-layer Linear maps, depth 9"
    prompt_defaults = PromptConfig(n_ctx=2, init_text="a photo of a", parameterization="full", prompt_depth=9)
    optim_defaults = OptimConfig(lr=0.0035)

    def build(self, backbone: Backbone, classnames: list[str], prompt_cfg: PromptConfig) -> PromptCLIP:
        return MaPLeCLIP(backbone, classnames, prompt_cfg)
