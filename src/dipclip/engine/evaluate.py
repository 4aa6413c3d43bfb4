"""Evaluation: class text features once per (prompt, class list), then one pass over the images.

Image features come from the :class:`~dipclip.engine.features.FeatureStore`: the first evaluation of a
split encodes it, every later one (another seed, method or prompt on the same backbone) reads it back.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..backbones.loading import Backbone
from ..data.types import Datum
from .features import FeatureStore


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
    predictions = (image_features.to(text_features.device) @ text_features.t()).argmax(dim=-1).cpu()
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
    if model.image_prompted:
        return _evaluate_prompted_images(model, items, batch_size, workers, skip_bad_images)
    if not model.image_conditioned:
        text_features = model.text_features(merged=True)
        return evaluate_items(model.backbone, text_features, items, batch_size, workers, skip_bad_images, desc, store)
    features, labels, skipped = encode_items(model.backbone, items, batch_size, workers, skip_bad_images, desc, store)
    if len(labels) == 0:
        return {"accuracy": 0.0, "n": 0}
    predictions = torch.cat([model.logits(features[i: i + batch_size].to(model.backbone.device)).argmax(-1).cpu()
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
    text_features = model.text_features(merged=True)
    rank, world = rank_and_world()
    batches = [list(range(i, min(i + batch_size, len(items)))) for i in range(0, len(items), batch_size)]
    correct = seen = 0
    for images, labels in image_batches(model.backbone, items, None, 0, batches[rank::world], workers,
                                        skip_bad_images):
        predictions = model.logits(images, text_features).argmax(-1).cpu()
        correct += int((predictions == labels.cpu()).sum())
        seen += len(labels)
    correct, seen = sum_over_ranks([correct, seen], model.backbone.device)
    result = {"accuracy": round(100.0 * correct / max(seen, 1), 4), "n": seen, "correct": correct}
    if seen < len(items):
        result["skipped_bad_images"] = len(items) - seen
    return result
