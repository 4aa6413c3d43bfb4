"""Tip-Adapter and Tip-Adapter-F (Zhang et al., ECCV 2022; gaopengcuhk/Tip-Adapter).

A key-value cache over the few-shot training images: keys are their features averaged over ``augment_epoch``
augmented views and renormalised, values their one-hot labels. For an image feature ``f``::

    logits = 100 * f @ W_zs.T + alpha * exp(-beta * (1 - f @ keys.T)) @ one_hot(labels)

with ``W_zs`` the zero-shot class text features and the constant 100 of the authors (not the model's logit
scale). ``beta`` and ``alpha`` are searched on a grid (``search_scale``, ``search_step``: ``step`` values from
0.1 up to, not including, ``scale``), beta outer, alpha inner, keeping the first best accuracy.
Tip-Adapter-F makes the keys learnable (initialised from the cache) and trains them with cross-entropy at the
configured ``init_beta``/``init_alpha``, then searches again with the trained keys.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..backbones.loading import Backbone
from ..errors import DipclipError
from .base import FeatureData, FeatureHead, FeatureMethod, HeadOptimConfig

TextEncoder = Callable[[list[str]], torch.Tensor]


def text_encoder_of(backbone: Backbone, templates: list[str]) -> TextEncoder:
    """Class names -> normalised [C, D] zero-shot weights (the renormalised mean over the templates)."""
    from ..methods.zeroshot import zeroshot_text_features

    def encode(classnames: list[str]) -> torch.Tensor:
        with torch.no_grad():
            return zeroshot_text_features(backbone, classnames, templates).float()

    return encode


def search_grid(scale: float, steps: int) -> list[float]:
    """The authors' grid: ``i * (scale - 0.1) / steps + 0.1`` for ``i`` in ``range(steps)`` (utils.py)."""
    return [i * (scale - 0.1) / steps + 0.1 for i in range(steps)]


def correct_count(logits: torch.Tensor, labels: torch.Tensor) -> int:
    """Top-1 correct predictions, with the authors' ``topk`` tie rule."""
    return int((logits.topk(1, 1, True, True)[1].squeeze(1) == labels).sum())


