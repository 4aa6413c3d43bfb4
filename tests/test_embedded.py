"""The shipped model and demo dataset: present, intact, and as good as PROVENANCE.md says.

Runs offline on CPU in ~15 s; the floors sit ~7 points under what the recipe measured (see
src/dipclip/assets/dipclip-tiny/PROVENANCE.md) and at three times chance or more.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from dipclip.backbones.build import file_sha256
from dipclip.backbones.embedded import embedded_path
from dipclip.backbones.loading import load_backbone
from dipclip.data.images import load_rgb
from dipclip.data.transforms import test_transform as eval_transform

MODEL_DIR = embedded_path("dipclip-tiny")
DEMO_DIR = MODEL_DIR.parent / "demo"
SPLIT_FILE = DEMO_DIR / "split_zhou_Demo.json"
TEMPLATE = "a photo of a {}."
# Measured by the recipe on the demo test split (792 images, 23 classes, chance 4.3%; halves of 12 and 11
# classes, chance 8.3% and 9.1%): 42.7% overall, 56.7% base, 42.5% new with "a photo of a {}." (v4, see
# PROVENANCE.md). The floors sit ~7 points under the overall number and under the weaker half.
FLOOR_ALL = 35.0
FLOOR_HALF = 35.0
FASHION_DIR = MODEL_DIR.parent / "demo_fashion"
# The Fashion-MNIST demo (1000 test images, 10 classes, chance 10%; halves of 5, chance 20%): 35.4% overall,
# 40.6% base, 48.8% new (v4). Floors ~7 under each: the point of this set is that zero-shot is *not* yet
# what 16 shots can reach (a 16-shot probe gets ~60% on base), so they are well above chance, not 3x it.
FASHION_FLOORS = {"all": 28.0, "base": 33.0, "new": 41.0}


def _read_split() -> dict:
    return json.loads(SPLIT_FILE.read_text())


def _classnames(split: dict) -> list[str]:
    names: dict[int, str] = {}
    for rows in split.values():
        for _, label, classname in rows:
            names[label] = classname
    return [names[i] for i in range(len(names))]


@pytest.fixture(scope="module")
def backbone():
    return load_backbone(pretrained="dipclip-tiny", device="cpu")


@pytest.fixture(scope="module")
def test_scores(backbone):
    """Cosine scores [images, classes] of the demo test split, and the labels."""
    split = _read_split()
    classnames = _classnames(split)
    transform = eval_transform(backbone.image_size, backbone.mean, backbone.std)
    rows = split["test"]
    images = torch.stack([transform(load_rgb(str(DEMO_DIR / "images" / rel))) for rel, _, _ in rows])
    image_features = backbone.encode_images(images)
    with torch.no_grad():
        text = backbone.model.encode_text(backbone.tokenize([TEMPLATE.format(c) for c in classnames]))
    text_features = torch.nn.functional.normalize(text.float(), dim=-1)
    labels = torch.tensor([label for _, label, _ in rows])
    return image_features @ text_features.T, labels


def test_checkpoint_is_small_and_matches_recorded_sha256():
    weights = MODEL_DIR / "model.safetensors"
    meta = json.loads((MODEL_DIR / "open_clip_config.json").read_text())
    assert weights.stat().st_size <= 20 * 1024 * 1024
    assert meta["sha256"] == file_sha256(weights)
    assert meta["sha256"] in (MODEL_DIR / "PROVENANCE.md").read_text()


def test_demo_dataset_is_coop_format():
    split = _read_split()
    assert set(split) == {"train", "val", "test"}
    classnames = _classnames(split)
    assert len(classnames) >= 20
    assert classnames == sorted(classnames), "labels follow the sorted class list"
    for name, rows in split.items():
        labels = {label for _, label, _ in rows}
        assert labels == set(range(len(classnames))), f"every class has {name} images"
        for rel, label, classname in rows:
            assert classnames[label] == classname and "_" not in classname
            assert (DEMO_DIR / "images" / rel).is_file(), rel
    keys = [rel for rows in split.values() for rel, _, _ in rows]
    assert len(keys) == len(set(keys)), "an image sits in one split only"
    total = sum(p.stat().st_size for p in (DEMO_DIR / "images").rglob("*") if p.is_file())
    assert total <= 10 * 1024 * 1024


def test_demo_splits_are_big_enough_for_seeds_to_matter():
    """>= 30 test images in every class; > 16 train images (>= 32 in most), so seeds draw different shots."""
    split = _read_split()
    n_classes = len(_classnames(split))
    train = [sum(1 for _, label, _ in split["train"] if label == c) for c in range(n_classes)]
    test = [sum(1 for _, label, _ in split["test"] if label == c) for c in range(n_classes)]
    assert min(test) >= 30, test
    assert min(train) > 16, train
    assert sum(t >= 32 for t in train) >= 0.75 * n_classes, train


def test_every_demo_prompt_uses_trained_tokens_and_fits(backbone):
    """Words outside the kept vocabulary would embed as zeros; CoOp's 4 context tokens must still fit."""
    from safetensors import safe_open

    with safe_open(str(MODEL_DIR / "model.safetensors"), "pt") as handle:
        kept = set(handle.get_tensor("token_ids").tolist())
    tokenizer = backbone.tokenizer
    context = backbone.text.context_length
    fashion = json.loads((FASHION_DIR / "split_zhou_DemoFashion.json").read_text())
    for classname in _classnames(_read_split()) + _classnames(fashion):
        for template in (TEMPLATE, "clip art of a {}", "a drawing of a {}."):
            ids = tokenizer.encode(template.format(classname))
            assert set(ids) <= kept, (template, classname)
            assert len(ids) + 4 + 2 <= context, (template, classname)


