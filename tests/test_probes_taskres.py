"""TaskRes against the authors' own CustomCLIP/TaskResLearner, base averaging, trainer step and ImageNet-A/R row
clipping (golden from tools/parity/probes_taskres.py; inputs regenerated from its seed)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from dipclip.errors import DipclipError
from dipclip.probes.taskres import TaskRes, raw_template_mean

ROOT = Path(__file__).parents[1]
GOLDEN = ROOT / "tests" / "golden" / "probes" / "taskres.json"


def t(record: dict) -> torch.Tensor:
    return torch.tensor(record["values"], dtype=torch.float32).reshape(record["shape"])


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads(GOLDEN.read_text())


@pytest.fixture(scope="module")
def inputs(golden) -> dict:
    spec = importlib.util.spec_from_file_location("probes_taskres_parity",
                                                  ROOT / "tools" / "parity" / "probes_taskres.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    data = module.synthetic(golden["seed"])
    for name, total in golden["input_sums"].items():
        assert float(data[name].double().sum()) == pytest.approx(total, rel=1e-9, abs=1e-9), name
    return data


def classes(inputs) -> list[str]:
    return [f"class {i}" for i in range(inputs["template_text"].shape[0])]


def build(inputs: dict, golden: dict, **settings):
    method = TaskRes()
    # the unnormalised mean over the templates, as dipclip's raw_template_mean computes from a backbone
    encoder = lambda names, templates: inputs["template_text"].mean(1)  # noqa: E731
    return method.build(None, classes(inputs), method.settings(**settings), text_encoder=encoder,
                        logit_scale=golden["logit_scale"])


def normalised(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def test_base_and_zero_residual_logits_match_the_authors(golden, inputs):
    head = build(inputs, golden)
    torch.testing.assert_close(head._base, t(golden["base"]), atol=1e-5, rtol=1e-6)  # their mean of raw features
    assert [name for name, _ in head.learnable_named_parameters()] == ["text_feature_residuals"]
    assert not head.text_feature_residuals.any()
    torch.testing.assert_close(head.logits(normalised(inputs["test"])), t(golden["init_test_logits"]), atol=1e-4,
                               rtol=1e-6)


def test_training_matches_the_authors(golden, inputs):
    """Their forward_backward (PREC fp32) step by step: CE, Dassl's adam = torch.optim.Adam with L2 weight decay,
    constant warm-up epoch then cosine per epoch; residual, loss and test logits after every step."""
    method = TaskRes()
    cfg = method.optim_defaults
    g = golden["optim"]
    assert (cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.warmup_epochs, cfg.warmup_lr, cfg.schedule) == \
        (g["name"], g["lr"], g["weight_decay"], g["warmup_epoch"], g["warmup_lr"], "epoch")
    head = build(inputs, golden, residual_scale=golden["residual_scale"])
    optimizer = torch.optim.Adam(head.trainable_parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                 betas=tuple(g["betas"]), eps=cfg.eps)
    batch, epochs, step = golden["batch_size"], golden["epochs"], 0
    per_epoch = len(inputs["train_labels"]) // batch
    for epoch in range(epochs):
        lr = cfg.warmup_lr if epoch < cfg.warmup_epochs else \
            0.5 * cfg.lr * (1 + math.cos(math.pi * (epoch - cfg.warmup_epochs) / epochs))
        for group in optimizer.param_groups:
            group["lr"] = lr
        order = inputs["order"][epoch]
        feats, labels = normalised(inputs["views"][epoch][order]), inputs["train_labels"][order]
        for b in range(per_epoch):
            record = golden["steps"][step]
            assert lr == pytest.approx(record["lr"], abs=1e-12)
            loss, _ = method.training_step(head, feats[b * batch:(b + 1) * batch], labels[b * batch:(b + 1) * batch],
                                           optimizer)
            assert float(loss) == pytest.approx(record["loss"], abs=1e-4)
            torch.testing.assert_close(head.text_feature_residuals.detach(), t(record["residuals"]), atol=1e-5,
                                       rtol=1e-5)
            with torch.no_grad():
                torch.testing.assert_close(head.logits(normalised(inputs["test"])), t(record["test_logits"]),
                                           atol=1e-3, rtol=1e-5)
            step += 1
    # their ImageNet-A/R clipping: the rows of the target's classes of base and residual
    names = classes(inputs)
    head.set_classnames([names[i] for i in golden["subset_rows"]])
    with torch.no_grad():
        torch.testing.assert_close(head.logits(normalised(inputs["test"])), t(golden["subset_test_logits"]),
                                   atol=1e-3, rtol=1e-5)
    head.set_classnames(names)
    assert head.logits(inputs["test"]).shape[1] == len(names)


def test_equation_and_linear_classifier(golden, inputs):
    head = build(inputs, golden, residual_scale=0.7)
    with torch.no_grad():
        head.text_feature_residuals.copy_(torch.randn(head.text_feature_residuals.shape,
                                                      generator=torch.Generator().manual_seed(1)))
    base = inputs["template_text"].double().mean(1)
    weights = normalised(base + 0.7 * head.text_feature_residuals.detach().double())
    f = normalised(inputs["test"].double())
    want = golden["logit_scale"] * f @ weights.T
    torch.testing.assert_close(head.logits(inputs["test"]).double(), want, atol=1e-4, rtol=1e-6)
    weight, bias = head.linear_classifier()
    assert bias is None
    torch.testing.assert_close(normalised(inputs["test"]) @ weight.T, head.logits(inputs["test"]), atol=1e-4,
                               rtol=1e-6)
    torch.testing.assert_close(head.logits(inputs["test"], head.text_features(merged=True)),
                               head.logits(inputs["test"]), atol=0, rtol=0)


def test_raw_template_mean_is_the_plain_mean(tiny_backbone):
    """The base: per class the mean of the UNnormalised features of each template (no normalisation first)."""
    names, templates = ["cat", "dog", "bird"], ["a photo of a {}.", "art of the {}.", "a {} in a video game."]
    got = raw_template_mean(tiny_backbone, names, templates)
    with torch.no_grad():
        want = torch.stack([
            torch.stack([tiny_backbone.text.encode_token_ids(tiny_backbone.tokenize([tp.format(n)])).float()[0]
                         for tp in templates]).mean(0) for n in names])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_refusals_and_state(golden, inputs):
    head = build(inputs, golden)
    with pytest.raises(DipclipError):
        head.set_classnames(["class 0", "a new class"])
    assert TaskRes.protocols == frozenset({"fewshot", "dg"})
    assert head.stored_state() == {}
    fresh = build(inputs, golden)
    with torch.no_grad():
        head.text_feature_residuals.add_(0.3)
    fresh.load_learnable_state(head.learnable_state())
    torch.testing.assert_close(fresh.logits(inputs["test"]), head.logits(inputs["test"]), atol=0, rtol=0)
