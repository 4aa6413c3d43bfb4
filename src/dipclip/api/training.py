"""Training a prompt method: the resolved plan (:class:`TrainingPlan`), its recorded ``config``, and :func:`train`,
which hands feature-space methods to :mod:`dipclip.api.feature_methods`."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..adapters import save_adapter
from ..argcheck import checked
from ..backbones.loading import Backbone, load_backbone
from ..data.types import DatasetSplits
from ..data.validate import check_for_training
from ..density import density_report
from ..engine.distributed import is_main_process
from ..engine.evaluate import evaluate_model
from ..engine.trainer import TrainConfig, Trainer
from ..errors import DipclipError
from ..methods import OptimConfig, PromptConfig, PromptMethod, get_method, with_prompt
from ..methods.base import METHOD_SETTINGS
from ..recipes import Recipe, resolve_recipe
from .common import (
    _one_writer,
    _report,
    _write_metrics,
    keep_other_results,
    load_data,
    resolve_data_root,
    training_identity,
    training_metrics,
    training_splits,
)
from .feature_methods import _feature_config, _feature_plan, get_feature_method_epochs, train_feature_method


@dataclass
class TrainingPlan:
    """Everything a training run is, resolved from the method's recipe and the caller's overrides, before
    any model or data is loaded (``dipclip train --dry-run`` prints :meth:`config`)."""

    method: PromptMethod
    recipe: Recipe
    overrides: dict
    prompt: PromptConfig
    optim: OptimConfig
    train: TrainConfig
    dataset: str | None
    shots: int | None
    seed: int

    def config(self, *, data: str | None, subsample: str, model: str | None, pretrained: str,
               device: str) -> dict:
        """The ``config`` of ``metrics.json`` and of the adapter."""
        return {
            "method": self.method.name,
            "recipe": {**self.recipe.describe(), "overrides": self.overrides},
            "data": data, "dataset": self.dataset, "shots": self.shots, "seed": self.seed, "subsample": subsample,
            "prompt": self.prompt.to_dict(), "optim": asdict(self.optim), "train": asdict(self.train),
            "model": model, "pretrained": pretrained, "device": device,
        }


def clip_token_count(text: str) -> int:
    """Tokens of ``text`` under CLIP's BPE, the tokenizer of every text tower dipclip accepts."""
    import open_clip

    return len(open_clip.tokenizer.SimpleTokenizer().encode(text))


@checked
def plan_training(method: str, *, recipe: str = "base2new", dataset: str | None = None, shots: int | None = 16,
                  seed: int = 1, prompt: str | None = None, epochs: int | None = None,
                  batch_size: int | None = None, optimizer: str | None = None, lr: float | None = None,
                  method_options: dict | None = None, prompt_overrides: dict | None = None,
                  random_init: bool = False, train_options: dict | None = None) -> TrainingPlan:
    """Resolve a run: the recipe of ``method`` for ``recipe``/``dataset``/``shots``, then every explicit
    (non-``None``) argument on top. Validates everything; loads nothing."""
    prompt_method = get_method(method)
    if prompt is not None:
        prompt_method = with_prompt(prompt_method, prompt)
    chosen = resolve_recipe(prompt_method.name, recipe, dataset, shots)
    given = {k: v for k, v in (prompt_overrides or {}).items() if v is not None}
    overrides = {f"{'method' if k in METHOD_SETTINGS else 'prompt'}.{k}": v for k, v in given.items()}
    if random_init:
        overrides["prompt.init_text"] = None
    for dotted, value in (("train.epochs", epochs), ("train.batch_size", batch_size),
                          ("optim.optimizer", optimizer), ("optim.lr", lr)):
        if value is not None:
            overrides[dotted] = value
    overrides.update({f"method.{k}": v for k, v in (method_options or {}).items() if v is not None})

    unknown = sorted(set(method_options or {}) - set(METHOD_SETTINGS))
    if unknown:
        raise DipclipError(f"unknown method option(s) {', '.join(unknown)}; use {', '.join(METHOD_SETTINGS)}")
    prompt_values = {**chosen.values.get("prompt", {}), **chosen.values.get("method", {})}
    if "init_text" in given and "n_ctx" not in given:  # CoOp: n_ctx follows the init text
        given["n_ctx"] = clip_token_count(given["init_text"])
    prompt_values.update(given)
    prompt_values.update({k: v for k, v in (method_options or {}).items() if v is not None})
    if random_init or ("init_text" in prompt_values and prompt_values["init_text"] is None):
        prompt_values["init_text"] = ""  # prompt_config's spelling of a random N(0, 0.02) context
    prompt_cfg = prompt_method.prompt_config(dataset=dataset, **prompt_values)  # + the method's dataset template
    optim_values = {**chosen.values.get("optim", {}), **{k.split(".")[1]: v for k, v in overrides.items()
                                                          if k.startswith("optim.")}}
    optim_cfg = prompt_method.optim_config(**optim_values)
    train_values = {**chosen.values.get("train", {}), **{k.split(".")[1]: v for k, v in overrides.items()
                                                          if k.startswith("train.")}}
    train_cfg = TrainConfig(**train_values, seed=seed, **(train_options or {})).validate()
    return TrainingPlan(method=prompt_method, recipe=chosen, overrides=overrides, prompt=prompt_cfg,
                        optim=optim_cfg, train=train_cfg, dataset=dataset, shots=shots, seed=seed)


