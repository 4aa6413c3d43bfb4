"""The feature store (keys, reuse, atomic and concurrent writes) and the two training-view modes."""

import dataclasses
import json
import os
import threading
from pathlib import Path

import pytest
import torch

from dipclip import api
from dipclip.cli import main
from dipclip.data.types import Datum
from dipclip.engine import features as features_module
from dipclip.engine.features import FeatureStore, ImageBatches, SeededViews, make_views, parse_views
from dipclip.engine.trainer import Trainer
from dipclip.errors import DipclipError

pytestmark = pytest.mark.usefixtures("one_thread")


COMMON = dict(dataset="imagefolder", shots=4, epochs=3, batch_size=4, progress=False)


def reproducible_part(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in ("timing", "config")}


def tree_items(root, split="test"):
    items = []
    for label, folder in enumerate(sorted((root / split).iterdir())):
        items += [Datum(str(p), label, folder.name) for p in sorted(folder.iterdir())]
    return items


@pytest.fixture()
def small_tree(tmp_path):
    """A private copy of a few images: tests here touch files on disk."""
    from PIL import Image

    generator = torch.Generator().manual_seed(1)
    for name in ("apple", "leaf"):
        folder = tmp_path / "images" / "test" / name
        folder.mkdir(parents=True)
        for i in range(2):
            pixels = torch.randint(0, 256, (20, 20, 3), generator=generator, dtype=torch.uint8)
            Image.fromarray(pixels.numpy()).save(folder / f"{i}.png")
    return tmp_path / "images"


def test_store_reuses_features_and_every_input_changes_the_key(tiny_backbone, small_tree, tmp_path):
    store = FeatureStore(tmp_path / "store")
    items = tree_items(small_tree)
    first = store.test_features(tiny_backbone, items, progress=False)
    again = store.test_features(tiny_backbone, items, progress=False)
    assert (store.misses, store.hits) == (1, 1)
    assert torch.equal(first.features, again.features) and torch.equal(first.labels, again.labels)
    files = list((tmp_path / "store").glob("*.safetensors"))
    assert len(files) == 1 and not list((tmp_path / "store").glob("*.tmp"))

    def key(backbone=tiny_backbone, items=items, transform="t", view=None, skip=False):
        return store.key(backbone, items, transform, view, skip)[0]

    base = key()
    variants = [
        key(backbone=dataclasses.replace(tiny_backbone, identity="other/weights")),
        key(backbone=dataclasses.replace(tiny_backbone, image_size=48)),
        key(backbone=dataclasses.replace(tiny_backbone, mean=(0.5, 0.5, 0.5))),
        key(backbone=dataclasses.replace(tiny_backbone, std=(0.2, 0.2, 0.2))),
        key(transform="other"),
        key(view={"seed": 1, "view": 0}),
        key(view={"seed": 1, "view": 1}),
        key(skip=True),
        key(items=items[:-1]),
        key(items=[dataclasses.replace(items[0], label=2)] + items[1:]),
    ]
    assert len({base, *variants}) == len(variants) + 1
    os.utime(items[0].path, ns=(1, 1))  # touched, same bytes: the same key (identity is content)
    assert key() == base
    second = Path(items[1].path).read_bytes()  # two files swapped in place, same sizes and mtimes
    assert len(second) == os.path.getsize(items[0].path) and second != Path(items[0].path).read_bytes()
    Path(items[1].path).write_bytes(Path(items[0].path).read_bytes())
    Path(items[0].path).write_bytes(second)
    for item in items[:2]:
        os.utime(item.path, ns=(1, 1))
    assert key() != base
    store.test_features(tiny_backbone, items, progress=False)
    assert store.misses == 2


def test_store_ignores_a_corrupt_entry_and_disabled_store_writes_nothing(tiny_backbone, small_tree, tmp_path):
    items = tree_items(small_tree)
    store = FeatureStore(tmp_path / "store")
    good = store.test_features(tiny_backbone, items, progress=False)
    (path,) = (tmp_path / "store").glob("*.safetensors")
    path.write_bytes(b"not a safetensors file")
    assert torch.equal(store.test_features(tiny_backbone, items, progress=False).features, good.features)
    assert store.misses == 2
    off = FeatureStore(tmp_path / "off", enabled=False)
    assert torch.equal(off.test_features(tiny_backbone, items, progress=False).features, good.features)
    assert not (tmp_path / "off").exists()