class TipAdapterHead(FeatureHead):
    """Zero-shot logits plus the cache's; ``cache_keys`` [N, D] is a buffer (Tip-Adapter) or a parameter
    (Tip-Adapter-F), ``cache_labels`` [N] the values' classes, ``beta``/``alpha`` the searched scalars."""

    def __init__(self, backbone: Backbone, classnames: list[str], settings: dict, learnable: bool,
                 text_encoder: TextEncoder | None = None):
        super().__init__(backbone, classnames, settings)
        encoder = text_encoder or text_encoder_of(backbone, list(self.settings["templates"]))
        zeroshot = encoder(list(classnames)).float()
        if zeroshot.shape[0] != len(classnames):
            raise DipclipError(f"zero-shot weights have {zeroshot.shape[0]} rows for {len(classnames)} classes")
        self.register_buffer("_zeroshot", zeroshot, persistent=False)
        dim = zeroshot.shape[1]
        keys = torch.zeros(0, dim)
        if learnable:
            self.cache_keys = nn.Parameter(keys)
        else:
            self.register_buffer("cache_keys", keys)
        self.register_buffer("cache_labels", torch.zeros(0, dtype=torch.long))
        self.register_buffer("beta", torch.tensor(float(self.settings["init_beta"])))
        self.register_buffer("alpha", torch.tensor(float(self.settings["init_alpha"])))
        self.chosen = {"beta": float(self.settings["init_beta"]), "alpha": float(self.settings["init_alpha"]),
                       "searched": False}

    # the cache ------------------------------------------------------------------------------------------

    def set_cache(self, keys: torch.Tensor, labels: torch.Tensor) -> None:
        keys = keys.detach().to(self._zeroshot.device, torch.float32)
        labels = labels.detach().to(self._zeroshot.device, torch.long)
        if keys.ndim != 2 or keys.shape[1] != self._zeroshot.shape[1] or labels.shape != keys.shape[:1]:
            raise DipclipError(f"cache keys {tuple(keys.shape)} / labels {tuple(labels.shape)} do not fit "
                               f"features of width {self._zeroshot.shape[1]}")
        if labels.numel() and not (0 <= int(labels.min()) and int(labels.max()) < len(self.train_classnames)):
            raise DipclipError("cache labels outside the training classes")
        if isinstance(self.cache_keys, nn.Parameter):
            self.cache_keys = nn.Parameter(keys.clone())
        else:
            self.cache_keys = keys.clone()
        self.cache_labels = labels.clone()

    def cache_values(self) -> torch.Tensor:
        """One-hot [N, C] of the cache labels (the authors' ``cache_values``)."""
        return nn.functional.one_hot(self.cache_labels, len(self.train_classnames)).to(self.cache_keys.dtype)

    def load_learnable_state(self, state: dict[str, torch.Tensor]) -> None:
        # the cache size is known only from the stored tensors: size the cache to them, then load as usual
        if "cache_keys" in state and "cache_labels" in state:
            self.set_cache(torch.zeros_like(state["cache_keys"]), torch.zeros_like(state["cache_labels"]))
        super().load_learnable_state(state)

    # scoring --------------------------------------------------------------------------------------------

    def zeroshot_logits(self, image_features: torch.Tensor) -> torch.Tensor:
        return 100.0 * image_features @ self._zeroshot.T

    def cache_logits(self, image_features: torch.Tensor, beta: float | torch.Tensor | None = None) -> torch.Tensor:
        beta = self.beta if beta is None else beta
        affinity = image_features @ self.cache_keys.T
        return ((-1) * (beta - beta * affinity)).exp() @ self.cache_values()

    def logits(self, image_features: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        if self.cache_keys.shape[0] == 0:
            raise DipclipError(f"{self.origin} has an empty cache; fit it on training features first")
        return self.zeroshot_logits(image_features) + self.cache_logits(image_features) * self.alpha

    def text_features(self, merged: bool = False) -> torch.Tensor:
        return self._zeroshot


class TipAdapter(FeatureMethod):
    name = "tip-adapter"
    summary = "Tip-Adapter (Zhang et al., ECCV 2022): training-free key-value cache of few-shot features"
    trained = False
    searches = True
    learnable = False
    protocols = frozenset({"fewshot", "dg"})
    # configs/imagenet.yaml (and oxford_pets, ucf101 share the grid); per-dataset values in the recipe JSON
    defaults = {"templates": ["a photo of a {}."], "augment_epoch": 10, "init_beta": 1.0, "init_alpha": 1.17,
                "search_scale": [7.0, 3.0], "search_step": [200, 20], "search": True}
    optim_defaults = HeadOptimConfig(optimizer="adamw", lr=0.001, momentum=0.9, weight_decay=0.01, warmup_epochs=0)

    def build(self, backbone: Backbone, classnames: list[str], settings: dict,
              text_encoder: TextEncoder | None = None) -> TipAdapterHead:
        return TipAdapterHead(backbone, classnames, {**self.defaults, **settings}, self.learnable, text_encoder)

    @staticmethod
    def cache_from_views(views: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys: the mean over the views [n, N, D] of each image's features, renormalised; values: its labels."""
        keys = views.float().mean(dim=0)
        return keys / keys.norm(dim=-1, keepdim=True), labels

    def build_cache(self, head: TipAdapterHead, data: FeatureData) -> None:
        views, labels = data.views(int(head.settings["augment_epoch"]))
        head.set_cache(*self.cache_from_views(views, labels))

    def search(self, head: TipAdapterHead, features: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
        """The authors' grid search (beta outer, alpha inner, strictly better accuracy replaces, starting from
        accuracy 0 and (0, 0)); the cache logits are computed once per beta (the same numbers per pair)."""
        scale, steps = head.settings["search_scale"], head.settings["search_step"]
        betas, alphas = search_grid(float(scale[0]), int(steps[0])), search_grid(float(scale[1]), int(steps[1]))
        features, labels = features.to(head._zeroshot.device).float(), labels.to(head._zeroshot.device)
        best, best_beta, best_alpha = 0, 0.0, 0.0
        with torch.no_grad():
            clip_logits = head.zeroshot_logits(features)
            for beta in betas:
                cache = head.cache_logits(features, beta)
                for alpha in alphas:
                    correct = correct_count(clip_logits + cache * alpha, labels)
                    if correct > best:
                        best, best_beta, best_alpha = correct, beta, alpha
        return best_beta, best_alpha

    def set_hyperparameters(self, head: TipAdapterHead, beta: float, alpha: float) -> None:
        head.beta.fill_(beta)
        head.alpha.fill_(alpha)

    def fit(self, head: TipAdapterHead, data: FeatureData, stage: str) -> dict:
        """"before": build the cache, set the configured beta/alpha and (training-free) search; "after" (trained
        keys): search again. The chosen pair is reported as the Python floats the grid holds."""
        if stage == "before" or head.cache_keys.shape[0] == 0:
            self.build_cache(head, data)
            beta, alpha = float(head.settings["init_beta"]), float(head.settings["init_alpha"])
            self.set_hyperparameters(head, beta, alpha)
            head.chosen = {"beta": beta, "alpha": alpha, "searched": False}
        if (self.trained and stage == "before") or not head.settings["search"] or data.search is None:
            return dict(head.chosen)
        beta, alpha = self.search(head, *data.search)
        self.set_hyperparameters(head, beta, alpha)
        head.chosen = {"beta": beta, "alpha": alpha, "searched": True, "search_split": data.search_split}
        return dict(head.chosen)


class TipAdapterF(TipAdapter):
    name = "tip-adapter-f"
    summary = "Tip-Adapter-F (Zhang et al., ECCV 2022): Tip-Adapter with the cache keys fine-tuned"
    trained = True
    learnable = True
    defaults = {**TipAdapter.defaults}
    # main.py: AdamW(lr=cfg['lr'], eps=1e-4), torch's default weight decay 0.01, no warm-up, cosine per step
    optim_defaults = HeadOptimConfig(optimizer="adamw", lr=0.001, momentum=0.9, weight_decay=0.01, warmup_epochs=0,
                                     eps=1e-4, schedule="step")
