"""CLIP-LoRA (Zanella & Ben Ayed, CVPRW 2024; MaxZanella/CLIP-LoRA): low-rank adapters in both towers.

LoRA branches (:mod:`dipclip.probes.lora`) on the q, k and v projections of every attention block of the
image and the text transformer (their defaults: ``--encoder both --position all --params q k v --r 2
--alpha 1 --dropout_rate 0.25``). Each training step encodes the class prompts (one template, theirs
"a photo of a {}.") through the adapted text tower and the batch's augmented images through the adapted image
tower, and minimises the cross-entropy of ``100 * image_features @ text_features.T`` (``logit_scale = 100`` in
their main.py) with AdamW (lr 2e-4, betas (0.9, 0.999), weight decay 1e-2) under a cosine over every step of
``n_iters * shots`` iterations (``--n_iters 500``). No validation: the final adapter is evaluated.

Not a head over stored features: the image tower runs in the loop with gradients to its LoRA weights, so the
head is ``image_prompted`` (the trainer feeds it augmented images, evaluation runs its image tower), and the
adapted text tower scores any class list (``scores_new_classes``). The frozen backbone is never modified.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..backbones.loading import Backbone
from ..backbones.precision import autocast_for
from ..backbones.vision_tower import VisionTower
from ..errors import DipclipError
from .base import FeatureHead, FeatureMethod, HeadOptimConfig
from .lora import PROJECTIONS, LoRADelta, check_block, layer_indices, run_blocks

ENCODERS = ("text", "vision", "both")
ETA_MIN = 1e-6  # lora.py: CosineAnnealingLR(optimizer, total_iters, eta_min=1e-6)


def lora_learning_rate(lr: float, step: int, total_steps: int, eta_min: float = ETA_MIN) -> float:
    """The lr of 0-based optimisation ``step`` under their ``CosineAnnealingLR(T_max=total_iters, eta_min)``
    stepped after every iteration (closed form of torch's recursion)."""
    return eta_min + (lr - eta_min) * (1 + math.cos(math.pi * step / total_steps)) / 2


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """The one trainer's optimisation steps per epoch (a partial last batch is dropped when a full one exists)."""
    return max(1, n_train // batch_size) if n_train >= batch_size else 1


def training_epochs(shots: int, n_train: int, batch_size: int, iterations_per_shot: int = 500) -> int:
    """Epochs that give at least their ``n_iters * shots`` iterations: ``ceil(iterations / steps_per_epoch)``."""
    return math.ceil(iterations_per_shot * shots / steps_per_epoch(n_train, batch_size))


class CLIPLoRAHead(FeatureHead):
    """Both towers with LoRA branches; ``logits(images)`` runs them (images, not features: ``image_prompted``)."""

    image_prompted = True
    has_class_head = False  # LoRA weights are not tied to the training classes
    scores_new_classes = True
    feature_head = False

    def __init__(self, backbone: Backbone, classnames: list[str], settings: dict):
        super().__init__(backbone, classnames, settings)
        s = self.settings
        encoder = s["encoder"]
        if encoder not in ENCODERS:
            raise DipclipError(f"unknown CLIP-LoRA encoder {encoder!r}; use {', '.join(ENCODERS)}")
        params = list(s["params"])
        if not params or any(p not in PROJECTIONS for p in params):
            raise DipclipError(f"CLIP-LoRA params {params} must name projections among {', '.join(PROJECTIONS)}")
        templates = list(s["templates"])
        if not templates:
            raise DipclipError("CLIP-LoRA needs a template")
        self.template = templates[0]  # their loop: dataset.template[0]
        self.__dict__["vision"] = VisionTower(backbone.model)  # a view on frozen weights: not a submodule
        if self.vision.kind != "open_clip":
            raise DipclipError("CLIP-LoRA needs open_clip's own VisionTransformer image tower")
        text = backbone.text
        if not hasattr(text, "transformer") or not hasattr(text, "_embed"):
            raise DipclipError(f"CLIP-LoRA needs an open_clip text transformer; this model's text tower is a "
                               f"{text.kind}")
        generator = torch.Generator().manual_seed(int(s["init_seed"]))
        device = backbone.device
        self.lora = nn.ModuleDict()
        self.layers: dict[str, dict[int, dict[str, LoRADelta]]] = {"text": {}, "vision": {}}
        towers = {"text": text.transformer.resblocks, "vision": self.vision.blocks}
        # their apply_lora order: the text blocks first, then the vision blocks; q, k, v, o within a block
        for tower in ("text", "vision"):
            if encoder not in (tower, "both"):
                continue
            blocks = towers[tower]
            for index in layer_indices(s["position"], len(blocks)):
                check_block(blocks[index], f"{tower} tower")
                width = blocks[index].attn.embed_dim
                layer = {}
                for name in PROJECTIONS:
                    if name in params:
                        delta = LoRADelta(width, width, int(s["rank"]), float(s["alpha"]), float(s["dropout"]),
                                          generator, device)
                        self.lora[f"{tower}_{index}_{name}"] = delta
                        layer[name] = delta
                self.layers[tower][index] = layer
        self._set_prompts(classnames)

    def _set_prompts(self, classnames: list[str]) -> None:
        texts = [self.template.format(name.replace("_", " ")) for name in classnames]  # theirs replaces "_"
        ids = self.backbone.tokenize(texts)
        self.register_buffer("_prompt_ids", ids, persistent=False)

    def on_new_classes(self, classnames: list[str]) -> None:
        self._set_prompts(classnames)

    # the towers -----------------------------------------------------------------------------------------

    def encode_text(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Unnormalised text features of ``token_ids`` [C, L] through the adapted text tower: open_clip's
        embedding, masks and pooling (the tower's own methods), LoRA'd blocks. On a causal tower the sequences
        stop after the last pooled token (positions after it never reach it: exact)."""
        text = self.backbone.text
        index = text.pool_index(token_ids)
        if text.causal:
            token_ids = token_ids[:, :int(index.max()) + 1]
        with autocast_for(token_ids.device):
            x, mask = text._embed(text.embed_tokens(token_ids), token_ids)
            x = run_blocks(text.transformer.resblocks, x, mask, self.layers["text"])
            return text._pool(x, index).float()

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Unnormalised image features of ``images`` [B, 3, H, W] through the adapted image tower (every token
        through every block; pooling, norm and projection as the tower's own)."""
        vision = self.vision
        with autocast_for(images.device):
            x, _ = vision._embed(images)
            x = vision._pre_norm(x)
            x = run_blocks(vision.blocks, x, None, self.layers["vision"])
            return vision._head(x).float()

    def text_features(self, merged: bool = False) -> torch.Tensor:
        return nn.functional.normalize(self.encode_text(self._prompt_ids), dim=-1)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.encode_image(images), dim=-1)

    def logits(self, images: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        """``logit_scale * image_features @ text_features.T`` of raw images (their constant 100)."""
        if text_features is None:
            text_features = self.text_features()
        return float(self.settings["logit_scale"]) * self.image_features(images) @ text_features.t()

    def train(self, mode: bool = True) -> CLIPLoRAHead:
        super().train(mode)  # the LoRA dropouts follow the mode; the backbone stays in eval
        return self


class CLIPLoRA(FeatureMethod):
    name = "clip-lora"
    summary = ("CLIP-LoRA (Zanella & Ben Ayed, CVPRW 2024): rank-2 LoRA on q, k, v of every attention block of "
               "both towers, AdamW with a per-step cosine over 500 x shots iterations")
    trained = True
    searches = False
    protocols = frozenset({"fewshot", "base2new", "xd", "dg"})
    mixed_settings = frozenset({"position"})  # a name ("all", "top3", ...) or a list of layer indices
    # run_utils.py get_arguments defaults; main.py logit_scale = 100; lora.py template = dataset.template[0]
    defaults = {"templates": ["a photo of a {}."], "rank": 2, "alpha": 1.0, "dropout": 0.25,
                "params": ["q", "k", "v"], "encoder": "both", "position": "all", "logit_scale": 100.0,
                "iterations_per_shot": 500, "init_seed": 1}
    # lora.py: AdamW(weight_decay=1e-2, betas=(0.9, 0.999), lr=2e-4) (eps: torch's 1e-8), cosine per step
    optim_defaults = HeadOptimConfig(optimizer="adamw", lr=2e-4, momentum=0.9, weight_decay=1e-2, warmup_epochs=0,
                                     eps=1e-8, schedule="step", eta_min=ETA_MIN)

    def build(self, backbone: Backbone, classnames: list[str], settings: dict) -> CLIPLoRAHead:
        return CLIPLoRAHead(backbone, classnames, {**self.defaults, **settings})

    def epochs_for(self, settings: dict, shots: int | None, n_train: int, batch_size: int) -> int | None:
        """``ceil(iterations_per_shot * shots / steps per epoch)``: their ``n_iters = 500 * shots``."""
        if not shots:
            raise DipclipError(f"{self.name} trains for {settings['iterations_per_shot']} x shots iterations (its "
                               "authors' n_iters), so it needs --shots K, or give --epochs")
        return training_epochs(shots, n_train, batch_size, int(settings["iterations_per_shot"]))

    def why_not(self, protocol: str) -> str:
        return f"it supports {', '.join(sorted(self.protocols))}"
