"""GDA against the authors' own ``run`` functions (golden from tools/parity/probes_gda.py; inputs regenerated
from its seeded generator, their sums checked) and against straightforward computations of the equations."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from dipclip.errors import DipclipError
from dipclip.probes.base import FeatureData
from dipclip.probes.gda import GDA, precision_ks

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = json.loads((ROOT / "tests" / "golden" / "probes" / "gda.json").read_text())


def generator():
    spec = importlib.util.spec_from_file_location("probes_gda_tool", ROOT / "tools" / "parity" / "probes_gda.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tool():
    return generator()


def inputs_of(tool, part: str) -> dict:
    data = tool.synthetic(GOLDEN[part]["spec"])
    for name, total in GOLDEN[part]["input_sums"].items():
        assert data[name].double().sum().item() == pytest.approx(total, rel=1e-9, abs=1e-9), name
    return data


def t(record: dict) -> torch.Tensor:
    return torch.tensor(record["values"], dtype=torch.float32).reshape(record["shape"])


def feature_data(data: dict) -> FeatureData:
    def views(n: int):
        assert n == data["views"].shape[0]
        return data["views"], data["train_labels"]

    val = (data["val"], data["val_labels"])
    return FeatureData(train=(data["views"][0], data["train_labels"]), views=views, val=val, search=val)


def encoder(data: dict):
    table = {f"class {i}": w for i, w in enumerate(data["zeroshot"])}
    table |= {f"new {i}": w for i, w in enumerate(data.get("zeroshot_new", []))}
    return lambda names: torch.stack([table[n] for n in names])


def build(data: dict, **settings):
    method = GDA()
    names = [f"class {i}" for i in range(data["zeroshot"].shape[0])]
    settings.setdefault("augment_epoch", data["views"].shape[0])
    return method, method.build(None, names, method.settings(**settings), text_encoder=encoder(data))


def test_fewshot_matches_the_authors(tool):
    golden = GOLDEN["fewshot"]
    data = inputs_of(tool, "fewshot")
    method, head = build(data, covariance="ks")
    chosen = method.fit(head, feature_data(data), "before")
    assert chosen == {"alpha": golden["alpha"], "searched": True, "search_split": "val"}
    torch.testing.assert_close(head.weight, t(golden["weight"]), rtol=1e-5, atol=1e-4)
    for alpha, record in zip(GOLDEN["alphas"], golden["val_logits_per_alpha"], strict=True):
        logits = head.zeroshot_logits(data["val"]) + alpha * head.gda_logits(data["val"])
        assert logits.double().sum().item() == pytest.approx(record["sum"], rel=1e-5)
    torch.testing.assert_close(head.logits(data["test"]), t(golden["test_logits"]), rtol=1e-5, atol=1e-3)


def test_base2new_matches_the_authors(tool):
    golden = GOLDEN["base2new"]
    data = inputs_of(tool, "base2new")
    method, head = build(data, covariance="class_mean", new_classes=True)
    assert head.scores_new_classes
    chosen = method.fit(head, feature_data(data), "before")
    assert chosen["alpha"] == golden["alpha"]
    assert head.weight.double().sum().item() == pytest.approx(golden["weight"]["sum"], rel=1e-4)
    torch.testing.assert_close(head.logits(data["test"]), t(golden["test_logits"]), rtol=1e-4, atol=1e-3)
    base_logits = head.logits(data["test"])
    head.set_classnames([f"new {i}" for i in range(data["zeroshot_new"].shape[0])])
    assert head.weight.double().sum().item() == pytest.approx(golden["new_weight"]["sum"], rel=1e-4)
    torch.testing.assert_close(head.logits(data["test_new"]), t(golden["new_test_logits"]), rtol=1e-4, atol=1e-3)
    head.set_classnames([f"class {i}" for i in range(data["zeroshot"].shape[0])])  # back to the base classes
    torch.testing.assert_close(head.logits(data["test"]), base_logits, rtol=0, atol=0)


def test_ks_precision_by_hand(tool):
    """D * inv(sum_i (x_i - mu_y)(x_i - mu_y)^T + tr(S) I), S the unbiased covariance, in float64."""
    data = inputs_of(tool, "fewshot")
    vecs = data["views"].reshape(-1, data["views"].shape[-1]).double()
    labels = data["train_labels"].repeat(data["views"].shape[0])
    mus = torch.stack([vecs[labels == c].mean(0) for c in range(4)])
    centred = vecs - mus[labels]
    scatter = centred.T @ centred
    cov = scatter / (len(vecs) - 1)
    want = vecs.shape[1] * torch.linalg.inv(scatter + cov.trace() * torch.eye(vecs.shape[1], dtype=torch.float64))
    got = precision_ks(vecs.float(), labels, mus.float()).double()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


def test_linear_classifier_and_equation(tool):
    data = inputs_of(tool, "fewshot")
    method, head = build(data)
    method.fit(head, feature_data(data), "before")
    weight, bias = head.linear_classifier()
    torch.testing.assert_close(data["test"] @ weight.T + bias, head.logits(data["test"]), rtol=1e-5, atol=1e-3)
    # b_c = log(1/C) - mu_c P mu_c / 2 and W = P mu^T, with P the precision and mu the class means
    vecs = data["views"].reshape(-1, data["views"].shape[-1])
    labels = data["train_labels"].repeat(data["views"].shape[0])
    mus = torch.stack([vecs[labels == c].mean(0) for c in range(4)])
    precision = precision_ks(vecs, labels, mus)
    torch.testing.assert_close(head.weight, precision @ mus.T, rtol=1e-4, atol=1e-3)
    quad = torch.stack([mus[c] @ precision @ mus[c] for c in range(4)])
    torch.testing.assert_close(head.bias, torch.log(torch.tensor(0.25)) - quad / 2, rtol=1e-4, atol=1e-3)


def test_stored_state_and_refusals(tool):
    data = inputs_of(tool, "fewshot")
    method, head = build(data)
    method.fit(head, feature_data(data), "before")
    assert sorted(head.stored_state()) == ["alpha", "bias", "weight"] and head.num_trainable() == 0
    _, fresh = build(data)
    fresh.load_learnable_state(head.stored_state())
    torch.testing.assert_close(fresh.logits(data["test"]), head.logits(data["test"]), rtol=0, atol=0)
    with pytest.raises(DipclipError):
        head.set_classnames(["new 0"])  # a few-shot head keeps no features for new classes
    with pytest.raises(DipclipError):
        build(data, covariance="ledoit-wolf")
    no_search = FeatureData(train=feature_data(data).train, views=feature_data(data).views, val=None, search=None)
    _, other = build(data)
    assert method.fit(other, no_search, "before") == {"alpha": 0.1, "searched": False}
