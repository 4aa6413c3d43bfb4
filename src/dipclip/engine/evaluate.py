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


# Up to this many classes the confusion matrix is stored dense (C x C); beyond, as its non-zero cells.
CONFUSION_DENSE_MAX = 200


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """[C, C] int64 counts: rows = true class, columns = predicted class."""
    labels, predictions = labels.reshape(-1).long().cpu(), predictions.reshape(-1).long().cpu()
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
        raise ValueError(f"labels outside 0..{n_classes - 1}: the class list does not match the images")
    return torch.bincount(labels * n_classes + predictions, minlength=n_classes * n_classes).reshape(
        n_classes, n_classes)


def confusion_entry(matrix: torch.Tensor) -> dict:
    """``confusion_format`` and ``confusion`` for metrics.json: the dense list of rows up to
    :data:`CONFUSION_DENSE_MAX` classes, else ``[[true, predicted, count], ...]`` for the non-zero cells."""
    if len(matrix) <= CONFUSION_DENSE_MAX:
        return {"confusion_format": "dense", "confusion": matrix.tolist()}
    cells = matrix.nonzero().tolist()
    return {"confusion_format": "sparse", "confusion": [[t, p, int(matrix[t, p])] for t, p in cells]}


def dense_confusion(result: dict) -> torch.Tensor:
    """The [C, C] matrix of a result, whichever form it was stored in."""
    if result.get("confusion_format") == "sparse":
        matrix = torch.zeros(len(result["per_class"]), len(result["per_class"]), dtype=torch.long)
        for true, predicted, count in result["confusion"]:
            matrix[true, predicted] = count
        return matrix
    return torch.tensor(result["confusion"], dtype=torch.long).reshape(len(result["per_class"]), -1)


def result_from_confusion(matrix: torch.Tensor, classnames: Sequence[str] | None = None) -> dict:
    """A split's result: top-1 ``accuracy`` (percent, 4 decimals, as published tables), ``n``, ``correct``,
    and ``per_class`` (name, n, correct, accuracy; null accuracy for a class without images) and the
    confusion matrix, in class-index order."""
    n_classes = len(matrix)
    names = list(classnames) if classnames is not None and len(classnames) == n_classes else \
        [str(i) for i in range(n_classes)]
    per_n, per_correct = matrix.sum(dim=1).tolist(), matrix.diagonal().tolist()
    n, correct = int(sum(per_n)), int(sum(per_correct))
    per_class = [{"name": name, "n": k, "correct": c, "accuracy": round(100.0 * c / k, 4) if k else None}
                 for name, k, c in zip(names, per_n, per_correct, strict=True)]
    return {"accuracy": round(100.0 * correct / n, 4) if n else 0.0, "n": n, "correct": correct,
            "per_class": per_class, **confusion_entry(matrix)}


def worst_classes(result: dict, k: int = 10) -> list[dict]:
    """The ``k`` classes with images and the lowest accuracy (ties: class order), each with the class it is
    most often predicted as instead (``confused_with``, None when never wrong) and how often."""
    matrix = dense_confusion(result)
    ranked = sorted((i for i, c in enumerate(result["per_class"]) if c["n"]),
                    key=lambda i: (result["per_class"][i]["accuracy"], i))[:k]
    worst = []
    for i in ranked:
        row = matrix[i].clone()
        row[i] = -1
        j = int(row.argmax()) if len(row) > 1 else i
        other = int(row[j]) if j != i else 0
        worst.append({**result["per_class"][i],
                      "confused_with": result["per_class"][j]["name"] if other > 0 else None,
                      "confused_count": max(other, 0)})
    return worst


@torch.no_grad()
def accuracy_from_features(image_features: torch.Tensor, labels: torch.Tensor, text_features: torch.Tensor,
                           classnames: Sequence[str] | None = None) -> dict:
    """Top-1 accuracy, per-class counts and confusion matrix (:func:`result_from_confusion`) of fixed class
    ``text_features`` [C, D] on image features."""
    n_classes = len(text_features)
    if len(labels) == 0:
        return result_from_confusion(torch.zeros(n_classes, n_classes, dtype=torch.long), classnames)
    scores = require_finite(image_features.to(text_features.device) @ text_features.t(), "the class scores",
                            SCORES_FIX)
    predictions = scores.argmax(dim=-1).cpu()
    return result_from_confusion(confusion_matrix(predictions, labels, n_classes), classnames)


