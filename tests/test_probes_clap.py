"""ZS-LP and CLAP against jusiro/CLAP's own code (tests/golden/probes/clap.json, tools/parity/probes_clap.py)."""

import json
from pathlib import Path

import pytest
import torch

from dipclip.probes.base import FeatureData
from dipclip.probes.clap import CLAP, ZeroShotLinearProbe, class_performance

GOLDEN = json.loads((Path(__file__).parent / "golden/probes/clap.json").read_text())


def inputs():
    """The generator's inputs, regenerated from its seed with the same draws."""
    g = torch.Generator().manual_seed(GOLDEN["seed"])
    c, d = GOLDEN["classes"], GOLDEN["dim"]
    base = 5.0 * torch.randn(c, d, generator=g)
    labels = torch.arange(c).repeat_interleave(GOLDEN["shots"]).repeat(GOLDEN["views"])
    features = torch.nn.functional.normalize(base[labels] / 5.0 + torch.randn(len(labels), d, generator=g), dim=-1)
    test = torch.nn.functional.normalize(torch.randn(10, d, generator=g), dim=-1)
    perms = [torch.randperm(len(labels), generator=g) for _ in range(GOLDEN["steps"])]
    return base, features, labels, test, perms


@pytest.mark.parametrize("method_cls", [ZeroShotLinearProbe, CLAP], ids=["zslp", "clap"])
def test_reproduces_official_steps(method_cls):
    base, features, labels, test, perms = inputs()
    golden = GOLDEN[method_cls.name]
    method = method_cls()
    head = method.build(None, [f"c{i}" for i in range(GOLDEN["classes"])],
                        method.settings(zeroshot_weights=base, logit_scale=100.0))
    assert torch.allclose(head.logits(features), torch.tensor(golden["logits_zs"]), atol=1e-4)
    views = features.reshape(GOLDEN["views"], -1, GOLDEN["dim"])
    per_view_labels = labels[: views.shape[1]]
    data = FeatureData(train=(views[0], per_view_labels), views=lambda n: (views[:n], per_view_labels),
                       val=None, search=None)
    method.fit(head, data, "before")
    if method.constrained:
        assert torch.allclose(head._multipliers, torch.tensor(golden["multipliers"]), atol=1e-6)
    o = method.optim_defaults
    optimizer = torch.optim.SGD(head.trainable_parameters(), lr=GOLDEN["lr"], momentum=o.momentum,
                                weight_decay=o.weight_decay)
    for perm, expected in zip(perms, golden["losses"], strict=True):
        idx = perm[: GOLDEN["batch"]]
        loss, _ = method.training_step(head, features[idx], labels[idx], optimizer)
        assert abs(loss.item() - expected) < 1e-5
    assert torch.allclose(head.prototypes.detach(), torch.tensor(golden["prototypes"]), atol=1e-5)
    assert torch.allclose(head.logits(test), torch.tensor(golden["logits_test"]), atol=1e-4)


def test_multipliers_and_constraint_are_the_plain_formulas():
    base, features, labels, _, _ = inputs()
    head = CLAP().build(None, [f"c{i}" for i in range(GOLDEN["classes"])],
                        CLAP().settings(zeroshot_weights=base, logit_scale=100.0))
    logits = head.logits(features)
    probs = torch.softmax(logits, -1)
    expected = torch.stack([probs[labels == c, c].mean() for c in range(GOLDEN["classes"])])
    assert torch.allclose(class_performance(logits, labels, GOLDEN["classes"]), expected, atol=1e-7)
    head._multipliers.copy_(expected)
    with torch.no_grad():
        head.prototypes.add_(0.1)
    straightforward = sum(expected[c] * ((head.prototypes[c] - base[c]) ** 2).sum()
                          for c in range(GOLDEN["classes"])) / GOLDEN["classes"]
    assert torch.allclose(head.constraint(), straightforward, atol=1e-6)
    weight, bias = head.linear_classifier()
    assert bias is None and torch.allclose(head.logits(features), features @ weight.t(), atol=1e-5)
    assert set(head.stored_state()) == set() and [n for n, _ in head.learnable_named_parameters()] == ["prototypes"]
