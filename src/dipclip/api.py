"""The Python API; the CLI is a thin layer over these functions.

Every function writes its outputs into ``out`` (when given) and returns the same dictionary it writes as
``metrics.json`` / ``predictions.json`` / ``density.json``.

``metrics.json`` (stable; scripts may rely on these keys):
- ``method``: ``zeroshot``, ``coop``, ``dip``, ...; ``trainable_params``: learned numbers;
- ``results``: evaluation name (``test``, ``base``, ``new``, ...) -> ``{"accuracy": percent, "n": images}``;
- ``history``: per epoch ``epoch``, ``loss``, ``train_accuracy``, ``id_prompt``, ``id_update``, ``lr``, ``images``;
- ``density``: ID of the final prompt and of its update; ``config``: the full resolved configuration;
- ``data_warnings``: what the data check found worth knowing (fewer images than ``--shots``, skipped images);
- ``backbone``: model, pretrained, identity, text width; ``timing``: wall-clock seconds (the only
  non-reproducible part); ``dipclip_version``.
"""

from __future__ import annotations

import functools
import inspect
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from . import __version__
from .adapters import load_adapter, model_from_adapter, save_adapter
from .argcheck import checked, class_names
from .backbones.loading import Backbone, load_backbone
from .data.types import DatasetSplits
from .data.validate import check_for_evaluation, check_for_training
from .density import density_report, singular_values
from .engine.distributed import is_main_process
from .engine.evaluate import (
    SCORES_FIX,
    checked_logits,
    classifier_text_features,
    evaluate_items,
    evaluate_model,
)
from .engine.features import feature_store
from .engine.locking import output_lock
from .engine.reproducibility import atomic_write_bytes, atomic_write_json
from .engine.trainer import TrainConfig, Trainer
from .errors import DipclipError, warn
from .files import check_regular_file
from .methods import OptimConfig, PromptConfig, PromptMethod, get_method, with_prompt
from .methods.base import METHOD_SETTINGS
from .methods.zeroshot import ENSEMBLE_TEMPLATES, ensemble_templates, zeroshot_text_features
from .paths import cache_root
from .recipes import Recipe, resolve_recipe
from .tensor_checks import OVERFLOW_FIX, require_finite

METRICS_NAME = "metrics.json"


def load_data(data: str | None, dataset: str | None, shots: int | None = None, seed: int = 1,
              subsample: str = "all") -> DatasetSplits:
    """A dataset as a run sees it: few-shot train/val (when ``shots`` is given) and the base/new half."""
    from .data.datasets import load_dataset
    from .data.sampling import few_shot_splits, subsample_classes

    data = resolve_data_root(data, dataset)
    if data is None or dataset is None:
        raise DipclipError("give the data as --data ROOT --dataset KEY (see `dipclip data --help`)")
    splits = load_dataset(data, dataset)
    if shots is None:
        return subsample_classes(splits, subsample)
    return few_shot_splits(splits, data, dataset, shots, seed, subsample=subsample,
                           cache_dir=cache_root() / "fewshot")


def training_splits(data: str | None, dataset: str | None, shots: int | None, seed: int,
                    subsample: str) -> tuple[DatasetSplits, DatasetSplits | None]:
    """What :func:`train` reads: the (few-shot, subsampled) splits, and with ``subsample="base"`` the new
    half it is also evaluated on."""
    data = resolve_data_root(data, dataset)
    splits = load_data(data, dataset, shots, seed, subsample)
    new_splits = None
    if subsample == "base" and data is not None and dataset is not None:
        new_splits = load_data(data, dataset, None, seed, "new")
    return splits, new_splits


def training_identity(splits: DatasetSplits, new_splits: DatasetSplits | None, subsample: str) -> str:
    """The content identity (:mod:`dipclip.data.identity`) of a training run's data: its training images, the
    test images it is evaluated on (and the new half's), with labels and class lists."""
    from .data.identity import data_identity

    name = "base" if subsample == "base" else ("new" if subsample == "new" else "test")
    parts = [("train", splits, "train"), (name, splits, "test")]
    if new_splits is not None:
        parts.append(("new", new_splits, "test"))
    return data_identity(parts, progress=is_main_process())


def evaluation_identity(splits: DatasetSplits, split: str, name: str) -> str:
    """The content identity of an evaluation's data (the ``split`` evaluated as ``name``)."""
    from .data.identity import data_identity

    return data_identity([(name, splits, split)], progress=is_main_process())


def embedded_data_root() -> Path:
    """The folder holding dipclip's shipped datasets (``--dataset demo`` needs no ``--data``)."""
    from .backbones.embedded import assets_dir

    return assets_dir()


