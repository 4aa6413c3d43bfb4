"""Hugging Face ``transformers`` CLIP and SigLIP folders, converted exactly into the equivalent open_clip model.

A folder as ``CLIPModel.save_pretrained`` / ``SiglipModel.save_pretrained`` writes it (or a snapshot folder of the
Hugging Face cache, e.g. ``openai/clip-vit-base-patch16``): ``config.json`` (``model_type`` ``clip`` or ``siglip``)
and ``model.safetensors`` or ``pytorch_model.bin``, optionally ``preprocessor_config.json`` (mean/std) and, for
SigLIP, the tokenizer files.

- CLIP becomes open_clip's own ``CLIP`` (ViT image tower, causal text transformer pooled at the end-of-text token),
  with QuickGELU when the folder says ``quick_gelu``; the tokenizer is CLIP's BPE at the folder's context length.
- SigLIP becomes a ``CustomTextCLIP`` shaped as open_clip's ``ViT-B-16-SigLIP.json``: a timm SigLIP ViT with a
  MAP (attention-pooling) head and no projection, and a non-causal text transformer pooled at the last token with
  a biased projection; the tokenizer is the folder's own (``clean="canonicalize"``, as open_clip's SigLIP configs).
  The timm image tower is registered under a name that spells out its shape (any size works), and uses the
  folder's own activation (``gelu_pytorch_tanh``: timm's ``gelu_tanh``), so the features equal transformers' own.
- SigLIP2 (``siglip2``) folders hold NaFlex (variable resolution) image towers: refused in one line.

Every tensor of the folder is mapped (q/k/v concatenated, Linear projections transposed into open_clip's
Parameter projections, ...) and loaded with ``strict=True``: a key left over on either side is refused, named.

The parts: :mod:`.folders` (recognising a folder, its preprocessing and tokenizer files), :mod:`.config_fields`
(the config fields both families read), :mod:`.state_dicts` (reading weights, the shared tensor mapping, the strict
load), :mod:`.clip` and :mod:`.siglip` (each family's config and mapping); :func:`load_transformers` puts them
together.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ...errors import DipclipError
from ...files import check_regular_file, read_json
from ..build import build_from_config, file_sha256
from .clip import CLIP_MEAN, CLIP_STD, CLIP_VOCAB_SIZE, clip_config, map_clip
from .config_fields import config_number
from .folders import (
    CONFIG_NAME,
    FIX,
    PREPROCESSOR_NAME,
    TOKENIZER_FILES,
    WEIGHT_NAMES,
    check_tokenizer_files,
    display_name,
    expand,
    is_transformers_weights_file,
    read_preprocessing,
    transformers_weights,
    weights_in,
)
from .siglip import SIGLIP_MEAN, SIGLIP_STD, ensure_registered, map_siglip, register_siglip_vit, siglip_config
from .state_dicts import load_strict, read_weights

SUPPORTED_TYPES = ("clip", "siglip")
_check_tokenizer_files = check_tokenizer_files  # the name hub.py calls it by

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "CLIP_VOCAB_SIZE",
    "CONFIG_NAME",
    "PREPROCESSOR_NAME",
    "SIGLIP_MEAN",
    "SIGLIP_STD",
    "SUPPORTED_TYPES",
    "TOKENIZER_FILES",
    "WEIGHT_NAMES",
    "check_tokenizer_files",
    "clip_config",
    "ensure_registered",
    "is_transformers_weights_file",
    "load_strict",
    "load_transformers",
    "read_weights",
    "register_siglip_vit",
    "siglip_config",
    "transformers_weights",
    "weights_in",
]


def load_transformers(weights: str | Path):
    """``(clip_model, tokenizer, identity, name)`` of the transformers folder holding ``weights``.

    ``identity`` is by content: the sha256 of the weights file, then that of the converted open_clip config
    together with the preprocessing and the tokenizer's form (``config.json`` metadata such as the transformers
    version does not change it)."""
    from .. import tokenizers

    weights = expand(str(weights))
    folder = weights.parent
    config_path = folder / CONFIG_NAME
    raw = read_json(config_path, "transformers config", FIX)
    kind = raw.get("model_type")
    if kind == "siglip2":
        raise DipclipError(f"{config_path}: SigLIP2 folders (model_type siglip2) hold a NaFlex variable-resolution "
                           "image tower, which dipclip does not convert; use open_clip's SigLIP2 (e.g. --pretrained "
                           "hf-hub:timm/ViT-B-16-SigLIP2)")
    if kind not in SUPPORTED_TYPES:
        raise DipclipError(f"{config_path}: model_type {kind!r} is not a CLIP or SigLIP model (dipclip converts "
                           f"transformers folders of model_type {' or '.join(SUPPORTED_TYPES)}); give such a folder, "
                           "an open_clip checkpoint, or an open_clip name with --model")
    shown = f"transformers {kind} folder {folder}"
    check_regular_file(weights, "weights file", FIX)  # before hashing: a FIFO would block
    if kind == "clip":
        model_cfg = clip_config(raw, str(config_path))
        mean, std = read_preprocessing(folder, (CLIP_MEAN, CLIP_STD))
    else:
        model_cfg = siglip_config(raw, str(config_path))
        mean, std = read_preprocessing(folder, (SIGLIP_MEAN, SIGLIP_STD))
    state = read_weights(weights, FIX)
    if kind == "clip":
        mapped = map_clip(state, model_cfg, shown)
    else:
        layers = config_number(raw["vision_config"], "num_hidden_layers", shown)
        mapped = map_siglip(state, model_cfg, shown, layers)
    clip_model = build_from_config(model_cfg)
    load_strict(clip_model, mapped, shown)
    clip_model.visual.image_mean, clip_model.visual.image_std = mean, std
    context = model_cfg["text_cfg"]["context_length"]
    if kind == "clip":
        tokenizer = tokenizers.clip_bpe(context)
        tokenizer_form = {"kind": "clip-bpe", "context_length": context}
    else:
        check_tokenizer_files(folder)
        tokenizer = tokenizers.hugging_face(str(folder), context, clean="canonicalize")
        tokenizer_form = {"kind": "hf", "context_length": context,
                          "files": tokenizer.files_sha256 or {}}
    described = json.dumps({"model_cfg": model_cfg, "mean": mean, "std": std, "tokenizer": tokenizer_form},
                           sort_keys=True).encode()
    identity = f"sha256:{file_sha256(weights)}/config-sha256:{hashlib.sha256(described).hexdigest()[:16]}"
    return clip_model, tokenizer, identity, display_name(folder)