def test_concurrent_runs_encode_once(tiny_backbone, small_tree, tmp_path, monkeypatch):
    items = tree_items(small_tree)
    stores = [FeatureStore(tmp_path / "store") for _ in range(3)]
    results = [None] * 3
    original = features_module.encode_dataset
    started = threading.Event()

    def slow_encode(*args, **kwargs):
        started.set()
        threading.Event().wait(0.3)  # hold the lock while the others arrive
        return original(*args, **kwargs)

    monkeypatch.setattr(features_module, "encode_dataset", slow_encode)

    def run(i):
        results[i] = stores[i].test_features(tiny_backbone, items, progress=False)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(s.misses for s in stores) == 1 and sum(s.hits for s in stores) == 2
    assert all(torch.equal(r.features, results[0].features) for r in results)


def test_seeded_views_do_not_depend_on_order_or_global_rng(tiny_backbone, image_tree):
    items = tree_items(image_tree, "train")[:4]
    view = make_views(tiny_backbone, items, seed=3, view=1)
    assert isinstance(view, SeededViews)
    torch.manual_seed(0)
    forward = [view[i][0] for i in range(4)]
    torch.manual_seed(123)
    state = torch.get_rng_state()
    backward = [view[i][0] for i in reversed(range(4))][::-1]
    assert all(torch.equal(a, b) for a, b in zip(forward, backward, strict=True))
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is untouched
    other = make_views(tiny_backbone, items, seed=3, view=2)
    assert not torch.equal(other[0][0], forward[0])


def test_parse_views():
    assert parse_views("fresh") == "fresh" and parse_views("3") == 3 and parse_views(2) == 2
    for bad in ("0", "many", -1, 1.5):
        with pytest.raises(DipclipError, match="views must be"):
            parse_views(bad)


def test_cached_views_give_the_fresh_metrics_when_fed_the_same_views(tmp_path, tiny_config_path, image_tree):
    kwargs = dict(model=str(tiny_config_path), pretrained="none", data=str(image_tree), **COMMON)
    fresh = api.train("dip", out=tmp_path / "fresh", **kwargs)
    cached = api.train("dip", out=tmp_path / "cached", views=3, **kwargs)  # 3 views = 3 epochs: the same views
    uncached = api.train("dip", out=tmp_path / "uncached", views=3, feature_cache=False, **kwargs)
    assert reproducible_part(fresh) == reproducible_part(cached) == reproducible_part(uncached)
    assert cached["config"]["train"]["views"] == 3
    cycled = api.train("dip", out=tmp_path / "cycled", views=1, **kwargs)
    assert cycled["history"][0] == fresh["history"][0]  # epoch 0 trains on view 0 in both modes
    assert cycled["history"][1:] != fresh["history"][1:]


def test_images_in_the_loop_agree_with_stored_features(tmp_path, tiny_config_path, image_tree):
    """The one trainer fed images (encoded every step) or stored features: the same batches and views."""
    from dipclip.backbones.loading import load_backbone
    from dipclip.engine.trainer import TrainConfig
    from dipclip.methods import get_method

    backbone = load_backbone(str(tiny_config_path), "none")
    splits = api.load_data(str(image_tree), "imagefolder", shots=4, seed=1)
    histories = []
    for name, loop in (("features", False), ("images", True)):
        method = get_method("coop")
        model = method.build(backbone, splits.classnames, method.prompt_config())
        config = TrainConfig(epochs=2, batch_size=4, seed=1)
        trainer = Trainer(method, model, method.optim_config(), config, tmp_path / name, progress=False)
        source = ImageBatches(backbone, splits.train, 4, 1) if loop else None
        histories.append(trainer.fit(splits.train, source=source))
    for a, b in zip(*histories, strict=True):
        assert a["images"] == b["images"] and a["train_accuracy"] == b["train_accuracy"]
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)


def test_test_features_are_shared_across_methods_and_seeds(tmp_path, tiny_config_path, image_tree, monkeypatch):
    calls = []
    original = features_module.encode_dataset

    def counting(backbone, dataset, *args, **kwargs):
        calls.append("test" if dataset.seed is None else f"view{dataset.view}")
        return original(backbone, dataset, *args, **kwargs)

    monkeypatch.setattr(features_module, "encode_dataset", counting)
    kwargs = dict(model=str(tiny_config_path), pretrained="none", data=str(image_tree), subsample="base", views=2, **COMMON)
    api.train("coop", out=tmp_path / "coop", **kwargs)
    assert sorted(calls) == ["test", "test", "view0", "view1"]  # base and new test splits, two views
    calls.clear()
    api.train("dip", out=tmp_path / "dip", **kwargs)  # same seed: views and test features all reused
    assert calls == []
    api.train("dip", out=tmp_path / "dip2", **(kwargs | {"seed": 2}))  # other seed: other few-shot images
    assert sorted(calls) == ["view0", "view1"]