def resolve_data_root(data: str | None, dataset: str | None) -> str | None:
    """``--data`` as given, or the package's own folder for a shipped dataset."""
    from .data.registry import EMBEDDED_DATASETS

    if data is None and dataset in EMBEDDED_DATASETS:
        return str(embedded_data_root())
    return data


def _report(data_warnings: list[str]) -> list[str]:
    """Print each data warning (one line each) and return them for ``metrics.json``."""
    if is_main_process():
        for line in data_warnings:
            warn(line)
    return data_warnings


def _write_metrics(out: str | Path | None, metrics: dict) -> None:
    if out is not None and is_main_process():
        atomic_write_json(Path(out) / METRICS_NAME, metrics)


# What each command writes into its --out folder; another command's (or another run's) results there are never
# written over. Rewriting a command's own output with the same question (a rerun of the same evaluation, the
# same images, the same adapter) is allowed: the answer replaces its own earlier copy.
OWN_FILES = {"predict": ("predictions.json",), "density": ("density.json",),
             "export": ("classifier.json", "classifier.safetensors")}
TRAINING_MARKS = ("checkpoint.pt", "adapter")  # what makes a folder a training run's, finished or not


def _read_json(path: Path) -> object:
    """``path``'s JSON, or ``None`` when it cannot be read as JSON."""
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None


def metrics_writer(metrics: object) -> str | None:
    """Which command wrote a ``metrics.json``: ``train``, ``zeroshot`` or ``eval``; ``None`` when dipclip did not
    (or it cannot be told)."""
    if not isinstance(metrics, dict) or not isinstance(metrics.get("results"), dict):
        return None
    config = metrics.get("config") if isinstance(metrics.get("config"), dict) else {}
    if "history" in metrics or "recipe" in config:
        return "train"
    if metrics.get("method") == "zeroshot":
        return "zeroshot"
    return "eval" if "adapter" in config else None


def _same(recorded: object, asked: dict) -> bool:
    import json

    return isinstance(recorded, dict) and recorded == json.loads(json.dumps(asked, default=str))


def _describe(metrics: dict) -> str:
    config = metrics.get("config") if isinstance(metrics.get("config"), dict) else {}
    shown = ", ".join(f"{key} {config[key]}" for key in ("adapter", "dataset", "split", "subsample")
                      if config.get(key) not in (None, "all"))
    return f" ({shown})" if shown else ""


def keep_other_results(out: str | Path | None, command: str, asked: dict | None = None,
                       resume: bool = False) -> None:
    """Refuse, in one line and before anything is loaded, to write into ``out`` over results that ``command``
    with the question ``asked`` did not produce.

    ``train`` writes ``metrics.json``, ``adapter/`` and ``checkpoint.pt``: into a folder holding a
    ``metrics.json`` or a checkpoint only with ``resume`` and that checkpoint (the trainer then checks it is the
    same run); an ``adapter/`` alone is a run whose metrics were lost, which a protocol redoes. ``eval`` and
    ``zeroshot`` never write into a training run's folder, and replace a ``metrics.json`` only when it is the
    same command's with the same ``config`` (``asked``). ``predict``, ``density`` and ``export`` replace their
    own files only when those record the same images (``predict``) or adapter (``density``, ``export``)."""
    if out is None:
        return
    folder = Path(out)
    fix = "give another --out, or delete {} to replace it"
    metrics_path = folder / METRICS_NAME
    if command == "train":
        checkpoint = folder / TRAINING_MARKS[0]
        if checkpoint.exists() and resume:
            return
        if checkpoint.exists():
            raise DipclipError(f"{folder} already holds a run ({checkpoint.name}); pass --resume to continue it or "
                               "choose another --out")
        if metrics_path.exists():
            writer = metrics_writer(_read_json(metrics_path))
            what = f"the results of `dipclip {writer}`" if writer else "a metrics.json dipclip cannot read"
            raise DipclipError(f"{metrics_path} holds {what}, which `dipclip train` would write over; "
                               + fix.format(metrics_path))
        return
    if command in ("eval", "zeroshot"):
        marks = [folder / name for name in TRAINING_MARKS if (folder / name).exists()]
        if marks:
            raise DipclipError(f"{folder} is a training run's folder ({marks[0].name}), whose metrics.json "
                               f"`dipclip {command}` would write over; give another --out")
        if not metrics_path.exists():
            return
        metrics = _read_json(metrics_path)
        writer = metrics_writer(metrics)
        if writer == command and _same(metrics.get("config"), asked or {}):
            return
        what = ("a metrics.json dipclip cannot read" if writer is None else
                f"the results of another `dipclip {writer}`{_describe(metrics)}")
        raise DipclipError(f"{metrics_path} holds {what}; `dipclip {command}` would write over them: "
                           + fix.format(metrics_path))
    key, value = next(iter((asked or {}).items()))
    for name in OWN_FILES[command]:
        path = folder / name
        if not path.exists():
            continue
        record = _read_json(folder / OWN_FILES[command][0])
        if command == "predict":
            held = ([row.get("image") if isinstance(row, dict) else None for row in record.get("predictions", [])]
                    if isinstance(record, dict) and isinstance(record.get("predictions"), list) else None)
        else:
            held = record.get("adapter") if isinstance(record, dict) else None
        if held != value:
            what = (f"`dipclip {command}`'s output for other {key}" if held is not None else
                    "a file dipclip did not write or cannot read")
            raise DipclipError(f"{path} holds {what}; `dipclip {command}` would write over it: " + fix.format(path))


