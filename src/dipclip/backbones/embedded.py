"""dipclip's own small pretrained CLIP, shipped inside the package so the demo runs offline.

Format of an embedded model folder (``src/dipclip/assets/<name>/``):
- ``open_clip_config.json``: ``{"model_cfg": {...open_clip CLIP config...}, "sha256": ..., "provenance": ...}``;
- ``model.safetensors``: the state dict in fp16, except that ``token_embedding.weight`` holds only the rows of
  the token ids listed in the int64 tensor ``token_ids`` (the ids the pretraining captions used). Loading
  scatters those rows back into a full-vocabulary table (other rows zero), so the real CLIP BPE tokenizer
  works unchanged and the outputs equal the unpruned model's for every used token.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import DipclipError
from .build import build_from_config, file_sha256
from .tokenizers import clip_bpe

EMBEDDED_MODELS = {"dipclip-tiny": "dipclip-tiny"}


def assets_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "assets"


def is_embedded(name: str) -> bool:
    return name in EMBEDDED_MODELS


def embedded_path(name: str) -> Path:
    return assets_dir() / EMBEDDED_MODELS[name]


def embedded_vocabulary(name: str) -> frozenset[int]:
    """The token ids an embedded model knows (the rows its pruned token embedding kept); others embed as zero."""
    from safetensors import safe_open

    with safe_open(str(embedded_path(name) / "model.safetensors"), "pt") as handle:
        return frozenset(handle.get_tensor("token_ids").tolist())


def load_embedded(name: str):
    """(open_clip model, tokenizer, identity, name) for an embedded model."""
    from safetensors.torch import load_file

    folder = embedded_path(name)
    config_file, weights_file = folder / "open_clip_config.json", folder / "model.safetensors"
    if not config_file.is_file() or not weights_file.is_file():
        raise DipclipError(
            f"embedded model {name!r} is not installed (looked for {config_file} and {weights_file}); "
            "reinstall dipclip or build it with `dipclip pretrain`"
        )
    meta = json.loads(config_file.read_text())
    model_cfg = meta["model_cfg"]
    model = build_from_config(model_cfg)
    state = load_file(str(weights_file))
    token_ids = state.pop("token_ids").long()
    rows = state.pop("token_embedding.weight")
    full = torch.zeros_like(model.token_embedding.weight)
    full[token_ids] = rows.to(full.dtype)
    state["token_embedding.weight"] = full
    model.load_state_dict({k: v.float() for k, v in state.items()})
    tokenizer = clip_bpe(model_cfg["text_cfg"].get("context_length", 77))
    return model, tokenizer, f"{name}/sha256:{file_sha256(weights_file)[:16]}", name
