"""open_clip model config JSON files as ``--model``: reading one, and a backbone of random weights built from it
(a config with a checkpoint goes through :mod:`dipclip.backbones.weights_files`)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..errors import DipclipError
from ..files import read_json
from . import tokenizers
from .build import build_from_config


def read_model_config(path: str) -> dict:
    """The open_clip model config in a JSON file (a plain config or an ``open_clip_config.json``)."""
    config_path = Path(path).expanduser()
    if not os.path.lexists(config_path):
        raise DipclipError(f"model config not found: {path}; give an open_clip config JSON or a model name")
    raw = read_json(config_path, "model config", "give an open_clip model config JSON (embed_dim, vision_cfg, "
                    "text_cfg)")
    model_cfg = raw.get("model_cfg", raw)  # accept both plain configs and open_clip_config.json files
    if not isinstance(model_cfg, dict) or not {"embed_dim", "vision_cfg", "text_cfg"} <= set(model_cfg) or not all(
            isinstance(model_cfg[key], dict) for key in ("vision_cfg", "text_cfg")):
        raise DipclipError(f"model config {path} needs embed_dim, vision_cfg and text_cfg (open_clip format)")
    return model_cfg


def config_of(model: str | None) -> dict | None:
    """The model config of a config-file ``model`` (already read once, so it is valid), else None."""
    return read_model_config(model) if model is not None and model.endswith(".json") else None


def tokenizer_for_config(model_cfg: dict) -> tokenizers.Tokenizer:
    return tokenizers.for_config(model_cfg)


def load_config_file(path: str, pretrained: str, model_cfg: dict | None = None):
    """``(clip_model, tokenizer, identity, name)`` of a config JSON with ``pretrained="none"`` (random weights);
    ``model_cfg`` is that file's content when an adapter recorded it."""
    model_cfg = model_cfg if model_cfg is not None else read_model_config(path)
    if pretrained != "none":
        raise DipclipError(
            f"--pretrained {pretrained!r} is neither 'none' nor an existing weights file (with a config JSON as "
            "--model, give a checkpoint path or 'none')"
        )
    model = build_from_config(model_cfg)
    tokenizer = tokenizer_for_config(model_cfg)
    identity = f"{config_identity(model_cfg)}/none{tokenizers.identity_part(tokenizer)}"
    return model, tokenizer, identity, Path(path).stem


def config_identity(model_cfg: dict) -> str:
    """``config-sha256:...`` of a model config's content (every field decides the model: pooling, masks...)."""
    canonical = json.dumps(model_cfg, sort_keys=True).encode()
    return f"config-sha256:{hashlib.sha256(canonical).hexdigest()[:16]}"
