"""Tip-Adapter and Tip-Adapter-F against the authors' own functions (golden from tools/parity/probes_tip_adapter.py,
inputs stored in the golden file) and against straightforward computations of the published equations."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from dipclip.probes.base import FeatureData
from dipclip.probes.tip_adapter import TipAdapter, TipAdapterF, search_grid

GOLDEN = Path(__file__).parent / "golden" / "probes"
ATOL = 1e-5


def load(name: str) -> dict:
    return json.loads((GOLDEN / name).read_text())


def t(record: dict, dtype=torch.float32) -> torch.Tensor:
    return torch.tensor(record["values"], dtype=dtype).reshape(record["shape"])


@pytest.fixture(scope="module")
def golden() -> dict:
    return load("tip_adapter.json")


@pytest.fixture(scope="module")
def inputs(golden) -> dict:
    out = {k: t(v) for k, v in golden["inputs"].items()}
    for k in ("train_labels", "val_labels", "test_labels"):
        out[k] = out[k].long()
    return out


def data_of(inputs: dict) -> FeatureData:
    def views(n: int):
        assert n == inputs["views"].shape[0]
        return inputs["views"], inputs["train_labels"]

    val = (inputs["val"], inputs["val_labels"])
    return FeatureData(train=(inputs["views"][0], inputs["train_labels"]), views=views, val=val, search=val)


def build(method, inputs: dict, **settings):
    classes = [f"class {i}" for i in range(inputs["zeroshot"].shape[0])]
    settings.setdefault("augment_epoch", inputs["views"].shape[0])
    return method.build(None, classes, method.settings(**settings), text_encoder=lambda names: inputs["zeroshot"])


def test_cache_and_logits_match_the_authors(golden, inputs):
    method = TipAdapter()
    head = build(method, inputs, init_alpha=golden["config"]["init_alpha"], init_beta=golden["config"]["init_beta"],
                 search=False)
    chosen = method.fit(head, data_of(inputs), "before")
    assert chosen["searched"] is False
    torch.testing.assert_close(head.cache_keys, t(golden["cache_keys"]), atol=ATOL, rtol=0)
    torch.testing.assert_close(head.cache_values(), t(golden["cache_values"]), atol=0, rtol=0)
    torch.testing.assert_close(head.zeroshot_logits(inputs["val"]), t(golden["zeroshot_val_logits"]), atol=1e-4,
                               rtol=1e-6)
    torch.testing.assert_close(head.logits(inputs["val"]), t(golden["tip_val_logits_init"]), atol=1e-4, rtol=1e-6)


def test_search_matches_the_authors(golden, inputs):
    method = TipAdapter()
    head = build(method, inputs)
    chosen = method.fit(head, data_of(inputs), "before")
    assert chosen == {"beta": golden["searched"]["beta"], "alpha": golden["searched"]["alpha"], "searched": True,
                      "search_split": "val"}
    torch.testing.assert_close(head.logits(inputs["test"]), t(golden["tip_test_logits_searched"]), atol=1e-4,
                               rtol=1e-6)
    for name, grid in golden["search"].items():
        other = build(method, inputs, search_scale=grid["search_scale"], search_step=grid["search_step"])
        got = method.fit(other, data_of(inputs), "before")
        assert (got["beta"], got["alpha"]) == (grid["beta"], grid["alpha"]), name


def test_grid_is_the_authors():
    assert search_grid(7, 200)[:3] == [0.1, 0.1 + 6.9 / 200, 0.1 + 2 * 6.9 / 200]
    assert len(search_grid(7, 200)) == 200 and search_grid(7, 200)[-1] < 7


def test_cached_search_equals_the_plain_loop(inputs):
    """The search computes the cache logits once per beta; the plain double loop (their utils.search_hp) picks
    the same pair with the same accuracies."""
    method = TipAdapter()
    head = build(method, inputs, search_scale=[5.0, 4.0], search_step=[13, 7])
    method.fit(head, data_of(inputs), "before")
    features, labels = inputs["val"], inputs["val_labels"]
    best, pair = 0.0, (0, 0)
    for beta in search_grid(5.0, 13):
        for alpha in search_grid(4.0, 7):
            affinity = features @ head.cache_keys.T
            logits = 100.0 * features @ inputs["zeroshot"].T + alpha * torch.exp(-beta * (1 - affinity)) @ \
                torch.nn.functional.one_hot(head.cache_labels, 4).float()
            acc = (logits.argmax(1) == labels).float().mean().item()
            if acc > best:
                best, pair = acc, (beta, alpha)
    assert (float(head.beta), float(head.alpha)) == pytest.approx(pair, abs=1e-6)


def test_equation_by_hand(inputs):
    """logits = 100 f W^T + alpha * sum_n exp(-beta (1 - f.k_n)) onehot(y_n), element by element."""
    method = TipAdapter()
    head = build(method, inputs, search=False, init_beta=2.5, init_alpha=0.7)
    method.fit(head, data_of(inputs), "before")
    f = inputs["val"][:3].double()
    keys = inputs["views"].double().mean(0)
    keys = keys / keys.norm(dim=-1, keepdim=True)
    for i in range(3):
        for c in range(4):
            want = 100 * float(f[i] @ inputs["zeroshot"][c].double())
            want += 0.7 * sum(math.exp(-2.5 * (1 - float(f[i] @ keys[n])))
                              for n in range(len(keys)) if int(inputs["train_labels"][n]) == c)
            assert float(head.logits(inputs["val"][i:i + 1])[0, c]) == pytest.approx(want, abs=1e-4)


def test_stored_state_round_trip(inputs):
    method = TipAdapter()
    head = build(method, inputs)
    method.fit(head, data_of(inputs), "before")
    state = head.stored_state()
    assert sorted(state) == ["alpha", "beta", "cache_keys", "cache_labels"]
    assert head.num_trainable() == 0 and head.linear_classifier() is None
    fresh = build(method, inputs)
    fresh.load_learnable_state(state)
    torch.testing.assert_close(fresh.logits(inputs["test"]), head.logits(inputs["test"]), atol=0, rtol=0)


def test_tip_adapter_f_training_matches_the_authors(inputs):
    """Their run_tip_adapter_F step by step: CE at the configured beta/alpha, AdamW(lr, eps=1e-4, weight decay
    0.01), cosine annealing per step over epochs x steps; then the search with the keys of the epoch their code
    kept (it keeps the best epoch by test accuracy; dipclip keeps the last, so the search is checked from theirs)."""
    gf = load("tip_adapter_f.json")
    cfg = gf["config"]
    method = TipAdapterF()
    assert method.trained and method.optim_defaults.eps == 1e-4 and method.optim_defaults.schedule == "step" and method.optim_defaults.optimizer == "adamw"
    assert method.optim_defaults.lr == cfg["lr"] and method.optim_defaults.weight_decay == 0.01
    head = build(method, inputs, init_beta=cfg["init_beta"], init_alpha=cfg["init_alpha"])
    data = data_of(inputs)
    assert method.fit(head, data, "before") == {"beta": 1.0, "alpha": cfg["init_alpha"], "searched": False}
    assert [name for name, _ in head.learnable_named_parameters()] == ["cache_keys"]
    optimizer = torch.optim.AdamW(head.trainable_parameters(), lr=cfg["lr"], eps=method.optim_defaults.eps,
                                  weight_decay=method.optim_defaults.weight_decay)
    per_epoch = math.ceil(len(inputs["train_labels"]) / gf["batch_size"])
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg["train_epoch"] * per_epoch)
    step = 0
    for epoch in range(cfg["train_epoch"]):
        order = torch.tensor(gf["order"][epoch])
        feats, labels = inputs["views"][gf["epoch_views"][epoch]][order], inputs["train_labels"][order]
        for s in range(0, len(order), gf["batch_size"]):
            assert optimizer.param_groups[0]["lr"] == pytest.approx(gf["lrs"][step], abs=1e-12)
            loss, _ = method.training_step(head, feats[s:s + gf["batch_size"]], labels[s:s + gf["batch_size"]],
                                           optimizer)
            scheduler.step()
            assert float(loss) == pytest.approx(gf["losses"][step], abs=1e-5)
            torch.testing.assert_close(head.cache_keys.detach(), t(gf["weights"][step]), atol=ATOL, rtol=0)
            step += 1
    kept = t(gf["weights"][(gf["kept_epoch"] + 1) * per_epoch - 1])
    with torch.no_grad():
        head.cache_keys.copy_(kept)
    chosen = method.fit(head, data, "after")
    assert (chosen["beta"], chosen["alpha"]) == (gf["searched"]["beta"], gf["searched"]["alpha"])
    torch.testing.assert_close(head.logits(inputs["test"]).detach(), t(gf["tip_test_logits_searched"]), atol=1e-4,
                               rtol=1e-6)


def test_protocols_and_class_lists(inputs):
    assert TipAdapter.protocols == TipAdapterF.protocols == frozenset({"fewshot", "dg"})
    head = build(TipAdapter(), inputs)
    from dipclip.errors import DipclipError

    with pytest.raises(DipclipError):
        head.set_classnames(["a", "b", "c", "d"])
