"""``dipclip predict`` on folders and globs, with --output CSV/JSON: the same rows as the listed files."""

from __future__ import annotations

import csv
import json
import os
import shutil

import pytest
from cli_run import assert_refused, run


@pytest.fixture
def photos(image_tree, tmp_path):
    """A nested folder of the test images, plus what a folder walk must leave out."""
    root = tmp_path / "photos"
    shutil.copytree(image_tree / "test", root / "test")
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(b"not an image either")
    (root / "loop.png").symlink_to("loop.png")  # a symlink loop named like an image: skipped with a warning
    (root / "test" / "up").symlink_to("..")  # a linked folder back up the tree: walked once, not forever
    return root


def _listed(root) -> list[str]:
    files = [os.path.join(folder, name) for folder, _, names in os.walk(root / "test")
             for name in names if name.endswith(".png")]
    return sorted(files, key=lambda path: path.split(os.sep))


def _predict(args, out_file, tiny_config_path, capsys):
    code, out, err = run(["predict", *args, "--classes", "red apple,green leaf,blue sky", "--model",
                          tiny_config_path, "--pretrained", "none", "--device", "cpu", "--top-k", "2",
                          "--output", out_file, "--quiet"], capsys)
    assert code == 0, err
    return out, err


def _rows(path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def test_a_folder_and_a_glob_give_the_rows_of_the_listed_files(photos, tiny_config_path, tmp_path, capsys):
    files = _listed(photos)
    assert len(files) == 12
    _predict(files, tmp_path / "files.csv", tiny_config_path, capsys)
    out, err = _predict([photos], tmp_path / "folder.csv", tiny_config_path, capsys)
    assert "skipped 1 image name" in err and "folder.csv" in out
    _predict([f"{photos}/**/*.png"], tmp_path / "glob.csv", tiny_config_path, capsys)
    rows = _rows(tmp_path / "files.csv")
    assert rows[0] == ["path", "class_1", "probability_1", "class_2", "probability_2"]
    assert [row[0] for row in rows[1:]] == files
    assert _rows(tmp_path / "folder.csv") == rows
    assert _rows(tmp_path / "glob.csv") == rows


def test_json_output_holds_the_documented_fields(photos, tiny_config_path, tmp_path, capsys):
    _predict([photos], tmp_path / "preds.json", tiny_config_path, capsys)
    _predict([photos], tmp_path / "preds.csv", tiny_config_path, capsys)
    payload = json.loads((tmp_path / "preds.json").read_text())
    assert set(payload) == {"method", "classnames", "predictions"} and payload["method"] == "zeroshot"
    assert payload["classnames"] == ["red apple", "green leaf", "blue sky"]
    from_json = [[item["image"]] + [str(v) for top in item["top"] for v in (top["class"], top["probability"])]
                 for item in payload["predictions"]]
    assert from_json == _rows(tmp_path / "preds.csv")[1:]
    assert all(sorted(top) == ["class", "probability"] for item in payload["predictions"] for top in item["top"])


def test_without_output_the_screen_shows_every_image_of_the_folder(photos, tiny_config_path, capsys):
    code, out, err = run(["predict", photos / "test" / "red_apple", "--classes", "a,b", "--model", tiny_config_path,
                          "--pretrained", "none", "--device", "cpu", "--quiet"], capsys)
    assert code == 0, err
    assert [line.split(":")[0] for line in out.splitlines()] == [path for path in _listed(photos) if "red_apple" in path]


def test_a_folder_without_images_is_refused_before_loading(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    code, _, err = run(["predict", tmp_path / "empty", "--classes", "a,b", "--pretrained", "dipclip-tiny"], capsys)
    assert str(tmp_path / "empty") in assert_refused(code, err, "is a folder holding no image files")
    code, _, err = run(["predict", f"{tmp_path}/*.jpg", "--classes", "a,b", "--pretrained", "dipclip-tiny"], capsys)
    assert_refused(code, err, f"no file matches {tmp_path}/*.jpg")
    assert "weights:" not in err


def test_output_replaces_only_an_earlier_predict_output(photos, tiny_config_path, tmp_path, capsys):
    other = tmp_path / "preds.csv"
    other.write_text("name,score\nx,1\n")
    code, _, err = run(["predict", photos, "--classes", "a,b", "--model", tiny_config_path, "--pretrained", "none",
                        "--output", other], capsys)
    assert str(other) in assert_refused(code, err, "did not write")
    assert other.read_text() == "name,score\nx,1\n"
    code, _, err = run(["predict", photos, "--classes", "a,b", "--pretrained", "dipclip-tiny", "--output",
                        tmp_path / "preds.txt"], capsys)
    assert_refused(code, err, "must end in .csv or .json")
    other.unlink()
    _predict([photos / "test" / "blue_sky"], other, tiny_config_path, capsys)
    _predict([photos / "test" / "red_apple"], other, tiny_config_path, capsys)  # its own output: replaced
    assert [row[0] for row in _rows(other)[1:]] == [path for path in _listed(photos) if "red_apple" in path]
