from __future__ import annotations

import argparse
import dataclasses
import json

import pytest

from dipclip.cli.data import add_commands as add_data_commands
from dipclip.data import registry
from dipclip.data.datasets import load_dataset
from dipclip.data.sampling import few_shot_splits
from dipclip.errors import DipclipError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dipclip")
    add_data_commands(p.add_subparsers(dest="command"))
    return p


def run(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    return args.func(args)


def test_data_split_prints_relative_json(fx, capsys):
    fx.json_dataset(sizes=(4, 3, 2), images=False)
    rc = run(["data", "split", "--data", str(fx.root), "--dataset", "oxford_pets", "--shots", "2", "--seed", "3",
              "--subsample", "base"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    expected = few_shot_splits(load_dataset(fx.root, "oxford_pets"), fx.root, "oxford_pets", 2, 3, "base")
    assert out["source"] == "sampled" and out["classnames"] == ["abyssinian", "american bulldog"]
    assert [(r["path"], r["label"], r["classname"]) for r in out["train"]] == [
        (d.path.removeprefix(str(expected.image_root) + "/"), d.label, d.classname) for d in expected.train]
    assert len(out["val"]) == 4 and not any(r["path"].startswith("/") for r in out["train"] + out["val"])


def test_data_split_to_file_and_errors(fx, tmp_path, capsys):
    fx.json_dataset(images=False)
    out = tmp_path / "sel.json"
    assert run(["data", "split", "--data", str(fx.root), "--dataset", "oxford_pets", "--shots", "1", "--seed", "1",
                "--out", str(out)]) == 0
    assert len(json.loads(out.read_text())["train"]) == 3
    with pytest.raises(DipclipError, match="--shots"):
        run(["data", "split", "--data", str(fx.root), "--dataset", "oxford_pets", "--shots", "0", "--seed", "1"])
    with pytest.raises(DipclipError, match="not found"):
        run(["data", "split", "--data", str(fx.root), "--dataset", "dtd", "--shots", "1", "--seed", "1"])
    with pytest.raises(SystemExit):
        parser().parse_args(["data", "split", "--data", "x", "--dataset", "nope", "--shots", "1", "--seed", "1"])
    assert "invalid choice" in capsys.readouterr().err


def test_make_split_command(tmp_path, write_img, capsys):
    for cls in ("a", "b"):
        for i in range(4):
            write_img(tmp_path / "imgs" / cls / f"{i}.png")
    assert run(["data", "make-split", "--data", str(tmp_path / "imgs"), "--seed", "4"]) == 0
    assert "4 train, 2 val, 2 test" in capsys.readouterr().out
    with pytest.raises(DipclipError, match="--force"):
        run(["data", "make-split", "--data", str(tmp_path / "imgs")])
    assert run(["data", "make-split", "--data", str(tmp_path / "imgs"), "--force"]) == 0


def test_doctor_command_exit_codes(fx, monkeypatch, capsys):
    fx.json_dataset()
    assert run(["doctor", "--data", str(fx.root)]) == 1  # 3 classes, not 37
    out = capsys.readouterr().out
    assert "[oxford_pets] found 3 classes, but OxfordPets has 37" in out and "fix:" in out
    info = dataclasses.replace(registry.DATASETS["oxford_pets"], num_classes=3, split_sizes=(12, 6, 6))
    monkeypatch.setitem(registry.DATASETS, "oxford_pets", info)
    assert run(["doctor", "--data", str(fx.root), "--dataset", "oxford_pets", "--full"]) == 0
    out = capsys.readouterr().out
    assert "checked oxford_pets: 12 train, 6 val, 6 test images, 24 decoded" in out
    assert "no problems found in 1 dataset(s)" in out


def test_help_has_descriptions_and_examples(capsys):
    p = parser()
    for argv in (["data", "split", "-h"], ["data", "make-split", "-h"], ["doctor", "-h"]):
        with pytest.raises(SystemExit):
            p.parse_args(argv)
        text = capsys.readouterr().out
        assert "examples:" in text and "dipclip " in text
    args = p.parse_args(["data"])
    assert args.func(args) == 2