def _one_writer(function):
    """Run ``function`` holding its ``out`` folder (see :mod:`dipclip.engine.locking`): a second process
    writing into the same folder is refused. Under ``torchrun`` only rank 0 writes, so only it holds it."""
    signature = inspect.signature(function)

    @functools.wraps(function)
    def locked(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        out = bound.arguments.get("out")
        if out is None or not is_main_process():
            return function(*args, **kwargs)
        with output_lock(out):
            return function(*args, **kwargs)

    return locked


def _backbone_for_adapter(adapter_config: dict, model: str | None, pretrained: str | None, device: str) -> Backbone:
    """The backbone an adapter was trained on, from what it recorded (the config's content and the weights
    file's absolute path, so this works from any folder), unless --model/--pretrained say otherwise."""
    recorded = adapter_config["backbone"]
    if pretrained is None:
        weights_file = recorded.get("weights_file")
        pretrained = weights_file if weights_file and Path(weights_file).is_file() else recorded["pretrained"]
    model_config = recorded.get("model_config") if model is None else None
    return load_backbone(model or recorded.get("model_arg"), pretrained, device=device, model_config=model_config)


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
    """
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
        results = {name: evaluate_model(model, splits.test, desc=f"eval {name}", **eval_options)}
        if new_splits is not None:
            model.set_classnames(new_splits.classnames)
            results["new"] = evaluate_model(model, new_splits.test, desc="eval new", **eval_options)
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
    metrics = {
        "dipclip_version": __version__,
        "method": prompt_method.name,
        "trainable_params": n_params,
        "results": results,
        "history": history,
        "density": density_report(context.merged(), context.initial, density_k),
        "num_classes": len(splits.classnames),
        "num_train_images": len(splits.train),
        "data_warnings": data_warnings,
        "data_identity": identity,
        "backbone": backbone.describe(),
        "config": config,
        "timing": {
            "train_epoch_seconds": trainer.epoch_seconds,
            "eval_seconds": round(time.perf_counter() - eval_began, 3),
            "total_seconds": round(time.perf_counter() - began, 3),
        },
    }
    _write_metrics(out, metrics)
    return metrics


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
                            store=feature_store(feature_cache))
    metrics = {
        "dipclip_version": __version__,
        "method": "zeroshot",
        "trainable_params": 0,
        "results": {name: result},
        "num_classes": len(splits.classnames),
        "data_warnings": data_warnings,
        "data_identity": identity,
        "backbone": backbone.describe(),
        "config": config,
    }
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
              "prompt": loaded.config["prompt"]}
    keep_other_results(out, "eval", config)
    splits = splits or load_data(data, dataset, None, 1, subsample)
    name = split if subsample == "all" else subsample
    data_warnings = _report(check_for_evaluation(splits, split, name, subsample != "all", skip_bad_images))
    identity = evaluation_identity(splits, split, name)
    backbone = backbone or _backbone_for_adapter(loaded.config, model, pretrained, device)
    prompt_model = model_from_adapter(loaded, backbone, splits.classnames)
    result = evaluate_model(prompt_model, splits.split(split), workers=workers, skip_bad_images=skip_bad_images,
                            desc=f"eval {name}", store=feature_store(feature_cache))
    metrics = {
        "dipclip_version": __version__,
        "method": loaded.method,
        "trainable_params": prompt_model.num_trainable(),
        "results": {name: result},
        "num_classes": len(splits.classnames),
        "data_warnings": data_warnings,
        "data_identity": identity,
        "backbone": backbone.describe(),
        "config": config,
    }
    _write_metrics(out, metrics)
    return metrics


def _classifier(adapter: str | Path | None, backbone: Backbone, classnames: list[str], template: str):
    """(logits function, method name, whether it takes images rather than image features) for an adapter, or
    for zero-shot with ``template``.

    The class text features are computed once; an image-conditioned prompt (CoCoOp) uses its own logits, and a
    model with vision prompts (MaPLe, PromptSRC) takes the images and runs its own image tower. Non-finite
    text features or logits are refused (a NaN softmax would print ``nan%``)."""
    if adapter is None:
        text_features = zeroshot_text_features(backbone, classnames, [template])
        return (lambda features: backbone.logits(features, text_features)), "zeroshot", False
    loaded = load_adapter(adapter)
    prompt_model = model_from_adapter(loaded, backbone, classnames)
    if prompt_model.image_prompted:  # vision prompts: the model runs its own image tower on the images
        text_features = classifier_text_features(prompt_model)
        return (lambda images: checked_logits(prompt_model, images, text_features)), loaded.method, True
    if prompt_model.image_conditioned:
        return (lambda features: checked_logits(prompt_model, features)), loaded.method, False
    text_features = classifier_text_features(prompt_model)
    return (lambda features: backbone.logits(features, text_features)), loaded.method, False


def _trained_classnames(adapter_config: dict) -> list[str]:
    """The classes an adapter was trained on (recorded since train_classnames was added), else []."""
    return list(adapter_config.get("train_classnames") or adapter_config.get("classnames") or [])


@checked
def predict(
    images: Sequence[str],
    *,
    classnames: Sequence[str] | None = None,
    data: str | None = None,
    dataset: str | None = None,
    adapter: str | Path | None = None,
    model: str | None = None,
    pretrained: str | None = None,
    template: str = "a photo of a {}.",
    top_k: int = 5,
    device: str = "auto",
    out: str | Path | None = None,
    backbone: Backbone | None = None,
) -> dict:
    """Top-k classes with probabilities for each image file (zero-shot, or with an adapter)."""
    from .data.images import check_image, load_rgb
    from .data.transforms import test_transform

    keep_other_results(out, "predict", {"images": [str(path) for path in images]})
    if not images:
        raise DipclipError("no images given; pass one or more image files")
    fix = "give image files Pillow can read: PNG, JPEG, ..."  # predict has no split file nor --skip-bad-images
    for path in images:  # before any model is loaded; a FIFO or device would block the decoder forever
        if os.path.lexists(path):
            check_regular_file(path, "image", "give image files")
        check_image(str(path), fix)
    if top_k < 1:
        raise DipclipError(f"--top-k must be >= 1, got {top_k}")
    if classnames is None and dataset is not None:
        classnames = load_data(data, dataset).classnames
    config = load_adapter(adapter).config if adapter is not None else {}
    classnames = classnames or _trained_classnames(config)  # an adapter's own classes by default
    if not classnames:
        raise DipclipError("no class names given; pass --classes a,b,c or --data ROOT --dataset KEY")
    classnames = class_names("the class list", list(classnames))  # a dataset's or adapter's too
    if adapter is not None:
        backbone = backbone or _backbone_for_adapter(config, model, pretrained, device)
    else:
        backbone = backbone or load_backbone(model, pretrained, device=device)
    logits_of, method_name, takes_images = _classifier(adapter, backbone, classnames, template)
    transform = test_transform(backbone.image_size, backbone.mean, backbone.std)
    batch = torch.stack([transform(load_rgb(str(path), fix)) for path in images]).to(backbone.device)
    inputs = batch if takes_images else backbone.encode_images(batch)
    with torch.no_grad():
        logits = require_finite(logits_of(inputs), f"the class scores of {method_name}", SCORES_FIX)
        probabilities = logits.softmax(dim=-1).cpu()
    k = min(top_k, len(classnames))
    predictions = []
    for path, row in zip(images, probabilities, strict=True):
        values, indices = row.topk(k)
        predictions.append({
            "image": str(path),
            "top": [{"class": classnames[i], "probability": round(float(v), 6)}
                    for v, i in zip(values.tolist(), indices.tolist(), strict=True)],
        })
    payload = {"method": method_name, "classnames": classnames, "predictions": predictions}
    if out is not None:
        atomic_write_json(Path(out) / "predictions.json", payload)
    return payload


@checked
def density(
    adapter: str | Path,
    *,
    k: int | None = None,
    energy: bool = False,
    model: str | None = None,
    pretrained: str | None = None,
    device: str = "cpu",
    out: str | Path | None = None,
    backbone: Backbone | None = None,
) -> dict:
    """Information Density of an adapter's merged prompt and of its learned update, for every k.

    An adapter whose class text features overflow is refused like in ``eval``/``predict``/``export``: its
    density would describe a prompt that classifies nothing."""
    keep_other_results(out, "density", {"adapter": str(adapter)})
    loaded = load_adapter(adapter)
    backbone = backbone or _backbone_for_adapter(loaded.config, model, pretrained, device)
    classnames = loaded.config.get("classnames") or ["object"]
    prompt_model = model_from_adapter(loaded, backbone, classnames)
    classifier_text_features(prompt_model)
    context = prompt_model.context
    prompt, update = context.merged(), context.merged() - context.initial
    m = min(prompt.reshape(-1, prompt.shape[-1]).shape)
    ks = [k] if k is not None else list(range(1, m + 1))
    with torch.no_grad():
        per_k = {}
        for value in ks:
            report = density_report(prompt, context.initial, value, energy, source=prompt_model.origin)
            per_k[str(value)] = {"id_prompt": report["id_prompt"], "id_update": report["id_update"]}
        singular = singular_values(prompt)  # finite: density_report refused the prompt otherwise
        update_norm = require_finite(update.double().norm(), f"{prompt_model.origin}: its update's norm",
                                     OVERFLOW_FIX)
    payload = {
        "adapter": str(adapter),
        "method": loaded.method,
        "energy": energy,
        "shape": list(prompt.shape),
        "singular_values": [round(s, 6) for s in singular.tolist()],
        "update_norm": round(float(update_norm), 6),
        "id": per_k,
    }
    if out is not None:
        atomic_write_json(Path(out) / "density.json", payload)
    return payload


@checked
def export(
    adapter: str | Path,
    *,
    classnames: Sequence[str] | None = None,
    data: str | None = None,
    dataset: str | None = None,
    model: str | None = None,
    pretrained: str | None = None,
    device: str = "cpu",
    out: str | Path = "export",
    backbone: Backbone | None = None,
) -> dict:
    """Write the merged prompt and the normalised class text-feature matrix (``classifier.safetensors``).

    The matrix is all a deployment needs: ``logits = logit_scale * normalize(image_features) @ text_features.T``
    (``+ logit_bias`` on SigLIP-style models, which export it).
    """
    from safetensors.torch import save

    keep_other_results(out, "export", {"adapter": str(adapter)})
    loaded = load_adapter(adapter)
    if classnames is None and dataset is not None:
        classnames = load_data(data, dataset).classnames
    classnames = list(classnames or _trained_classnames(loaded.config))
    if not classnames:
        raise DipclipError("no class names given; pass --classes a,b,c or --data ROOT --dataset KEY")
    class_names("the class list", classnames)  # a dataset's or adapter's too
    backbone = backbone or _backbone_for_adapter(loaded.config, model, pretrained, device)
    prompt_model = model_from_adapter(loaded, backbone, classnames)
    if prompt_model.image_conditioned:
        raise DipclipError(f"{loaded.method} prompts change with every image, so there is no fixed classifier to "
                           "export; use `dipclip predict` or the Python API")
    if prompt_model.image_prompted:
        raise DipclipError(f"{loaded.method} also prompts the image tower, so a classifier matrix alone cannot "
                           "reproduce it; use `dipclip predict` or the Python API")
    tensors = {  # the prompt in the asked class order (a class-specific one's rows are matched by name)
        "prompt": prompt_model.context_matrix(merged=True).cpu().contiguous(),
        "text_features": classifier_text_features(prompt_model).cpu().contiguous(),
        "logit_scale": backbone.logit_scale.detach().cpu().reshape(1).float(),
    }
    if backbone.logit_bias is not None:  # SigLIP-style models: logits = scale * cos + bias
        tensors["logit_bias"] = backbone.logit_bias.detach().cpu().reshape(1).float()
    for name, tensor in tensors.items():  # nothing non-finite is ever written
        require_finite(tensor, f"{prompt_model.origin}: its exported {name}", OVERFLOW_FIX)
    out = Path(out)
    atomic_write_bytes(out / "classifier.safetensors", save(tensors, metadata={"method": loaded.method}))
    info = {
        "adapter": str(adapter),
        "method": loaded.method,
        "classnames": classnames,
        "prompt_shape": list(tensors["prompt"].shape),
        "text_features_shape": list(tensors["text_features"].shape),
        "backbone": backbone.describe(),
        "files": ["classifier.safetensors", "classifier.json"],
    }
    atomic_write_json(out / "classifier.json", info)
    return info
