"""Adapters as PEFT lays them out: ``adapter_config.json`` + ``adapter_model.safetensors``.

Only the learned tensors are stored (a rank-1 DIP context at ViT-B/16 is 516 floats, about 2 KB; CoCoOp adds
its meta-net): never the frozen class-token embeddings, P0 or optimizer state. P0 and the token layout are rebuilt from the backbone
and the recorded config, which is why an adapter refuses a backbone other than the one it was trained on.

The config also records ``frozen_sha256``, digests of the frozen tensors rebuilt from it (see
:meth:`~dipclip.methods.base.PromptCLIP.frozen_digests`): an edited ``init_text`` or ``dip_init`` would
otherwise turn the same learned tensors into another classifier. Adapters saved before the digests existed
load without that check. A class-specific context (and DePT's head) is matched to classes by name, so the
same classes in another order give the same predictions.
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from safetensors.torch import save

from . import __version__
from .backbones.loading import Backbone
from .engine.reproducibility import atomic_write_bytes, atomic_write_json
from .errors import DipclipError
from .files import read_json, read_safetensors
from .methods import PromptCLIP, PromptConfig
from .probes import FeatureHead, get_any_method, is_feature_method

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
FORMAT = "dipclip-adapter"


@dataclass
class Adapter:
    config: dict
    tensors: dict[str, torch.Tensor]
    path: Path

    @property
    def method(self) -> str:
        return self.config["method"]

    @property
    def prompt_config(self) -> PromptConfig:
        try:
            return PromptConfig(**self.config["prompt"]).validate()
        except TypeError as exc:
            raise DipclipError(f"adapter config {self.path / CONFIG_NAME} has an invalid prompt section ({exc}); "
                               "the adapter is damaged or from another dipclip version: train it again") from None
        except DipclipError as exc:
            raise DipclipError(f"adapter config {self.path / CONFIG_NAME}: {exc}; the adapter is damaged or from "
                               "another dipclip version: train it again") from None


def save_adapter(out_dir: str | Path, method: str, model: PromptCLIP | FeatureHead, extra: dict | None = None) -> Path:
    """Write the adapter folder atomically (each file via a temporary name) and return its path.

    A feature-space head (:mod:`dipclip.probes`) stores its settings under ``head`` and, beside what it learned,
    what it computed (a cache's few-shot features and labels, class statistics)."""
    out = Path(out_dir)
    head = isinstance(model, FeatureHead)
    state = (model.learnable_state() | model.stored_state()) if head else model.learnable_state()
    tensors = {name: t.cpu().contiguous() for name, t in state.items()}
    bad = _non_finite(tensors)
    if bad:
        raise DipclipError(f"refusing to write adapter {out}: tensor(s) {', '.join(bad)} hold NaN/inf "
                           "(the training diverged); lower --lr and train again")
    config = {
        "format": FORMAT,
        "format_version": 1,
        "dipclip_version": __version__,
        "method": method,
        **({"head": {k: v for k, v in model.settings.items() if not isinstance(v, torch.Tensor)}} if head
           else {"prompt": model.prompt_cfg.to_dict()}),
        "trainable_params": model.num_trainable(),
        "backbone": model.backbone.describe(),
    }
    if head or model.prompt_cfg.class_specific or model.has_class_head:
        # class-specific contexts and class heads (DePT, the feature methods) belong to these classes, in this order
        config["classnames"] = list(model.train_classnames)
    config["train_classnames"] = list(model.train_classnames)  # what predict/export use when given no classes
    config["frozen_sha256"] = model.frozen_digests()  # an edited config must not rebuild other frozen tensors
    config.update(extra or {})
    atomic_write_bytes(out / WEIGHTS_NAME, save(tensors, metadata={"format": FORMAT, "method": method}))
    atomic_write_json(out / CONFIG_NAME, config)
    return out


def load_adapter(path: str | Path) -> Adapter:
    folder = Path(path)
    if folder.is_file() and folder.name in (CONFIG_NAME, WEIGHTS_NAME):
        folder = folder.parent
    config_file, weights_file = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not config_file.is_file() or not weights_file.is_file():
        if (folder / "adapter" / CONFIG_NAME).is_file():  # the --out of `dipclip train`, not its adapter
            raise DipclipError(f"{path} is a run folder, not an adapter folder; give its adapter: {folder / 'adapter'}")
        raise DipclipError(f"{path} is not an adapter folder (expected {CONFIG_NAME} and {WEIGHTS_NAME} in it)")
    damaged = "the adapter is damaged: train it again (or restore the folder)"
    config = read_json(config_file, "adapter config", damaged)
    if config.get("format") != FORMAT:
        raise DipclipError(f"{config_file} is not a dipclip adapter config (format {config.get('format')!r})")
    section = "head" if isinstance(config.get("method"), str) and is_feature_method(config["method"]) else "prompt"
    missing = [key for key in ("method", section, "backbone") if not isinstance(config.get(key), dict | str)]
    if missing or not isinstance(config[section], dict) or not isinstance(config["backbone"], dict):
        raise DipclipError(f"adapter config {config_file} lacks or mangles {', '.join(missing) or section + '/backbone'}; "
                           f"{damaged}")
    _check_fields(config, config_file)
    try:
        get_any_method(config["method"])
    except DipclipError as exc:
        raise DipclipError(f"adapter config {config_file}: {exc}; the adapter is damaged or from a newer dipclip") from None
    tensors = read_safetensors(weights_file, "adapter weights", damaged)
    bad = _non_finite(tensors)
    if bad:
        raise DipclipError(f"{weights_file}: learned tensor(s) {', '.join(bad)} hold NaN/inf, so every "
                           "prediction would be meaningless; train the adapter again with a lower --lr")
    return Adapter(config=config, tensors=tensors, path=folder)


_WANTED = {int: "a whole number", float: "a number", bool: "true or false", str: "a string",
           type(None): "null", dict: "an object", list: "a list of strings"}
# the backbone fields the loader reads: required ones, then optional ones
_BACKBONE_FIELDS = {"model": str, "identity": str, "text_width": int, "pretrained": str | None}
_OPTIONAL_BACKBONE_FIELDS = {"model_arg": str | None, "weights_file": str | None, "model_config": dict | None}


def _fits(value: object, hint: object) -> bool:
    """Whether a JSON value has the type ``hint`` names (``int`` is no bool, ``float`` takes an int)."""
    for option in typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,):
        if option is type(None) and value is None:
            return True
        if option is bool and isinstance(value, bool):
            return True
        if option in (int, float) and isinstance(value, int if option is int else int | float) \
                and not isinstance(value, bool):
            return True
        if option in (str, dict) and isinstance(value, option):
            return True
        if option is list and isinstance(value, list) and all(isinstance(v, str) for v in value):
            return True
    return False


