"""CSV datasets whose label column holds class names (issue 22, item 7)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_run import assert_refused, run
from PIL import Image

from dipclip import api
from dipclip.data.datasets import load_dataset
from dipclip.errors import DipclipError

COLORS = {"red fox": (200, 30, 30), "grey wolf": (120, 120, 120), "arctic hare": (230, 230, 240),
          "brown bear": (120, 70, 20)}


def write_csvs(root: Path, files: dict[str, list[tuple[str, str]]], images: bool = False) -> Path:
    """``root/<split>.csv`` with ``path,label`` rows (no header); optionally the 8x8 images they list."""
    root.mkdir(parents=True, exist_ok=True)
    for split, rows in files.items():
        (root / f"{split}.csv").write_text("".join(f"{p},{label}\n" for p, label in rows))
        for p, label in rows if images else ():
            (root / p).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), COLORS.get(label, (0, 90, 200))).save(root / p)
    return root


def by_name(split: str, names: list[str], per_class: int) -> list[tuple[str, str]]:
    return [(f"img/{split}_{name.replace(' ', '_')}_{i}.png", name) for i in range(per_class) for name in names]


def as_integers(rows: list[tuple[str, str]], classnames: list[str]) -> list[tuple[str, str]]:
    return [(p, str(classnames.index(name))) for p, name in rows]


def view(splits) -> tuple:
    """What a run reads of a dataset: the class list and each split's (path, label, classname) items."""
    return (splits.classnames, *([(d.path, d.label, d.classname) for d in splits.split(s)]
                                 for s in ("train", "val", "test")))


def test_a_names_csv_reads_as_the_equivalent_integer_csv_with_classnames_txt(tmp_path):
    order = ["grey wolf", "red fox", "arctic hare"]  # classnames.txt order, not sorted
    named = {"train": by_name("train", ["red fox", "arctic hare", "grey wolf"], 2),
             "val": by_name("val", ["arctic hare", "grey wolf"], 1),
             "test": by_name("test", ["grey wolf", "red fox", "arctic hare"], 1)}
    for folder, files in (("names", named), ("ints", {s: as_integers(r, order) for s, r in named.items()})):
        write_csvs(tmp_path / folder, files)
        (tmp_path / folder / "classnames.txt").write_text("\n".join(order) + "\n")
    names, ints = load_dataset(tmp_path / "names", "csv"), load_dataset(tmp_path / "ints", "csv")
    strip = str(tmp_path / "names"), str(tmp_path / "ints")
    assert view(names)[0] == order
    assert repr(view(names)).replace(strip[0], "ROOT") == repr(view(ints)).replace(strip[1], "ROOT")
    assert [(d.label, d.classname) for d in names.train[:3]] == [(1, "red fox"), (2, "arctic hare"), (0, "grey wolf")]


def test_a_single_names_csv_with_a_split_column_and_spaces_around_names(tmp_path):
    (tmp_path / "all.csv").write_text("path,label,split\na.png,  grey wolf ,train\nb.png,red fox,train\n"
                                      "c.png,red fox,test\nd.png,grey wolf,test\n")
    splits = load_dataset(tmp_path / "all.csv", "csv")
    assert splits.classnames == ["grey wolf", "red fox"]
    assert [(d.label, d.classname) for d in splits.train + splits.test] == [
        (0, "grey wolf"), (1, "red fox"), (1, "red fox"), (0, "grey wolf")]


def test_without_classnames_txt_the_classes_are_the_sorted_names_of_every_split(tmp_path):
    # 'ant' and 'zebra' appear only in val / test: the class index still comes from all the files together
    write_csvs(tmp_path, {"train": [("a.png", "dog"), ("b.png", "cat"), ("c.png", "Bee")],
                          "val": [("d.png", "zebra")],
                          "test": [("e.png", "ant"), ("f.png", "dog")]})
    splits = load_dataset(tmp_path, "csv")
    assert splits.classnames == ["Bee", "ant", "cat", "dog", "zebra"]  # exact names, sorted as Python sorts text
    assert [d.label for d in splits.train] == [3, 2, 0]
    assert [d.label for d in splits.val] == [4] and [d.label for d in splits.test] == [1, 3]


def test_base_and_new_halves_match_the_integer_csv(tmp_path):
    names = sorted(COLORS)
    named = {"train": by_name("train", names, 1), "test": by_name("test", names[::-1], 1)}
    write_csvs(tmp_path / "names", named)
    write_csvs(tmp_path / "ints", {s: as_integers(r, names) for s, r in named.items()})
    (tmp_path / "ints" / "classnames.txt").write_text("\n".join(names) + "\n")
    for half, classes in (("base", names[:2]), ("new", names[2:])):
        got = api.load_data(str(tmp_path / "names"), "csv", subsample=half)
        want = api.load_data(str(tmp_path / "ints"), "csv", subsample=half)
        assert got.classnames == want.classnames == classes
        assert [(Path(d.path).name, d.label) for d in got.test] == [(Path(d.path).name, d.label) for d in want.test]


