from __future__ import annotations

import json
import os

import pytest

from dipclip.data.datasets import load_dataset, read_dataset
from dipclip.data.registry import DATASET_KEYS, DATASETS, STANDARD_KEYS, dataset_info
from dipclip.errors import DipclipError

JSON_KEYS = [k for k, v in DATASETS.items() if v.layout == "json"]


def test_registry_covers_the_reference_table():
    assert STANDARD_KEYS == ("imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
                             "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101", "imagenetv2",
                             "imagenet_sketch", "imagenet_a", "imagenet_r")
    assert {"imagefolder", "csv"} <= set(DATASET_KEYS)
    for info in DATASETS.values():
        if info.base_new is not None:
            assert sum(info.base_new) == info.num_classes
            assert info.base_new[0] == -(-info.num_classes // 2)  # base = ceil(n/2)
    assert DATASETS["dtd"].template == "{} texture."
    assert DATASETS["stanford_cars"].template == "a photo of a {}."


@pytest.mark.parametrize("key", JSON_KEYS)
def test_every_json_layout(fx, key):
    info = DATASETS[key]
    fx.json_dataset(folder=info.folder, image_dir=info.image_dir, split_file=info.split_file, images=False)
    splits = load_dataset(fx.root, key)
    expected_root = fx.root / info.folder / info.image_dir if info.image_dir else fx.root / info.folder
    assert splits.image_root == expected_root
    assert splits.template == info.template
    assert splits.name == key
    assert splits.classnames == ["abyssinian", "american bulldog", "beagle"]
    assert [len(splits.train), len(splits.val), len(splits.test)] == [12, 6, 6]
    first = splits.train[0]
    assert os.path.isabs(first.path)
    assert first.path == os.path.join(expected_root, "abyssinian/train_0.jpg")
    assert (first.label, first.classname) == (0, "abyssinian")


def test_json_split_order_and_classes_from_all_splits(fx):
    split = {
        "train": [["b/1.jpg", 1, "bee"], ["a/1.jpg", 0, "ant"]],
        "val": [["a/2.jpg", "0", "ant"]],  # Dassl reads labels with int()
        "test": [["c/1.jpg", 2, "cat"]],  # a class with no train item still belongs to the class list
    }
    (fx.root / "dtd" / "images").mkdir(parents=True)
    (fx.root / "dtd" / "split_zhou_DescribableTextures.json").write_text(json.dumps(split))
    splits = load_dataset(fx.root, "dtd")
    assert splits.classnames == ["ant", "bee", "cat"]
    assert [d.label for d in splits.train] == [1, 0]
    assert splits.val[0].label == 0


def test_data_may_point_at_the_dataset_folder_itself(fx):
    fx.json_dataset(images=False)
    splits = load_dataset(fx.root / "oxford_pets", "oxford_pets")
    assert len(splits.train) == 12


def test_unknown_key_lists_known_keys(fx):
    with pytest.raises(DipclipError, match="oxford_pets.*imagenet_r.*imagefolder"):
        load_dataset(fx.root, "pets")


def test_missing_folder_names_it_and_the_layout(fx):
    fx.root.mkdir()
    with pytest.raises(DipclipError) as err:
        load_dataset(fx.root, "oxford_pets")
    msg = str(err.value)
    assert str(fx.root / "oxford_pets") in msg and "split_zhou_OxfordPets.json" in msg and "\n" not in msg


def test_missing_split_file_and_image_folder(fx):
    (fx.root / "eurosat").mkdir(parents=True)
    splits, problems = read_dataset(fx.root, "eurosat")
    assert splits is None
    messages = " | ".join(p.message for p in problems)
    assert "split_zhou_EuroSAT.json" in messages
    with pytest.raises(DipclipError, match="split_zhou_EuroSAT.json not found"):
        load_dataset(fx.root, "eurosat")


def test_bad_json_and_conflicting_names(fx):
    fx.json_dataset(images=False)
    path = fx.root / "oxford_pets" / "split_zhou_OxfordPets.json"
    path.write_text('{"train": [')
    with pytest.raises(DipclipError, match="not valid JSON"):
        load_dataset(fx.root, "oxford_pets")
    path.write_text(json.dumps({"train": [["a.jpg", 0, "x"], ["b.jpg", 0, "y"]], "val": [], "test": [["c", 2, "z"]]}))
    _, problems = read_dataset(fx.root, "oxford_pets")
    messages = [p.message for p in problems]
    assert any("named both 'x' and 'y'" in m for m in messages)
    assert any("never used (1)" in m for m in messages)
    path.write_text(json.dumps({"train": [["a.jpg", 0]], "val": []}))
    _, problems = read_dataset(fx.root, "oxford_pets")
    assert any("is not [relative_path, label, classname]" in p.message for p in problems)
    assert any("no 'test' list" in p.message for p in problems)


def test_fgvc_aircraft_text_files(fx):
    fx.aircraft()
    splits = load_dataset(fx.root, "fgvc_aircraft")
    assert splits.classnames == ["707-320", "A300B4", "Cessna 172"]
    assert [len(splits.train), len(splits.val), len(splits.test)] == [9, 6, 6]
    last = splits.train[-1]
    assert (last.label, last.classname) == (2, "Cessna 172")
    assert last.path == str(fx.root / "fgvc_aircraft" / "images" / "1000008.jpg")
    assert splits.template == "a photo of a {}, a type of aircraft."
    with open(fx.root / "fgvc_aircraft" / "images_variant_test.txt", "a") as f:
        f.write("1999999 Boeing 999\n")
    with pytest.raises(DipclipError, match="'Boeing 999' is not in variants.txt"):
        load_dataset(fx.root, "fgvc_aircraft")


def test_imagenet_classnames_and_folders(fx, wnids):
    fx.imagenet(wnids)
    (fx.root / "imagenet" / "images" / "train" / "n01440764" / ".hidden.JPEG").write_bytes(b"")
    (fx.root / "imagenet" / "images" / "train" / "n01440764" / "notes.txt").write_text("not an image")
    splits = load_dataset(fx.root, "imagenet")
    assert splits.classnames == list(wnids.values())
    assert splits.num_classes == 6
    assert len(splits.train) == 18 and len(splits.test) == 12
    assert splits.val == splits.test and splits.val is not splits.test  # val folder is the test set
    assert splits.train[0].path.endswith(os.path.join("train", "n01440764", "n01440764_0.JPEG"))
    assert {d.label for d in splits.train if d.classname == "great white shark"} == {2}
    assert splits.image_root == fx.root / "imagenet" / "images"


def test_imagenet_missing_class_folder_is_an_error(fx, wnids):
    fx.imagenet(wnids)
    for p in (fx.root / "imagenet" / "images" / "val" / "n01494475").iterdir():
        p.unlink()
    (fx.root / "imagenet" / "images" / "val" / "n01494475").rmdir()
    with pytest.raises(DipclipError, match="lacks 1 class folder.*n01494475"):
        load_dataset(fx.root, "imagenet")


def test_imagenetv2_label_is_folder_number(fx, wnids):
    fx.imagenetv2(wnids)
    splits = load_dataset(fx.root, "imagenetv2")
    assert splits.train == [] and splits.val == []
    assert len(splits.test) == 12
    by_label = {d.label: (os.path.basename(os.path.dirname(d.path)), d.classname) for d in splits.test}
    assert by_label[3] == ("3", "tiger shark")
    assert splits.classnames == list(wnids.values())


@pytest.mark.parametrize("key", ["imagenet_a", "imagenet_r"])
def test_imagenet_a_r_use_present_wnids_only(fx, wnids, key):
    info = DATASETS[key]
    present = ["n01496331", "n01443537", "n01484850"]
    fx.wnid_folders(info.folder, info.image_dir, wnids, present)
    (fx.root / info.folder / info.image_dir / "README.txt").write_text("ignored")
    splits = load_dataset(fx.root, key)
    assert splits.classnames == ["goldfish", "great white shark", "electric ray"]  # classnames.txt order
    assert sorted({d.label for d in splits.test}) == [0, 1, 2]
    assert {d.classname for d in splits.test if d.label == 2} == {"electric ray"}


def test_imagenet_sketch_keeps_imagenet_labels(fx, wnids):
    fx.wnid_folders("imagenet-sketch", "images", wnids, ["n01440764", "n01496331"])
    splits = load_dataset(fx.root, "imagenet_sketch")
    assert splits.num_classes == 6
    assert sorted({d.label for d in splits.test}) == [0, 5]


def test_wnid_folder_not_in_classnames_is_an_error(fx, wnids):
    fx.wnid_folders("imagenet-rendition", "imagenet-r", wnids, ["n01440764", "n99999999"])
    with pytest.raises(DipclipError, match="n99999999"):
        load_dataset(fx.root, "imagenet_r")


def test_imagefolder_with_split_subfolders(tmp_path, write_img):
    for split, n in (("train", 3), ("val", 1), ("test", 2)):
        for cls in ("golden_retriever", "cat"):
            for i in range(n):
                write_img(tmp_path / split / cls / f"{i}.png")
    splits = load_dataset(tmp_path, "imagefolder")
    assert splits.classnames == ["cat", "golden retriever"]
    assert [len(splits.train), len(splits.val), len(splits.test)] == [6, 2, 4]
    assert splits.train[-1].classname == "golden retriever" and splits.train[-1].label == 1
    assert splits.image_root == tmp_path


def test_imagefolder_single_tree_without_a_split_is_refused(tmp_path, write_img):
    # used as train and test at once it would report accuracy on the training images (issue 11, item 7)
    for cls in ("b_class", "a_class"):
        for i in range(2):
            write_img(tmp_path / cls / f"{i}.jpg")
    with pytest.raises(DipclipError, match=rf"no split .* `dipclip data make-split --data {tmp_path}`"):
        load_dataset(tmp_path, "imagefolder")


def test_csv_single_file_with_split_column(tmp_path):
    (tmp_path / "data.csv").write_text(
        "path,label,classname,split\n"
        "img/a.jpg,0,apple,train\nimg/b.jpg,1,banana,train\nimg/c.jpg,1,banana,val\n"
        f"{tmp_path}/abs/d.jpg,2,cherry,test\n"
    )
    splits = load_dataset(tmp_path / "data.csv", "csv")
    assert splits.classnames == ["apple", "banana", "cherry"]
    assert [d.path for d in splits.train] == [str(tmp_path / "img" / "a.jpg"), str(tmp_path / "img" / "b.jpg")]
    assert [d.label for d in splits.val] == [1]
    assert splits.test[0].path == f"{tmp_path}/abs/d.jpg"  # absolute paths under the CSV's folder are fine


def test_csv_folder_without_header_and_classnames_txt(tmp_path):
    (tmp_path / "train.csv").write_text("x/1.png,0\nx/2.png,1\n")
    (tmp_path / "test.csv").write_text("x/3.png,1\n")
    with pytest.raises(DipclipError, match="no class name"):
        load_dataset(tmp_path, "csv")
    (tmp_path / "classnames.txt").write_text("red fox\ngrey wolf\n")
    splits = load_dataset(tmp_path, "csv")
    assert splits.classnames == ["red fox", "grey wolf"]
    assert splits.val == [] and splits.test[0].classname == "grey wolf"


@pytest.mark.parametrize("row", ["a.jpg,2.5", "a.jpg,", ",dog"])
def test_csv_rejects_bad_rows(tmp_path, row):
    # a decimal label, no label, no path (a label such as 'dog' is a class name: tests/test_csv_labels.py)
    (tmp_path / "d.csv").write_text(f"path,label,split\n{row},train\n")
    with pytest.raises(DipclipError, match=r"d.csv:2: expected 'path,label\[,classname\]' with an integer label"):
        load_dataset(tmp_path / "d.csv", "csv")


def test_dataset_info_unknown_key():
    with pytest.raises(DipclipError, match="unknown dataset"):
        dataset_info("cifar10")