def test_cached_views_resume_exactly(tmp_path, tiny_config_path, image_tree, kill_after_first_epoch):
    kwargs = dict(model=str(tiny_config_path), pretrained="none", data=str(image_tree), views=2, **COMMON)
    uninterrupted = api.train("coop", out=tmp_path / "full", **kwargs)
    kill_after_first_epoch("coop", tmp_path / "killed", **kwargs)
    resumed = api.train("coop", out=tmp_path / "killed", resume=True, **kwargs)
    assert reproducible_part(resumed) == reproducible_part(uninterrupted)
    with pytest.raises(DipclipError, match=r"other settings \(.*train.views 2 -> 3"):
        api.train("coop", out=tmp_path / "killed", resume=True, **(kwargs | {"views": 3}))


def test_cli_views_and_no_feature_cache(tmp_path, tiny_config_path, image_tree, capsys):
    base = ["train", "--method", "coop", "--model", str(tiny_config_path), "--pretrained", "none", "--data", str(image_tree),
            "--dataset", "imagefolder", "--shots", "2", "--epochs", "1", "--batch-size", "3", "--quiet"]
    assert main([*base, "--views", "2", "--no-feature-cache", "--out", str(tmp_path / "run")]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["config"]["train"]["views"] == 2 and metrics["config"]["train"]["feature_cache"] is False
    assert not (tmp_path / "dipclip-cache" / "features").exists()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([*base, "--views", "0"])
    assert exit_info.value.code == 2 and "fresh" in capsys.readouterr().err


def test_sharded_encoding_merges_to_the_single_process_bits(tiny_backbone, small_tree):
    """What each torchrun rank encodes (every world-th batch of 64) adds up to exactly one process's result."""
    items = (tree_items(small_tree) * 40)[:150]  # three batches of 64
    dataset = make_views(tiny_backbone, items, None)
    whole = features_module.encode_dataset(tiny_backbone, dataset, progress=False)
    parts = []
    for rank in range(2):
        part = features_module.encode_dataset(tiny_backbone, dataset, progress=False, rank=rank, world=2)
        rows = part.valid.nonzero().squeeze(1)
        parts.append((rows, part.features[rows], part.raw[rows]))
    assert [len(rows) for rows, _, _ in parts] == [64 + 22, 64]
    merged = features_module.merge_parts(parts, whole.labels, whole.features.shape[1])
    assert torch.equal(merged.features, whole.features) and bool(merged.valid.all())
    assert torch.equal(merged.raw, whole.raw)


def test_crop_scale_reaches_the_views_the_store_key_and_the_run_settings(tmp_path, tiny_config_path, image_tree,
                                                                         capsys):
    """A larger crop floor gives other training views, another store entry, and a recorded setting that a
    finished run folder is checked against."""
    from dipclip.data.transforms import RECIPE_CROP_SCALE

    items = tree_items(image_tree, "train")[:4]
    backbone = api.load_backbone(str(tiny_config_path), "none")
    recipe = make_views(backbone, items, seed=3, view=1)
    assert f"scale=({RECIPE_CROP_SCALE}, 1.0)" in repr(recipe.transform)
    store = FeatureStore(tmp_path / "store")
    wide = store.view_features(backbone, items, seed=3, view=1, progress=False)
    half = store.view_features(backbone, items, seed=3, view=1, progress=False, crop_scale=0.5)
    assert store.misses == 2 and not torch.equal(wide.features, half.features)
    assert torch.equal(half.features, store.view_features(backbone, items, seed=3, view=1, progress=False,
                                                          crop_scale=0.5).features)

    base = ["train", "--method", "coop", "--model", str(tiny_config_path), "--pretrained", "none", "--data",
            str(image_tree), "--dataset", "imagefolder", "--shots", "2", "--epochs", "1", "--batch-size", "3", "--quiet"]
    assert main([*base, "--crop-scale", "0.5", "--out", str(tmp_path / "run")]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["config"]["train"]["crop_scale"] == 0.5
    capsys.readouterr()
    for bad in ("0", "1.5", "half"):
        with pytest.raises(SystemExit) as exit_info:
            main([*base, "--crop-scale", bad])
        assert exit_info.value.code == 2 and "--crop-scale" in capsys.readouterr().err
    with pytest.raises(DipclipError, match=r"--crop-scale must be in \(0, 1\]"):
        api.train("coop", model=str(tiny_config_path), pretrained="none", data=str(image_tree), crop_scale=0.0,
                  out=tmp_path / "bad", **COMMON)
