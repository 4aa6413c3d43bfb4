"""Non-finite numbers from finite tensors (issue 18, class 3): an adapter holding huge but finite values gives
NaN/inf text features or logits; eval, predict, export and density refuse it in one line instead of reporting
the share of class 0, ``nan%``, a NaN classifier or a crash, and training stops before saving such a prompt."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
from cli_run import assert_refused, run
from safetensors.torch import load_file, save_file

from dipclip import api
from dipclip.adapters import WEIGHTS_NAME, save_adapter
from dipclip.density import density_report
from dipclip.engine.evaluate import accuracy_from_features
from dipclip.errors import DipclipError
from dipclip.methods import get_method
from dipclip.tensor_checks import require_finite

CLASSES = ["blue sky", "green leaf", "red apple"]
OVERFLOW = "hold NaN/inf; its learned values are too large (trained with too high an --lr?); train it again with " \
           "a lower --lr"






@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_config_path, image_tree) -> Path:
    """A real CoOp adapter (1 epoch on the tiny random CLIP); tests make huge-valued copies of it."""
    root = tmp_path_factory.mktemp("trained")
    api.train("coop", model=str(tiny_config_path), pretrained="none", data=str(image_tree), dataset="imagefolder",
              shots=1, epochs=1, batch_size=3, progress=False, device="cpu", out=root / "run", feature_cache=False)
    return root / "run" / "adapter"


def _huge_copy(adapter: Path, folder: Path, name: str, value: float = 1e30) -> Path:
    """``adapter`` with the learned tensor ``name`` scaled to ``value``-sized, finite entries."""
    shutil.copytree(adapter, folder)
    tensors = load_file(str(folder / WEIGHTS_NAME))
    generator = torch.Generator().manual_seed(0)
    tensors[name] = torch.randn(tensors[name].shape, generator=generator) * value
    assert bool(torch.isfinite(tensors[name]).all())
    save_file(tensors, str(folder / WEIGHTS_NAME))
    return folder


@pytest.fixture
def huge(trained, tmp_path) -> Path:
    return _huge_copy(trained, tmp_path / "huge", "context.ctx")


def test_eval_refuses_huge_learned_values(huge, image_tree, capsys):
    code, out, err = run(["eval", "--adapter", huge, "--data", image_tree, "--dataset", "imagefolder",
                          "--device", "cpu"], capsys)
    assert_refused(code, err, f"adapter {huge}: its text features {OVERFLOW}")
    assert out == ""


def test_predict_refuses_huge_learned_values(huge, image_tree, tmp_path, capsys):
    image = next((image_tree / "test" / "red_apple").iterdir())
    code, out, err = run(["predict", image, "--adapter", huge, "--device", "cpu", "--out", tmp_path / "p"], capsys)
    assert_refused(code, err, f"adapter {huge}: its text features {OVERFLOW}")
    assert "nan" not in out and not (tmp_path / "p").exists()


def test_export_refuses_huge_learned_values_and_writes_nothing(trained, huge, tmp_path, capsys):
    code, _, err = run(["export", trained, "--device", "cpu", "--out", tmp_path / "good"], capsys)
    assert code == 0, err
    assert all(bool(torch.isfinite(t).all()) for t in load_file(str(tmp_path / "good" / "classifier.safetensors"))
               .values())
    code, out, err = run(["export", huge, "--device", "cpu", "--out", tmp_path / "export"], capsys)
    assert_refused(code, err, f"adapter {huge}: its text features {OVERFLOW}")
    assert not (tmp_path / "export").exists()


@pytest.mark.parametrize("energy", [[], ["--energy"]])
def test_density_refuses_huge_learned_values(energy, trained, huge, tmp_path, capsys):
    code, out, err = run(["density", trained, *energy, "--device", "cpu"], capsys)  # the adapter it was made from
    assert code == 0 and "ID_1: prompt" in out, err
    code, out, err = run(["density", huge, *energy, "--device", "cpu", "--out", tmp_path / "d"], capsys)
    assert_refused(code, err, f"adapter {huge}: its text features {OVERFLOW}")
    assert not (tmp_path / "d").exists()


def test_cocoop_logits_that_overflow_are_refused(tmp_path, tiny_backbone, image_tree, capsys):
    """CoCoOp's context alone is fine; its meta-net's per-image shift overflows the logits."""
    method = get_method("cocoop")
    model = method.build(tiny_backbone, CLASSES, method.prompt_config())
    adapter = save_adapter(tmp_path / "cocoop", "cocoop", model)
    _huge_copy(adapter, tmp_path / "huge", "meta_net.2.bias")
    code, _, err = run(["eval", "--adapter", tmp_path / "huge", "--data", image_tree, "--dataset", "imagefolder",
                        "--device", "cpu"], capsys)
    assert_refused(code, err, f"adapter {tmp_path / 'huge'}: its logits {OVERFLOW}")
    image = next((image_tree / "test" / "red_apple").iterdir())
    code, out, err = run(["predict", image, "--adapter", tmp_path / "huge", "--device", "cpu"], capsys)
    assert_refused(code, err, f"adapter {tmp_path / 'huge'}: its logits {OVERFLOW}")


def test_a_dip_update_that_overflows_its_merged_prompt_is_refused_by_export(tmp_path, tiny_backbone, capsys):
    """A and B finite, A @ B inf: the merged prompt and its text features are not finite."""
    method = get_method("dip")
    adapter = save_adapter(tmp_path / "dip", "dip", method.build(tiny_backbone, CLASSES, method.prompt_config()))
    tensors = load_file(str(adapter / WEIGHTS_NAME))
    save_file({"context.A": torch.full_like(tensors["context.A"], 1e20),
               "context.B": torch.full_like(tensors["context.B"], 1e20)}, str(adapter / WEIGHTS_NAME))
    code, _, err = run(["export", adapter, "--device", "cpu", "--out", tmp_path / "export"], capsys)
    assert_refused(code, err, f"adapter {adapter}: its text features {OVERFLOW}")
    assert not (tmp_path / "export").exists()


def test_training_whose_last_step_overflows_the_text_features_saves_no_adapter(tiny_config_path, image_tree,
                                                                               tmp_path, capsys):
    """One step per epoch at --lr 1e20: the loss is finite at every step (computed before the step), the learned
    values stay finite (about 1e21), but the text tower overflows on them."""
    out = tmp_path / "run"
    code, _, err = run(["train", "--method", "coop", "--model", tiny_config_path, "--pretrained", "none", "--data",
                        image_tree, "--dataset", "imagefolder", "--shots", "1", "--batch-size", "3", "--epochs", "2",
                        "--lr", "1e20", "--device", "cpu", "--quiet", "--out", out], capsys)
    assert_refused(code, err, "training diverged in epoch 2: the merged prompt's class text features hold NaN/inf",
                   f"the last good checkpoint {out / 'checkpoint.pt'} is kept", "lower --lr")
    assert not (out / "adapter").exists() and not (out / "metrics.json").exists()


def test_accuracy_is_never_counted_on_nan_scores():
    """The argmax of a NaN row is class 0: the accuracy would be the share of class 0 (here 50%)."""
    features = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    labels = torch.tensor([0, 1, 0, 1])
    text = torch.full((2, 8), math.nan)
    with pytest.raises(DipclipError, match="the class scores hold NaN/inf"):
        accuracy_from_features(features, labels, text)


def test_density_report_refuses_overflowing_singular_values_instead_of_none():
    """Squared singular values of 1e30-sized entries overflow float32: the ID was NaN, reported as None."""
    prompt = torch.randn(4, 16, generator=torch.Generator().manual_seed(0)) * 1e30
    with pytest.raises(DipclipError, match="adapter x: its prompt's squared singular values hold NaN/inf"):
        density_report(prompt, torch.zeros_like(prompt), 1, energy=True, source="adapter x")
    undefined = density_report(torch.ones(4, 16), torch.ones(4, 16))  # an all-zero update: undefined, not refused
    assert undefined["id_update"] is None and undefined["id_prompt"] == 1.0


def test_require_finite_passes_finite_tensors_through():
    tensor = torch.tensor([1.0, 3e38])
    assert require_finite(tensor, "x", "y") is tensor
    assert require_finite(torch.tensor([1, 2]), "x", "y") is not None  # integers are always finite
    with pytest.raises(DipclipError, match=r"^the logits hold NaN/inf; lower --lr$"):
        require_finite(torch.tensor([1.0, math.inf]), "the logits", "lower --lr")
