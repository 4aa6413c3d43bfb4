"""Bad input at the command line: every case ends with one ``dipclip: error:`` line, exit status 2, no
traceback, and nothing already written is lost.

The cases run ``dipclip.cli.main`` in-process (fast); ``test_no_traceback_in_a_real_process`` checks a few of
them in a subprocess, where a traceback would really reach the terminal.
"""

from __future__ import annotations

import json

import pytest

from dipclip import api
from dipclip.cli import main
from dipclip.errors import DipclipError


def run(argv, capsys) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_info:  # argparse errors and --help
        code = exit_info.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_refused(code: int, err: str, *expected: str) -> str:
    """Exit 2, the last stderr line is the one error line, it says each of ``expected``; return that line."""
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = err.rstrip("\n").split("\n")
    line = lines[-1]
    assert line.startswith("dipclip: error: "), err
    assert not any(other.startswith("dipclip: error") for other in lines[:-1]), err
    for text in expected:
        assert text in line, line
    return line


# ---- item 6: no silent random weights -------------------------------------------------------------------

def no_weights_cases(tiny_config_path, image_tree, tmp_path):
    data = ["--data", image_tree, "--dataset", "imagefolder"]
    image = next((image_tree / "test" / "red_apple").iterdir())
    return {
        "train config": ["train", "--model", tiny_config_path, *data, "--out", tmp_path / "r"],
        "train name": ["train", "--model", "ViT-B-32", *data, "--out", tmp_path / "r"],
        "zeroshot": ["zeroshot", "--model", tiny_config_path, *data],
        "predict": ["predict", image, "--classes", "a,b", "--model", tiny_config_path],
        "base2new": ["base2new", "--model", tiny_config_path, "--data", image_tree, "--datasets", "imagefolder",
                     "--out", tmp_path / "p"],
        "demo": ["demo", "--model", tiny_config_path, "--out", tmp_path / "d"],
    }


@pytest.mark.parametrize("case", ["train config", "train name", "zeroshot", "predict", "base2new", "demo"])
def test_a_model_without_pretrained_is_refused(case, tiny_config_path, image_tree, tmp_path, capsys):
    argv = no_weights_cases(tiny_config_path, image_tree, tmp_path)[case]
    code, _, err = run(argv, capsys)
    assert_refused(code, err, "without --pretrained", "pass `--pretrained none` for random weights")
    assert "weights:" not in err  # refused before any model was built
    assert not (tmp_path / "r").exists() and not (tmp_path / "p").exists() and not (tmp_path / "d").exists()


def test_no_backbone_at_all_says_what_to_pass(image_tree, capsys):
    code, _, err = run(["zeroshot", "--data", image_tree, "--dataset", "imagefolder"], capsys)
    assert_refused(code, err, "no backbone given", "--pretrained dipclip-tiny")


def test_embedded_weights_with_another_model_are_refused(image_tree, capsys):
    code, _, err = run(["zeroshot", "--model", "ViT-B-16", "--pretrained", "dipclip-tiny", "--data", image_tree,
                        "--dataset", "imagefolder"], capsys)
    assert_refused(code, err, "dipclip's own model", "drop --model ViT-B-16")


def test_the_api_refuses_too(tiny_config_path, image_tree, tmp_path):
    with pytest.raises(DipclipError, match="pass `--pretrained none` for random weights"):
        api.train("coop", model=str(tiny_config_path), data=str(image_tree), dataset="imagefolder",
                  out=tmp_path / "r")
    with pytest.raises(DipclipError, match="pass `--pretrained none` for random weights"):
        api.zeroshot(model=str(tiny_config_path), data=str(image_tree), dataset="imagefolder")


def test_every_run_prints_its_weights(tiny_config_path, image_tree, tmp_path, capsys):
    data = ["--data", image_tree, "--dataset", "imagefolder"]
    code, _, err = run(["zeroshot", "--model", tiny_config_path, "--pretrained", "none", *data], capsys)
    assert code == 0
    lines = [line for line in err.splitlines() if line.startswith("weights:")]
    assert lines == [lines[0]] and lines[0].startswith("weights: RANDOM (--pretrained none) for tiny-clip")
    image = next((image_tree / "test" / "red_apple").iterdir())
    code, _, err = run(["predict", image, "--classes", "apple,sky", "--pretrained", "dipclip-tiny",
                        "--device", "cpu"], capsys)
    assert code == 0
    assert [line for line in err.splitlines() if line.startswith("weights:")] == [
        next(line for line in err.splitlines() if line.startswith("weights: dipclip-tiny for dipclip-tiny ["))]


def test_train_then_eval_prints_the_weights_of_the_adapter(tiny_config_path, image_tree, tmp_path, capsys):
    data = ["--data", image_tree, "--dataset", "imagefolder"]
    code, _, err = run(["train", "--method", "coop", "--model", tiny_config_path, "--pretrained", "none", *data,
                        "--shots", "1", "--epochs", "1", "--quiet", "--out", tmp_path / "run"], capsys)
    assert code == 0, err
    assert sum(line.startswith("weights: RANDOM") for line in err.splitlines()) == 1
    code, _, err = run(["eval", "--adapter", tmp_path / "run" / "adapter", *data], capsys)
    assert code == 0 and sum(line.startswith("weights: RANDOM") for line in err.splitlines()) == 1
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["config"]["pretrained"] == "none"
