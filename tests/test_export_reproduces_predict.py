"""`dipclip export` writes everything needed to reproduce `dipclip predict` without dipclip's transforms or
classifier code: the exported preprocessing applied with plain PIL + torch, the backbone's own
``encode_image``, and the exported text features, logit scale (and DePT's head) give predict's probabilities."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cli_run import assert_refused, run
from PIL import Image
from safetensors.torch import load_file

from dipclip import api
from dipclip.adapters import save_adapter
from dipclip.backbones.loading import load_backbone
from dipclip.methods import get_method

CLASSES = ["red apple", "green leaf", "blue sky"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[str]:
    """Odd sizes (portrait, landscape, smaller than the crop), a greyscale, an RGBA and a JPEG image."""
    rng = np.random.default_rng(3)
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for i, (size, mode, suffix) in enumerate([((57, 31), "RGB", "png"), ((23, 45), "RGB", "jpg"),
                                              ((40, 40), "L", "png"), ((50, 37), "RGBA", "png")]):
        channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
        pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
        image = Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode)
        path = folder / f"{i}.{suffix}"
        image.save(path)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_config_path, image_tree, one_thread):
    """1-epoch DIP and DePT adapters on the tiny random CLIP."""
    root = tmp_path_factory.mktemp("export-runs")
    for method in ("dip", "dept"):
        api.train(method, model=str(tiny_config_path), pretrained="none", data=str(image_tree),
                  dataset="imagefolder", shots=2, epochs=1, batch_size=3, progress=False, device="cpu",
                  out=root / method)
    return root


def plain_pixels(path: str, pre: dict) -> torch.Tensor:
    """The exported preprocessing with PIL and torch only (no torchvision, no dipclip)."""
    image = Image.open(path)
    image.load()
    if image.mode in ("RGBA", "LA", "P"):  # composited on white, as classifier.json says
        rgba = image.convert("RGBA")
        image = Image.new("RGB", rgba.size, (255, 255, 255))
        image.paste(rgba, mask=rgba.getchannel("A"))
    image = image.convert("RGB")
    assert pre["resize"]["interpolation"] == "bicubic"
    side, (width, height) = pre["resize"]["shorter_side"], image.size
    short, long = min(width, height), max(width, height)
    size = (side, int(side * long / short)) if width <= height else (int(side * long / short), side)
    image = image.resize(size, Image.BICUBIC)
    (crop_h, crop_w), (width, height) = pre["center_crop"]["size"], image.size
    top, left = int(round((height - crop_h) / 2)), int(round((width - crop_w) / 2))
    image = image.crop((left, top, left + crop_w, top + crop_h))
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float() / 255
    mean, std = torch.tensor(pre["mean"]), torch.tensor(pre["std"])
    return (pixels - mean[:, None, None]) / std[:, None, None]


def plain_probabilities(export_dir, photos: list[str], backbone) -> torch.Tensor:
    info = json.loads((export_dir / "classifier.json").read_text())
    tensors = load_file(str(export_dir / "classifier.safetensors"))
    batch = torch.stack([plain_pixels(path, info["preprocess"]) for path in photos])
    with torch.no_grad():
        raw = backbone.model.encode_image(batch, normalize=False).float()
    image = raw / raw.norm(dim=-1, keepdim=True)
    logits = tensors["logit_scale"] * image @ tensors["text_features"].T
    if "logit_bias" in tensors:
        logits = logits + tensors["logit_bias"]
    if "head.weight" in tensors:  # DePT's fused logits, by the exported formula and weights
        head = (raw * tensors["image_transform.scale"] + tensors["image_transform.shift"]) @ tensors["head.weight"].T
        logits = info["logits"]["similarity_weight"] * logits + info["logits"]["head_weight"] * (
            head + tensors["head.bias"])
    return logits.softmax(dim=-1)


def predicted_probabilities(payload: dict, classnames: list[str]) -> torch.Tensor:
    rows = []
    for prediction in payload["predictions"]:
        by_class = {top["class"]: top["probability"] for top in prediction["top"]}
        rows.append([by_class[name] for name in classnames])
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("method", ["dip", "dept"])
def test_exported_classifier_reproduces_predict_without_dipclip_transforms(method, trained, photos, tmp_path,
                                                                           tiny_config_path):
    adapter = trained / method / "adapter"
    info = api.export(adapter, out=tmp_path / "export", device="cpu")
    classnames = info["classnames"]  # the adapter's training classes, in its order
    assert sorted(classnames) == sorted(CLASSES)
    backbone = load_backbone(str(tiny_config_path), "none", device="cpu")  # for the image tower only
    mine = plain_probabilities(tmp_path / "export", photos, backbone)
    payload = api.predict(photos, adapter=adapter, top_k=len(classnames), device="cpu")
    theirs = predicted_probabilities(payload, classnames)
    assert torch.allclose(mine.double(), theirs, atol=1e-5, rtol=0), (mine, theirs)
    tensors = load_file(str(tmp_path / "export" / "classifier.safetensors"))
    assert ("head.weight" in tensors) == (method == "dept")
    if method == "dept":  # the head matters: without it the probabilities are not predict's
        assert "head.weight" in info["logits"]["formula"] and info["logits"]["head_weight"] == 0.7


def test_preprocess_and_scale_are_the_values_used(trained, tmp_path, tiny_backbone):
    info = api.export(trained / "dip" / "adapter", out=tmp_path / "export", backbone=tiny_backbone)
    written = json.loads((tmp_path / "export" / "classifier.json").read_text())
    assert written == json.loads(json.dumps(info))
    pre = written["preprocess"]
    assert pre["image_size"] == tiny_backbone.image_size == 32
    assert pre["resize"]["shorter_side"] == 32 and pre["resize"]["interpolation"] == "bicubic"
    assert pre["center_crop"]["size"] == [32, 32]
    assert pre["mean"] == list(tiny_backbone.mean) and pre["std"] == list(tiny_backbone.std)
    assert "RGB" in pre["convert"]
    assert written["logits"]["formula"] == "logit_scale * normalize(image_features) @ text_features.T"
    tensors = load_file(str(tmp_path / "export" / "classifier.safetensors"))
    used = tiny_backbone.logit_scale.detach().float().reshape(1)  # exp of the stored log-scale
    assert tensors["logit_scale"].dtype == torch.float32 and torch.equal(tensors["logit_scale"], used)
    assert written["logits"]["logit_scale"] == float(used)  # exact: a float32 is a JSON double exactly
    assert "model_config" in written["backbone"]  # the image tower can be rebuilt


def test_shipped_model_exports_its_float16_scale_exactly(tmp_path):
    """dipclip-tiny stores log(100) in float16 (4.60546875), so the scale it classifies with is 100.0299:
    the export carries that number, not a rounded 100."""
    backbone = load_backbone(None, "dipclip-tiny", device="cpu")
    model = get_method("dip").build(backbone, ["shirt", "shoe"], get_method("dip").prompt_config())
    adapter = save_adapter(tmp_path / "adapter", "dip", model)
    info = api.export(adapter, classnames=["shirt", "shoe"], out=tmp_path / "export", backbone=backbone)
    tensors = load_file(str(tmp_path / "export" / "classifier.safetensors"))
    expected = backbone.model.logit_scale.detach().float().exp()
    assert torch.equal(tensors["logit_scale"], expected.reshape(1))
    assert info["logits"]["logit_scale"] == float(expected) == pytest.approx(100.0299, abs=1e-4)
    assert info["preprocess"]["resize"]["shorter_side"] == backbone.image_size


@pytest.mark.parametrize("method, reason", [("cocoop", "change with every image"),
                                            ("maple", "prompts the image tower"),
                                            ("promptsrc", "prompts the image tower")])
def test_image_dependent_methods_are_refused_naming_the_alternatives(method, reason, tmp_path, tiny_config_path,
                                                                     capsys):
    backbone = load_backbone(str(tiny_config_path), "none", device="cpu")
    settings = {"prompt_depth": 1} if method != "cocoop" else {}
    chosen = get_method(method)
    model = chosen.build(backbone, CLASSES, chosen.prompt_config(**settings))
    adapter = save_adapter(tmp_path / "adapter", method, model)
    code, _, err = run(["export", adapter, "--device", "cpu", "--out", tmp_path / "export"], capsys)
    assert_refused(code, err, method, reason, "dipclip.Classifier", "dipclip predict")
    assert not (tmp_path / "export").exists()
