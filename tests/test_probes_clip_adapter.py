"""CLIP-Adapter against the authors' own CustomCLIP/Adapter and trainer step (golden from
tools/parity/probes_clip_adapter.py; inputs regenerated from its seed) and against a hand computation."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from dipclip.errors import DipclipError
from dipclip.probes.clip_adapter import ClipAdapter

ROOT = Path(__file__).parents[1]
GOLDEN = ROOT / "tests" / "golden" / "probes" / "clip_adapter.json"


def t(record: dict) -> torch.Tensor:
    return torch.tensor(record["values"], dtype=torch.float32).reshape(record["shape"])


def parity_module():
    spec = importlib.util.spec_from_file_location("probes_clip_adapter_parity",
                                                  ROOT / "tools" / "parity" / "probes_clip_adapter.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads(GOLDEN.read_text())


@pytest.fixture(scope="module")
def inputs(golden) -> dict:
    data = parity_module().synthetic(golden["seed"])
    for name, total in golden["input_sums"].items():
        assert float(data[name].double().sum()) == pytest.approx(total, rel=1e-9, abs=1e-9), name
    return data


def build(inputs: dict, golden: dict, seed: int | None = None, **settings):
    method = ClipAdapter()
    classes = [f"class {i}" for i in range(inputs["text"].shape[0])]
    if seed is not None:
        torch.manual_seed(seed)

    def encoder(names, templates):
        assert templates == method.settings(**settings)["templates"]
        return inputs["text"][: len(names)]

    return method.build(None, classes, method.settings(**settings), text_encoder=encoder,
                        logit_scale=golden["logit_scale"])


def dassl_lr(epoch: int, epochs: int, lr: float, warmup: int, warmup_lr: float) -> float:
    """Dassl's constant warm-up then cosine over MAX_EPOCH (restarting its count after the warm-up)."""
    if epoch < warmup:
        return warmup_lr
    return 0.5 * lr * (1 + math.cos(math.pi * (epoch - warmup) / epochs))


def test_initial_adapter_and_logits_match_the_authors(golden, inputs):
    head = build(inputs, golden, seed=golden["seed"])
    assert head.takes_raw_features and head.scores_new_classes
    names = [name for name, _ in head.learnable_named_parameters()]
    assert names == ["adapter.fc.0.weight", "adapter.fc.2.weight"]  # the authors' Adapter.fc names
    for name, p in head.adapter.named_parameters():
        assert torch.equal(p.detach().flatten()[:16], torch.tensor(golden["init_weight_heads"][name]))
        assert float(p.detach().double().sum()) == pytest.approx(golden["init_weight_sums"][name], abs=1e-9)
    assert head.adapter.fc[0].weight.shape == (256, 1024)  # Adapter(1024, 4)
    torch.testing.assert_close(head.logits(inputs["test"]), t(golden["init_test_logits"]), atol=1e-4, rtol=1e-6)


def test_training_matches_the_authors(golden, inputs):
    """Their forward_backward step by step (CE, Dassl SGD with CoOp's rn50_ep50 config, per-epoch schedule)."""
    method = ClipAdapter()
    cfg = method.optim_defaults
    assert (cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.warmup_epochs, cfg.warmup_lr, cfg.schedule) \
        == (golden["optim"]["name"], golden["optim"]["lr"], golden["optim"]["momentum"],
            golden["optim"]["weight_decay"], golden["optim"]["warmup_epoch"], golden["optim"]["warmup_lr"], "epoch")
    head = build(inputs, golden, seed=golden["seed"])
    optimizer = torch.optim.SGD(head.trainable_parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    batch, epochs, step = golden["batch_size"], golden["epochs"], 0
    per_epoch = len(inputs["train_labels"]) // batch
    for epoch in range(epochs):
        lr = dassl_lr(epoch, epochs, cfg.lr, cfg.warmup_epochs, cfg.warmup_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        order = inputs["order"][epoch]
        feats, labels = inputs["views"][epoch][order], inputs["train_labels"][order]
        for b in range(per_epoch):
            assert lr == pytest.approx(golden["steps"][step]["lr"], abs=1e-12)
            loss, _ = method.training_step(head, feats[b * batch:(b + 1) * batch], labels[b * batch:(b + 1) * batch],
                                           optimizer)
            assert float(loss) == pytest.approx(golden["steps"][step]["loss"], abs=1e-4)
            with torch.no_grad():
                torch.testing.assert_close(head.logits(inputs["test"]), t(golden["steps"][step]["test_logits"]),
                                           atol=2e-3, rtol=1e-5)
            step += 1
    for name, p in head.adapter.named_parameters():
        assert float(p.detach().double().sum()) == pytest.approx(golden["final_weight_sums"][name], rel=1e-4, abs=1e-4)


def test_equation_by_hand(golden, inputs):
    """normalize(0.2 relu(W2 relu(W1 f)) + 0.8 f) . t_c / |t_c| * scale, in float64."""
    head = build(inputs, golden, seed=3)
    f = inputs["test"][:3].double()
    w1, w2 = head.adapter.fc[0].weight.detach().double(), head.adapter.fc[2].weight.detach().double()
    mixed = 0.2 * torch.relu(torch.relu(f @ w1.T) @ w2.T) + 0.8 * f
    mixed = mixed / mixed.norm(dim=-1, keepdim=True)
    text = inputs["text"].double()
    text = text / text.norm(dim=-1, keepdim=True)
    want = golden["logit_scale"] * mixed @ text.T
    torch.testing.assert_close(head.logits(inputs["test"][:3]).double(), want, atol=1e-4, rtol=1e-6)
    # the evaluator hands in the head's own text features: the same logits
    torch.testing.assert_close(head.logits(inputs["test"][:3], head.text_features(merged=True)),
                               head.logits(inputs["test"][:3]), atol=0, rtol=0)
    # ratio and reduction are settings
    other = build(inputs, golden, seed=3, ratio=0.6, reduction=8)
    assert other.adapter.fc[0].weight.shape == (128, 1024)


def test_new_classes_use_new_text_features(golden, inputs):
    head = build(inputs, golden, seed=1)
    seen = []

    def encoder(names, templates):
        seen.append((list(names), list(templates)))
        return inputs["text"][[1, 2]]

    head.__dict__["encoder"] = encoder
    head.settings["templates"] = ["a photo of a {}, a type of pet."]
    head.set_classnames(["new a", "new b"])
    assert seen == [(["new a", "new b"], ["a photo of a {}, a type of pet."])]
    assert head.logits(inputs["test"]).shape == (len(inputs["test"]), 2)
    full = build(inputs, golden, seed=1)
    torch.testing.assert_close(head.logits(inputs["test"]), full.logits(inputs["test"])[:, [1, 2]], atol=1e-5,
                               rtol=0)


def test_state_round_trip_and_refusals(golden, inputs):
    head = build(inputs, golden, seed=2)
    assert head.stored_state() == {} and head.linear_classifier() is None
    assert head.num_trainable() == 2 * 1024 * 256
    fresh = build(inputs, golden, seed=5)
    fresh.load_learnable_state(head.learnable_state())
    torch.testing.assert_close(fresh.logits(inputs["test"]), head.logits(inputs["test"]), atol=0, rtol=0)
    with pytest.raises(DipclipError):
        build(inputs, golden, ratio=1.5)
    assert ClipAdapter.protocols == frozenset({"fewshot", "base2new", "xd", "dg"})
