"""Our few-shot cache verifies what it returns (issue 11, item 3): a damaged, edited or foreign file is
resampled and rewritten with a one-line warning, never used."""

from __future__ import annotations

import json
import os
import time

import pytest

from dipclip.data.datasets import load_dataset
from dipclip.data.sampling import (
    FEWSHOT_CACHE_FORMAT,
    CacheMismatch,
    cache_file,
    read_cache,
    select_few_shot,
    split_fingerprint,
)


def _edit(change):
    def edit(text):
        obj = json.loads(text)
        change(obj)
        return json.dumps(obj)
    return edit


def _swap_first_train_row(obj):
    """Replace the first selected image by an unselected one of the same class: valid-looking, but not the draw."""
    row = obj["train"][0]
    chosen = {r[0] for r in obj["train"]}
    other = row[0].rsplit("_", 1)[0] + "_" + next(str(i) for i in range(9) if f"{row[0].rsplit('_', 1)[0]}_{i}.jpg"
                                                   not in chosen) + ".jpg"
    obj["train"][0] = [other, row[1], row[2]]


DAMAGE = {
    "a swapped image (checksum)": (_edit(_swap_first_train_row), "fails its checksum"),
    "a dropped image (checksum)": (_edit(lambda o: o["train"].pop()), "fails its checksum"),
    "other shots": (_edit(lambda o: o.update(shots=4)), "made for another shots"),
    "another seed": (_edit(lambda o: o.update(seed=9)), "made for another seed"),
    "another split": (_edit(lambda o: o.update(split="0" * 12)), "made for another split"),
    "another dataset": (_edit(lambda o: o.update(dataset="dtd")), "made for another dataset"),
    "the old format": (_edit(lambda o: o.update(format="dipclip-fewshot/1")), "is not a dipclip-fewshot/2 file"),
    "no format": (_edit(lambda o: o.pop("format")), "is not a dipclip-fewshot/2 file"),
    "train not a list": (_edit(lambda o: o.update(train={"a": 1})), "does not hold train and val lists"),
    "a list, not an object": (lambda text: "[1, 2, 3]", "is not a dipclip-fewshot/2 file"),
    "truncated JSON": (lambda text: text[: len(text) // 2], "cannot be read (JSONDecodeError)"),
    "empty file": (lambda text: "", "cannot be read (JSONDecodeError)"),
    "not UTF-8": (lambda text: "\udcff", "cannot be read"),
    "nested too deeply": (lambda text: "[" * 100_000 + "]" * 100_000, "cannot be read (RecursionError)"),
    "a row outside the split": (_edit(lambda o: o["train"].__setitem__(0, ["x/y.jpg", 0, "abyssinian"])),
                                "fails its checksum"),
}


@pytest.fixture
def pets(fx):
    fx.json_dataset(sizes=(5, 3, 2), images=False)
    return load_dataset(fx.root, "oxford_pets")


@pytest.mark.parametrize("damage", list(DAMAGE), ids=list(DAMAGE))
def test_a_bad_cache_file_is_resampled_with_one_warning(damage, pets, fx, tmp_path, capsys):
    edit, reason = DAMAGE[damage]
    cache_dir = tmp_path / "cache"
    first = select_few_shot(pets, fx.root, "oxford_pets", 2, 5, cache_dir=cache_dir)
    path = cache_file(cache_dir, "oxford_pets", 2, 5, split_fingerprint(pets))
    good = path.read_text()
    edited = edit(good)
    path.write_bytes(edited.encode("utf-8", "surrogateescape"))
    with pytest.raises(CacheMismatch, match=reason.replace("(", r"\(").replace(")", r"\)")):
        read_cache(path, pets, 2, 5)
    capsys.readouterr()
    again = select_few_shot(pets, fx.root, "oxford_pets", 2, 5, cache_dir=cache_dir)
    assert again.source == "sampled" and again.train == first.train and again.val == first.val
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"dipclip: warning: few-shot cache {path} ")
    assert reason in lines[0] and lines[0].endswith("resampling it from the split file (it is never used)")
    assert path.read_text() == good  # rewritten; the next run reads it back silently
    assert select_few_shot(pets, fx.root, "oxford_pets", 2, 5, cache_dir=cache_dir).source == "cache"
    assert capsys.readouterr().err == ""


def test_a_cache_records_what_it_was_made_for(pets, fx, tmp_path):
    select_few_shot(pets, fx.root, "oxford_pets", 2, 5, cache_dir=tmp_path)
    obj = json.loads(cache_file(tmp_path, "oxford_pets", 2, 5, split_fingerprint(pets)).read_text())
    assert obj["format"] == FEWSHOT_CACHE_FORMAT and obj["dataset"] == "oxford_pets"
    assert (obj["split"], obj["shots"], obj["seed"]) == (split_fingerprint(pets), 2, 5)
    assert len(obj["sha256"]) == 64 and len(obj["train"]) == 6


def test_temporaries_of_killed_cache_writes_are_removed_once_stale(pets, fx, tmp_path):
    folder = tmp_path / "oxford_pets"
    folder.mkdir()
    old, recent = folder / ".shot_2-seed_5-abc.json.q1w2e3r4.tmp", folder / ".shot_4-seed_1-abc.json.q2w3e4r5.tmp"
    for path in (old, recent):
        path.write_text("{")
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    select_few_shot(pets, fx.root, "oxford_pets", 2, 5, cache_dir=tmp_path)
    assert not old.exists() and recent.exists()