def _check_fields(config: dict, config_file: Path) -> None:
    """Every field the loader reads has the type it needs, so a mistyped one (``"rank": "one"``) is one line
    naming the file and the field, not a TypeError deep inside the model."""
    def refuse(field: str, value: object, hint: object) -> None:
        options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        shown = json.dumps(value)
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        raise DipclipError(f"adapter config {config_file}: {field} is {shown}, not "
                           f"{' or '.join(_WANTED[o] for o in options)}; the adapter is damaged or from another "
                           "dipclip version: train it again (or restore the file)")

    if not _fits(config["method"], str):
        refuse("method", config["method"], str)
    hints = typing.get_type_hints(PromptConfig)
    for field in fields(PromptConfig) if "prompt" in config else ():
        if field.name in config["prompt"] and not _fits(config["prompt"][field.name], hints[field.name]):
            refuse(f"prompt.{field.name}", config["prompt"][field.name], hints[field.name])
    backbone = config["backbone"]
    for key, hint in (_BACKBONE_FIELDS | _OPTIONAL_BACKBONE_FIELDS).items():
        if key in _BACKBONE_FIELDS and key not in backbone:
            raise DipclipError(f"adapter config {config_file} lacks backbone.{key}; the adapter is damaged or from "
                               "another dipclip version: train it again (or restore the file)")
        if key in backbone and not _fits(backbone[key], hint):
            refuse(f"backbone.{key}", backbone[key], hint)
    for key in ("classnames", "train_classnames"):
        if key in config and not _fits(config[key], list | None):
            refuse(key, config[key], list)
    digests = config.get("frozen_sha256")
    if digests is not None and not (isinstance(digests, dict) and all(isinstance(v, str) for v in digests.values())):
        refuse("frozen_sha256", digests, dict)