PROMPT_ARGUMENTS = ("n_ctx", "class_position", "class_specific", "rank", "dip_init", "dip_dropout", "init_text",
                    "lambda_do", "lambda_pp", "id_k", "vision_dip", "prompt_depth", "prograd_lambda", "gpa_mean",
                    "gpa_std")
TRAIN_ARGUMENTS = ("workers", "density_k", "skip_bad_images", "views", "feature_cache", "eval_every", "crop_scale")


def _plan_from_train_arguments(method: str, *, recipe: str, dataset: str | None, shots: int | None, seed: int,
                               prompt: str | None, epochs: int | None, batch_size: int | None,
                               optimizer: str | None, lr: float | None, method_options: dict | None,
                               random_init: bool, **rest) -> TrainingPlan:
    prompt_overrides = {k: rest.pop(k) for k in PROMPT_ARGUMENTS if k in rest}
    train_options = {k: rest.pop(k) for k in TRAIN_ARGUMENTS if k in rest}
    train_options = {k: v for k, v in train_options.items() if v is not None}  # None: TrainConfig's default
    if rest:
        raise TypeError(f"unexpected training argument(s): {', '.join(sorted(rest))}")
    return plan_training(
        method, recipe=recipe, dataset=dataset, shots=shots, seed=seed, prompt=prompt, epochs=epochs,
        batch_size=batch_size, optimizer=optimizer, lr=lr, method_options=method_options,
        prompt_overrides=prompt_overrides, random_init=random_init, train_options=train_options,
    )


@checked
def train_config(method: str = "dip", *, recipe: str = "base2new", model: str | None = None,
                 pretrained: str | None = None, data: str | None = None, dataset: str | None = None,
                 shots: int | None = 16, seed: int = 1, subsample: str = "all", device: str = "auto",
                 prompt: str | None = None, epochs: int | None = None, batch_size: int | None = None,
                 optimizer: str | None = None, lr: float | None = None, method_options: dict | None = None,
                 random_init: bool = False, **prompt_and_train) -> dict:
    """The ``config`` that :func:`train` with the same arguments would record, without loading a model or
    data (``dipclip train --dry-run``); ``device`` is as requested, not yet resolved."""
    from ..probes import is_feature_method

    search_split = prompt_and_train.pop("search_split", "val")
    if is_feature_method(method):
        if recipe == "base2new" and subsample != "base":
            recipe = "fewshot"
        keep = {k: prompt_and_train.get(k) for k in ("workers", "skip_bad_images", "views", "feature_cache",
                                                     "crop_scale") if prompt_and_train.get(k) is not None}
        n_train = None
        if get_feature_method_epochs(method) and dataset is not None:  # epochs follow the training set's size
            n_train = len(training_splits(resolve_data_root(data, dataset), dataset, shots, seed, subsample)[0].train)
        plan = _feature_plan(method, recipe=recipe, dataset=dataset, shots=shots, seed=seed, subsample=subsample,
                             epochs=epochs, batch_size=batch_size, method_options=method_options,
                             optimizer=optimizer, lr=lr, search_split=search_split, n_train=n_train, **keep)
        return _feature_config(*plan, data=resolve_data_root(data, dataset), dataset=dataset, shots=shots,
                               seed=seed, subsample=subsample, search_split=search_split, model=model,
                               pretrained=pretrained, device=device)
    plan = _plan_from_train_arguments(
        method, recipe=recipe, dataset=dataset,
        shots=shots, seed=seed, prompt=prompt, epochs=epochs,
        batch_size=batch_size, optimizer=optimizer, lr=lr, method_options=method_options, random_init=random_init,
        **prompt_and_train)
    return plan.config(data=resolve_data_root(data, dataset), subsample=subsample, model=model,
                       pretrained=pretrained, device=device)


