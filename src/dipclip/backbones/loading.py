"""Build a frozen CLIP from what users have: an open_clip name + tag, an OpenAI ``.pt`` file,
an open_clip config JSON, a Hugging Face model, or dipclip's own embedded model.

Weights always load in fp32 (bf16 autocast is applied at run time on CUDA), every parameter is frozen,
and a missing download fails in seconds with a message that says what was looked for and where.

This module is the dispatcher (:func:`load_backbone`, :func:`resolve_device`, :func:`require_weights`); each way
weights are found lives in its own module: :mod:`~dipclip.backbones.weights_files` (OpenAI and open_clip
checkpoints), :mod:`~dipclip.backbones.open_clip_names` (names, tags and the offline cache),
:mod:`~dipclip.backbones.model_configs` (config JSONs), :mod:`~dipclip.backbones.hub` and
:mod:`~dipclip.backbones.convert` (Hugging Face), :mod:`~dipclip.backbones.embedded`. The :class:`Backbone` itself
is in :mod:`~dipclip.backbones.backbone`; it and the other names below are importable from here as before.
"""

from __future__ import annotations

import os
import sys

import torch

from ..errors import DipclipError
from . import embedded
from .backbone import Backbone, normalize_image_features, weights_line
from .build import file_sha256
from .model_configs import config_of, load_config_file, read_model_config
from .open_clip_names import load_open_clip_name
from .text_towers import text_tower_for
from .weights_files import WEIGHT_SUFFIXES, is_file, load_weights_file, looks_like_file

__all__ = [
    "WEIGHT_SUFFIXES",
    "Backbone",
    "file_sha256",
    "load_backbone",
    "normalize_image_features",
    "read_model_config",
    "require_weights",
    "resolve_device",
    "weights_line",
]


