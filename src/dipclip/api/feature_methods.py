"""Training a feature-space method (:mod:`dipclip.probes`: linear probes, adapters, caches) on stored image
features; :func:`dipclip.api.train` hands these methods here."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import torch

from ..adapters import save_adapter
from ..backbones.loading import Backbone, load_backbone
from ..data.types import DatasetSplits
from ..data.validate import check_for_training
from ..engine.distributed import is_main_process
from ..engine.evaluate import evaluate_model
from ..engine.trainer import TrainConfig, Trainer
from ..errors import DipclipError
from ..recipes import Recipe
from .common import (
    _report,
    _write_metrics,
    keep_other_results,
    load_data,
    resolve_data_root,
    training_identity,
    training_metrics,
    training_splits,
)


def train_feature_method(
    method: str,
    *,
    model: str | None = None,
    pretrained: str | None = None,
    data: str | None = None,
    dataset: str | None = None,
    shots: int | None = 16,
    seed: int = 1,
    subsample: str = "all",
    epochs: int | None = None,
    batch_size: int | None = None,
    recipe: str = "fewshot",
    method_options: dict | None = None,
    optimizer: str | None = None,
    lr: float | None = None,
    search_split: str = "val",
    device: str = "auto",
    workers: int = 0,
    skip_bad_images: bool = False,
    out: str | Path = "runs/train",
    resume: bool = False,
    progress: bool = True,
    backbone: Backbone | None = None,
    splits: DatasetSplits | None = None,
    views: str | int = "fresh",
    feature_cache: bool = True,
    crop_scale: float | None = None,
) -> dict:
    """Fit a feature-space method (:mod:`dipclip.probes`: linear probes, adapters, caches) on stored image
    features, save its adapter under ``out/adapter`` and evaluate it; the same ``metrics.json`` layout as
    :func:`train` plus ``chosen`` (the hyperparameters its search picked) and ``search_split`` (``val``, the
    few-shot validation split, unless the authors' test-set search was asked for with ``search_split="test"``).

    ``recipe`` is the protocol whose published recipe applies (``fewshot`` by default; a protocol the method
    cannot do is refused); ``method_options`` override the recipe's ``head`` settings."""
    from ..engine.heads import feature_data, fit_head

    keep_other_results(out, "train", resume=resume)
    began = time.perf_counter()
    plan_arguments = dict(recipe=recipe, dataset=dataset, shots=shots, seed=seed, subsample=subsample, epochs=epochs,
                          batch_size=batch_size, method_options=method_options, optimizer=optimizer, lr=lr,
                          search_split=search_split, workers=workers, skip_bad_images=skip_bad_images, views=views,
                          feature_cache=feature_cache, crop_scale=crop_scale)
    _feature_plan(method, **plan_arguments)  # every setting checked before any data is read
    data = resolve_data_root(data, dataset)
    if splits is None:
        splits, new_splits = training_splits(data, dataset, shots, seed, subsample)
    else:
        new_splits = load_data(data, dataset, None, seed, "new") if (
            subsample == "base" and data is not None and dataset is not None) else None
    head_method, chosen_recipe, overrides, settings, optim_cfg, train_cfg = _feature_plan(
        method, n_train=len(splits.train), **plan_arguments)
    if search_split == "val" and not splits.val and head_method.searches:
        raise DipclipError(f"{head_method.name} chooses its hyperparameters on the validation split, and "
                           f"{splits.name} has none; give a dataset with a val split (or --search-split test, the "
                           "authors' way, recorded as such)")
    name = "base" if subsample == "base" else ("new" if subsample == "new" else "test")
    tests = [(name, splits, subsample != "all")] + ([("new", new_splits, True)] if new_splits is not None else [])
    data_warnings = _report(check_for_training(splits, tests, shots, skip_bad_images))
    identity = training_identity(splits, new_splits, subsample)
    backbone = backbone or load_backbone(model, pretrained, device=device)
    if settings.get("templates") is None and "templates" in head_method.defaults:
        settings["templates"] = [splits.template]
    head = head_method.build(backbone, splits.classnames, settings)
    out = Path(out)
    trainer = Trainer(head_method, head, optim_cfg, train_cfg, out, progress=progress)
    trainer.log(f"{head_method.name}: {head.num_trainable():,} trainable parameters; {len(splits.classnames)} "
                f"classes, {len(splits.train)} training images; backbone {backbone.name} ({backbone.pretrained}) "
                f"on {backbone.device}")
    features = feature_data(backbone, splits, trainer.store, seed, search_split, train_cfg.crop_scale, workers,
                            skip_bad_images, progress)
    history, chosen = fit_head(head_method, head, features, lambda: trainer.fit(splits.train, resume=resume))
    config = _feature_config(head_method, chosen_recipe, overrides, settings, optim_cfg, train_cfg, data=data,
                             dataset=dataset if dataset is not None else splits.name, shots=shots, seed=seed,
                             subsample=subsample, search_split=search_split, model=model, pretrained=pretrained,
                             device=str(backbone.device))
    if is_main_process():
        save_adapter(out / "adapter", head_method.name, head, extra={"train_config": config, "chosen": chosen})
    eval_began = time.perf_counter()
    eval_options = dict(workers=workers, skip_bad_images=skip_bad_images, store=trainer.store)
    results = {name: evaluate_model(head, splits.test, desc=f"eval {name}", **eval_options)}
    if new_splits is not None:
        head.set_classnames(new_splits.classnames)
        results["new"] = evaluate_model(head, new_splits.test, desc="eval new", **eval_options)
        head.set_classnames(splits.classnames)
    for key, value in results.items():
        trainer.log(f"{key}: accuracy {value['accuracy']:.2f}% on {value['n']} images")
    metrics = training_metrics(
        method=head_method.name, trainable_params=head.num_trainable(), results=results, history=history,
        density=None, chosen=chosen, search_split=search_split, splits=splits, data_warnings=data_warnings,
        identity=identity, backbone=backbone, config=config, trainer=trainer, began=began, eval_began=eval_began)
    _write_metrics(out, metrics)
    return metrics


def _feature_plan(method: str, *, recipe: str, dataset: str | None, shots: int | None, seed: int, subsample: str,
                  epochs: int | None, batch_size: int | None, method_options: dict | None, optimizer: str | None,
                  lr: float | None, search_split: str, workers: int = 0, skip_bad_images: bool = False,
                  views: str | int = "fresh", feature_cache: bool = True, crop_scale: float | None = None,
                  n_train: int | None = None) -> tuple:
    """(method, recipe, overrides, settings, optim, train) of a feature-space run, resolved without loading a
    model (``n_train``: the training set's size, for methods whose authors count steps, not epochs)."""
    from ..engine.heads import SEARCH_SPLITS
    from ..probes import get_feature_method
    from ..recipes.probes import resolve_probe_recipe

    head_method = get_feature_method(method)
    if search_split not in SEARCH_SPLITS:
        raise DipclipError(f"unknown search split {search_split!r}; use val (the few-shot validation split) or "
                           "test (the authors' way, recorded as such)")
    if search_split == "test" and not head_method.searches:
        raise DipclipError(f"{head_method.name} chooses no hyperparameters on a split, so --search-split test does not "
                           "apply; drop it")
    if subsample == "base":
        head_method.require_protocol("base2new")
    chosen_recipe = resolve_probe_recipe(head_method.name, recipe, dataset, shots)
    values = chosen_recipe.values
    overrides = {f"head.{k}": v for k, v in (method_options or {}).items() if v is not None}
    for dotted, value in (("train.epochs", epochs), ("train.batch_size", batch_size),
                          ("optim.optimizer", optimizer), ("optim.lr", lr)):
        if value is not None:
            overrides[dotted] = value
    settings = head_method.settings(**{**values.get("head", {}), **(method_options or {})})
    if "templates" in head_method.defaults and settings.get("templates") is None and dataset is not None:
        from ..data.registry import dataset_info

        settings["templates"] = [dataset_info(dataset).template]  # the dataset's own, as the zero-shot runs use
    optim_cfg = head_method.optim_config(**{**values.get("optim", {}),
                                            **{k.split(".")[1]: v for k, v in overrides.items()
                                               if k.startswith("optim.")}})
    train_values = {**values.get("train", {}), **{k.split(".")[1]: v for k, v in overrides.items()
                                                   if k.startswith("train.")}}
    if crop_scale is not None:
        train_values["crop_scale"] = crop_scale
    if "init_seed" in head_method.defaults and "init_seed" not in (method_options or {}):
        settings["init_seed"] = seed  # each seed its own initial draw, as the prompt methods' contexts
    if epochs is None and n_train is not None:
        computed = head_method.epochs_for(settings, shots, n_train, int(train_values.get("batch_size", 32)))
        if computed is not None:
            train_values["epochs"] = computed
    train_cfg = TrainConfig(**train_values, seed=seed, workers=workers, skip_bad_images=skip_bad_images,
                            views=views, feature_cache=feature_cache).validate()
    return head_method, chosen_recipe, overrides, settings, optim_cfg, train_cfg


def _feature_config(head_method, chosen_recipe: Recipe, overrides: dict, settings: dict, optim_cfg, train_cfg,
                    **run) -> dict:
    """The ``config`` of a feature-space run's metrics.json and adapter (tensors given in settings left out)."""
    return {
        "method": head_method.name,
        "recipe": {**chosen_recipe.describe(), "overrides": overrides},
        **{k: run[k] for k in ("data", "dataset", "shots", "seed", "subsample")},
        "head": {k: v for k, v in settings.items() if not isinstance(v, torch.Tensor)},
        "search_split": run["search_split"], "optim": asdict(optim_cfg), "train": asdict(train_cfg),
        **{k: run[k] for k in ("model", "pretrained", "device")},
    }


def get_feature_method_epochs(method: str) -> bool:
    """Whether a feature method computes its epochs from the training set's size (its authors count steps)."""
    from ..probes import get_feature_method
    from ..probes.base import FeatureMethod

    return type(get_feature_method(method)).epochs_for is not FeatureMethod.epochs_for
