"""Evaluating on a dataset split: zero-shot CLIP (:func:`zeroshot`) and a trained adapter (:func:`evaluate`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..adapters import load_adapter, model_from_adapter
from ..argcheck import checked
from ..backbones.loading import Backbone, load_backbone
from ..classifier import backbone_for_adapter as _backbone_for_adapter  # one rule for eval, export, predict
from ..data.types import DatasetSplits
from ..data.validate import check_for_evaluation
from ..engine.evaluate import evaluate_items, evaluate_model
from ..engine.features import feature_store
from ..methods.zeroshot import ENSEMBLE_TEMPLATES, ensemble_templates, zeroshot_text_features
from .common import (
    _one_writer,
    _report,
    _write_metrics,
    evaluation_identity,
    evaluation_metrics,
    keep_other_results,
    load_data,
)


@checked
@_one_writer
def zeroshot(
    *,
    model: str | None = None,
    pretrained: str | None = None,
    data: str | None = None,
    dataset: str | None = None,
    split: str = "test",
    subsample: str = "all",
    templates: Sequence[str] | None = None,
    ensemble: bool = False,
    device: str = "auto",
    workers: int = 0,
    skip_bad_images: bool = False,
    out: str | Path | None = None,
    backbone: Backbone | None = None,
    splits: DatasetSplits | None = None,
    feature_cache: bool = True,
) -> dict:
    """Zero-shot CLIP with the dataset's template (or ``templates``). ``ensemble`` alone is CoOp's ensemble
    baseline (CLIP's 7 templates, plus the dataset's own except on ImageNet); with ``templates`` it adds the 7.

    ``out`` may hold the ``metrics.json`` of this same zero-shot evaluation (it is replaced), never another
    command's results (see :func:`keep_other_results`)."""
    splits = splits or load_data(data, dataset, None, 1, subsample)
    if ensemble and not templates:  # CoOp's ensemble: the 7 templates (+ the dataset's, except on ImageNet)
        chosen = ensemble_templates(splits.name, splits.template)
    else:
        chosen = list(templates) if templates else [splits.template]
        if ensemble:
            chosen += [t for t in ENSEMBLE_TEMPLATES if t not in chosen]
    config = {"data": data, "dataset": dataset, "split": split, "subsample": subsample, "templates": chosen,
              "model": model, "pretrained": pretrained}
    keep_other_results(out, "zeroshot", config)
    name = split if subsample == "all" else subsample
    data_warnings = _report(check_for_evaluation(splits, split, name, subsample != "all", skip_bad_images))
    identity = evaluation_identity(splits, split, name)
    backbone = backbone or load_backbone(model, pretrained, device=device)
    text_features = zeroshot_text_features(backbone, splits.classnames, chosen)
    result = evaluate_items(backbone, text_features, splits.split(split), workers=workers,
                            skip_bad_images=skip_bad_images, desc=f"zero-shot {name}",
                            store=feature_store(feature_cache), classnames=splits.classnames)
    metrics = evaluation_metrics(method="zeroshot", trainable_params=0, name=name, result=result, splits=splits,
                                 data_warnings=data_warnings, identity=identity, backbone=backbone, config=config)
    _write_metrics(out, metrics)
    return metrics


@checked
@_one_writer
def evaluate(
    adapter: str | Path,
    *,
    data: str | None = None,
    dataset: str | None = None,
    split: str = "test",
    subsample: str = "all",
    model: str | None = None,
    pretrained: str | None = None,
    device: str = "auto",
    workers: int = 0,
    skip_bad_images: bool = False,
    out: str | Path | None = None,
    backbone: Backbone | None = None,
    splits: DatasetSplits | None = None,
    feature_cache: bool = True,
) -> dict:
    """Accuracy of a trained adapter on a dataset split (the adapter's backbone is rebuilt by default).

    ``out`` may hold the ``metrics.json`` of this same evaluation (it is replaced: same adapter, data, split),
    never a training run or another evaluation (see :func:`keep_other_results`)."""
    loaded = load_adapter(adapter)
    config = {"adapter": str(adapter), "data": data, "dataset": dataset, "split": split, "subsample": subsample,
              **({"prompt": loaded.config["prompt"]} if "prompt" in loaded.config else {"head": loaded.config.get("head")})}
    keep_other_results(out, "eval", config)
    splits = splits or load_data(data, dataset, None, 1, subsample)
    name = split if subsample == "all" else subsample
    data_warnings = _report(check_for_evaluation(splits, split, name, subsample != "all", skip_bad_images))
    identity = evaluation_identity(splits, split, name)
    backbone = backbone or _backbone_for_adapter(loaded.config, model, pretrained, device)
    prompt_model = model_from_adapter(loaded, backbone, splits.classnames)
    result = evaluate_model(prompt_model, splits.split(split), workers=workers, skip_bad_images=skip_bad_images,
                            desc=f"eval {name}", store=feature_store(feature_cache), classnames=splits.classnames)
    metrics = evaluation_metrics(method=loaded.method, trainable_params=prompt_model.num_trainable(), name=name,
                                 result=result, splits=splits, data_warnings=data_warnings, identity=identity,
                                 backbone=backbone, config=config)
    _write_metrics(out, metrics)
    return metrics
