"""A weights file as ``--pretrained``: an OpenAI checkpoint (TorchScript archive or state dict, the architecture
read from its tensors, so ``--model`` may be omitted), or an open_clip checkpoint for a ``--model`` name or config
JSON. The identity of such a backbone is the file's sha256."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from ..errors import DipclipError
from ..files import read_safetensors
from . import tokenizers
from .build import build_from_config, file_sha256
from .model_configs import config_identity, read_model_config, tokenizer_for_config
from .open_clip_names import check_model_name, named_tokenizer

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


def looks_like_file(pretrained: str) -> bool:
    """True when ``pretrained`` is an existing file; a path-like name that is absent is refused here."""
    if os.path.isfile(os.path.expanduser(pretrained)):
        return True
    if pretrained.lower().endswith(WEIGHT_SUFFIXES) or os.sep in pretrained:
        raise DipclipError(f"weights file not found: {pretrained}; check the path given to --pretrained")
    return False


def is_file(path: str | None) -> bool:
    return bool(path) and os.path.isfile(os.path.expanduser(path))


def load_weights_file(model: str | None, pretrained: str, model_cfg: dict | None = None):
    """``(clip_model, tokenizer, identity, name)`` of the weights file ``pretrained`` (for ``model``, a name or a
    config JSON whose content ``model_cfg`` may already hold; absent for an OpenAI checkpoint)."""
    import open_clip
    from open_clip.model import build_model_from_openai_state_dict

    path = str(Path(pretrained).expanduser())
    identity = f"sha256:{file_sha256(path)}"
    config_given = model_cfg is not None or (model is not None and model.endswith(".json"))
    # a config JSON says what the tensors are (an open_clip CLIP's keys look like OpenAI's): only a TorchScript
    # archive overrides it; with a model name, a file with OpenAI's keys is read as OpenAI's, as before
    if model is None or (_is_torchscript(path) if config_given else _is_openai_file(path)):
        state = _read_openai_checkpoint(path, pretrained)
        try:
            clip_model = build_model_from_openai_state_dict(dict(state), quick_gelu=True, cast_dtype=None)
            # open_clip loads through fp16 parameters; reload in fp32 so fp32 checkpoints stay exact.
            clip_model.float().load_state_dict({k: v.float() for k, v in state.items()})
        except (KeyError, RuntimeError, ValueError) as exc:
            raise DipclipError(
                f"{pretrained} is not an OpenAI CLIP checkpoint ({type(exc).__name__}: {str(exc)[:120]}); for an "
                "open_clip checkpoint also pass --model NAME"
            ) from None
        name = model or f"openai:{Path(path).stem}"
        ctx = clip_model.positional_embedding.shape[0]
        return clip_model, tokenizers.clip_bpe(ctx), identity, name
    if model_cfg is not None or model.endswith(".json"):
        model_cfg = model_cfg if model_cfg is not None else read_model_config(model)
        clip_model = build_from_config(model_cfg)
        state = _read_state_dict(path)
        try:
            clip_model.load_state_dict(state)
        except RuntimeError as exc:
            raise DipclipError(f"{pretrained} does not match config {model}: {str(exc).splitlines()[0]}") from None
        tokenizer = tokenizer_for_config(model_cfg)
        # the same weights under another config (pooling, masks, towers) are another model
        identity = f"{identity}/{config_identity(model_cfg)}{tokenizers.identity_part(tokenizer)}"
        return clip_model, tokenizer, identity, Path(model).stem
    check_model_name(model)
    try:
        clip_model = open_clip.create_model(model, pretrained=path, precision="fp32", device="cpu")
    except RuntimeError as exc:
        raise DipclipError(f"cannot load {pretrained} into {model}: {str(exc).splitlines()[0]}") from None
    return clip_model, named_tokenizer(model, None), identity, model


def _read_openai_checkpoint(path: str, shown: str) -> dict:
    """State dict of an OpenAI checkpoint: a TorchScript archive (as `clip.load` downloads) or a plain dict."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
            state = torch.jit.load(path, map_location="cpu").state_dict()
    except RuntimeError:
        state = _read_state_dict(path)
    # Not weights: the causal mask some exports keep as a buffer, and the metadata OpenAI stores as tensors.
    for key in ("attn_mask", "input_resolution", "context_length", "vocab_size"):
        state.pop(key, None)
    if "visual.proj" not in state and "visual.attnpool.positional_embedding" not in state:
        raise DipclipError(f"{shown} is not an OpenAI CLIP checkpoint (no visual.proj or visual.attnpool weights); "
                           "for an open_clip checkpoint also pass --model NAME")
    return dict(state)


def _is_torchscript(path: str) -> bool:
    """TorchScript archives (as `clip.load` downloads them) are zip files with a `code/` folder."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist()[:2000])


def _is_openai_file(path: str) -> bool:
    """A TorchScript archive, or a plain state dict with `visual.proj` or `visual.attnpool` keys at the top level."""
    if _is_torchscript(path):
        return True
    try:
        state = _read_state_dict(path)
    except DipclipError:
        return False
    return "visual.proj" in state or "visual.attnpool.positional_embedding" in state


def _read_state_dict(path: str) -> dict:
    if path.endswith(".safetensors"):
        return read_safetensors(path, "weights file", "check the file given to --pretrained")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise DipclipError(f"cannot read weights file {path} ({type(exc).__name__})") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise DipclipError(f"{path} does not hold a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}
