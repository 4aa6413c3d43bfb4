"""Non-finite values stop the run (issue 11, item 4): NaN/inf losses and tensors, adapters, --lr."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from dipclip import api
from dipclip.adapters import CONFIG_NAME, WEIGHTS_NAME, load_adapter, save_adapter
from dipclip.errors import DipclipError
from dipclip.methods import get_method
from dipclip.methods.base import OptimConfig

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _train(tiny_config_path, image_tree, out, **kwargs):
    options = dict(model=str(tiny_config_path), pretrained="none", data=str(image_tree), dataset="imagefolder", shots=2, epochs=3,
                   batch_size=2, out=out, progress=False) | kwargs
    return api.train("coop", **options)


@pytest.mark.parametrize("field, value, message", [
    ("lr", math.inf, "--lr must be a finite number > 0, got inf"),
    ("lr", -math.inf, "--lr must be a finite number > 0, got -inf"),
    ("lr", math.nan, "--lr must be a finite number > 0, got nan"),
    ("lr", 0.0, "--lr must be a finite number > 0, got 0.0"),
    ("lr", -1.0, "--lr must be a finite number > 0, got -1.0"),
    ("lr", 1e39, "--lr must be a finite number > 0, got 1e+39"),  # overflows float32 in the optimizer step
    ("lr", "0.002", "--lr must be a finite number > 0, got '0.002'"),
    ("lr", True, "--lr must be a finite number > 0, got True"),
    ("weight_decay", -5e-4, "weight decay must be a finite number >= 0"),
    ("weight_decay", math.nan, "weight decay must be a finite number >= 0"),
    ("momentum", -0.9, "momentum must be a finite number >= 0"),
    ("warmup_lr", 0.0, "warm-up lr must be a finite number > 0"),
    ("warmup_lr", math.inf, "warm-up lr must be a finite number > 0"),
    ("warmup_epochs", -1, "warm-up epochs must be a whole number >= 0"),
])
def test_bad_optimizer_settings_are_refused(field, value, message):
    with pytest.raises(DipclipError, match=message.replace("+", r"\+").replace("(", r"\(")):
        OptimConfig(**{field: value})
    with pytest.raises(DipclipError, match="must be"):  # the methods' own configs go through the same check
        get_method("dip").optim_config(**{field: value})


def test_no_warmup_needs_no_warmup_lr():
    assert OptimConfig(warmup_epochs=0, warmup_lr=0.0).lr == 0.002


def test_lr_inf_is_refused_before_the_model_loads(tmp_path, image_tree):
    # the model path does not exist: reaching the backbone would give another error
    with pytest.raises(DipclipError, match="--lr must be a finite number > 0, got inf"):
        api.train("coop", model=str(tmp_path / "no-such-model.json"), data=str(image_tree), dataset="imagefolder",
                  lr=math.inf, out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_cli_lr_inf_is_one_line_exit_2(tmp_path, tiny_config_path, image_tree):
    done = subprocess.run([sys.executable, "-m", "dipclip", "train", "--model", str(tiny_config_path), "--pretrained", "none", "--data",
                           str(image_tree), "--dataset", "imagefolder", "--lr", "inf", "--out", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=300,
                          env=os.environ | {"PYTHONPATH": SRC})
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()  # the CLI's own flag check or the config's: one line either way
    assert len(lines) == 1 and lines[0].startswith("dipclip") and "error:" in lines[0]
    assert "must be a finite number > 0, got inf" in lines[0]


def test_a_diverging_run_stops_at_its_first_nan_and_keeps_the_last_good_checkpoint(tmp_path, tiny_config_path,
                                                                                     image_tree):
    out = tmp_path / "run"
    # epoch 1 warms up at 1e-5; the first step at about 1e30 makes the prompt non-finite
    with pytest.raises(DipclipError, match=r"training diverged in epoch 2: the loss is nan at lr \S+e\+(29|30); the "
                                           rf"last good checkpoint {out / 'checkpoint.pt'} is kept; lower --lr "
                                           r"\(e\.g\. --lr 1e\+29\)"):
        _train(tiny_config_path, image_tree, out, lr=1e30)
    state = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert state["epoch"] == 1 and len(state["history"]) == 1
    assert all(bool(torch.isfinite(t).all()) for t in state["learned"].values())
    assert not (out / "adapter").exists() and not (out / "metrics.json").exists()


def test_a_nan_loss_in_the_first_epoch_writes_no_checkpoint(tmp_path, tiny_config_path, image_tree, monkeypatch):
    method = type(get_method("coop"))
    original = method.training_step

    def nan_step(self, model, inputs, labels, optimizer):
        loss, logits = original(self, model, inputs, labels, optimizer)
        return loss * math.nan, logits

    monkeypatch.setattr(method, "training_step", nan_step)
    with pytest.raises(DipclipError, match="diverged in epoch 1: the loss is nan at lr 1e-05; no checkpoint was "
                                           "written"):
        _train(tiny_config_path, image_tree, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_a_non_finite_prompt_at_the_end_of_an_epoch_is_never_checkpointed(tmp_path, tiny_config_path, image_tree,
                                                                         monkeypatch):
    method = type(get_method("coop"))

    def poison(self, model, epoch, epochs):
        if epoch == 1:
            with torch.no_grad():
                next(iter(dict(model.learnable_named_parameters()).values())).fill_(math.inf)

    monkeypatch.setattr(method, "end_epoch", poison)
    with pytest.raises(DipclipError, match=r"diverged in epoch 2: learned tensor\(s\) .* hold NaN/inf"):
        _train(tiny_config_path, image_tree, tmp_path / "run")
    state = torch.load(tmp_path / "run" / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert state["epoch"] == 1


@pytest.fixture
def coop_model(tiny_backbone):
    method = get_method("coop")
    return method.build(tiny_backbone, ["red apple", "green leaf", "blue sky"], method.prompt_config())


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_an_adapter_with_a_non_finite_tensor_is_never_written(tmp_path, coop_model, value):
    with torch.no_grad():
        coop_model.context.ctx.view(-1)[3] = value
    with pytest.raises(DipclipError, match="refusing to write adapter .* hold NaN/inf"):
        save_adapter(tmp_path / "adapter", "coop", coop_model)
    assert not (tmp_path / "adapter" / WEIGHTS_NAME).exists()


@pytest.fixture
def adapter_dir(tmp_path, coop_model) -> Path:
    return save_adapter(tmp_path / "adapter", "coop", coop_model)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_loading_an_adapter_with_a_non_finite_tensor_is_refused(adapter_dir, value, tiny_config_path, image_tree):
    tensors = load_file(str(adapter_dir / WEIGHTS_NAME))
    name = sorted(tensors)[0]
    tensors[name].view(-1)[0] = value
    save_file(tensors, str(adapter_dir / WEIGHTS_NAME))
    with pytest.raises(DipclipError, match=f"{name} hold NaN/inf, so every prediction would be meaningless"):
        load_adapter(adapter_dir)
    with pytest.raises(DipclipError, match="hold NaN/inf"):
        api.evaluate(adapter_dir, model=str(tiny_config_path), pretrained="none", data=str(image_tree), dataset="imagefolder")


@pytest.mark.parametrize("content", [b"", b"\x00" * 64, b"not a safetensors file at all", b"\xff" * 8 + b"{}"])
def test_a_damaged_adapter_weights_file_is_refused(adapter_dir, content):
    (adapter_dir / WEIGHTS_NAME).write_bytes(content)
    with pytest.raises(DipclipError, match="the adapter is damaged"):
        load_adapter(adapter_dir)


@pytest.mark.parametrize("content", [b"[1, 2]", b"\xff\xfe{}", b"[" * 100_000 + b"]" * 100_000, b"{\"format\": "])
def test_a_damaged_adapter_config_is_refused(adapter_dir, content):
    (adapter_dir / CONFIG_NAME).write_bytes(content)
    with pytest.raises(DipclipError, match=CONFIG_NAME):
        load_adapter(adapter_dir)


def test_a_good_adapter_still_loads(adapter_dir):
    loaded = load_adapter(adapter_dir)
    assert loaded.method == "coop" and json.loads((adapter_dir / CONFIG_NAME).read_text())["method"] == "coop"
