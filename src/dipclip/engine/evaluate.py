"""Evaluation: class text features once per (prompt, class list), then one pass over the images.

Image features come from the :class:`~dipclip.engine.features.FeatureStore`: the first evaluation of a
split encodes it, every later one (another seed, method or prompt on the same backbone) reads it back.

Text features and logits are checked to be finite before any accuracy is counted: the argmax of a NaN row
is class 0, so a prompt whose numbers overflow would otherwise score the share of class 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..backbones.loading import Backbone
from ..data.types import Datum
from ..tensor_checks import OVERFLOW_FIX, require_finite
from .features import FeatureStore

SCORES_FIX = ("the text or image features overflow (a damaged backbone or adapter); check --pretrained and the "
              "adapter")


@torch.no_grad()
def classifier_text_features(model) -> torch.Tensor:
    """The merged prompt's class text features [C, D] (no dropout), refused when not finite."""
    return require_finite(model.text_features(merged=True).detach(), f"{model.origin}: its text features",
                          OVERFLOW_FIX)


def checked_logits(model, inputs: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
    """``model.logits`` refused when not finite (a CoCoOp meta-net or vision prompts can overflow on their own)."""
    return require_finite(model.logits(inputs, text_features), f"{model.origin}: its logits", OVERFLOW_FIX)


@torch.no_grad()
def encode_items(backbone: Backbone, items: Sequence[Datum], batch_size: int = 64, workers: int = 0,
                 skip_bad_images: bool = False, desc: str = "encode",
                 store: FeatureStore | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(normalised image features [N, D], labels [N], number of skipped bad images).

    Read from ``store`` (default: the shared store) when this split was encoded before. ``batch_size`` is
    kept for compatibility: images are encoded in fixed batches so stored and fresh features are the same.
    """
    store = store if store is not None else FeatureStore.default()
    encoded = store.test_features(backbone, items, workers=workers, skip_bad_images=skip_bad_images, desc=desc)
    features, labels = encoded.good()
    return features.to(backbone.device), labels, encoded.skipped


@torch.no_grad()
def accuracy_from_features(image_features: torch.Tensor, labels: torch.Tensor, text_features: torch.Tensor) -> dict:
    """Top-1 accuracy in percent (rounded to 4 decimals), as published tables report it."""
    if len(labels) == 0:
        return {"accuracy": 0.0, "n": 0}
    scores = require_finite(image_features.to(text_features.device) @ text_features.t(), "the class scores",
                            SCORES_FIX)
    predictions = scores.argmax(dim=-1).cpu()
    correct = int((predictions == labels).sum())
    return {"accuracy": round(100.0 * correct / len(labels), 4), "n": int(len(labels)), "correct": correct}


def evaluate_items(backbone: Backbone, text_features: torch.Tensor, items: Sequence[Datum], batch_size: int = 64,
                   workers: int = 0, skip_bad_images: bool = False, desc: str = "eval",
                   store: FeatureStore | None = None) -> dict:
    """Accuracy of fixed class ``text_features`` (computed once by the caller) on ``items``."""
    features, labels, skipped = encode_items(backbone, items, batch_size, workers, skip_bad_images, desc, store)
    result = accuracy_from_features(features, labels, text_features)
    if skipped:
        result["skipped_bad_images"] = skipped
    return result


@torch.no_grad()
def evaluate_model(model, items: Sequence[Datum], batch_size: int = 64, workers: int = 0,
                   skip_bad_images: bool = False, desc: str = "eval", store: FeatureStore | None = None) -> dict:
    """Accuracy of a prompt model on ``items``: class text features once (merged prompt), or, for
    image-conditioned prompts (CoCoOp), the model's own per-image logits over stored image features, or, for
    vision prompts (MaPLe, PromptSRC), the model's own image tower over the test images."""
    if model.image_prompted and not model.takes_raw_features:
        return _evaluate_prompted_images(model, items, batch_size, workers, skip_bad_images)
    if not model.image_conditioned:
        text_features = classifier_text_features(model)
        return evaluate_items(model.backbone, text_features, items, batch_size, workers, skip_bad_images, desc, store)
    text_features = None  # CoCoOp: the class text features depend on each image
    if model.takes_raw_features:  # DePT's head: the stored unnormalised features, a fixed text side
        encoded = (store if store is not None else FeatureStore.default()).test_features(
            model.backbone, items, workers=workers, skip_bad_images=skip_bad_images, desc=desc)
        (features, labels), skipped = encoded.good(raw=True), encoded.skipped
        text_features = classifier_text_features(model)
    else:
        features, labels, skipped = encode_items(model.backbone, items, batch_size, workers, skip_bad_images, desc,
                                                 store)
    if len(labels) == 0:
        return {"accuracy": 0.0, "n": 0}
    predictions = torch.cat([checked_logits(model, features[i: i + batch_size].to(model.backbone.device),
                                            text_features).argmax(-1).cpu()
                             for i in range(0, len(features), batch_size)])
    correct = int((predictions == labels).sum())
    result = {"accuracy": round(100.0 * correct / len(labels), 4), "n": int(len(labels)), "correct": correct}
    if skipped:
        result["skipped_bad_images"] = skipped
    return result


def _evaluate_prompted_images(model, items: Sequence[Datum], batch_size: int, workers: int,
                              skip_bad_images: bool) -> dict:
    """Models with vision prompts (MaPLe, PromptSRC): their image tower runs on the test images (no feature
    store: the features belong to this prompt); class text features are computed once. Under ``torchrun``
    each rank takes every world-th batch and the counts are summed, so N GPUs share a large split."""
    from .distributed import rank_and_world, sum_over_ranks
    from .features import image_batches

    if not items:
        return {"accuracy": 0.0, "n": 0}
    text_features = classifier_text_features(model)
    rank, world = rank_and_world()
    batches = [list(range(i, min(i + batch_size, len(items)))) for i in range(0, len(items), batch_size)]
    correct = seen = 0
    for images, labels in image_batches(model.backbone, items, None, 0, batches[rank::world], workers,
                                        skip_bad_images):
        predictions = checked_logits(model, images, text_features).argmax(-1).cpu()
        correct += int((predictions == labels.cpu()).sum())
        seen += len(labels)
    correct, seen = sum_over_ranks([correct, seen], model.backbone.device)
    result = {"accuracy": round(100.0 * correct / max(seen, 1), 4), "n": seen, "correct": correct}
    if seen < len(items):
        result["skipped_bad_images"] = len(items) - seen
    return result
