"""Adapters as PEFT lays them out: ``adapter_config.json`` + ``adapter_model.safetensors``.

Only the learned tensors are stored (a rank-1 DIP context at ViT-B/16 is 516 floats, about 2 KB; CoCoOp adds
its meta-net): never the frozen class-token embeddings, P0 or optimizer state. P0 and the token layout are rebuilt from the backbone
and the recorded config, which is why an adapter refuses a backbone other than the one it was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save

from . import __version__
from .backbones.loading import Backbone
from .engine.reproducibility import atomic_write_bytes, atomic_write_json
from .errors import DipclipError
from .files import read_json, read_safetensors
from .methods import PromptCLIP, PromptConfig, get_method

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
            return PromptConfig(**self.config["prompt"])
        except TypeError as exc:
            raise DipclipError(f"adapter config {self.path / CONFIG_NAME} has an invalid prompt section ({exc}); "
                               "the adapter is damaged or from another dipclip version: train it again") from None


def save_adapter(out_dir: str | Path, method: str, model: PromptCLIP, extra: dict | None = None) -> Path:
    """Write the adapter folder atomically (each file via a temporary name) and return its path."""
    out = Path(out_dir)
    tensors = {name: t.cpu().contiguous() for name, t in model.learnable_state().items()}
    bad = _non_finite(tensors)
    if bad:
        raise DipclipError(f"refusing to write adapter {out}: learned tensor(s) {', '.join(bad)} hold NaN/inf "
                           "(the training diverged); lower --lr and train again")
    config = {
        "format": FORMAT,
        "format_version": 1,
        "dipclip_version": __version__,
        "method": method,
        "prompt": model.prompt_cfg.to_dict(),
        "trainable_params": model.num_trainable(),
        "backbone": model.backbone.describe(),
    }
    if model.prompt_cfg.class_specific or model.has_class_head:
        # class-specific contexts and class heads (DePT) belong to these classes, in this order
        config["classnames"] = model.train_classnames
    config["train_classnames"] = list(model.train_classnames)  # what predict/export use when given no classes
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
        raise DipclipError(f"{path} is not an adapter folder (expected {CONFIG_NAME} and {WEIGHTS_NAME} in it)")
    damaged = "the adapter is damaged: train it again (or restore the folder)"
    config = read_json(config_file, "adapter config", damaged)
    if config.get("format") != FORMAT:
        raise DipclipError(f"{config_file} is not a dipclip adapter config (format {config.get('format')!r})")
    missing = [key for key in ("method", "prompt", "backbone") if not isinstance(config.get(key), dict | str)]
    if missing or not isinstance(config["prompt"], dict) or not isinstance(config["backbone"], dict):
        raise DipclipError(f"adapter config {config_file} lacks or mangles {', '.join(missing) or 'prompt/backbone'}; "
                           f"{damaged}")
    try:
        get_method(str(config["method"]))
    except DipclipError as exc:
        raise DipclipError(f"adapter config {config_file}: {exc}; the adapter is damaged or from a newer dipclip") from None
    tensors = read_safetensors(weights_file, "adapter weights", damaged)
    bad = _non_finite(tensors)
    if bad:
        raise DipclipError(f"{weights_file}: learned tensor(s) {', '.join(bad)} hold NaN/inf, so every "
                           "prediction would be meaningless; train the adapter again with a lower --lr")
    return Adapter(config=config, tensors=tensors, path=folder)


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
    """Rebuild the prompt model on ``backbone`` for ``classnames`` (default: the adapter's own classes)."""
    check_compatible(adapter, backbone)
    trained_on = adapter.config.get("classnames")
    classnames = classnames or trained_on
    if not classnames:
        raise DipclipError("no class names given; pass --classes or --data/--dataset")
    method = get_method(adapter.method)
    # built on the training classes (a class head's shape depends on them), then pointed at the asked ones
    model = method.build(backbone, list(trained_on or classnames), adapter.prompt_config)
    try:
        model.load_learnable_state(adapter.tensors)
    except DipclipError as exc:
        raise DipclipError(f"adapter {adapter.path}: {exc}") from None
    if list(classnames) != model.classnames:
        model.set_classnames(list(classnames))
    model.eval()
    return model
