from __future__ import annotations

import dataclasses
import json
import pickle

import pytest

from dipclip.data import registry
from dipclip.data.doctor import doctor, run_doctor
from dipclip.errors import DipclipError


@pytest.fixture
def small_pets(monkeypatch):
    """Make the fixture's 3 classes and 12/6/6 images the 'published' pets facts."""
    info = dataclasses.replace(registry.DATASETS["oxford_pets"], num_classes=3, split_sizes=(12, 6, 6))
    monkeypatch.setitem(registry.DATASETS, "oxford_pets", info)


def test_healthy_folder_has_no_problems(fx, small_pets):
    fx.json_dataset()
    report = run_doctor(fx.root)
    assert report.problems == []
    assert report.checked == {"oxford_pets": {"train": 12, "val": 6, "test": 6, "decoded": 24}}


def test_wrong_class_count_and_split_sizes(fx):
    fx.json_dataset()  # 3 classes; the real OxfordPets has 37
    messages = [p.message for p in doctor(fx.root, "oxford_pets")]
    assert "found 3 classes, but OxfordPets has 37" in messages
    assert "split sizes (train/val/test) are 12/6/6, the published OxfordPets split has 2944/736/3669" in messages


def test_missing_and_corrupt_images_each_reported(fx, small_pets):
    fx.json_dataset()
    img_root = fx.root / "oxford_pets" / "images"
    (img_root / "beagle" / "train_1.jpg").unlink()
    (img_root / "abyssinian" / "test_0.jpg").write_bytes(b"garbage")
    (img_root / "beagle" / "val_0.jpg").write_bytes(b"")
    problems = doctor(fx.root)
    assert len(problems) == 3
    by_path = {p.path: p for p in problems}
    missing = by_path[str(img_root / "beagle" / "train_1.jpg")]
    assert missing.message.startswith("train: image missing") and "restore" in missing.fix
    assert "cannot decode" in by_path[str(img_root / "abyssinian" / "test_0.jpg")].message
    assert "val:" in by_path[str(img_root / "beagle" / "val_0.jpg")].message
    assert all(p.fix for p in problems) and "fix:" in str(problems[0])


def test_bad_json_is_reported(fx):
    fx.json_dataset(images=False)
    (fx.root / "oxford_pets" / "split_zhou_OxfordPets.json").write_text("{not json")
    (problem,) = doctor(fx.root, "oxford_pets")
    assert "is not valid JSON" in problem.message and "DATASETS.md" in problem.fix


def test_malformed_json_entries_and_label_names(fx, small_pets):
    split = fx.json_dataset(images=False)
    split["train"][0] = ["abyssinian/train_0.jpg", 0]
    split["val"][0][2] = "siamese"  # label 0 is also 'abyssinian'
    (fx.root / "oxford_pets" / "split_zhou_OxfordPets.json").write_text(json.dumps(split))
    messages = [p.message for p in doctor(fx.root, "oxford_pets")]
    assert any("train[0]" in m and "is not [relative_path, label, classname]" in m for m in messages)
    assert any("label 0 is named both 'abyssinian' and 'siamese'" in m for m in messages)


def test_missing_dataset_folder_and_empty_root(fx, tmp_path):
    fx.root.mkdir()
    (problem,) = doctor(fx.root)
    assert "no dataset folder found" in problem.message and "oxford_pets/" in problem.fix
    (problem,) = doctor(fx.root, "dtd")
    assert "dtd" in problem.message and "split_zhou_DescribableTextures.json" in problem.fix
    with pytest.raises(DipclipError, match="does not exist"):
        doctor(tmp_path / "nowhere")


def test_imagenet_family_checks(fx, wnids):
    shuffled = dict(reversed(list(wnids.items())))
    fx.wnid_folders("imagenet-adversarial", "imagenet-a", shuffled, ["n01440764", "n01443537"])
    messages = [p.message for p in doctor(fx.root, "imagenet_a")]
    assert any("has 6 classes, not ImageNet's 1000" in m for m in messages)
    assert any("not in wnid order" in m for m in messages)
    assert any("found 2 class folders, but ImageNet-A has 200" in m for m in messages)


def test_bad_fewshot_cache_is_reported(fx, small_pets):
    fx.json_dataset()
    pkl = fx.root / "oxford_pets" / "split_fewshot" / "shot_1-seed_1.pkl"
    pkl.parent.mkdir()
    pkl.write_bytes(pickle.dumps({"train": [print]}))
    (problem,) = doctor(fx.root)
    assert "refusing to unpickle builtins.print" in problem.message and str(pkl) in problem.fix


def test_fast_mode_samples_and_full_mode_decodes_all(fx, small_pets, monkeypatch):
    from dipclip.data import doctor as doctor_module

    fx.json_dataset()
    monkeypatch.setattr(doctor_module, "FAST_SAMPLE", 2)
    assert run_doctor(fx.root).checked["oxford_pets"]["decoded"] == 6
    assert run_doctor(fx.root, fast=False).checked["oxford_pets"]["decoded"] == 24
