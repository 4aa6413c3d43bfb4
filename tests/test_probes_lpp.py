"""LP++ against the authors' own loop (tests/golden/probes/lpp.json, from tools/parity/probes_lpp.py)."""

import json
from pathlib import Path

import torch
from torch import nn

from dipclip.probes.base import FeatureData
from dipclip.probes.lpp import LPP, lpp_fit

GOLDEN = json.loads((Path(__file__).parent / "golden/probes/lpp.json").read_text())


def inputs():
    g = torch.Generator().manual_seed(GOLDEN["seed"])
    text = nn.functional.normalize(torch.randn(GOLDEN["classes"], GOLDEN["dim"], generator=g), dim=-1)

    def split(k):
        labels = torch.arange(GOLDEN["classes"]).repeat_interleave(k)
        x = nn.functional.normalize(text[labels] + 0.8 * torch.randn(len(labels), GOLDEN["dim"], generator=g), dim=-1)
        return x, labels

    return text, split(GOLDEN["shots"]), split(GOLDEN["val_shots"]), split(5)


def test_reproduces_official_loop():
    text, train, val, test = inputs()
    out = lpp_fit(*train, text, val, GOLDEN["epochs"], GOLDEN["init_seed"])
    assert abs(out["lr_alpha"] - GOLDEN["lr_alpha"]) < 1e-6 * GOLDEN["lr_alpha"]
    assert abs(out["alpha_init"] - GOLDEN["alpha_init"]) < 1e-4
    best = GOLDEN["best"]
    assert torch.allclose(out["weight"], torch.tensor(best["weight"]), atol=1e-4)
    assert torch.allclose(out["bias"], torch.tensor(best["bias"]), atol=1e-5)
    assert torch.allclose(out["alpha"], torch.tensor(best["alpha"]), atol=1e-4)
    logits = test[0] @ out["weight"].t() + out["bias"] + out["alpha"] * (test[0] @ text.t())
    assert abs(100 * (logits.argmax(1) == test[1]).float().mean().item() - GOLDEN["test_acc"]) < 1e-3


def test_method_head_and_export():
    text, train, val, test = inputs()
    method = LPP()
    head = method.build(None, [f"c{i}" for i in range(GOLDEN["classes"])],
                        method.settings(zeroshot_weights=text, epochs=GOLDEN["epochs"]))
    data = FeatureData(train=train, views=lambda n: (train[0].unsqueeze(0).expand(n, -1, -1), train[1]),
                       val=val, search=val)
    chosen = method.fit(head, data, "before")
    assert torch.allclose(head.alpha, torch.tensor(GOLDEN["best"]["alpha"]), atol=1e-4)
    # lr_w is 4N / the largest eigenvalue of F^T F
    assert abs(chosen["lr_w"] - 4 * len(train[1]) / torch.linalg.eigvalsh(train[0].t().double() @ train[0].double()
                                                                           ).max().item()) < 1e-5
    weight, bias = head.linear_classifier()
    assert torch.allclose(head.logits(test[0]), test[0] @ weight.t() + bias, atol=1e-5)
    assert set(head.stored_state()) == {"weight", "bias", "alpha"} and head.num_trainable() == 0