def evaluate_items(backbone: Backbone, text_features: torch.Tensor, items: Sequence[Datum], batch_size: int = 64,
                   workers: int = 0, skip_bad_images: bool = False, desc: str = "eval",
                   store: FeatureStore | None = None, classnames: Sequence[str] | None = None) -> dict:
    """Accuracy of fixed class ``text_features`` (computed once by the caller) on ``items``."""
    features, labels, skipped = encode_items(backbone, items, batch_size, workers, skip_bad_images, desc, store)
    result = accuracy_from_features(features, labels, text_features, classnames)
    if skipped:
        result["skipped_bad_images"] = skipped
    return result


def _model_classnames(model, classnames: Sequence[str] | None) -> list[str]:
    return list(classnames) if classnames is not None else list(getattr(model, "classnames", None) or [])


@torch.no_grad()
def evaluate_model(model, items: Sequence[Datum], batch_size: int = 64, workers: int = 0,
                   skip_bad_images: bool = False, desc: str = "eval", store: FeatureStore | None = None,
                   classnames: Sequence[str] | None = None) -> dict:
    """Accuracy of a prompt model on ``items``: class text features once (merged prompt), or, for
    image-conditioned prompts (CoCoOp), the model's own per-image logits over stored image features, or, for
    vision prompts (MaPLe, PromptSRC), the model's own image tower over the test images.

    ``classnames`` (default: the model's current classes) name the ``per_class`` entries; every path gives
    the same result keys (:func:`result_from_confusion`)."""
    classnames = _model_classnames(model, classnames)
    if model.image_prompted and not model.takes_raw_features:
        return _evaluate_prompted_images(model, items, batch_size, workers, skip_bad_images, classnames)
    feature_head = getattr(model, "feature_head", False)  # probes/adapters: logits of stored image features
    if not model.image_conditioned and not feature_head:
        text_features = classifier_text_features(model)
        return evaluate_items(model.backbone, text_features, items, batch_size, workers, skip_bad_images, desc, store,
                              classnames)
    text_features = None  # CoCoOp: the class text features depend on each image
    if model.takes_raw_features:  # DePT's head: the stored unnormalised features, a fixed text side
        encoded = (store if store is not None else FeatureStore.default()).test_features(
            model.backbone, items, workers=workers, skip_bad_images=skip_bad_images, desc=desc)
        (features, labels), skipped = encoded.good(raw=True), encoded.skipped
        text_features = classifier_text_features(model)
    else:
        features, labels, skipped = encode_items(model.backbone, items, batch_size, workers, skip_bad_images, desc,
                                                 store)
    n_classes = len(classnames)
    predictions = []
    for i in range(0, len(features), batch_size):
        logits = checked_logits(model, features[i: i + batch_size].to(model.backbone.device), text_features)
        n_classes = logits.shape[-1]
        predictions.append(logits.argmax(-1).cpu())
    predictions = torch.cat(predictions) if predictions else torch.zeros(0, dtype=torch.long)
    result = result_from_confusion(confusion_matrix(predictions, labels, n_classes), classnames)
    if skipped:
        result["skipped_bad_images"] = skipped
    return result


def _evaluate_prompted_images(model, items: Sequence[Datum], batch_size: int, workers: int,
                              skip_bad_images: bool, classnames: Sequence[str] | None = None) -> dict:
    """Models with vision prompts (MaPLe, PromptSRC): their image tower runs on the test images (no feature
    store: the features belong to this prompt); class text features are computed once. Under ``torchrun``
    each rank takes every world-th batch and the confusion matrices (hence every count) are summed, so N GPUs
    share a large split."""
    from .distributed import rank_and_world, sum_over_ranks
    from .features import image_batches

    classnames = _model_classnames(model, classnames)
    text_features = classifier_text_features(model)
    n_classes = len(text_features)
    matrix = torch.zeros(n_classes, n_classes, dtype=torch.long)
    if not items:
        return result_from_confusion(matrix, classnames)
    rank, world = rank_and_world()
    batches = [list(range(i, min(i + batch_size, len(items)))) for i in range(0, len(items), batch_size)]
    for images, labels in image_batches(model.backbone, items, None, 0, batches[rank::world], workers,
                                        skip_bad_images):
        predictions = checked_logits(model, images, text_features).argmax(-1).cpu()
        matrix += confusion_matrix(predictions, labels, n_classes)
    matrix = torch.tensor(sum_over_ranks(matrix.flatten().tolist(), model.backbone.device),
                          dtype=torch.long).reshape(n_classes, n_classes)
    result = result_from_confusion(matrix, classnames)
    if result["n"] < len(items):
        result["skipped_bad_images"] = len(items) - result["n"]
    return result
