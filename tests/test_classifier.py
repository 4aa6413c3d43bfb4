"""``dipclip.Classifier``: loaded once, and the same numbers as ``api.predict`` and the plain feature path."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

import dipclip
from dipclip import api
from dipclip.errors import DipclipError

CLASSES = ["red apple", "green leaf", "blue sky"]


@pytest.fixture(scope="module")
def images(image_tree) -> list[str]:
    return sorted(str(path) for path in (image_tree / "test").rglob("*.png"))


@pytest.fixture(scope="module")
def zero_shot(tiny_config_path):
    return dipclip.Classifier.from_classnames(CLASSES, model=str(tiny_config_path), pretrained="none",
                                              device="cpu")


def _as_predicted(ranked):
    return [[{"class": name, "probability": round(value, 6)} for name, value in top] for top in ranked]


def test_zero_shot_equals_predict_and_the_plain_feature_path(zero_shot, images, tiny_config_path):
    from dipclip.data.images import load_rgb
    from dipclip.methods.zeroshot import zeroshot_text_features

    payload = api.predict(images, classnames=CLASSES, model=str(tiny_config_path), pretrained="none", top_k=2,
                          device="cpu", progress=False)
    assert _as_predicted(zero_shot.classify(images, top_k=2)) == [item["top"] for item in payload["predictions"]]
    backbone = zero_shot.backbone
    batch = torch.stack([zero_shot.transform(load_rgb(path)) for path in images])
    text = zeroshot_text_features(backbone, CLASSES, ["a photo of a {}."])
    expected = backbone.logits(backbone.encode_images(batch), text)
    assert torch.equal(zero_shot.text_features, text) and zero_shot.text_features.shape == (3, 32)
    assert torch.equal(zero_shot.logits(images), expected)
    assert torch.equal(zero_shot.logits([load_rgb(path) for path in images]), expected)  # PIL images
    assert torch.equal(zero_shot.logits(batch), expected)  # a preprocessed tensor
    assert zero_shot.classnames == CLASSES and zero_shot.method == "zeroshot"


def test_the_backbone_is_loaded_once_for_many_calls(tiny_config_path, images, monkeypatch):
    from dipclip.backbones import loading

    calls = []
    real = loading.load_backbone
    monkeypatch.setattr(loading, "load_backbone", lambda *a, **k: calls.append(a) or real(*a, **k))
    classifier = dipclip.Classifier.from_classnames(CLASSES, model=str(tiny_config_path), pretrained="none",
                                                    device="cpu")
    first = classifier.classify(images[:3])
    for _ in range(3):
        assert classifier.classify(images[:3]) == first
        classifier.logits(images[3:5])
    assert len(calls) == 1


def test_bad_input_is_one_line(zero_shot):
    with pytest.raises(DipclipError, match=r"must be \[N, 3, H, W\]"):
        zero_shot.logits(torch.zeros(3, 32, 32))
    with pytest.raises(DipclipError, match="top_k must be a whole number >= 1"):
        zero_shot.classify([Image.new("RGB", (8, 8))], top_k=0)


@pytest.fixture(scope="module", params=["dip", "cocoop", "maple", "dept"])
def adapter(request, tmp_path_factory, tiny_config_path, image_tree):
    out = tmp_path_factory.mktemp(f"classifier-{request.param}")
    api.train(request.param, model=str(tiny_config_path), pretrained="none", data=str(image_tree),
              dataset="imagefolder", shots=2, epochs=1, batch_size=3, progress=False, device="cpu", out=out,
              feature_cache=False)
    return out / "adapter"


def test_a_trained_adapter_equals_predict(adapter, images, monkeypatch):
    from dipclip.backbones import loading

    calls = []
    real = loading.load_backbone
    monkeypatch.setattr(loading, "load_backbone", lambda *a, **k: calls.append(a) or real(*a, **k))
    classifier = dipclip.Classifier.from_adapter(adapter, device="cpu")
    ranked = classifier.classify(images, top_k=3)
    assert len(calls) == 1
    payload = api.predict(images, adapter=str(adapter), top_k=3, device="cpu", progress=False)
    assert payload["method"] == classifier.method and payload["classnames"] == classifier.classnames
    assert _as_predicted(ranked) == [item["top"] for item in payload["predictions"]]
    logits = classifier.logits(images)
    assert logits.shape == (len(images), 3)
    assert torch.equal(logits.softmax(-1), classifier.probabilities(images))
    if classifier.method == "dip":  # the plain path: merged prompt's text features once, stored-feature logits
        from dipclip.adapters import load_adapter, model_from_adapter
        from dipclip.engine.evaluate import classifier_text_features

        backbone = classifier.backbone
        text = classifier_text_features(model_from_adapter(load_adapter(adapter), backbone, classifier.classnames))
        batch = torch.stack([classifier.transform(Image.open(path).convert("RGB")) for path in images])
        assert torch.equal(classifier.text_features, text)
        assert torch.equal(logits, backbone.logits(backbone.encode_images(batch), text))
    if classifier.method == "cocoop":
        with pytest.raises(DipclipError, match="change with every image"):
            classifier.text_features  # noqa: B018
