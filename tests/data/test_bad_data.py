"""Data is checked before the first epoch and before the model loads (issue 11, items 5 and 7).

Every case builds a small dataset with one thing wrong and asserts the one-line refusal. The model path
given does not exist: the data error must come first, so no case spends a second on a backbone.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_image

from dipclip import api
from dipclip.data import images as images_module
from dipclip.data.doctor import doctor
from dipclip.data.types import DatasetSplits, Datum
from dipclip.errors import DipclipError

CLASSES = ("cat", "dog", "fox")
SRC = str(Path(__file__).resolve().parents[2] / "src")


def build(root: Path, train: int = 2, test: int = 2) -> dict:
    """``root/<class>/{train,test}<i>.png`` and the split rows listing them (written by :func:`save`)."""
    rows: dict[str, list] = {"train": [], "val": [], "test": []}
    for label, name in enumerate(CLASSES):
        for split, count in (("train", train), ("test", test)):
            for i in range(count):
                rel = f"{name}/{split}{i}.png"
                write_image(root / rel, color=(80 * label, 20 * i, 90))
                rows[split].append([rel, label, name])
    return rows


def save(root: Path, rows: dict) -> None:
    (root / "split_dipclip.json").write_text(json.dumps(rows))


def replace_with(root: Path, rel: str, make) -> None:
    path = root / rel
    path.unlink()
    make(path)


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _socket(path: Path) -> None:
    here = os.getcwd()
    os.chdir(path.parent)  # AF_UNIX names are limited to ~100 bytes: bind by a short relative name
    try:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(path.name)
        sock.close()
    finally:
        os.chdir(here)


def _outside_file(tmp: Path) -> Path:
    target = tmp / "elsewhere" / "secret.png"
    write_image(target)
    return target


# (what is wrong, how to make it so: fn(root, rows, tmp) -> rows, the refusal)
STRUCTURE = {
    "empty training split": (lambda r, rows, t: rows | {"train": []}, "imagefolder has no training images under"),
    "empty test split": (lambda r, rows, t: rows | {"test": []}, "the test split of imagefolder .* is empty"),
    "a class without training images": (
        lambda r, rows, t: rows | {"train": [x for x in rows["train"] if x[1] != 1]},
        r"1 class\(es\) of imagefolder .* have no training images: 'dog'"),
    "a single class": (
        lambda r, rows, t: {k: [x for x in v if x[1] == 0] for k, v in rows.items()},
        r"has a single class \('cat'\) to train on"),
    "duplicate class names": (
        lambda r, rows, t: {k: [[p, lab, "cat" if lab == 1 else n] for p, lab, n in v] for k, v in rows.items()},
        "names several classes 'cat'; class names must be unique"),
    "a label gap": (
        lambda r, rows, t: {k: [[p, 3 if lab == 2 else lab, n] for p, lab, n in v] for k, v in rows.items()},
        "labels must run from 0 to 3 but 1 are never used"),
    "one label, two names": (
        lambda r, rows, t: rows | {"test": rows["test"] + [["fox/train0.png", 2, "wolf"]]},
        "label 2 is named both 'fox' and 'wolf'"),
    "a '../' path": (
        lambda r, rows, t: rows | {"test": rows["test"] + [["../elsewhere/secret.png", 0, "cat"]]},
        r"test\[6\] path '../elsewhere/secret.png' leaves the image folder"),
    "a deep '../' path": (
        lambda r, rows, t: rows | {"train": rows["train"] + [["cat/../../../../etc/passwd", 0, "cat"]]},
        "leaves the image folder"),
    "an absolute path outside": (
        lambda r, rows, t: rows | {"train": rows["train"] + [[str(_outside_file(t)), 0, "cat"]]},
        r"train\[6\] path '.*secret.png' leaves the image folder"),
    "a symlinked image leading outside": (
        lambda r, rows, t: (replace_with(r, "dog/test1.png", lambda p: p.symlink_to(_outside_file(t))), rows)[1],
        r"image .*dog/test1.png resolves to .*elsewhere/secret.png, outside the data root"),
    "a symlinked class folder leading outside": (
        lambda r, rows, t: (os.symlink(_outside_file(t).parent, r / "ext"),
                            rows | {"train": rows["train"] + [["ext/secret.png", 0, "cat"]]})[1],
        "resolves to .*elsewhere/secret.png, outside the data root"),
    "a named pipe in the test split": (
        lambda r, rows, t: (replace_with(r, "fox/test0.png", _fifo), rows)[1],
        r"image path .*fox/test0.png is a named pipe, not an image file"),
    "a named pipe in the training split": (
        lambda r, rows, t: (replace_with(r, "cat/train1.png", _fifo), rows)[1], "is a named pipe"),
    "a socket in the test split": (
        lambda r, rows, t: (replace_with(r, "dog/test0.png", _socket), rows)[1], "is a socket, not an image file"),
    "a folder in place of an image": (
        lambda r, rows, t: (replace_with(r, "dog/test0.png", lambda p: p.mkdir()), rows)[1],
        "is a folder, not an image file"),
    "a missing test image": (
        lambda r, rows, t: (os.unlink(r / "fox/test1.png"), rows)[1], r"image not found: .*fox/test1.png"),
    "a missing training image": (lambda r, rows, t: (os.unlink(r / "cat/train0.png"), rows)[1], "image not found"),
    "a symlink loop": (
        lambda r, rows, t: (replace_with(r, "cat/test0.png", lambda p: p.symlink_to(p)), rows)[1],
        r"cannot read image .*cat/test0.png \(Too many levels of symbolic links\)"),
    "a dangling symlink": (
        lambda r, rows, t: (replace_with(r, "cat/test1.png", lambda p: p.symlink_to(r / "gone.png")), rows)[1],
        "image not found"),
    "random bytes as a test image": (
        lambda r, rows, t: ((r / "dog/test1.png").write_bytes(os.urandom(300)), rows)[1], "cannot decode image"),
    "an empty test image": (
        lambda r, rows, t: ((r / "dog/test1.png").write_bytes(b""), rows)[1], "cannot decode image"),
    "a text file named .png": (
        lambda r, rows, t: ((r / "cat/test1.png").write_text("hello"), rows)[1], "cannot decode image"),
    "a truncated PNG": (
        lambda r, rows, t: ((r / "cat/test1.png").write_bytes((r / "cat/test1.png").read_bytes()[:60]), rows)[1],
        "cannot decode image .*cat/test1.png"),
    "a PNG with a damaged chunk": (
        lambda r, rows, t: ((r / "fox/train0.png").write_bytes(_flip_byte((r / "fox/train0.png").read_bytes())),
                            rows)[1],
        "cannot decode image .*fox/train0.png"),
}


def _flip_byte(data: bytes) -> bytes:
    """One byte of the IDAT chunk changed: the header still opens, the chunk checksum fails."""
    at = data.index(b"IDAT") + 6
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "data"
    return root, build(root)


@pytest.mark.parametrize("case", list(STRUCTURE), ids=list(STRUCTURE))
def test_bad_data_is_refused_before_the_model_loads(case, dataset, tmp_path):
    make, refusal = STRUCTURE[case]
    root, rows = dataset
    save(root, make(root, rows, tmp_path))
    with pytest.raises(DipclipError, match=refusal):
        api.train("coop", model=str(tmp_path / "no-such-model.json"), pretrained="none", data=str(root), dataset="imagefolder",
                  shots=2, epochs=1, out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.parametrize("case", ["empty test split", "a named pipe in the test split", "a '../' path",
                                  "a symlinked image leading outside", "random bytes as a test image",
                                  "duplicate class names", "a single class"])
def test_zeroshot_checks_the_split_it_evaluates_first(case, dataset, tmp_path):
    make, refusal = STRUCTURE[case]
    root, rows = dataset
    save(root, make(root, rows, tmp_path))
    refusal = refusal.replace("the test split of imagefolder .* is empty", "the test split of .* is empty")
    refusal = refusal.replace(r" to train on", "")
    with pytest.raises(DipclipError, match=refusal):
        api.zeroshot(model=str(tmp_path / "no-such-model.json"), pretrained="none", data=str(root), dataset="imagefolder")


def test_a_bad_new_class_test_image_fails_a_base_run_before_training(dataset, tmp_path):
    root, rows = dataset
    replace_with(root, "fox/test0.png", _fifo)  # fox is the new half of cat/dog/fox
    save(root, rows)
    with pytest.raises(DipclipError, match="fox/test0.png is a named pipe"):
        api.train("coop", model=str(tmp_path / "none.json"), pretrained="none", data=str(root), dataset="imagefolder", shots=2,
                  subsample="base", out=tmp_path / "run", progress=False)


def test_an_image_above_the_pixel_limit_is_refused(dataset, tmp_path, monkeypatch):
    root, rows = dataset
    save(root, rows)
    monkeypatch.setattr(images_module, "MAX_IMAGE_PIXELS", 63)  # the 8x8 images have 64
    with pytest.raises(DipclipError, match=r"is 8x8 \(0 Mpx\), above the 0 Mpx safety limit"):
        api.train("coop", model=str(tmp_path / "none.json"), pretrained="none", data=str(root), dataset="imagefolder", shots=2,
                  out=tmp_path / "run", progress=False)


@pytest.mark.parametrize("label, classname, refusal", [
    (3, "fox", "has label 3, outside the 3 classes 0..2"),
    (-1, "fox", "has label -1, outside the 3 classes"),
    (1, "fox", r"is labelled 1 \('fox'\) but class 1 is 'dog'"),
])
def test_labels_that_do_not_match_the_class_list_are_refused(dataset, tmp_path, label, classname, refusal):
    root, rows = dataset
    items = [Datum(str(root / p), lab, name) for p, lab, name in rows["train"]]
    splits = DatasetSplits("mine", list(CLASSES), items + [Datum(items[0].path, label, classname)], [],
                           [Datum(str(root / p), lab, name) for p, lab, name in rows["test"]], image_root=root)
    with pytest.raises(DipclipError, match=refusal):
        api.train("coop", model=str(tmp_path / "none.json"), pretrained="none", splits=splits, shots=None, out=tmp_path / "run",
                  progress=False)


@pytest.mark.parametrize("rel", ["fox/../fox/train0.png", "./fox/train1.png", "ABSOLUTE"])
def test_paths_that_stay_inside_the_root_are_fine(dataset, rel):
    from dipclip.data.datasets import load_dataset
    from dipclip.data.validate import check_for_training

    root, rows = dataset
    rows["train"].append([str(root / "fox/train1.png") if rel == "ABSOLUTE" else rel, 2, "fox"])
    save(root, rows)
    assert check_for_training(load_dataset(root, "imagefolder")) == []


def test_class_folders_that_show_as_the_same_name_are_refused(tmp_path):
    for split in ("train", "test"):
        for folder in ("red_apple", "red apple", "leaf"):
            write_image(tmp_path / "tree" / split / folder / "0.png")
    with pytest.raises(DipclipError, match="names several classes 'red apple'"):
        api.train("coop", model=str(tmp_path / "none.json"), pretrained="none", data=str(tmp_path / "tree"), dataset="imagefolder",
                  shots=1, out=tmp_path / "run", progress=False)


def test_a_symlinked_data_root_and_links_inside_it_are_fine(dataset, tmp_path):
    from dipclip.data.datasets import load_dataset
    from dipclip.data.validate import check_for_training

    root, rows = dataset
    replace_with(root, "dog/train0.png", lambda p: p.symlink_to(root / "dog/train1.png"))
    save(root, rows)
    linked = tmp_path / "linked"
    linked.symlink_to(root)
    assert check_for_training(load_dataset(linked, "imagefolder")) == []


def test_skip_bad_images_turns_unreadable_images_into_one_warning(dataset, tmp_path):
    from dipclip.data.datasets import load_dataset
    from dipclip.data.validate import check_for_training

    root, rows = dataset
    (root / "dog/test1.png").write_bytes(b"junk")
    replace_with(root, "fox/test0.png", _fifo)
    save(root, rows)
    warnings = check_for_training(load_dataset(root, "imagefolder"), [("test", load_dataset(root, "imagefolder"),
                                                                         False)], skip_bad_images=True)
    assert len(warnings) == 1 and warnings[0].startswith("2 of 6 images cannot be read and will be skipped")


def test_a_named_pipe_never_hangs_an_evaluation_with_skip_bad_images(dataset, tmp_path, tiny_config_path):
    root, rows = dataset
    replace_with(root, "fox/test0.png", _fifo)
    save(root, rows)
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail("opening the named pipe blocked"))
    signal.alarm(120)
    try:
        metrics = api.zeroshot(model=str(tiny_config_path), pretrained="none", data=str(root), dataset="imagefolder",
                               skip_bad_images=True, feature_cache=False)
    finally:
        signal.alarm(0)
    assert metrics["results"]["test"]["n"] == 5
    assert metrics["data_warnings"][0].startswith("1 of 6 images cannot be read and will be skipped")


def test_shots_above_a_class_count_warn_once_with_the_counts_and_go_into_metrics(dataset, tmp_path,
                                                                                  tiny_config_path, capsys):
    root, rows = dataset
    rows["train"] = [x for x in rows["train"] if not (x[1] == 2 and x[0].endswith("1.png"))]  # fox: 1 image
    save(root, rows)
    metrics = api.train("coop", model=str(tiny_config_path), pretrained="none", data=str(root), dataset="imagefolder", shots=2,
                        epochs=1, batch_size=2, out=tmp_path / "run", progress=False)
    line = "--shots 2, but 1 of 3 classes have fewer training images ('fox' 1); they train on all they have"
    assert metrics["data_warnings"] == [line]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["data_warnings"] == [line]
    assert capsys.readouterr().err.count(f"dipclip: warning: {line}") == 1
    assert metrics["num_train_images"] == 5


def test_the_cli_refuses_a_named_pipe_in_one_line_exit_2(dataset, tmp_path, tiny_config_path):
    root, rows = dataset
    replace_with(root, "fox/test0.png", _fifo)
    save(root, rows)
    done = subprocess.run([sys.executable, "-m", "dipclip", "train", "--model", str(tiny_config_path), "--pretrained", "none", "--data",
                           str(root), "--dataset", "imagefolder", "--shots", "2", "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=300, env=os.environ | {"PYTHONPATH": SRC})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"dipclip: error: image path {root / 'fox/test0.png'} is a named pipe, not an image file; fix the split "
        "file (for a dataset, `dipclip doctor` lists every bad file)"]


# ----------------------------------------------------------------------------------------------------
# No train-test leakage (item 7)


def test_a_single_image_tree_is_refused_with_a_pointer_to_make_split(tmp_path):
    root = tmp_path / "tree"
    for name in CLASSES:
        for i in range(3):
            write_image(root / name / f"{i}.png")
    with pytest.raises(DipclipError, match=rf"{root} has class folders but no split .* so the same images would "
                                           rf"be trained and tested on; write a 50/20/30 split with `dipclip data "
                                           rf"make-split --data {root}`"):
        api.train("coop", model=str(tmp_path / "none.json"), pretrained="none", data=str(root), dataset="imagefolder",
                  out=tmp_path / "run", progress=False)
    from dipclip.data.make_split import make_split

    make_split(root)
    splits = api.load_data(str(root), "imagefolder")
    train, test = {d.path for d in splits.train}, {d.path for d in splits.test}
    assert train and test and not train & test


def test_a_train_folder_without_test_is_refused(tmp_path):
    for name in CLASSES:
        write_image(tmp_path / "tree" / "train" / name / "0.png")
    with pytest.raises(DipclipError, match="has train/ but no test/ .* nothing to test on"):
        api.load_data(str(tmp_path / "tree"), "imagefolder")


@pytest.mark.parametrize("text, refusal", [
    ("path,label,classname\na.png,0,cat\nb.png,1,dog\n", r"2 row\(s\) have no split"),
    ("a.png,0,cat\nb.png,1,dog\n", r"2 row\(s\) have no split"),
    ("path,label,classname,split\na.png,0,cat,train\nb.png,1,dog,\nc.png,1,dog,test\n", r"1 row\(s\) have no split"),
    ("path,label,classname,split\n../a.png,0,cat,train\nb.png,1,dog,test\n", "path '../a.png' lies outside"),
    ("path,label,classname,split\n/etc/a.png,0,cat,train\nb.png,1,dog,test\n", "path '/etc/a.png' lies outside"),
])
def test_csv_without_a_split_or_with_paths_outside_is_refused(tmp_path, text, refusal):
    (tmp_path / "d.csv").write_text(text)
    with pytest.raises(DipclipError, match=refusal):
        api.load_data(str(tmp_path / "d.csv"), "csv")


def test_csv_class_names_that_disagree_with_classnames_txt_are_refused(tmp_path):
    (tmp_path / "train.csv").write_text("a.png,0,cat\nb.png,1,wolf\n")
    (tmp_path / "test.csv").write_text("c.png,1,wolf\n")
    (tmp_path / "classnames.txt").write_text("cat\ndog\n")
    with pytest.raises(DipclipError, match=r"a row names label 1 'wolf' but .*classnames.txt names it 'dog' \(2 such row"):
        api.load_data(str(tmp_path), "csv")


# ----------------------------------------------------------------------------------------------------
# doctor reports what a run refuses


def test_doctor_reports_links_out_of_the_root_pipes_and_duplicate_names(dataset, tmp_path):
    root, rows = dataset
    replace_with(root, "dog/test1.png", lambda p: p.symlink_to(_outside_file(tmp_path)))
    replace_with(root, "fox/test0.png", _fifo)
    rows = {k: [[p, lab, "cat" if lab == 1 else n] for p, lab, n in v] for k, v in rows.items()}
    save(root, rows)
    messages = [p.message for p in doctor(root, "imagefolder", fast=False)]
    assert any("dog/test1.png resolves to" in m and "outside the data root" in m for m in messages)
    assert any("fox/test0.png is not a regular file" in m for m in messages)
    assert any("class names 'cat' are given to several labels" in m for m in messages)


def test_doctor_reports_a_split_path_leaving_the_root(dataset, tmp_path):
    root, rows = dataset
    rows["train"].append(["../../x.png", 0, "cat"])
    save(root, rows)
    assert any("leaves the image folder" in p.message for p in doctor(root, "imagefolder"))


def test_the_shipped_demo_passes_every_check():
    from dipclip.data.validate import check_for_training

    splits = api.load_data(None, "demo", shots=16)
    assert check_for_training(splits, [("test", splits, False)]) == []