def test_an_unknown_name_is_refused_with_its_file_line_and_close_matches(tmp_path, capsys):
    root = write_csvs(tmp_path / "d", {"train": [("a.png", "red fox"), ("b.png", "grey wolf")],
                                       "test": [("c.png", "red fox"), ("d.png", "grey wolf")]})
    (root / "classnames.txt").write_text("red fox\ngrey wolf\n")
    (root / "test.csv").write_text("c.png,red fox\n\nd.png,Grey wolfs\ne.png,Grey wolfs\n")  # line 2 is blank
    code, _, err = run(["data", "split", "--data", root, "--dataset", "csv", "--shots", "1", "--seed", "1"], capsys)
    assert_refused(code, err, f"{root / 'test.csv'}:3: class 'Grey wolfs' is not in {root / 'classnames.txt'} "
                              "(close: 'grey wolf'); 2 row(s) use 1 unknown name(s)", "add it to")


def test_mixed_integer_and_name_labels_are_refused_in_one_line(tmp_path, capsys):
    root = write_csvs(tmp_path / "d", {"train": [("a.png", "cat"), ("b.png", "dog"), ("c.png", "7")],
                                       "test": [("d.png", "cat"), ("e.png", "dog")]})
    code, _, err = run(["data", "split", "--data", root, "--dataset", "csv", "--shots", "1", "--seed", "1"], capsys)
    assert_refused(code, err, f"{root / 'train.csv'}:3: label '7' is an integer but {root / 'train.csv'}:1 has a "
                              "class name label 'cat' (1 integer and 4 class-name label(s))",
                   "a class named by digits alone needs integer labels")


def test_a_header_that_does_not_start_with_path_is_pointed_at(tmp_path):
    (tmp_path / "train.csv").write_text("file,class\na.png,0\nb.png,1\n")
    (tmp_path / "test.csv").write_text("c.png,0\nd.png,1\n")
    with pytest.raises(DipclipError, match=r"train.csv:1: label 'class' is a class name .* \(a header row must name "
                                           r"the columns path,label"):
        load_dataset(tmp_path, "csv")


def test_a_classname_column_that_disagrees_with_a_name_label_is_refused(tmp_path):
    (tmp_path / "train.csv").write_text("path,label,classname\na.png,cat,cat\nb.png,dog,puppy\n")
    (tmp_path / "test.csv").write_text("c.png,cat\nd.png,dog\n")
    with pytest.raises(DipclipError, match=r"train.csv:3: the label 'dog' names the class but the classname column "
                                           r"says 'puppy'"):
        load_dataset(tmp_path, "csv")


def test_classnames_txt_listing_a_name_twice_is_refused_for_name_labels(tmp_path):
    write_csvs(tmp_path, {"train": [("a.png", "cat"), ("b.png", "dog")], "test": [("c.png", "cat")]})
    (tmp_path / "classnames.txt").write_text("cat\ndog\ncat\n")
    with pytest.raises(DipclipError, match=r"classnames.txt lists class 'cat' twice"):
        load_dataset(tmp_path, "csv")


@pytest.mark.parametrize("label", ["3.0", "-1", "１", "½"])
def test_a_label_that_looks_like_a_number_is_not_taken_for_a_class_name(tmp_path, label):
    write_csvs(tmp_path, {"train": [("a.png", "cat"), ("b.png", label)], "test": [("c.png", "cat")]})
    with pytest.raises(DipclipError, match=r"train.csv:2: expected 'path,label\[,classname\]' with an integer label"):
        load_dataset(tmp_path, "csv")


@pytest.fixture
def names_folder(tmp_path) -> Path:
    """Four coloured classes named in the label column: 2 train and 1 test image each."""
    names = sorted(COLORS)
    return write_csvs(tmp_path / "animals", {"train": by_name("train", names, 2), "test": by_name("test", names, 1)},
                      images=True)


def test_doctor_passes_a_names_csv_folder(names_folder, capsys):
    code, out, err = run(["doctor", "--data", names_folder, "--dataset", "csv", "--full"], capsys)
    assert code == 0, out + err
    assert "checked csv: 8 train, 0 val, 4 test images, 12 decoded" in out
    assert "no problems found in 1 dataset(s)" in out


def test_one_epoch_of_training_on_a_names_csv(names_folder, tmp_path, tiny_config_path):
    metrics = api.train("coop", model=str(tiny_config_path), pretrained="none", data=str(names_folder),
                        dataset="csv", shots=2, epochs=1, batch_size=4, subsample="base", out=tmp_path / "run",
                        progress=False)
    assert [h["epoch"] for h in metrics["history"]] == [1]
    assert metrics["num_classes"] == 2 and metrics["num_train_images"] == 4  # arctic hare, brown bear
    assert metrics["results"]["base"]["n"] == 2 and metrics["results"]["new"]["n"] == 2
