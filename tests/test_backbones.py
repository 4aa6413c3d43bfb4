import json
import time

import open_clip
import pytest
import torch

from dipclip.backbones.loading import load_backbone
from dipclip.errors import DipclipError

OPENAI_STYLE = dict(
    embed_dim=32,
    vision_cfg=dict(image_size=32, layers=1, width=64, patch_size=16),
    text_cfg=dict(context_length=77, width=64, heads=1, layers=1),
)


def openai_style_model() -> torch.nn.Module:
    torch.manual_seed(3)
    return open_clip.CLIP(**OPENAI_STYLE, quick_gelu=True).eval()


def test_config_json_random_weights_are_deterministic(tiny_config_path):
    a = load_backbone(str(tiny_config_path), "none")
    b = load_backbone(str(tiny_config_path), "none")
    for (name, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    assert a.identity == b.identity and a.identity.endswith("/none")
    assert a.text.width == 64 and a.text.output_dim == 32 and a.image_size == 32
    assert not any(p.requires_grad for p in a.model.parameters())


def test_text_tower_equals_encode_text(tiny_backbone):
    ids = tiny_backbone.tokenize(["a photo of a cat.", "itap of a golden retriever."])
    ours = tiny_backbone.text.encode_token_ids(ids)
    reference = tiny_backbone.model.encode_text(ids)
    assert (ours - reference).abs().max() <= 1e-6


def test_openai_state_dict_file_without_model_name(tmp_path):
    source = openai_style_model()
    path = tmp_path / "ViT-tiny.pt"
    state = dict(source.state_dict())
    state["input_resolution"] = torch.tensor(32)  # OpenAI files carry these metadata tensors
    torch.save(state, path)
    backbone = load_backbone(None, str(path))
    ids = open_clip.tokenize(["a photo of a dog."])
    assert (backbone.model.encode_text(ids) - source.encode_text(ids)).abs().max() <= 1e-6
    # QuickGELU is what OpenAI weights were trained with; plain GELU would differ.
    assert backbone.model.transformer.resblocks[0].mlp.gelu.__class__.__name__ == "QuickGELU"
    assert backbone.identity.startswith("sha256:")


def test_openai_torchscript_archive(tmp_path):
    source = openai_style_model()
    traced = torch.jit.trace(source, (torch.randn(1, 3, 32, 32), open_clip.tokenize(["x"])), strict=False,
                             check_trace=False)
    path = tmp_path / "ViT-tiny-jit.pt"
    traced.save(str(path))
    backbone = load_backbone(None, str(path))
    images = torch.randn(2, 3, 32, 32)
    expected = torch.nn.functional.normalize(source.encode_image(images), dim=-1)
    assert (backbone.encode_images(images) - expected).abs().max() <= 1e-5


def test_open_clip_checkpoint_for_config(tmp_path, tiny_config_path):
    source = load_backbone(str(tiny_config_path), "none")
    weights = tmp_path / "tiny.pt"
    with torch.no_grad():
        source.model.logit_scale.fill_(2.0)
    torch.save(source.model.state_dict(), weights)
    loaded = load_backbone(str(tiny_config_path), str(weights))
    assert float(loaded.model.logit_scale) == 2.0
    assert loaded.identity.startswith("sha256:")


def test_open_clip_name_random_and_bad_names():
    with pytest.raises(DipclipError, match="unknown open_clip model 'ViT-Q-99'"):
        load_backbone("ViT-Q-99", "none")
    with pytest.raises(DipclipError, match="unknown pretrained tag 'nope' for RN50.*openai"):
        load_backbone("RN50", "nope")


def test_missing_weights_offline_fail_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    began = time.perf_counter()
    with pytest.raises(DipclipError) as info:
        load_backbone("ViT-B-16", "openai", cache_dir=str(tmp_path))
    message = str(info.value)
    assert time.perf_counter() - began < 10
    assert "not available offline" in message and "timm/vit_base_patch16_clip_224.openai" in message
    assert str(tmp_path) in message and "\n" not in message


def test_bad_paths_and_configs(tmp_path, tiny_config_path):
    with pytest.raises(DipclipError, match="weights file not found: /nonexistent/ViT-B-16.pt"):
        load_backbone(None, "/nonexistent/ViT-B-16.pt")
    with pytest.raises(DipclipError, match="model config not found"):
        load_backbone(str(tmp_path / "missing.json"), "none")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(DipclipError, match="not valid JSON"):
        load_backbone(str(broken), "none")
    incomplete = tmp_path / "incomplete.json"
    incomplete.write_text(json.dumps({"embed_dim": 8}))
    with pytest.raises(DipclipError, match="needs embed_dim, vision_cfg and text_cfg"):
        load_backbone(str(incomplete), "none")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(DipclipError, match="garbage.pt"):
        load_backbone(None, str(garbage))
    with pytest.raises(DipclipError, match="unknown device"):
        load_backbone(str(tiny_config_path), "none", device="tpu9")


def _full_image_features(backbone, images):
    with torch.no_grad():
        return torch.nn.functional.normalize(backbone.model.encode_image(images).float(), dim=-1)


def test_class_token_shortcut_equals_open_clip_encode_image(tmp_path, tiny_variant):
    backbone = load_backbone(str(tiny_variant(tmp_path, "three-layer", {"layers": 3})), "none")
    assert backbone.vision is not None and backbone.vision.class_token_shortcut
    images = torch.randn(5, 3, 32, 32)
    ours, full = backbone.encode_images(images), _full_image_features(backbone, images)
    assert (ours - full).abs().max() <= 1e-5
    backbone.vision.class_token_shortcut = False  # the same tower run in full gives the same features
    assert (backbone.encode_images(images) - full).abs().max() <= 1e-5


@pytest.mark.parametrize("vision_cfg", [{"pool_type": "avg"}, {"layers": [1, 1, 1, 1], "width": 16}],
                         ids=["average-pooled-vit", "resnet"])
def test_towers_without_a_class_token_run_open_clips_encode_image(tmp_path, tiny_variant, vision_cfg):
    backbone = load_backbone(str(tiny_variant(tmp_path, "other-tower", vision_cfg)), "none")
    assert backbone.vision is None
    images = torch.randn(3, 3, 32, 32)
    assert torch.equal(backbone.encode_images(images), _full_image_features(backbone, images))
