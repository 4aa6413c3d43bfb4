"""Shared fixtures: a tiny random open_clip CLIP (seconds to build, deterministic weights)."""

from __future__ import annotations

import json
import os
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


def tiny_variant_config(folder: Path, name: str, vision: dict | None = None, text: dict | None = None) -> Path:
    """A config file like :data:`TINY_CONFIG` with some tower settings changed."""
    config = json.loads(json.dumps(TINY_CONFIG))
    config["vision_cfg"] |= vision or {}
    config["text_cfg"] |= text or {}
    path = Path(folder) / f"{name}.json"
    path.write_text(json.dumps(config))
    return path


@pytest.fixture(scope="session")
def tiny_variant():
    """The helper above, as a fixture (test modules cannot import it: tests/data has its own conftest)."""
    return tiny_variant_config


@pytest.fixture(scope="session")
def tiny_backbone(tiny_config_path):
    from dipclip.backbones.loading import load_backbone

    return load_backbone(str(tiny_config_path), "none", device="cpu")


@pytest.fixture(scope="session")
def b16_text_backbone(tmp_path_factory):
    """A tiny image tower with ViT-B/16's text width (512) and embedding size: where parameter counts and
    adapter sizes are asserted at the published widths."""
    from dipclip.backbones.loading import load_backbone

    config = {
        "embed_dim": 512,
        "vision_cfg": TINY_CONFIG["vision_cfg"],
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 1},
    }
    path = tmp_path_factory.mktemp("configs") / "b16-text-widths.json"
    path.write_text(json.dumps(config))
    return load_backbone(str(path), "none", device="cpu")


CLASSES = ("red apple", "green leaf", "blue sky")
COLORS = ((200, 30, 30), (30, 190, 40), (40, 60, 210))


def make_image_tree(root: Path, per_class: dict[str, int], size: int = 24, seed: int = 0) -> Path:
    """``root/<split>/<class>/<i>.png``: colour-coded noisy images, so a tiny model can learn something."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in per_class.items():
        for name, color in zip(CLASSES, COLORS, strict=True):
            folder = root / split / name.replace(" ", "_")
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = np.clip(np.array(color) + rng.normal(0, 40, (size, size, 3)), 0, 255).astype("uint8")
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def image_tree_maker():
    """:func:`make_image_tree` as a fixture (test modules cannot import it: tests/data has its own conftest)."""
    return make_image_tree


@pytest.fixture(scope="session")
def image_tree(tmp_path_factory) -> Path:
    return make_image_tree(tmp_path_factory.mktemp("imagefolder"), {"train": 6, "test": 4})


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory):
    """Module- and session-scoped fixtures run before the per-test cache below: they get their own."""
    previous = os.environ.get("DIPCLIP_CACHE_DIR")
    os.environ["DIPCLIP_CACHE_DIR"] = str(tmp_path_factory.mktemp("session-cache"))
    yield
    if previous is None:
        os.environ.pop("DIPCLIP_CACHE_DIR", None)
    else:
        os.environ["DIPCLIP_CACHE_DIR"] = previous


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Few-shot and feature caches go to a per-test folder, never to the user's home."""
    monkeypatch.setenv("DIPCLIP_CACHE_DIR", str(tmp_path / "dipclip-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def kill_after_first_epoch(monkeypatch):
    """Run ``api.train`` and interrupt it once epoch 1 is checkpointed, as a killed process would leave it."""
    from dipclip import api
    from dipclip.engine.trainer import Trainer

    def run(method: str, out, **kwargs) -> None:
        original = Trainer._format

        def die(record, epochs, seconds):
            if record["epoch"] == 2:
                raise KeyboardInterrupt
            return original(record, epochs, seconds)

        monkeypatch.setattr(Trainer, "_format", staticmethod(die))
        with pytest.raises(KeyboardInterrupt):
            api.train(method, out=out, **kwargs)
        monkeypatch.setattr(Trainer, "_format", staticmethod(original))

    return run


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on a shared machine spinning threads cost 10-100x."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
