from __future__ import annotations

import json
import os
import pickle
import random
import shutil

import pytest

from dipclip.data.datasets import load_dataset
from dipclip.data.sampling import (
    base_new_labels,
    cache_file,
    dassl_few_shot,
    few_shot_splits,
    read_dassl_cache,
    sample_per_class,
    select_few_shot,
    split_fingerprint,
    subsample_classes,
)
from dipclip.data.types import DatasetSplits, Datum
from dipclip.errors import DipclipError


def d(name: str, label: int) -> Datum:
    return Datum(f"/r/{name}.jpg", label, {0: "a", 1: "b", 2: "c"}[label])


# Train in split order: label 1 appears first, then 0, then 2 (with a single item).
TRAIN = [d("b0", 1), d("a0", 0), d("b1", 1), d("a1", 0), d("b2", 1), d("c0", 2), d("a2", 0), d("b3", 1),
         d("a3", 0), d("b4", 1)]
VAL = [d("vb0", 1), d("va0", 0), d("vb1", 1), d("va1", 0), d("vb2", 1), d("va2", 0)]


def test_sampler_matches_hand_computed_lists():
    # By hand from the documented algorithm with seed 1: groups in first-appearance order b, a, c;
    # random.seed(1); random.sample(b, 2) -> [b1, b0]; random.sample(a, 2) -> [a2, a0]; c has 1 < 2 items,
    # kept without a draw; then val with min(2, 4) = 2 shots on the same stream -> [vb1, vb2], [va1, va2].
    train, val = dassl_few_shot(TRAIN, VAL, shots=2, seed=1)
    assert [x.path for x in train] == ["/r/b1.jpg", "/r/b0.jpg", "/r/a2.jpg", "/r/a0.jpg", "/r/c0.jpg"]
    assert [x.path for x in val] == ["/r/vb1.jpg", "/r/vb2.jpg", "/r/va1.jpg", "/r/va2.jpg"]


@pytest.mark.parametrize(("shots", "seed"), [(1, 1), (2, 2), (4, 3), (16, 1)])
def test_sampler_equals_dassl_procedure_with_global_random(shots, seed):
    # Dassl: random.seed(S) (with numpy and torch) in train.py, then two generate_fewshot_dataset calls.
    def dassl(items, k):
        groups = {}
        for item in items:
            groups.setdefault(item.label, []).append(item)
        out = []
        for group in groups.values():
            out.extend(random.sample(group, k) if len(group) >= k else group)
        return out

    state = random.getstate()
    try:
        random.seed(seed)
        expected_train = dassl(TRAIN, shots)
        expected_val = dassl(VAL, min(shots, 4))
    finally:
        random.setstate(state)
    before = random.getstate()
    assert dassl_few_shot(TRAIN, VAL, shots, seed) == (expected_train, expected_val)
    assert random.getstate() == before  # no global side effect


def test_small_classes_keep_all_items_without_drawing():
    rng = random.Random(0)
    assert sample_per_class([d("c0", 2)], 5, rng) == [d("c0", 2)]
    assert rng.getstate() == random.Random(0).getstate()


@pytest.mark.parametrize("shots", [0, -1, 1.5, True])
def test_shots_must_be_positive(shots):
    with pytest.raises(DipclipError, match="--shots"):
        dassl_few_shot(TRAIN, VAL, shots, 1)


def five_class_splits() -> DatasetSplits:
    names = ["c0", "c1", "c2", "c3", "c4"]
    items = [Datum(f"/r/{n}_{i}.jpg", y, n) for i in range(2) for y, n in enumerate(names)]
    return DatasetSplits("x", names, list(items), list(items), list(items), image_root=None)


def test_base_new_halves_and_relabelling():
    splits = five_class_splits()
    base = subsample_classes(splits, "base")
    new = subsample_classes(splits, "new")
    assert base.classnames == ["c0", "c1", "c2"] and new.classnames == ["c3", "c4"]
    assert sorted({x.label for x in base.test}) == [0, 1, 2]
    assert {(x.label, x.classname) for x in new.train} == {(0, "c3"), (1, "c4")}
    assert all(x.path.startswith("/r/c3") for x in new.val if x.label == 0)
    assert subsample_classes(splits, "all").classnames == splits.classnames
    assert len(base_new_labels(37, "base")) == 19 and len(base_new_labels(37, "new")) == 18
    with pytest.raises(DipclipError, match="--subsample"):
        subsample_classes(splits, "half")


