"""Bad input at the command line: every case ends with one ``dipclip: error:`` line, exit status 2, no
traceback, and nothing already written is lost.

The cases run ``dipclip.cli.main`` in-process (fast); ``test_no_traceback_in_a_real_process`` checks a few of
them in a subprocess, where a traceback would really reach the terminal.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_run import assert_refused, run

from dipclip import api
from dipclip.errors import DipclipError

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


# ---- item 9: one error boundary ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_config_path, image_tree):
    """A real adapter (CoOp, 1 epoch) on the tiny random CLIP; tests corrupt copies of it."""
    root = tmp_path_factory.mktemp("trained")
    api.train("coop", model=str(tiny_config_path), pretrained="none", data=str(image_tree), dataset="imagefolder",
              shots=1, epochs=1, batch_size=3, progress=False, device="cpu", out=root / "run", feature_cache=False)
    return root / "run"


def _edit_config(folder: Path, change) -> None:
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _self_loop(path: Path) -> None:
    path.unlink()
    path.symlink_to(path.name)


def _fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
ADAPTER_DAMAGE = {
    "config not JSON": (lambda a: (a / CONFIG).write_text("{not json"), "is not valid JSON"),
    "config truncated": (lambda a: _truncate(a / CONFIG), "is not valid JSON"),
    "config nested 100k deep": (lambda a: (a / CONFIG).write_text("[" * 100_000), "nested too deeply"),
    "config a JSON list": (lambda a: (a / CONFIG).write_text("[1, 2]"), "holds a JSON list"),
    "config not UTF-8": (lambda a: (a / CONFIG).write_bytes(b"\xff\xfe{\x00"), "not UTF-8"),
    "config empty": (lambda a: (a / CONFIG).write_text(""), "is not valid JSON"),
    "config without backbone": (lambda a: _edit_config(a, lambda c: c.pop("backbone")), "lacks or mangles backbone"),
    "config prompt a string": (lambda a: _edit_config(a, lambda c: c.update(prompt="x")), "prompt/backbone"),
    "config other format": (lambda a: _edit_config(a, lambda c: c.update(format="peft")), "not a dipclip adapter"),
    "config unknown prompt key": (lambda a: _edit_config(a, lambda c: c["prompt"].update(bogus=1)),
                                  "invalid prompt section"),
    "config unknown method": (lambda a: _edit_config(a, lambda c: c.update(method="nope")), "unknown method 'nope'"),
    "config a symlink loop": (lambda a: _self_loop(a / CONFIG), "not an adapter folder"),
    "config a FIFO": (lambda a: _fifo(a / CONFIG), "not an adapter folder"),
    "config missing": (lambda a: (a / CONFIG).unlink(), "not an adapter folder"),
    "weights truncated": (lambda a: _truncate(a / WEIGHTS), "damaged or not a safetensors file"),
    "weights garbage": (lambda a: (a / WEIGHTS).write_bytes(b"garbage!" * 4), "damaged or not a safetensors file"),
    "weights empty": (lambda a: (a / WEIGHTS).write_bytes(b""), "damaged or not a safetensors file"),
    "weights of another prompt": (
        lambda a: __import__("safetensors.torch").torch.save_file({"zzz": torch.zeros(3)}, str(a / WEIGHTS)),
        "do not match this prompt"),
    "weights a FIFO": (lambda a: _fifo(a / WEIGHTS), "not an adapter folder"),
    "weights a folder": (lambda a: ((a / WEIGHTS).unlink(), (a / WEIGHTS).mkdir()), "not an adapter folder"),
}


@pytest.mark.parametrize("command", ["eval", "density"])
@pytest.mark.parametrize("damage", sorted(ADAPTER_DAMAGE))
def test_a_damaged_adapter_is_one_line(damage, command, trained, image_tree, tmp_path, capsys):
    adapter = tmp_path / "adapter"
    shutil.copytree(trained / "adapter", adapter)
    change, expected = ADAPTER_DAMAGE[damage]
    change(adapter)
    argv = (["eval", "--adapter", adapter, "--data", image_tree, "--dataset", "imagefolder", "--device", "cpu"]
            if command == "eval" else ["density", adapter, "--device", "cpu"])
    code, out, err = run(argv, capsys)
    line = assert_refused(code, err, expected)
    assert str(adapter) in line and out == ""


def _weights(folder: Path, name: str, content: bytes | None) -> Path:
    path = folder / name
    if content is not None:
        path.write_bytes(content)
    return path


@pytest.mark.parametrize("name,content,expected", [
    ("w.safetensors", b"\x00" * 3, "damaged or not a safetensors file"),
    ("w.safetensors", b"\xff" * 64, "damaged or not a safetensors file"),
    ("w.pt", b"PK\x03\x04 not really a zip", "cannot read weights file"),
    ("w.bin", b"", "cannot read weights file"),
    ("missing.pt", None, "weights file not found"),
])
def test_damaged_weights_files_are_one_line(name, content, expected, tiny_config_path, image_tree, tmp_path, capsys):
    weights = _weights(tmp_path, name, content)
    code, _, err = run(["zeroshot", "--model", tiny_config_path, "--pretrained", weights, "--data", image_tree,
                        "--dataset", "imagefolder"], capsys)
    assert name in assert_refused(code, err, expected)


def _write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


MODEL_CONFIGS = {
    "not JSON": (lambda p: _write(p, "{"), "is not valid JSON"),
    "nested 100k deep": (lambda p: _write(p, "{\"a\": " * 100_000), "nested too deeply"),
    "a JSON list": (lambda p: _write(p, "[]"), "holds a JSON list"),
    "not UTF-8": (lambda p: _write(p, b"\xc3\x28{}"), "not UTF-8"),
    "missing towers": (lambda p: _write(p, json.dumps({"embed_dim": 8})), "needs embed_dim, vision_cfg and text_cfg"),
    "towers not objects": (lambda p: _write(p, json.dumps({"embed_dim": 8, "vision_cfg": 1, "text_cfg": 2})),
                           "needs embed_dim, vision_cfg and text_cfg"),
    "a folder": (lambda p: p.mkdir(), "is a folder"),
    "a FIFO": (lambda p: os.mkfifo(p), "not a regular file"),
    "a symlink loop": (lambda p: p.symlink_to(p.name), "symlink loop"),
    "missing": (lambda p: None, "model config not found"),
}


@pytest.mark.parametrize("case", sorted(MODEL_CONFIGS))
def test_bad_model_config_files_are_one_line(case, image_tree, tmp_path, capsys):
    path = tmp_path / "my-clip.json"
    make, expected = MODEL_CONFIGS[case]
    make(path)
    code, _, err = run(["zeroshot", "--model", path, "--pretrained", "none", "--data", image_tree,
                        "--dataset", "imagefolder"], capsys)
    assert "my-clip.json" in assert_refused(code, err, expected)


def out_cases(tiny_config_path, image_tree, trained):
    model = ["--model", tiny_config_path, "--pretrained", "none"]
    data = ["--data", image_tree, "--dataset", "imagefolder"]
    adapter = trained / "adapter"
    image = next((image_tree / "test" / "red_apple").iterdir())
    return {
        "train": ["train", *model, *data],
        "eval": ["eval", "--adapter", adapter, *data],
        "zeroshot": ["zeroshot", *model, *data],
        "predict": ["predict", image, "--adapter", adapter],
        "density": ["density", adapter],
        "export": ["export", adapter],
        "demo": ["demo", "--quick"],
        "base2new": ["base2new", *model, "--data", image_tree, "--datasets", "imagefolder"],
        "analyze": ["analyze", trained],
        "plot": ["plot", trained / "summary.json"],
    }


@pytest.mark.parametrize("under", [False, True], ids=["is a file", "below a file"])
@pytest.mark.parametrize("command", ["train", "eval", "zeroshot", "predict", "density", "export", "demo",
                                     "base2new", "analyze", "plot"])
def test_out_that_is_a_file_is_refused_before_any_work(command, under, tiny_config_path, image_tree, trained,
                                                        tmp_path, capsys):
    blocker = tmp_path / "results.txt"
    blocker.write_text("an earlier result\n")
    out = blocker / "sub" if under else blocker
    argv = out_cases(tiny_config_path, image_tree, trained)[command] + ["--out", out]
    code, out_text, err = run(argv, capsys)
    line = assert_refused(code, err, "argument --out", str(blocker))
    assert ("cannot be created" if under else "is a file, not a folder") in line
    assert "weights:" not in err and blocker.read_text() == "an earlier result\n"


@pytest.mark.parametrize("argv,expected", [
    (["data", "split", "--dataset", "demo", "--shots", "1", "--seed", "1", "--out", "{tmp}"], "is a folder"),
    (["data", "make-split", "--data", "{tmp}", "--out", "{tmp}"], "is a folder"),
    (["data", "split", "--dataset", "demo", "--shots", "0", "--seed", "1"], "--shots: must be >= 1"),
    (["data", "split", "--dataset", "demo", "--shots", "1", "--seed", "x"], "expected a whole number from 0 to"),
])
def test_data_command_outputs_and_flags(argv, expected, tmp_path, capsys):
    code, _, err = run([a.replace("{tmp}", str(tmp_path)) for a in argv], capsys)
    assert_refused(code, err, expected)


TRAIN = ["train", "--data", "x", "--dataset", "imagefolder"]


@pytest.mark.parametrize("flags,expected", [
    (["--lr", "-1"], "--lr: must be a finite number > 0"),
    (["--lr", "0"], "--lr: must be a finite number > 0"),
    (["--lr", "inf"], "--lr: must be a finite number > 0"),
    (["--lr", "nan"], "--lr: must be a finite number > 0"),
    (["--lr", "fast"], "--lr: expected a number > 0"),
    (["--lambda-do", "nan"], "--lambda-do: must be a finite number"),
    (["--lambda-pp=-inf"], "--lambda-pp: must be a finite number"),
    (["--epochs", "0"], "--epochs: must be >= 1"),
    (["--batch-size", "0"], "--batch-size: must be >= 1"),
    (["--shots", "-1"], "--shots: must be >= 1"),
    (["--shots", "1.5"], "--shots: expected a whole number"),
    (["--workers", "-1"], "--workers: must be >= 0"),
    (["--views", "0"], "--views: expected 'fresh' or a whole number >= 1"),
    (["--views", "many"], "--views: expected 'fresh' or a whole number >= 1"),
    (["--seed", "1.5"], "--seed: expected a whole number from 0 to"),
    (["--n-ctx", "0"], "--n-ctx: must be >= 1"),
    (["--rank", "0"], "--rank: must be >= 1"),
    (["--dip-dropout", "1"], "--dip-dropout: must be in [0, 1)"),
    (["--dip-dropout", "nan"], "--dip-dropout: must be in [0, 1)"),
    (["--optimizer", "lamb"], "invalid choice: 'lamb'"),
    (["--subsample", "half"], "invalid choice: 'half'"),
    (["--class-position", "top"], "invalid choice: 'top'"),
    (["--dip-init", "svd"], "invalid choice: 'svd'"),
    (["--bogus-flag"], "unrecognized arguments: --bogus-flag"),
    (["--out", ""], "--out: the path is empty"),
])
def test_bad_train_flags_are_one_line(flags, expected, capsys):
    code, _, err = run(TRAIN + flags, capsys)
    assert_refused(code, err, expected)


@pytest.mark.parametrize("argv,expected", [
    (["base2new", "--data", "x", "--lr", "-0.1"], "--lr: must be a finite number > 0"),
    (["fewshot", "--data", "x", "--shots", "0"], "--shots: must be >= 1"),
    (["eval", "--data", "x", "--dataset", "imagefolder"], "the following arguments are required: --adapter"),
    (["eval", "--adapter", "a", "--data", "x", "--dataset", "imagefolder", "--split", "dev"], "invalid choice: 'dev'"),
    (["predict"], "the following arguments are required: images"),
    (["predict", "a.png", "--top-k", "0"], "--top-k: must be >= 1"),
    (["density", "a", "--k", "0"], "--k: must be >= 1"),
    (["train", "--data", "x"], "the following arguments are required: --dataset"),
    (["nosuchcommand"], "invalid choice: 'nosuchcommand'"),
])
def test_other_bad_flags_are_one_line(argv, expected, capsys):
    code, _, err = run(argv, capsys)
    assert_refused(code, err, expected)


def test_a_full_disk_names_the_file_and_keeps_the_adapter(tiny_config_path, image_tree, tmp_path, monkeypatch,
                                                          capsys):
    def full(path, payload):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr("dipclip.api.common.atomic_write_json", full)  # where _write_metrics looks it up
    out = tmp_path / "run"
    code, _, err = run(["train", "--method", "coop", "--model", tiny_config_path, "--pretrained", "none",
                        "--data", image_tree, "--dataset", "imagefolder", "--shots", "1", "--epochs", "1",
                        "--quiet", "--out", out, "--no-feature-cache"], capsys)
    assert_refused(code, err, f"{out / 'metrics.json'}: no space left on the device", "write to another folder")
    assert (out / "adapter" / "adapter_model.safetensors").is_file()  # what was computed before is kept
    assert (out / "checkpoint.pt").is_file()


def test_a_read_only_folder_names_the_file(trained, image_tree, tmp_path, monkeypatch, capsys):
    def read_only(path, data):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr("dipclip.api.deployment.atomic_write_bytes", read_only)  # where export looks it up
    code, _, err = run(["export", trained / "adapter", "--out", tmp_path / "exp"], capsys)
    assert_refused(code, err, str(tmp_path / "exp" / "classifier.safetensors"), "read-only file system")


@pytest.mark.parametrize("exc,expected", [
    (MemoryError(), "out of memory"),
    (RecursionError("maximum recursion depth exceeded"), "nested too deeply"),
    (OSError(errno.ELOOP, "Too many levels of symbolic links", "/data/x"), "/data/x: too many levels of symbolic"),
    (OSError(errno.EMFILE, "Too many open files"), "too many open files"),
    (ValueError("something odd\nsecond line"), "unexpected ValueError: something odd; rerun with --debug"),
])
def test_unexpected_exceptions_become_one_line(exc, expected, monkeypatch, capsys):
    def boom(args):
        raise exc

    monkeypatch.setattr("dipclip.cli.analysis.cmd_analyze", boom)
    monkeypatch.delenv("DIPCLIP_DEBUG", raising=False)
    code, _, err = run(["analyze", "somewhere"], capsys)
    assert err.count("\n") == 1
    assert_refused(code, err, expected)


@pytest.mark.parametrize("how", ["flag after the command", "flag before the command", "environment"])
def test_debug_shows_the_traceback(how, monkeypatch, capsys):
    argv = ["density", "/nonexistent/adapter"]
    if how == "environment":
        monkeypatch.setenv("DIPCLIP_DEBUG", "1")
    else:
        argv = argv + ["--debug"] if how == "flag after the command" else ["--debug"] + argv
    code, _, err = run(argv, capsys)
    assert code == 2 and "Traceback" in err
    assert err.rstrip().split("\n")[-1].startswith("dipclip: error: /nonexistent/adapter is not an adapter folder")


def test_files_honour_the_umask(trained, tmp_path, capsys):
    before = os.umask(0o027)
    try:
        code, _, err = run(["export", trained / "adapter", "--out", tmp_path / "exp"], capsys)
    finally:
        os.umask(before)
    assert code == 0, err
    for name in ("classifier.safetensors", "classifier.json"):
        assert stat.S_IMODE((tmp_path / "exp" / name).stat().st_mode) == 0o640
    assert stat.S_IMODE((trained / "adapter" / CONFIG).stat().st_mode) == 0o666 & ~before


def test_tilde_is_expanded_in_path_flags(trained, image_tree, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    shutil.copytree(trained / "adapter", tmp_path / "my-adapter")
    shutil.copytree(image_tree, tmp_path / "images")
    code, _, err = run(["eval", "--adapter", "~/my-adapter", "--data", "~/images", "--dataset", "imagefolder",
                        "--out", "~/ev"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["results"]["test"]["n"] == 12
    code, _, err = run(["density", "~/my-adapter", "--out", "~/den"], capsys)
    assert code == 0 and (tmp_path / "den" / "density.json").is_file()


def test_a_config_file_adapter_evaluates_from_any_folder(tiny_config_path, image_tree, tmp_path, monkeypatch,
                                                        capsys):
    config = tmp_path / "configs" / "my-clip.json"
    config.parent.mkdir()
    shutil.copy(tiny_config_path, config)
    monkeypatch.chdir(config.parent)
    code, _, err = run(["train", "--method", "coop", "--model", "my-clip.json", "--pretrained", "none",
                        "--data", image_tree, "--dataset", "imagefolder", "--shots", "1", "--epochs", "1",
                        "--quiet", "--out", tmp_path / "run"], capsys)
    assert code == 0, err
    trained_on = json.loads((tmp_path / "run" / "metrics.json").read_text())["results"]["test"]
    config.unlink()  # neither the relative path nor the file itself is needed any more
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, out, err = run(["eval", "--adapter", tmp_path / "run" / "adapter", "--data", image_tree,
                          "--dataset", "imagefolder", "--out", "ev"], capsys)
    assert code == 0, err
    assert json.loads((elsewhere / "ev" / "metrics.json").read_text())["results"]["test"] == trained_on


def test_predict_and_export_default_to_the_training_classes(trained, image_tree, tmp_path, capsys):
    image = next((image_tree / "test" / "blue_sky").iterdir())
    code, out, err = run(["predict", image, "--adapter", trained / "adapter", "--top-k", "5",
                          "--out", tmp_path / "pred"], capsys)
    assert code == 0, err
    payload = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    classes = ["blue sky", "green leaf", "red apple"]
    assert sorted(payload["classnames"]) == classes and len(payload["predictions"][0]["top"]) == 3
    code, _, err = run(["export", trained / "adapter", "--out", tmp_path / "exp"], capsys)
    assert code == 0, err
    info = json.loads((tmp_path / "exp" / "classifier.json").read_text())
    assert info["classnames"] == payload["classnames"] and info["text_features_shape"][0] == 3


def test_pretrain_help_is_its_own_help(capsys):
    code, out, _ = run(["pretrain", "--help"], capsys)
    assert code == 0 and out.startswith("usage: dipclip pretrain") and "--fetch-emoji" in out


def test_the_cli_method_list_is_the_library_one():
    from dipclip.cli.common import METHOD_NAMES
    from dipclip.probes import all_method_names

    assert list(METHOD_NAMES) == all_method_names()


def test_progress_bars_only_on_a_terminal(tiny_config_path, image_tree, tmp_path, capsys):
    # capsys' stderr is not a terminal: no bar may be drawn, though --quiet is not given
    code, _, err = run(["train", "--method", "coop", "--model", tiny_config_path, "--pretrained", "none",
                        "--data", image_tree, "--dataset", "imagefolder", "--shots", "2", "--epochs", "2",
                        "--batch-size", "3", "--out", tmp_path / "run"], capsys)
    assert code == 0, err
    assert "it/s" not in err and "\r" not in err and "%|" not in err


def _python(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(SRC), **(env or {})})


SRC = Path(__file__).resolve().parent.parent / "src"
PROBE = ("import sys\nfrom dipclip.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
         "print('torch' in sys.modules, file=sys.stderr)\n")


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["train", "--help"], ["base2new", "--help"],
                                  ["data", "split", "--help"], ["pretrain", "--help"]])
def test_help_and_version_do_not_import_torch(argv):
    result = _python("-c", PROBE, *argv)
    assert result.stderr.strip().split("\n")[-1] == "False", result.stderr
    assert result.stdout


def test_no_traceback_in_a_real_process(trained, tmp_path):
    adapter = tmp_path / "adapter"
    shutil.copytree(trained / "adapter", adapter)
    (adapter / WEIGHTS).write_bytes(b"garbage")
    result = _python("-m", "dipclip", "density", str(adapter), "--device", "cpu",
                     env={"DIPCLIP_DEBUG": "", "DIPCLIP_CACHE_DIR": str(tmp_path / "cache")})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.rstrip().split("\n")[-1].startswith(f"dipclip: error: adapter weights {adapter / WEIGHTS}")
    result = _python("-m", "dipclip", "train", "--lr", "-1", "--data", "x", "--dataset", "imagefolder")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr



SUMMARY_DAMAGE = {
    "not JSON": (lambda p: _write(p, "{\"protocol\": "), "is not valid JSON"),
    "nested 100k deep": (lambda p: _write(p, "[" * 100_000), "nested too deeply"),
    "a JSON list": (lambda p: _write(p, "[]"), "holds a JSON list"),
    "not UTF-8": (lambda p: _write(p, b"\xff\xff"), "not UTF-8"),
    "another protocol": (lambda p: _write(p, json.dumps({"protocol": "b2n"})), "not a protocol summary.json"),
    "a FIFO": (lambda p: os.mkfifo(p), "not a regular file"),
    "missing": (lambda p: None, "not found"),
}


@pytest.mark.parametrize("case", sorted(SUMMARY_DAMAGE))
def test_plot_of_a_damaged_summary_is_one_line(case, tmp_path, capsys):
    path = tmp_path / "summary.json"
    make, expected = SUMMARY_DAMAGE[case]
    make(path)
    code, _, err = run(["plot", path], capsys)
    assert str(path) in assert_refused(code, err, expected)


@pytest.mark.parametrize("case,content,expected", [
    ("not JSON", "{", "is not valid JSON"),
    ("nested", "{\"a\": " * 100_000, "nested too deeply"),
    ("a number", "7", "holds a JSON int"),
    ("no history", json.dumps({"results": {}}), "has no training history"),
])
def test_analyze_of_a_damaged_run_is_one_line(case, content, expected, tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text(content)
    code, _, err = run(["analyze", tmp_path / "run", "--out", tmp_path / "an"], capsys)
    assert "metrics.json" in assert_refused(code, err, expected)


def test_a_deeply_nested_split_file_is_named(tiny_config_path, image_tree, tmp_path, capsys):
    shutil.copytree(image_tree, tmp_path / "images")
    split = tmp_path / "images" / "split_dipclip.json"
    split.write_text("[" * 100_000)
    code, _, err = run(["zeroshot", "--model", tiny_config_path, "--pretrained", "none", "--data",
                        tmp_path / "images", "--dataset", "imagefolder"], capsys)
    assert_refused(code, err, str(split), "nested too deeply")



@pytest.mark.parametrize("kind", ["a FIFO", "a symlink loop", "a folder"])
def test_predict_refuses_images_that_are_not_files_before_loading_a_model(kind, tmp_path, capsys):
    path = tmp_path / "photo.png"
    {"a FIFO": lambda: os.mkfifo(path), "a symlink loop": lambda: path.symlink_to(path.name),
     "a folder": path.mkdir}[kind]()
    code, _, err = run(["predict", path, "--classes", "a,b", "--pretrained", "dipclip-tiny"], capsys)
    expected = {"a FIFO": "not a regular file", "a symlink loop": "symlink loop", "a folder": "is a folder"}[kind]
    assert str(path) in assert_refused(code, err, expected)
    assert "weights:" not in err  # refused before the model was loaded (a FIFO would have hung the decoder)



@pytest.mark.parametrize("argv,expected", [
    (["--dataset", "demo"], "no backbone given"),
    (["--dataset", "demo", "--pretrained", "dipclip-tiny", "--device", "tpu9"], "unknown device 'tpu9'"),
    (["--dataset", "demo", "--workers", "-2"], "--workers: must be >= 0"),
    (["--pretrained", "dipclip-tiny"], "the following arguments are required: --dataset"),
])
def test_the_encode_tool_has_the_same_boundary(argv, expected, capsys):
    from dipclip.cli.encode import main as encode

    try:
        code = encode(argv)
    except SystemExit as exit_info:
        code = exit_info.code
    assert_refused(code, capsys.readouterr().err, expected)


# ---- item 8: words the shipped small model does not know ------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_clip():
    from dipclip.backbones.loading import load_backbone

    return load_backbone(None, "dipclip-tiny", device="cpu", announce=False)


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("dipclip: warning:")]


def test_unknown_class_words_are_named_once(capsys):
    from dipclip.api import embedded_data_root

    image = sorted((embedded_data_root() / "demo" / "images" / "bird").iterdir())[0]
    code, out, err = run(["predict", image, "--classes", "quokka,bird,narwhal", "--pretrained", "dipclip-tiny",
                          "--device", "cpu"], capsys)
    assert code == 0, err
    assert _warnings(err) == [_warnings(err)[0]]
    line = _warnings(err)[0]
    assert "dipclip-tiny does not know the word(s) 'quokka', 'narwhal'" in line and "'bird'" not in line


def test_unknown_template_words_are_named(capsys):
    code, out, err = run(["zeroshot", "--pretrained", "dipclip-tiny", "--dataset", "demo", "--device", "cpu",
                          "--template", "an axolotl photo of a {}."], capsys)
    assert code == 0, err
    assert len(_warnings(err)) == 1 and "does not know the word(s) 'axolotl'" in _warnings(err)[0]
    assert "test:" in out  # a warning, not a refusal


def test_prompt_models_warn_once_per_word(tiny_clip, capsys):
    from dipclip.methods import get_method

    method = get_method("coop")
    config = method.prompt_config()
    method.build(tiny_clip, ["bird", "quokka"], config)
    first = _warnings(capsys.readouterr().err)
    method.build(tiny_clip, ["quokka", "cat"], config)  # the same unknown word again: no second warning
    assert len(first) == 1 and "'quokka'" in first[0] and _warnings(capsys.readouterr().err) == []
    assert tiny_clip.unknown_words(["X X X X bird.", "a photo of a cat."]) == []


def test_a_full_vocabulary_never_warns(tiny_backbone, capsys):
    tiny_backbone.tokenize(["a photo of a quokka."])
    assert tiny_backbone.unknown_words(["quokka"]) == [] and _warnings(capsys.readouterr().err) == []


def test_dry_run_refuses_missing_weights_like_the_run(tiny_config_path, capsys):
    code, out, err = run(["train", "--model", tiny_config_path, "--dataset", "demo", "--dry-run"], capsys)
    assert_refused(code, err, "pass `--pretrained none` for random weights")
    assert out == ""
