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
from .classifier import backbone_for_adapter as _backbone_for_adapter  # one rule for eval, export, predict
from .classifier import trained_classnames as _trained_classnames
from .data.types import DatasetSplits
from .data.validate import check_for_evaluation, check_for_training
from .density import density_report, singular_values
from .engine.distributed import is_main_process
from .engine.evaluate import (
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
    from .probes import is_feature_method

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
    from .probes import is_feature_method

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
                            store=feature_store(feature_cache), classnames=splits.classnames)
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
    output: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Top-k classes with probabilities for each image (zero-shot, or with an adapter), through
    :class:`~dipclip.classifier.Classifier`, so this equals ``Classifier.classify`` by construction.

    ``images`` are files, folders (their image files, recursively, sorted) and globs (``photos/*.jpg``,
    ``**`` for any depth); see :func:`~dipclip.classifier.expand_images`. ``output`` (``.csv`` or ``.json``)
    replaces only an earlier ``predict`` output; ``progress``: a bar on a terminal."""
    from .classifier import IMAGE_FIX, Classifier, check_output, expand_images, write_predictions
    from .data.images import check_image

    if not images:
        raise DipclipError("no images given; pass one or more image files, folders or globs")
    images = expand_images(images)
    keep_other_results(out, "predict", {"images": list(images)})
    check_output(output)
    for path in images:  # before any model is loaded; a FIFO or device would block the decoder forever
        if os.path.lexists(path):
            check_regular_file(path, "image", "give image files")
        check_image(path, IMAGE_FIX)  # predict has no split file nor --skip-bad-images
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
        classifier = Classifier.from_adapter(adapter, classnames=classnames, model=model, pretrained=pretrained,
                                             device=device, backbone=backbone)
    else:
        classifier = Classifier.from_classnames(classnames, model=model, pretrained=pretrained, template=template,
                                                device=device, backbone=backbone)
    ranked = classifier.classify(images, top_k, progress=progress)
    predictions = [{"image": str(path), "top": [{"class": name, "probability": round(value, 6)}
                                                for name, value in top]}
                   for path, top in zip(images, ranked, strict=True)]
    payload = {"method": classifier.method, "classnames": classnames, "predictions": predictions}
    if out is not None:
        atomic_write_json(Path(out) / "predictions.json", payload)
    if output is not None:
        write_predictions(payload, output)
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
    """Write what reproduces ``predict`` without dipclip: ``classifier.safetensors`` (the merged prompt, the
    normalised class text-feature matrix, the logit scale as used, and the logit bias of SigLIP-style models)
    and ``classifier.json`` (class order, the test-time ``preprocess``, the ``logits`` formula, the backbone).

    ``logits = logit_scale * normalize(image_features) @ text_features.T`` (``+ logit_bias``); DePT on its
    training classes (or a subset) also exports its linear head and the fused formula. Methods whose classifier
    depends on the image (CoCoOp) or that prompt the image tower (MaPLe, PromptSRC) are refused.
    """
    from safetensors.torch import save
    from torchvision import transforms as T

    from .data.transforms import test_transform

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
    head = getattr(prompt_model, "has_class_head", False) and getattr(prompt_model, "head_active", False)
    elsewhere = "use `dipclip predict`, or `dipclip.Classifier.from_adapter(path)` in Python"
    if prompt_model.image_conditioned and not head:
        raise DipclipError(f"{loaded.method} prompts change with every image (its meta-net conditions them on the "
                           f"image features), so there is no fixed classifier to export; {elsewhere}")
    if prompt_model.image_prompted and not head:
        raise DipclipError(f"{loaded.method} also prompts the image tower, so its image features are not the "
                           f"backbone's and a text-feature matrix cannot reproduce it; {elsewhere}")
    similarity = "logit_scale * normalize(image_features) @ text_features.T" + (
        " + logit_bias" if backbone.logit_bias is not None else "")
    linear = _feature_linear(loaded.method, prompt_model, elsewhere)
    if linear is not None:  # a feature-space method whose head is one linear map of the features
        tensors = {"weight": linear[0], "bias": linear[1]}
        logits = {"formula": "normalize(image_features) @ weight.T + bias",
                  "image_features": "the backbone's encode_image(pixels) in float32, before normalisation; "
                                    "normalize = divide by its L2 norm"}
    else:
        tensors, logits = _prompt_classifier(prompt_model, backbone, similarity, head)
    for name, tensor in tensors.items():  # nothing non-finite is ever written
        require_finite(tensor, f"{prompt_model.origin}: its exported {name}", OVERFLOW_FIX)
    logits |= {"logit_scale": float(tensors["logit_scale"]) if "logit_scale" in tensors else None,
               "logit_bias": float(tensors["logit_bias"]) if "logit_bias" in tensors else None,
               "probabilities": "softmax(logits, dim=-1), columns in classnames order"}
    steps = {type(step): step for step in test_transform(backbone.image_size, backbone.mean, backbone.std).transforms}
    resize, crop, normalize = steps[T.Resize], steps[T.CenterCrop], steps[T.Normalize]
    preprocess = {  # read off the transform predict and eval apply, so it cannot drift from it
        "image_size": backbone.image_size,
        "convert": "RGB: 8-bit RGB as is; RGBA/LA/P composited on a white background; greyscale repeated to 3 "
                   "channels (Pillow's convert('RGB')); 16/32-bit greyscale first scaled to 8 bits",
        "resize": {"shorter_side": resize.size if isinstance(resize.size, int) else list(resize.size),
                   "interpolation": resize.interpolation.value, "max_size": resize.max_size,
                   "how": "Pillow Image.resize on the RGB image: shorter side to shorter_side, longer side "
                          "int(shorter_side * long / short), resample=Image.BICUBIC when interpolation is bicubic"},
        "center_crop": {"size": list(crop.size),
                        "how": "top = int(round((height - size[0]) / 2)), left = int(round((width - size[1]) / 2))"},
        "to_tensor": "float32 [3, H, W] = uint8 pixels / 255",
        "mean": [float(v) for v in normalize.mean],
        "std": [float(v) for v in normalize.std],
        "normalize": "(pixels - mean[c]) / std[c] per channel c",
    }
    out = Path(out)
    atomic_write_bytes(out / "classifier.safetensors", save(tensors, metadata={"method": loaded.method}))
    info = {
        "adapter": str(adapter),
        "method": loaded.method,
        "classnames": classnames,
        **{f"{name}_shape": list(tensors[name].shape) for name in ("prompt", "text_features", "weight")
           if name in tensors},
        "preprocess": preprocess,
        "logits": logits,
        "backbone": backbone.describe(),
        "files": ["classifier.safetensors", "classifier.json"],
    }
    atomic_write_json(out / "classifier.json", info)
    return info


@torch.no_grad()
def _prompt_classifier(prompt_model, backbone: Backbone, similarity: str, head: bool) -> tuple[dict, dict]:
    """(tensors, logits description) of a prompt model's exported classifier (DePT: with its linear head)."""
    tensors = {  # the prompt in the asked class order (a class-specific one's rows are matched by name)
        "prompt": prompt_model.context_matrix(merged=True).cpu().contiguous(),
        "text_features": classifier_text_features(prompt_model).cpu().contiguous(),
        # the scale exactly as backbone.logits multiplies by it: exp of the stored log-scale, as float32
        "logit_scale": backbone.logit_scale.detach().float().cpu().reshape(1),
    }
    if backbone.logit_bias is not None:  # SigLIP-style models: logits = scale * cos + bias
        tensors["logit_bias"] = backbone.logit_bias.detach().float().cpu().reshape(1)
    logits = {"formula": similarity,
              "image_features": "the backbone's encode_image(pixels) in float32, before normalisation; "
                                "normalize = divide by its L2 norm"}
    if head:  # DePT: fused with its linear head on the raw (unnormalised) image features
        from .methods.dept import HEAD_WEIGHT

        rows = prompt_model.rows
        tensors |= {
            "head.weight": prompt_model.head.weight[rows].detach().float().cpu().contiguous(),
            "head.bias": prompt_model.head.bias[rows].detach().float().cpu().contiguous(),
            "image_transform.scale": prompt_model.image_transform.scale.detach().float().cpu().contiguous(),
            "image_transform.shift": prompt_model.image_transform.shift.detach().float().cpu().contiguous(),
        }
        weights = round(1 - HEAD_WEIGHT, 12), HEAD_WEIGHT  # the same float32 numbers DePT multiplies by
        logits |= {
            "formula": f"{weights[0]:g} * ({similarity}) + {weights[1]:g} * ((image_features * "
                       "image_transform.scale + image_transform.shift) @ head.weight.T + head.bias)",
            "similarity_weight": weights[0],
            "head_weight": weights[1],
        }
    return tensors, logits


def _feature_linear(method: str, model, elsewhere: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(weight [C, D], bias [C]) of a feature-space head that is one linear map of the normalised features; a
    head that is not (a cache, an MLP on raw features, LoRA'd towers) is refused; None for prompt models."""
    from .probes import FeatureHead

    if not isinstance(model, FeatureHead):
        return None
    linear = model.linear_classifier()
    if linear is None:
        raise DipclipError(f"{method}'s classifier is not one linear map of the image features, so a weight matrix "
                           f"cannot reproduce it; {elsewhere}")
    weight, bias = linear
    weight = weight.detach().float().cpu().contiguous()
    bias = (torch.zeros(weight.shape[0]) if bias is None else bias.detach().float().cpu()).contiguous()
    return weight, bias


# ---------------------------------------------------------------------------------------------- feature methods


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
    from .engine.heads import feature_data, fit_head

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
    metrics = {
        "dipclip_version": __version__,
        "method": head_method.name,
        "trainable_params": head.num_trainable(),
        "results": results,
        "history": history,
        "density": None,
        "chosen": chosen,
        "search_split": search_split,
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


def _feature_plan(method: str, *, recipe: str, dataset: str | None, shots: int | None, seed: int, subsample: str,
                  epochs: int | None, batch_size: int | None, method_options: dict | None, optimizer: str | None,
                  lr: float | None, search_split: str, workers: int = 0, skip_bad_images: bool = False,
                  views: str | int = "fresh", feature_cache: bool = True, crop_scale: float | None = None,
                  n_train: int | None = None) -> tuple:
    """(method, recipe, overrides, settings, optim, train) of a feature-space run, resolved without loading a
    model (``n_train``: the training set's size, for methods whose authors count steps, not epochs)."""
    from .engine.heads import SEARCH_SPLITS
    from .probes import get_feature_method
    from .recipes.probes import resolve_probe_recipe

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
        from .data.registry import dataset_info

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
    from .probes import get_feature_method
    from .probes.base import FeatureMethod

    return type(get_feature_method(method)).epochs_for is not FeatureMethod.epochs_for
