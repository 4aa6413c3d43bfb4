from __future__ import annotations

import json

import pytest

from dipclip.data.datasets import load_dataset
from dipclip.data.make_split import build_split, make_split, split_counts
from dipclip.errors import DipclipError


@pytest.fixture
def tree(tmp_path, write_img):
    root = tmp_path / "custom"
    for cls, n in (("red_fox", 10), ("wolf", 5)):
        for i in range(n):
            write_img(root / cls / f"{i:02d}.png")
    return root


def test_counts_are_50_20_30_with_one_each_at_least():
    assert split_counts(10) == (5, 2, 3)
    assert split_counts(3) == (1, 1, 1)
    assert split_counts(4) == (2, 1, 1)
    for n in range(3, 60):
        assert sum(split_counts(n)) == n and min(split_counts(n)) >= 1


def test_split_is_deterministic_relative_and_readable(tree):
    first = build_split(tree, seed=1)
    assert first == build_split(tree, seed=1)
    assert first != build_split(tree, seed=2)
    assert [len(first[s]) for s in ("train", "val", "test")] == [5 + 2, 2 + 1, 3 + 2]
    rows = first["train"] + first["val"] + first["test"]
    assert sorted(r[0] for r in rows) == sorted(f"{c}/{i:02d}.png" for c, n in (("red_fox", 10), ("wolf", 5))
                                               for i in range(n))
    assert {(r[1], r[2]) for r in rows} == {(0, "red fox"), (1, "wolf")}

    path = make_split(tree, seed=1)
    assert path == tree / "split_dipclip.json"
    assert json.loads(path.read_text()) == first
    assert sorted(p.name for p in tree.iterdir()) == ["red_fox", "split_dipclip.json", "wolf"]  # no temp file
    splits = load_dataset(tree, "imagefolder")
    assert splits.classnames == ["red fox", "wolf"]
    assert [d.path for d in splits.test] == [str(tree / r[0]) for r in first["test"]]


def test_existing_split_is_kept_unless_forced(tree, tmp_path):
    make_split(tree, seed=1)
    with pytest.raises(DipclipError, match="already exists.*--force"):
        make_split(tree, seed=2)
    make_split(tree, seed=2, force=True)
    assert json.loads((tree / "split_dipclip.json").read_text()) == build_split(tree, seed=2)
    out = make_split(tree, tmp_path / "elsewhere" / "s.json", seed=3)
    assert out.is_file()


def test_too_small_classes_and_bad_folders(tmp_path, write_img):
    write_img(tmp_path / "t" / "tiny" / "0.png")
    with pytest.raises(DipclipError, match=r"at least 3 images.*tiny \(1\)"):
        build_split(tmp_path / "t")
    with pytest.raises(DipclipError, match="not a folder"):
        build_split(tmp_path / "missing")
    (tmp_path / "e").mkdir()
    with pytest.raises(DipclipError, match="no class folders"):
        build_split(tmp_path / "e")