def resolve_device(device: str | None) -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; an explicit device that is absent is a user error."""
    name = (device or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(name)
    except RuntimeError:
        raise DipclipError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise DipclipError(f"--device {device} asked for CUDA but no CUDA GPU is available; use --device cpu")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise DipclipError(f"--device {device} asked for MPS but it is not available; use --device cpu")
    return resolved


def load_backbone(
    model: str | None = None,
    pretrained: str | None = None,
    device: str | torch.device | None = "cpu",
    cache_dir: str | None = None,
    announce: bool = True,
    model_config: dict | None = None,
) -> Backbone:
    """Build a frozen CLIP.

    - ``model`` an open_clip name (``ViT-B-16``) and ``pretrained`` one of its tags (``openai``);
    - ``pretrained`` a weights file: an OpenAI checkpoint (TorchScript archive or state dict, the
      architecture read from the tensors, so ``model`` may be omitted), or an open_clip checkpoint for
      the given ``model``;
    - ``model`` a path to an open_clip model config JSON (``{"embed_dim", "vision_cfg", "text_cfg"}``);
    - ``pretrained="none"``: random weights (seeded, identical at every load); never the default, because
      a model that silently has random weights gives numbers that look like results;
    - ``pretrained`` the name of an embedded dipclip model (see :mod:`dipclip.backbones.embedded`);
    - ``pretrained="hf-hub:ORG/NAME"``: open_clip's hub form, read offline from the Hugging Face cache
      (``model`` absent or the same string; see :mod:`dipclip.backbones.hub`);
    - ``pretrained`` a Hugging Face ``transformers`` CLIP or SigLIP folder (``config.json`` + weights), with
      ``model`` absent or the same folder, converted exactly to open_clip (:mod:`dipclip.backbones.convert`);
      the backbone then records the weights file inside it as ``pretrained``/``weights_file`` (that file
      works as ``--pretrained`` too), so an adapter rebuilds it.

    ``announce`` prints one ``weights: ...`` line to stderr, so every run says what it runs on.
    ``model_config``: the content of the config JSON ``model`` names (an adapter records it), used instead
    of reading that file, so an adapter evaluates from any folder.
    """
    torch_device = device if isinstance(device, torch.device) else resolve_device(device)
    require_weights(model, pretrained)
    if embedded.is_embedded(pretrained) and model is not None:
        raise DipclipError(f"--pretrained {pretrained} is dipclip's own model with its own architecture; "
                           f"drop --model {model}, or give weights for {model} with --pretrained TAG|FILE")
    hugging_face = _from_hugging_face(model, pretrained, cache_dir)  # hf-hub:ORG/NAME or a transformers folder
    if hugging_face is not None:
        (clip_model, tokenizer, identity, name), model, pretrained = hugging_face
    elif embedded.is_embedded(pretrained):
        clip_model, tokenizer, identity, name = embedded.load_embedded(pretrained)
    elif pretrained != "none" and looks_like_file(pretrained):  # a file called "none" is not weights
        clip_model, tokenizer, identity, name = load_weights_file(model, pretrained, model_config)
    elif model is None:
        raise DipclipError(
            "--model is required unless --pretrained is a weights file; e.g. --model ViT-B-16 --pretrained openai"
        )
    elif model_config is not None or model.endswith(".json"):
        clip_model, tokenizer, identity, name = load_config_file(model, pretrained, model_config)
    else:
        clip_model, tokenizer, identity, name = load_open_clip_name(model, pretrained, cache_dir)

    clip_model = clip_model.float().eval().requires_grad_(False)
    clip_model.to(torch_device)
    visual = clip_model.visual
    size = getattr(visual, "image_size", 224)
    image_size = int(size[0] if isinstance(size, tuple | list) else size)
    mean = tuple(getattr(visual, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073))
    std = tuple(getattr(visual, "image_std", None) or (0.26862954, 0.26130258, 0.27577711))
    text = text_tower_for(clip_model, tokenizer.context_length).to(torch_device)
    backbone = Backbone(
        model=clip_model, text=text, tokenizer=tokenizer, name=name, pretrained=pretrained,
        identity=identity, image_size=image_size, mean=mean, std=std, model_arg=model,
        model_config=model_config if model_config is not None else config_of(model),
        weights_file=(os.path.abspath(os.path.expanduser(pretrained))
                      if pretrained != "none" and not embedded.is_embedded(pretrained) and is_file(pretrained)
                      else None),
        known_tokens=embedded.embedded_vocabulary(pretrained) if embedded.is_embedded(pretrained) else None,
    )
    if announce and os.environ.get("RANK", "0") == "0":
        print(weights_line(backbone), file=sys.stderr, flush=True)
    return backbone


def _from_hugging_face(model: str | None, pretrained: str, cache_dir: str | None):
    """``((clip_model, tokenizer, identity, name), model, pretrained)`` for ``hf-hub:ORG/NAME`` or a transformers
    CLIP/SigLIP folder (or its weights file), else None. A folder comes back as ``model=None`` and ``pretrained``
    the absolute path of its weights file (an adapter records and reloads that)."""
    from . import convert, hub

    if hub.is_hub(pretrained) or hub.is_hub(model):
        return hub.load_hub(model, pretrained, cache_dir), model, pretrained
    weights = convert.transformers_weights(model, pretrained)
    if weights is None:
        return None
    return convert.load_transformers(weights), None, os.path.abspath(weights)


def require_weights(model: str | None, pretrained: str | None) -> None:
    """Refuse a backbone without ``pretrained``: random weights only when asked for with ``"none"``."""
    if pretrained is None:
        raise DipclipError(_missing_weights_message(model))


def _missing_weights_message(model: str | None) -> str:
    if model is not None:
        return (f"--model {model} without --pretrained would run on random weights; give the weights "
                "(--pretrained openai, or a weights file), or pass `--pretrained none` for random weights")
    return ("no backbone given; pass --pretrained dipclip-tiny (the shipped small CLIP), --model ViT-B-16 "
            "--pretrained openai, or --pretrained FILE (an OpenAI .pt or open_clip checkpoint)")