@checked
@_one_writer
def train(
    method: str = "dip",
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
    recipe: str = "base2new",
    method_options: dict | None = None,
    optimizer: str | None = None,
    lr: float | None = None,
    n_ctx: int | None = None,
    init_text: str | None = None,
    random_init: bool = False,
    class_position: str | None = None,
    class_specific: bool | None = None,
    rank: int | None = None,
    dip_init: str | None = None,
    dip_dropout: float | None = None,
    prompt: str | None = None,
    vision_dip: bool | None = None,
    lambda_do: float | None = None,
    lambda_pp: float | None = None,
    id_k: int | None = None,
    prompt_depth: int | None = None,
    prograd_lambda: float | None = None,
    gpa_mean: float | None = None,
    gpa_std: float | None = None,
    density_k: int = 1,
    eval_every: int = 0,
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
    search_split: str = "val",
) -> dict:
    """Train a prompt, save its adapter under ``out/adapter`` and evaluate it.

    With ``subsample="base"`` the prompt trained on the base classes is also evaluated on the new classes
    (``results["base"]`` and ``results["new"]``); otherwise ``results["test"]``. ``views``: ``"fresh"``
    (a new augmentation of every image every epoch, protocol-exact) or N cached views cycled over the
    epochs; ``feature_cache=False`` keeps no image features on disk (the numbers are the same).
    ``crop_scale``: the smallest share of the image area a random training crop keeps (default: the recipes'
    0.08, Dassl's ``INPUT.RRCROP_SCALE``); recorded in ``config.train``.

    ``recipe`` (``base2new``, ``fewshot``, ``xd``) picks the method's published recipe for that protocol
    (:mod:`dipclip.recipes`); every argument that is not ``None`` overrides one of its values, and
    ``metrics.json`` records the recipe and those overrides.

    A feature-space method (``lp``, ``tip-adapter``, ...: :mod:`dipclip.probes`) goes to
    :func:`train_feature_method`; its default recipe is ``fewshot`` unless ``subsample="base"``, and prompt
    settings (``n_ctx``, ``init_text``, ...) are refused for it.
    """
    from ..probes import is_feature_method

    if is_feature_method(method):
        prompt_settings = {"n_ctx": n_ctx, "init_text": init_text, "class_position": class_position,
                           "class_specific": class_specific, "rank": rank, "dip_init": dip_init,
                           "dip_dropout": dip_dropout, "prompt": prompt, "vision_dip": vision_dip,
                           "lambda_do": lambda_do, "lambda_pp": lambda_pp, "id_k": id_k,
                           "prompt_depth": prompt_depth, "prograd_lambda": prograd_lambda, "gpa_mean": gpa_mean,
                           "gpa_std": gpa_std}
        given = sorted(k for k, v in prompt_settings.items() if v is not None) + (["random_init"] if random_init else [])
        if given:
            raise DipclipError(f"{method} learns no prompt, so prompt settings do not apply ({', '.join(given)}); "
                               "drop them, or use a prompt method")
        if recipe == "base2new" and subsample != "base":
            recipe = "fewshot"
        return train_feature_method(
            method, model=model, pretrained=pretrained, data=data, dataset=dataset, shots=shots, seed=seed,
            subsample=subsample, epochs=epochs, batch_size=batch_size, recipe=recipe, method_options=method_options,
            optimizer=optimizer, lr=lr, device=device, workers=workers, skip_bad_images=skip_bad_images, out=out,
            resume=resume, progress=progress, backbone=backbone, splits=splits, views=views,
            feature_cache=feature_cache, crop_scale=crop_scale, search_split=search_split)
    if search_split != "val":
        raise DipclipError(f"{method} searches no hyperparameters, so --search-split does not apply; drop it")
    keep_other_results(out, "train", resume=resume)
    began = time.perf_counter()
    plan = _plan_from_train_arguments(
        method, recipe=recipe, dataset=dataset if dataset is not None else (splits.name if splits else None),
        shots=shots, seed=seed, prompt=prompt, epochs=epochs,
        batch_size=batch_size, optimizer=optimizer, lr=lr, method_options=method_options, n_ctx=n_ctx,
        class_position=class_position, class_specific=class_specific, rank=rank, dip_init=dip_init,
        dip_dropout=dip_dropout, init_text=init_text, lambda_do=lambda_do, lambda_pp=lambda_pp, id_k=id_k,
        vision_dip=vision_dip, prompt_depth=prompt_depth, prograd_lambda=prograd_lambda, gpa_mean=gpa_mean,
        gpa_std=gpa_std, random_init=random_init, workers=workers,
        density_k=density_k, skip_bad_images=skip_bad_images, views=views, feature_cache=feature_cache,
        eval_every=eval_every, crop_scale=crop_scale)
    prompt_method, prompt_cfg, optim_cfg, train_cfg = plan.method, plan.prompt, plan.optim, plan.train
    data = resolve_data_root(data, dataset)
    if splits is None:
        splits, new_splits = training_splits(data, dataset, shots, seed, subsample)
    else:
        new_splits = None
        if subsample == "base" and data is not None and dataset is not None:
            new_splits = load_data(data, dataset, None, seed, "new")
    if new_splits is not None and prompt_cfg.class_specific:
        raise DipclipError("a class-specific context cannot be evaluated on the new classes; drop "
                           "--class-specific or use --subsample all")
    name = "base" if subsample == "base" else ("new" if subsample == "new" else "test")
    tests = [(name, splits, subsample != "all")] + ([("new", new_splits, True)] if new_splits is not None else [])
    data_warnings = _report(check_for_training(splits, tests, shots, skip_bad_images))  # before the model loads
    identity = training_identity(splits, new_splits, subsample)
    backbone = backbone or load_backbone(model, pretrained, device=device)
    out = Path(out)
    prompt_model = prompt_method.build(backbone, splits.classnames, prompt_cfg)
    n_params = prompt_model.num_trainable()
    trainer = Trainer(prompt_method, prompt_model, optim_cfg, train_cfg, out, progress=progress)
    trainer.log(
        f"{prompt_method.name}: {n_params:,} trainable parameters; {len(splits.classnames)} classes, "
        f"{len(splits.train)} training images; backbone {backbone.name} ({backbone.pretrained}) on {backbone.device}"
    )
    eval_options = dict(workers=workers, skip_bad_images=skip_bad_images, store=trainer.store)

    def evaluate_all(model) -> dict:
        results = {name: evaluate_model(model, splits.test, desc=f"eval {name}", classnames=splits.classnames,
                                        **eval_options)}
        if new_splits is not None:
            model.set_classnames(new_splits.classnames)
            results["new"] = evaluate_model(model, new_splits.test, desc="eval new",
                                            classnames=new_splits.classnames, **eval_options)
            model.set_classnames(splits.classnames)
        return results

    def accuracies(model) -> dict:
        return {key: value["accuracy"] for key, value in evaluate_all(model).items()}

    history = trainer.fit(splits.train, resume=resume, evaluate=accuracies if eval_every else None)
    config = plan.config(data=data, subsample=subsample, model=model, pretrained=pretrained,
                         device=str(backbone.device))
    if is_main_process():
        save_adapter(out / "adapter", prompt_method.name, prompt_model, extra={"train_config": config})
    eval_began = time.perf_counter()
    results = evaluate_all(prompt_model)
    for key, value in results.items():
        trainer.log(f"{key}: accuracy {value['accuracy']:.2f}% on {value['n']} images")
    context = prompt_model.context
    metrics = training_metrics(
        method=prompt_method.name, trainable_params=n_params, results=results, history=history,
        density=density_report(context.merged(), context.initial, density_k), splits=splits,
        data_warnings=data_warnings, identity=identity, backbone=backbone, config=config, trainer=trainer,
        began=began, eval_began=eval_began)
    _write_metrics(out, metrics)
    return metrics
