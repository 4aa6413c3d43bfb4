"""The two pieces every way of loading a CLIP shares: hashing a weights file and building an open_clip
model from its config (seeded, so random weights are the same at every load)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from ..errors import DipclipError

# Seed for `--pretrained none`: random weights must be the same at every load, or an adapter trained on
# a random test model could never be evaluated again.
RANDOM_INIT_SEED = 0


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def model_class(model_cfg: dict) -> type:
    """The open_clip class a config builds, chosen as open_clip's factory chooses it: ``CoCa`` with a
    ``multimodal_cfg``, ``CustomTextCLIP`` for ``custom_text`` or a Hugging Face text tower, else ``CLIP``."""
    import open_clip

    if "multimodal_cfg" in model_cfg:
        return open_clip.CoCa
    if model_cfg.get("custom_text") or "hf_model_name" in model_cfg.get("text_cfg", {}):
        return open_clip.CustomTextCLIP
    return open_clip.CLIP


def build_from_config(model_cfg: dict) -> nn.Module:
    """An open_clip model from a config dict, its weights drawn with :data:`RANDOM_INIT_SEED`."""
    cls = model_class(model_cfg)
    if model_cfg.get("text_cfg", {}).get("hf_model_name"):
        try:
            import transformers  # noqa: F401
        except ImportError:
            raise DipclipError(f"this model's text tower is a Hugging Face model ({model_cfg['text_cfg']['hf_model_name']}), "
                               "which needs the transformers package; pip install 'dipclip[hf]'") from None
    cfg = dict(model_cfg)
    cfg.pop("custom_text", None)
    cfg.pop("preprocess_cfg", None)
    text_cfg = dict(cfg.get("text_cfg", {}))
    text_cfg.setdefault("hf_model_pretrained", False)  # never download: weights come from a checkpoint
    cfg["text_cfg"] = text_cfg
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        try:
            return cls(**cfg)
        except TypeError as exc:
            raise DipclipError(f"invalid open_clip model config ({exc}); see open_clip's model_configs/*.json") from None
        except OSError as exc:  # a Hugging Face text tower's config.json neither in a folder nor in the HF cache
            name = text_cfg.get("hf_model_name")
            raise DipclipError(f"the text tower {name!r} is not available offline ({str(exc).splitlines()[0][:120]}); "
                               "download it on a connected machine (huggingface-cli download NAME) or give a folder "
                               "holding its config.json") from None
