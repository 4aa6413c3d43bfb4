"""Shared fixtures: a tiny random open_clip CLIP (seconds to build, deterministic weights)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="session")
def tiny_config_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("configs") / "tiny-clip.json"
    path.write_text(json.dumps(TINY_CONFIG))
    return path


@pytest.fixture(scope="session")
def tiny_backbone(tiny_config_path):
    from dipclip.backbones.loading import load_backbone

    return load_backbone(str(tiny_config_path), "none", device="cpu")
