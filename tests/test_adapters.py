import json

import pytest
import torch
from safetensors.torch import load_file

from dipclip import api
from dipclip.adapters import CONFIG_NAME, WEIGHTS_NAME, load_adapter, model_from_adapter, save_adapter
from dipclip.backbones.loading import load_backbone
from dipclip.errors import DipclipError
from dipclip.methods import get_method


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_config_path, image_tree):
    out = tmp_path_factory.mktemp("adapter-run")
    api.train("dip", model=str(tiny_config_path), pretrained="none", data=str(image_tree), dataset="imagefolder", shots=4, epochs=2,
              batch_size=4, progress=False, out=out)
    return out


def test_adapter_holds_only_the_learned_tensors(trained):
    tensors = load_file(str(trained / "adapter" / WEIGHTS_NAME))
    assert set(tensors) == {"context.A", "context.B"}
    assert tensors["context.A"].shape == (4, 1) and tensors["context.B"].shape == (1, 64)
    config = json.loads((trained / "adapter" / CONFIG_NAME).read_text())
    assert config["method"] == "dip" and config["prompt"]["rank"] == 1
    assert config["backbone"]["text_width"] == 64 and config["backbone"]["identity"].endswith("/none")
    assert config["dipclip_version"] and config["trainable_params"] == 68


def test_round_trip_gives_the_trained_classifier(trained, tiny_backbone, image_tree):
    adapter = load_adapter(trained / "adapter")
    classes = ["blue sky", "green leaf", "red apple"]
    model = model_from_adapter(adapter, tiny_backbone, classes)
    checkpoint = torch.load(trained / "checkpoint.pt", weights_only=True)
    assert torch.equal(model.context.A.detach(), checkpoint["learned"]["context.A"])
    metrics = json.loads((trained / "metrics.json").read_text())
    again = api.evaluate(trained / "adapter", data=str(image_tree), dataset="imagefolder")
    assert again["results"]["test"] == metrics["results"]["test"]


def test_vit_b16_width_dip_adapter_is_under_8kb(tmp_path, b16_text_backbone):
    dip = get_method("dip")
    model = dip.build(b16_text_backbone, ["cat", "dog"], dip.prompt_config())
    folder = save_adapter(tmp_path / "adapter", "dip", model)
    size = sum(f.stat().st_size for f in folder.iterdir())
    assert model.num_trainable() == 516
    assert size < 8 * 1024, size


def test_incompatible_backbone_is_refused_naming_both(trained, tmp_path):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16, "head_width": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 1},
    }))
    backbone = load_backbone(str(other), "none")
    with pytest.raises(DipclipError) as info:
        model_from_adapter(load_adapter(trained / "adapter"), backbone, ["a", "b"])
    message = str(info.value)
    assert "tiny-clip" in message and "other" in message and "text width 64" in message and "128" in message


def test_export_writes_the_merged_prompt_and_normalised_features(trained, tmp_path, tiny_backbone):
    info = api.export(trained / "adapter", classnames=["cat", "dog", "bird"], out=tmp_path / "export")
    tensors = load_file(str(tmp_path / "export" / "classifier.safetensors"))
    assert tensors["prompt"].shape == (4, 64) and tensors["text_features"].shape == (3, 32)
    assert torch.allclose(tensors["text_features"].norm(dim=-1), torch.ones(3), atol=1e-5)
    model = model_from_adapter(load_adapter(trained / "adapter"), tiny_backbone, ["cat", "dog", "bird"])
    assert torch.allclose(tensors["text_features"], model.text_features(merged=True), atol=1e-6)
    assert info["classnames"] == ["cat", "dog", "bird"]


def test_density_of_an_adapter(trained):
    payload = api.density(trained / "adapter")
    assert set(payload["id"]) == {"1", "2", "3", "4"}
    assert payload["id"]["4"]["id_prompt"] == pytest.approx(1.0)
    # DIP's default residual-svd init: the update A @ B - A0 @ B0 has rank <= 2 (rank 1 with zero-delta)
    assert payload["id"]["2"]["id_update"] == pytest.approx(1.0, abs=1e-5)
    assert payload["singular_values"] == sorted(payload["singular_values"], reverse=True)


def test_not_an_adapter(tmp_path):
    with pytest.raises(DipclipError, match="is not an adapter folder"):
        load_adapter(tmp_path)