def _non_finite(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an infinity."""
    return sorted(name for name, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all()))


def check_compatible(adapter: Adapter, backbone: Backbone) -> None:
    trained = adapter.config["backbone"]
    here = backbone.describe()
    if trained["identity"] != here["identity"] or trained["text_width"] != here["text_width"]:
        raise DipclipError(
            f"adapter {adapter.path} was trained on backbone {trained['model']} ({trained['identity']}, text width "
            f"{trained['text_width']}) but the loaded backbone is {here['model']} ({here['identity']}, text width "
            f"{here['text_width']}); load the adapter's backbone with --model/--pretrained"
        )


def model_from_adapter(adapter: Adapter, backbone: Backbone, classnames: list[str] | None = None) -> PromptCLIP:
    """Rebuild the prompt model on ``backbone`` for ``classnames`` (default: the adapter's own classes).

    Class-specific contexts and DePT's head are matched to ``classnames`` by name (any order, or a subset);
    the frozen tensors rebuilt from the config are checked against the digests recorded at save time."""
    check_compatible(adapter, backbone)
    trained_on = adapter.config.get("classnames")
    classnames = classnames or trained_on or adapter.config.get("train_classnames")
    if not classnames:
        raise DipclipError("no class names given; pass --classes or --data/--dataset")
    method = get_any_method(adapter.method)
    if is_feature_method(adapter.method):
        return _head_from_adapter(adapter, method, backbone, list(trained_on or classnames), list(classnames))
    # built on the training classes (a class head's shape depends on them), then pointed at the asked ones
    model = method.build(backbone, list(trained_on or classnames), adapter.prompt_config)
    model.origin = f"adapter {adapter.path}"
    try:
        model.load_learnable_state(adapter.tensors)
        _check_frozen(adapter, model)  # after loading: a PromptSRC GPA adapter folds its DIP prompts there
        if list(classnames) != model.classnames:
            model.set_classnames(list(classnames))
    except DipclipError as exc:
        raise DipclipError(f"adapter {adapter.path}: {exc}") from None
    model.eval()
    return model


def _head_from_adapter(adapter: Adapter, method, backbone: Backbone, trained_on: list[str],
                       classnames: list[str]) -> FeatureHead:
    """A feature-space head rebuilt from its settings on the training classes, its stored tensors loaded."""
    try:
        head = method.build(backbone, trained_on, method.settings(**adapter.config["head"]))
        head.origin = f"adapter {adapter.path}"
        head.load_learnable_state(adapter.tensors)
        _check_frozen(adapter, head)
        if classnames != head.classnames:
            head.set_classnames(classnames)
    except DipclipError as exc:
        raise DipclipError(f"adapter {adapter.path}: {exc}") from None
    head.eval()
    return head


def _check_frozen(adapter: Adapter, model: PromptCLIP | FeatureHead) -> None:
    """Refuse frozen tensors rebuilt from the config that differ from those the adapter was trained with.
    An adapter saved before digests were recorded has none: it loads unchecked, as it always did."""
    recorded = adapter.config.get("frozen_sha256")
    if recorded is None:
        return
    rebuilt = model.frozen_digests()
    for name in sorted(set(recorded) | set(rebuilt)):
        if recorded.get(name) != rebuilt.get(name):
            what = {"fixed_words": "fixed words before the class name",
                    "layout": "token layout (class_position)"}.get(name, f"P0 of {name}")
            raise DipclipError(f"its frozen {what} rebuilt from {CONFIG_NAME} differs from the one it was trained "
                               "with (the config was edited or the backbone differs); use the adapter as saved")