def test_zero_shot_on_demo_test_split_is_above_floor(test_scores):
    scores, labels = test_scores
    n_classes = scores.shape[1]
    top1 = float((scores.argmax(1) == labels).float().mean() * 100)
    assert FLOOR_ALL >= 3 * 100 / n_classes
    assert top1 >= FLOOR_ALL, f"zero-shot top-1 {top1:.1f}%"
    n_base = math.ceil(n_classes / 2)
    for lo, hi in ((0, n_base), (n_base, n_classes)):
        mask = (labels >= lo) & (labels < hi)
        half = float((scores[mask][:, lo:hi].argmax(1) + lo == labels[mask]).float().mean() * 100)
        assert half >= FLOOR_HALF, f"classes {lo}-{hi - 1}: {half:.1f}%"


def test_recorded_accuracy_matches_the_shipped_files(test_scores):
    """The number in open_clip_config.json (and PROVENANCE.md) is what these files give."""
    meta = json.loads((MODEL_DIR / "open_clip_config.json").read_text())
    recorded = meta["demo_zero_shot_test"][TEMPLATE]["all"]
    scores, labels = test_scores
    top1 = float((scores.argmax(1) == labels).float().mean() * 100)
    assert abs(top1 - recorded) < 0.5



def _zero_shot(backbone, folder, split: dict) -> dict:
    classnames = _classnames(split)
    transform = eval_transform(backbone.image_size, backbone.mean, backbone.std)
    rows = split["test"]
    images = torch.stack([transform(load_rgb(str(folder / "images" / rel))) for rel, _, _ in rows])
    with torch.no_grad():
        text = backbone.model.encode_text(backbone.tokenize([TEMPLATE.format(c) for c in classnames]))
    scores = backbone.encode_images(images) @ torch.nn.functional.normalize(text.float(), dim=-1).T
    labels = torch.tensor([label for _, label, _ in rows])
    n_base = math.ceil(len(classnames) / 2)
    out = {"all": float((scores.argmax(1) == labels).float().mean() * 100)}
    for half, lo, hi in (("base", 0, n_base), ("new", n_base, len(classnames))):
        mask = (labels >= lo) & (labels < hi)
        out[half] = float((scores[mask][:, lo:hi].argmax(1) + lo == labels[mask]).float().mean() * 100)
    return out


def test_fashion_demo_is_held_out_balanced_and_above_floor(backbone):
    """Fashion-MNIST test images only (t10k), 64 / 16 / 100 per class, disjoint, and zero-shot as recorded."""
    from dipclip.pretrain.sources import FASHION_CLASSES

    split = json.loads((FASHION_DIR / "split_zhou_DemoFashion.json").read_text())
    assert _classnames(split) == list(FASHION_CLASSES)
    names = [rel for rows in split.values() for rel, _, _ in rows]
    assert len(names) == len(set(names)) and all("/t10k_" in rel for rel in names)
    for part, count in (("train", 64), ("val", 16), ("test", 100)):
        assert [sum(1 for r in split[part] if r[1] == c) for c in range(10)] == [count] * 10, part
    measured = _zero_shot(backbone, FASHION_DIR, split)
    for key, floor in FASHION_FLOORS.items():
        assert measured[key] >= floor, (key, measured)
    provenance = (MODEL_DIR / "PROVENANCE.md").read_text()
    assert f"| `{TEMPLATE}` | {measured['all']:.1f} | {measured['base']:.1f} | {measured['new']:.1f} |" in provenance


def test_shipped_temperature_is_clips_and_the_learned_one_is_recorded():
    from safetensors.torch import load_file

    meta = json.loads((MODEL_DIR / "open_clip_config.json").read_text())
    shipped = float(load_file(str(MODEL_DIR / "model.safetensors"))["logit_scale"].float().exp())
    assert math.isclose(shipped, 100.0, rel_tol=1e-3)
    assert 1.0 <= meta["learned_logit_scale"] < 100.0
    assert f"in place of the learned {meta['learned_logit_scale']}" in (MODEL_DIR / "PROVENANCE.md").read_text()


def test_demo_runs_on_demo_fashion_with_its_documented_crops(tmp_path, capsys):
    """`dipclip demo` defaults to demo_fashion, trains on crops of at least half of each image and says so."""
    from dipclip.cli import main

    assert main(["demo", "--quick", "--quiet", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "Base-to-new on demo_fashion" in out and "training crops of 0.5-1 of the image (recipes: 0.08-1)" in out
    result = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert result["dataset"] == "demo_fashion" and result["crop_scale"] == 0.5
    runs = sorted((tmp_path / "demo").rglob("metrics.json"))
    trained = [json.loads(p.read_text()) for p in runs if {"coop", "dip"} & set(p.relative_to(tmp_path).parts)]
    assert trained and all(m["config"]["train"]["crop_scale"] == 0.5 for m in trained)


def test_coop_recipe_rises_above_zero_shot_on_the_demo_testbed(tmp_path):
    """What makes `demo_fashion` a testbed: CoOp's published recipe (SGD 0.002, 200 epochs) on the demo's crops
    learns the base classes (the demo, fresh views: 46.47 over 3 seeds against zero-shot's 40.60; here 4
    cycled views to keep the test short). A model or crop change that loses this would leave a demo in which
    prompt tuning shows nothing."""
    from dipclip import api

    zero_shot = api.zeroshot(pretrained="dipclip-tiny", dataset="demo_fashion", subsample="base")
    run = api.train("coop", pretrained="dipclip-tiny", dataset="demo_fashion", subsample="base", seed=1,
                    crop_scale=0.5, views=4, out=tmp_path / "coop", progress=False)
    assert run["config"]["train"]["epochs"] == 200
    assert run["results"]["base"]["accuracy"] >= zero_shot["results"]["base"]["accuracy"] + 3.0
