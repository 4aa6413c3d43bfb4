"""``--pretrained hf-hub:ORG/NAME``: an open_clip model as open_clip publishes it on the Hugging Face hub
(``open_clip_config.json`` + ``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin``), read offline
from the Hugging Face cache (``cache_dir``, else ``HF_HUB_CACHE``/``HF_HOME`` as set now, else the default).

The model is built from the config (:func:`~dipclip.backbones.build.build_from_config`) and its weights loaded
strictly; the tokenizer is the config's, from the snapshot folder when it holds the tokenizer files. A repo that
holds a transformers CLIP/SigLIP instead (``config.json``, e.g. ``openai/clip-vit-base-patch16``) is converted
(:mod:`dipclip.backbones.convert`). Nothing is downloaded: a missing file is one line naming what was looked for,
where, and how to get it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from ..errors import DipclipError
from ..files import check_regular_file, read_json
from . import convert
from .build import build_from_config, file_sha256

PREFIX = "hf-hub:"
CONFIG_NAME = "open_clip_config.json"
WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def is_hub(name: str | None) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


def hub_cache(cache_dir: str | None = None) -> str:
    """The Hugging Face hub cache: ``cache_dir``, else ``HF_HUB_CACHE`` / ``HF_HOME/hub`` read now (not when
    huggingface_hub was imported), else huggingface_hub's default."""
    if cache_dir:
        return os.path.expanduser(cache_dir)
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _cached(repo: str, filename: str, cache: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo, filename, cache_dir=cache)
    except ValueError:  # an invalid repo id
        return None
    return found if isinstance(found, str) and os.path.lexists(found) else None


def load_hub(model: str | None, pretrained: str, cache_dir: str | None = None):
    """``(clip_model, tokenizer, identity, name)`` of ``hf-hub:ORG/NAME`` from the local Hugging Face cache.

    ``identity`` is by content: the sha256 of the weights file and of the config file."""
    from . import tokenizers

    spec = pretrained if is_hub(pretrained) else model
    if model is not None and model != spec:
        raise DipclipError(f"--pretrained {spec} names its own architecture; drop --model {model} (or give the same "
                           f"{spec})")
    if pretrained != spec:
        raise DipclipError(f"--model {spec} takes its weights from the hub repo: pass --pretrained {spec} (and drop "
                           "--model)")
    repo = spec[len(PREFIX):].strip("/")
    if not _REPO.match(repo):
        raise DipclipError(f"{spec} is not a hub repo name; write it hf-hub:ORG/NAME (e.g. "
                           "hf-hub:timm/ViT-B-16-SigLIP)")
    cache = hub_cache(cache_dir)
    config_path = _cached(repo, CONFIG_NAME, cache)
    weights_path = next((found for name in WEIGHT_NAMES if (found := _cached(repo, name, cache))), None)
    if config_path is None and weights_path is None:
        transformers_config = _cached(repo, convert.CONFIG_NAME, cache)
        if transformers_config is not None:  # a transformers CLIP/SigLIP repo, converted
            folder = Path(transformers_config).parent
            clip_model, tokenizer, identity, _ = convert.load_transformers(convert.weights_in(folder))
            return clip_model, tokenizer, identity, spec
    if config_path is None or weights_path is None:
        missing = " and ".join(part for part, found in ((CONFIG_NAME, config_path),
                                                        (" or ".join(WEIGHT_NAMES), weights_path)) if found is None)
        where = os.path.join(cache, f"models--{repo.replace('/', '--')}")
        raise DipclipError(f"{spec} is not available offline: looked for {missing} of {repo} in {where}; download it "
                           f"on a connected machine (huggingface-cli download {repo}) and point HF_HUB_CACHE (or "
                           "--cache-dir) at that cache")
    fix = f"download {repo} again (huggingface-cli download {repo} --force-download)"
    raw = read_json(config_path, "open_clip config", fix)
    model_cfg = raw.get("model_cfg", raw)
    if not isinstance(model_cfg, dict) or not {"embed_dim", "vision_cfg", "text_cfg"} <= set(model_cfg) or not all(
            isinstance(model_cfg[key], dict) for key in ("vision_cfg", "text_cfg")):
        raise DipclipError(f"open_clip config {config_path} needs model_cfg with embed_dim, vision_cfg and text_cfg; "
                           f"{fix}")
    check_regular_file(weights_path, "weights file", fix)  # before hashing or reading: a FIFO would block
    convert.ensure_registered(model_cfg)
    clip_model = build_from_config(model_cfg)
    state = _open_clip_state(clip_model, convert.read_weights(weights_path, fix))
    convert.load_strict(clip_model, state, f"{spec} ({weights_path})")
    preprocess = raw.get("preprocess_cfg", {}) if isinstance(raw.get("preprocess_cfg"), dict) else {}
    for key, attribute in (("mean", "image_mean"), ("std", "image_std")):
        value = preprocess.get(key)
        if isinstance(value, list | tuple) and len(value) == 3:
            setattr(clip_model.visual, attribute, tuple(float(x) for x in value))
    snapshot = Path(config_path).parent
    folder = str(snapshot) if any(os.path.lexists(snapshot / name) for name in convert.TOKENIZER_FILES) else None
    if folder is not None:
        convert._check_tokenizer_files(snapshot)
    tokenizer = tokenizers.for_config(model_cfg, cache_dir=cache_dir, folder=folder)
    config_digest = hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()[:16]
    identity = f"sha256:{file_sha256(weights_path)}/config-sha256:{config_digest}{tokenizers.identity_part(tokenizer)}"
    return clip_model, tokenizer, identity, spec


def _open_clip_state(model, state: dict) -> dict:
    """The renames open_clip's own ``load_checkpoint`` applies to older checkpoints (text keys of a custom-text
    model, scalar vs 1-d logit scale/bias, the stale position_ids buffer); nothing is added or dropped silently."""
    from open_clip.model import convert_to_custom_text_state_dict

    state = {key.removeprefix("module."): value for key, value in state.items()}
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = convert_to_custom_text_state_dict(state)
    for key in ("logit_scale", "logit_bias"):
        target = getattr(model, key, None)
        if key in state and target is not None and state[key].numel() == target.numel():
            state[key] = state[key].reshape(target.shape)
    position_ids = "text.transformer.embeddings.position_ids"
    if position_ids in state and position_ids not in model.state_dict():
        del state[position_ids]
    return state
