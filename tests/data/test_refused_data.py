"""Issue 18, class 6: data that would give a silently wrong number is refused in one line (or, for a published
split file that is never rewritten, warned about and recorded), before the model loads.

The model path given does not exist: a refusal must come before the backbone, so no case loads one.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
from pathlib import Path

import pytest
from conftest import write_image

from dipclip import api
from dipclip.data.datasets import load_dataset
from dipclip.data.sampling import few_shot_splits
from dipclip.data.validate import check_for_training
from dipclip.errors import DipclipError

NO_MODEL = "/no/such/model.json"


def build(root: Path, names=("cat", "dog", "fox"), train: int = 2, test: int = 2) -> dict:
    """``root/<i>/{train,test}<j>.png`` and split_dipclip.json rows naming the classes ``names``."""
    rows: dict[str, list] = {"train": [], "val": [], "test": []}
    for label, name in enumerate(names):
        for split, count in (("train", train), ("test", test)):
            for j in range(count):
                rel = f"c{label}/{split}{j}.png"
                write_image(root / rel, color=(80 * label, 20 * j, 90))
                rows[split].append([rel, label, name])
    return rows


def save(root: Path, rows: dict) -> None:
    (root / "split_dipclip.json").write_text(json.dumps(rows))


def train(root: Path, tmp_path: Path, **kwargs) -> dict:
    return api.train("coop", model=NO_MODEL, data=str(root), shots=2, epochs=1, out=tmp_path / "run",
                     progress=False, **{"dataset": "imagefolder", **kwargs})


# ----------------------------------------------------------------------------------------------------
# Class names equal once CLIP's tokenizer has seen them


@pytest.mark.parametrize("names,refusal", [
    (("cat", "Cat", "fox"), "names classes 'cat' and 'Cat' that CLIP's tokenizer reads as the same text 'cat'"),
    (("cat", "ｃａｔ", "fox"), "names classes 'cat' and 'ｃａｔ'"),  # fullwidth letters
    (("café", "cafe\u0301", "fox"), "reads as the same text"),  # NFC and NFD
    (("ice cream", "ice  cream", "fox"), "names classes 'ice cream' and 'ice  cream'"),
    (("ice_cream", "ice cream", "fox"), "names classes 'ice_cream' and 'ice cream'"),  # '_' is a space in prompts
    (("rock & roll", "rock &amp; roll", "fox"), "reads as the same text"),
    (("t-shirt", "t - shirt", "fox"), "reads as the same text 't - shirt'"),
    (("cat", " ", "fox"), "names class 1 ' ', which is empty to CLIP's tokenizer"),
    (("cat", "", "fox"), "names class 1 '', which is empty"),
])
def test_class_names_the_tokenizer_reads_alike_are_refused(names, refusal, tmp_path):
    root = tmp_path / "data"
    save(root, build(root, names))
    with pytest.raises(DipclipError, match=refusal.replace("(", r"\(").replace(")", r"\)")):
        train(root, tmp_path)
    with pytest.raises(DipclipError, match="rename the folders or fix the split file"):
        api.zeroshot(model=NO_MODEL, data=str(root), dataset="imagefolder")
    assert not (tmp_path / "run").exists()


def test_a_class_folder_named_only_underscores_is_refused(tmp_path):
    root = tmp_path / "data"
    for split in ("train", "test"):
        for folder in ("cat", "__", "fox"):
            write_image(root / split / folder / "0.png")
    with pytest.raises(DipclipError, match="names class 0 '', which is empty to CLIP's tokenizer"):
        train(root, tmp_path)


def test_distinct_names_still_pass(tmp_path):
    root = tmp_path / "data"
    save(root, build(root, ("cat", "cats", "cat food")))
    splits = api.load_data(str(root), "imagefolder", shots=2)
    assert check_for_training(splits, [("test", splits, False)], 2) == []


# ----------------------------------------------------------------------------------------------------
# A Dassl pickle with more shots than asked




def _write_pkl(fx, splits, dassl_datum, train, val, shots: int) -> Path:
    def pickled(items):
        return [dassl_datum("/home/someone/DATA/oxford_pets/images/" + os.path.relpath(x.path, splits.image_root),
                            x.label, 0, x.classname) for x in items]

    path = fx.root / "oxford_pets" / "split_fewshot" / f"shot_{shots}-seed_1.pkl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump({"train": pickled(train), "val": pickled(val)}, f)
    return path


def test_a_dassl_pickle_with_more_shots_than_asked_is_refused(fx, dassl_datum, tmp_path):
    fx.json_dataset(sizes=(4, 3, 2))
    splits = load_dataset(fx.root, "oxford_pets")
    by_class = {label: [x for x in splits.train if x.label == label] for label in range(3)}
    four_shot = [x for label in range(3) for x in by_class[label][:4]]
    val = [next(x for x in splits.val if x.label == label) for label in range(3)]
    pkl = _write_pkl(fx, splits, dassl_datum, four_shot, val, shots=2)  # a 4-shot split saved as shot_2
    refusal = (rf"few-shot cache {pkl} holds 4 train images of class 'abyssinian' \(and 2 more classes\), more than "
               r"the 2 of --shots 2, so it is not the 2-shot split; delete it to resample, or check --shots")
    with pytest.raises(DipclipError, match=refusal):
        few_shot_splits(splits, fx.root, "oxford_pets", 2, 1)
    with pytest.raises(DipclipError, match=refusal):
        api.train("coop", model=NO_MODEL, data=str(fx.root), dataset="oxford_pets", shots=2, epochs=1,
                  out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_dassl_pickle_listing_an_image_twice_or_too_many_val_images_is_refused(fx, dassl_datum):
    fx.json_dataset(sizes=(4, 3, 2))
    splits = load_dataset(fx.root, "oxford_pets")
    one_shot = [next(x for x in splits.train if x.label == label) for label in range(3)]
    _write_pkl(fx, splits, dassl_datum, one_shot + one_shot[:1], splits.val[:3], shots=1)
    with pytest.raises(DipclipError, match=r"lists .*abyssinian/train_0.jpg twice in 'train'"):
        few_shot_splits(splits, fx.root, "oxford_pets", 1, 1)
    _write_pkl(fx, splits, dassl_datum, one_shot, splits.val, shots=1)  # 3 val images a class, not min(1, 4)
    with pytest.raises(DipclipError, match="holds 3 val images of class 'abyssinian'"):
        few_shot_splits(splits, fx.root, "oxford_pets", 1, 1)
    _write_pkl(fx, splits, dassl_datum, one_shot, splits.val[:3], shots=1)  # the real 1-shot split is read
    assert few_shot_splits(splits, fx.root, "oxford_pets", 1, 1).train == one_shot


# ----------------------------------------------------------------------------------------------------
# Test images that are also training images


def test_a_csv_whose_test_images_are_its_training_images_is_refused(tmp_path):
    root = tmp_path / "data"
    lines = ["path,label,classname,split"]
    for label, name in enumerate(("cat", "dog")):
        for j in range(2):
            write_image(root / f"{name}{j}.png")
            lines += [f"{name}{j}.png,{label},{name},train", f"./{name}{j}.png,{label},{name},test"]
    (root / "all.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DipclipError, match=r"all.csv: 4 of its 4 test images are also training images \(first: "
                                           r".*cat0.png\), so accuracy would be measured on trained images; list each"):
        api.train("coop", model=NO_MODEL, data=str(root / "all.csv"), dataset="csv", shots=1, epochs=1,
                  out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_split_files_train_test_overlap(tmp_path):
    root = tmp_path / "folder"
    for name in ("train", "test"):
        (root / f"{name}.csv").parent.mkdir(parents=True, exist_ok=True)
        (root / f"{name}.csv").write_text("a.png,0,cat\nb.png,1,dog\n" + ("c.png,1,dog\n" if name == "test" else ""))
    with pytest.raises(DipclipError, match="2 of its 3 test images are also training images"):
        api.load_data(str(root), "csv")
    data = tmp_path / "data"
    rows = build(data)
    rows["test"].append(rows["train"][0])
    save(data, rows)
    with pytest.raises(DipclipError, match=r"split_dipclip.json: 1 of its 7 test images are also training images"):
        api.load_data(str(data), "imagefolder")


def test_a_published_split_with_shared_images_is_warned_about_and_recorded(fx):
    split = fx.json_dataset(sizes=(2, 1, 2))
    split["test"].append(split["train"][0])
    (fx.root / "oxford_pets" / "split_zhou_OxfordPets.json").write_text(json.dumps(split))
    splits = api.load_data(str(fx.root), "oxford_pets", shots=2)
    warnings = check_for_training(splits, [("test", splits, False)], 2)
    assert len(warnings) == 1 and warnings[0].startswith("1 of the 7 'test' test images are also training images "
                                                         "of this run (first: ")


# ----------------------------------------------------------------------------------------------------
# Labels


@pytest.fixture
def alarm():
    """Fail instead of hanging: a label of 10**12 must not cost a loop of 10**12 steps."""
    def fail(*_):
        pytest.fail("reading the split took more than 60 s")

    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_an_absurd_label_in_a_split_file_is_refused_at_once(tmp_path, alarm):
    root = tmp_path / "data"
    rows = {split: [[path, 10**12 if label == 2 else label, name] for path, label, name in items]
            for split, items in build(root).items()}
    save(root, rows)
    with pytest.raises(DipclipError, match=r"labels must run from 0 to 1000000000000 but 999999999998 are never "
                                           r"used \(2, 3, 4, 5, 6, 7, 8, 9, 10, 11 ...\)"):
        train(root, tmp_path)


def test_an_absurd_label_in_a_csv_is_refused_at_once(tmp_path, alarm):
    root = tmp_path / "data"
    for name in ("train", "test"):
        root.mkdir(exist_ok=True)
        (root / f"{name}.csv").write_text("a.png,0,cat\nb.png,1000000000000,dog\n".replace("a.png", f"{name}a.png")
                                          .replace("b.png", f"{name}b.png"))
    with pytest.raises(DipclipError, match="labels must run from 0 to 1000000000000 but 999999999999 are never used"):
        api.load_data(str(root), "csv")


@pytest.mark.parametrize("label", ["٣", "１", "³", "3.0", "+3"])
def test_a_csv_label_that_only_looks_like_a_number_is_refused(label, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "train.csv").write_text(f"a.png,0,cat\nb.png,{label},dog\n")
    (root / "test.csv").write_text("c.png,0,cat\nd.png,1,dog\n")
    with pytest.raises(DipclipError, match=rf"train.csv:2: expected 'path,label\[,classname\]' with an integer label "
                                           rf"written in the digits 0-9, got 'b.png,{re.escape(label)}"):
        api.load_data(str(root), "csv")


@pytest.mark.parametrize("label", ["٣", "１", "³"])
def test_a_split_file_label_that_only_looks_like_a_number_is_refused(label, tmp_path):
    root = tmp_path / "data"
    rows = build(root)
    rows["train"][0][1] = label
    save(root, rows)
    with pytest.raises(DipclipError, match=r"train\[0\] = .* is not \[relative_path, label, classname\]"):
        api.load_data(str(root), "imagefolder")


def test_ascii_digit_labels_are_read_as_before(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "train.csv").write_text("a.png, 0 ,cat\nb.png,01,dog\n")
    (root / "test.csv").write_text("c.png,0,cat\nd.png,1,dog\n")
    splits = api.load_data(str(root), "csv")
    assert [x.label for x in splits.train] == [0, 1] and splits.classnames == ["cat", "dog"]
