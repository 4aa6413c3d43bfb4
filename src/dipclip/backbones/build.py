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


def build_from_config(model_cfg: dict) -> nn.Module:
    """An ``open_clip.CLIP`` from a config dict, its weights drawn with :data:`RANDOM_INIT_SEED`."""
    import open_clip

    cfg = dict(model_cfg)
    cfg.pop("custom_text", None)
    cfg.pop("preprocess_cfg", None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        try:
            return open_clip.CLIP(**cfg)
        except TypeError as exc:
            raise DipclipError(f"invalid open_clip model config ({exc}); see open_clip's model_configs/*.json") from None