def test_subsample_lists_like_coop():
    # CoOp takes the classes from the first list.
    train, test = subsample_classes([[d("b0", 1), d("c0", 2)], [d("a0", 0), d("b1", 1), d("c1", 2)]], "new")
    assert train == [Datum("/r/c0.jpg", 0, "c")] and test == [Datum("/r/c1.jpg", 0, "c")]


def test_few_shot_splits_on_a_json_dataset(fx):
    fx.json_dataset(sizes=(4, 3, 2), images=False)
    splits = load_dataset(fx.root, "oxford_pets")
    train, val = dassl_few_shot(splits.train, splits.val, 2, 7)
    few = few_shot_splits(splits, fx.root, "oxford_pets", shots=2, seed=7, subsample="new")
    assert few.classnames == ["beagle"]
    assert few.train == [Datum(x.path, 0, x.classname) for x in train if x.label == 2]
    assert few.val == [Datum(x.path, 0, x.classname) for x in val if x.label == 2]
    assert len(few.test) == 2 and {x.label for x in few.test} == {0}
    everything = few_shot_splits(splits, fx.root, "oxford_pets", shots=16, seed=1)
    # 4 < 16: every class keeps all of its items, grouped by class in order of first appearance.
    assert everything.train == [x for y in (0, 1, 2) for x in splits.train if x.label == y]
    assert len(everything.val) == 9  # min(16, 4) = 4 > 3 per class


def test_imagenet_samples_train_only(fx, wnids):
    fx.imagenet(wnids, per_class=(3, 2))
    splits = load_dataset(fx.root, "imagenet")
    few = few_shot_splits(splits, fx.root, "imagenet", shots=1, seed=1)
    assert len(few.train) == 6 and few.val == splits.test and few.test == splits.test
    expected, _ = dassl_few_shot(splits.train, None, 1, 1)
    assert few.train == expected


def test_test_only_dataset_cannot_be_sampled(fx, wnids):
    fx.imagenetv2(wnids)
    splits = load_dataset(fx.root, "imagenetv2")
    with pytest.raises(DipclipError, match="test-only"):
        few_shot_splits(splits, fx.root, "imagenetv2", 1, 1)


# ---------------------------------------------------------------------------------------------------
# Dassl pkl caches




def write_pkl(path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)


def test_dassl_pkl_is_read_rerooted_and_preferred(fx, dassl_datum):
    fx.json_dataset(sizes=(4, 3, 2), images=False)
    splits = load_dataset(fx.root, "oxford_pets")
    old = "/home/someone/DATA/oxford_pets/images"
    # A subset that differs from what sampling gives: the last 2 train and last val item of each class.
    chosen_train = splits.train[-6:]
    chosen_val = splits.val[-3:]

    def pickled(items):
        return [dassl_datum(old + "/" + os.path.relpath(x.path, splits.image_root), x.label, 0, x.classname)
                for x in items]

    pkl = fx.root / "oxford_pets" / "split_fewshot" / "shot_2-seed_1.pkl"
    write_pkl(pkl, {"train": pickled(chosen_train), "val": pickled(chosen_val)})
    assert read_dassl_cache(pkl, splits) == {"train": chosen_train, "val": chosen_val}
    selection = select_few_shot(splits, fx.root, "oxford_pets", 2, 1)
    assert selection.source == "dassl-pkl"
    few = few_shot_splits(splits, fx.root, "oxford_pets", 2, 1, subsample="base")
    assert few.train == [x for x in chosen_train if x.label < 2]
    # Another seed has no pkl: sampled.
    assert select_few_shot(splits, fx.root, "oxford_pets", 2, 2).source == "sampled"


def test_imagenet_pkl_with_train_only(fx, wnids, dassl_datum):
    fx.imagenet(wnids)
    splits = load_dataset(fx.root, "imagenet")
    chosen = splits.train[::3]
    items = [dassl_datum("D:\\data\\imagenet\\images\\" + os.path.relpath(x.path, splits.image_root).replace(
        os.sep, "\\"), x.label, 0, x.classname) for x in chosen]
    write_pkl(fx.root / "imagenet" / "split_fewshot" / "shot_1-seed_3.pkl", {"train": items})
    few = few_shot_splits(splits, fx.root, "imagenet", 1, 3)
    assert few.train == chosen and few.val == splits.test


def test_pkl_from_another_split_is_refused(fx, dassl_datum):
    fx.json_dataset(images=False)
    splits = load_dataset(fx.root, "oxford_pets")
    pkl = fx.root / "oxford_pets" / "split_fewshot" / "shot_1-seed_1.pkl"
    write_pkl(pkl, {"train": [dassl_datum("/x/images/unknown/1.jpg", 0)], "val": []})
    with pytest.raises(DipclipError, match="not in this dataset's split"):
        select_few_shot(splits, fx.root, "oxford_pets", 1, 1)
    first = splits.train[0]
    write_pkl(pkl, {"train": [dassl_datum(first.path, first.label + 1)], "val": []})
    with pytest.raises(DipclipError, match="label 1 but the split file says 0"):
        read_dassl_cache(pkl, splits)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused(fx, tmp_path):
    fx.json_dataset(images=False)
    splits = load_dataset(fx.root, "oxford_pets")
    marker = tmp_path / "pwned"
    pkl = fx.root / "oxford_pets" / "split_fewshot" / "shot_1-seed_1.pkl"
    write_pkl(pkl, {"train": [_Evil(marker)], "val": []})
    with pytest.raises(DipclipError, match=r"refusing to unpickle (posix|os|nt)\.system"):
        few_shot_splits(splits, fx.root, "oxford_pets", 1, 1)
    assert not marker.exists()
    write_pkl(pkl, {"train": [eval]})  # any other global is refused too
    with pytest.raises(DipclipError, match="refusing to unpickle builtins.eval"):
        read_dassl_cache(pkl, splits)
    pkl.write_bytes(b"\x80\x05garbage")
    with pytest.raises(DipclipError, match="cannot read few-shot cache"):
        read_dassl_cache(pkl, splits)


# ---------------------------------------------------------------------------------------------------
# Our JSON cache


def test_json_cache_is_relative_portable_and_checked(fx, tmp_path):
    fx.json_dataset(sizes=(4, 3, 2), images=False)
    splits = load_dataset(fx.root, "oxford_pets")
    cache_dir = tmp_path / "cache"
    first = select_few_shot(splits, fx.root, "oxford_pets", 2, 5, cache_dir=cache_dir)
    path = cache_file(cache_dir, "oxford_pets", 2, 5, split_fingerprint(splits))
    text = path.read_text()
    obj = json.loads(text)
    assert first.source == "sampled" and obj["source"] == "sampled"
    assert str(tmp_path) not in text and all(not row[0].startswith("/") for row in obj["train"] + obj["val"])
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind
    again = select_few_shot(splits, fx.root, "oxford_pets", 2, 5, cache_dir=cache_dir)
    assert again.source == "cache" and again.train == first.train and again.val == first.val

    moved = tmp_path / "elsewhere"
    shutil.copytree(fx.root, moved)
    moved_splits = load_dataset(moved, "oxford_pets")
    from_cache = select_few_shot(moved_splits, moved, "oxford_pets", 2, 5, cache_dir=cache_dir)
    assert from_cache.source == "cache"
    assert [x.path for x in from_cache.train] == [x.path.replace(str(fx.root), str(moved)) for x in first.train]

    # Another dataset under the same key (a different split) gets its own cache file.
    other = load_dataset(moved, "oxford_pets")
    other.train = other.train[1:]
    assert select_few_shot(other, moved, "oxford_pets", 2, 5, cache_dir=cache_dir).source == "sampled"
    assert len(list(path.parent.iterdir())) == 2

    # An edited entry is never used: it is resampled (the same draw) and rewritten.
    obj["train"][0][0] = "not/in/split.jpg"
    path.write_text(json.dumps(obj))
    redone = select_few_shot(splits, fx.root, "oxford_pets", 2, 5, cache_dir=cache_dir)
    assert redone.source == "sampled" and redone.train == first.train and redone.val == first.val
    assert json.loads(path.read_text())["train"][0][0] != "not/in/split.jpg"
