"""The linear probe against CoOp's lpclip (tests/golden/probes/lp.json, from tools/parity/probes_lp.py)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from dipclip.probes.base import FeatureData
from dipclip.probes.lp import LinearProbeMethod, fit_logistic_regression, search_c

GOLDEN = json.loads((Path(__file__).parent / "golden/probes/lp.json").read_text())


def synthetic():
    """The generator's features (same numpy seed and draws), as float32 tensors."""
    rng = np.random.default_rng(GOLDEN["seed"])
    centers = rng.standard_normal((GOLDEN["classes"], GOLDEN["dim"]))
    out = {}
    for name in ("train", "val", "test"):
        labels = np.repeat(np.arange(GOLDEN["classes"]), GOLDEN["per_class"][name])
        x = centers[labels] + 1.5 * rng.standard_normal((len(labels), GOLDEN["dim"]))
        x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
        out[name] = (torch.from_numpy(x), torch.from_numpy(labels))
    return out


DATA = synthetic()


@pytest.mark.parametrize("fit", GOLDEN["fits"], ids=lambda f: f"C={f['C']}")
def test_solver_matches_sklearn_at_convergence(fit):
    """Same objective as scikit-learn's multinomial L2 LogisticRegression: converged probabilities agree."""
    x, y = DATA["train"]
    weight, bias = fit_logistic_regression(x, y, GOLDEN["classes"], fit["C"], max_iter=100000, tol=1e-10)
    proba = torch.softmax(DATA["test"][0] @ weight.t() + bias, dim=-1)
    assert torch.allclose(proba.double(), torch.tensor(fit["proba_test"], dtype=torch.float64), atol=1e-4)


def test_objective_is_the_straightforward_one():
    """At the solution the gradient of mean CE + ||W||^2/(2CN) (intercept unpenalised) vanishes."""
    x, y = DATA["train"]
    c = 1.0
    weight, bias = fit_logistic_regression(x, y, GOLDEN["classes"], c, max_iter=100000, tol=1e-10)
    w = weight.double().requires_grad_()
    b = bias.double().requires_grad_()
    onehot = torch.nn.functional.one_hot(y, GOLDEN["classes"]).double()
    logp = torch.log_softmax(x.double() @ w.t() + b, dim=-1)
    loss = -(onehot * logp).sum(1).mean() + (w ** 2).sum() / (2 * c * len(y))
    loss.backward()
    assert w.grad.abs().max() < 1e-6 and b.grad.abs().max() < 1e-6


EARLY_STOP = pytest.mark.xfail(strict=True, reason=(
    "at C >= 1e4 scikit-learn's tol=1e-4 stops L-BFGS-B after ~17 iterations, far from the optimum; the torch "
    "L-BFGS stops elsewhere, so the search walks to another C (see tests/golden/probes/README.md)"))


@pytest.mark.parametrize("run", [pytest.param(r, marks=EARLY_STOP) if r["shots"] == 16 else r
                                 for r in GOLDEN["runs"]], ids=lambda r: f"{r['shots']}shot")
def test_search_reproduces_coop(run):
    """CoOp's coarse sweep + 8-step bisection on the validation shots picks the same C, same test accuracy."""
    x, y = DATA["train"]
    vx, vy = DATA["val"]
    train = (x[run["train_idx"]], y[run["train_idx"]])
    val = (vx[run["val_idx"]], vy[run["val_idx"]])
    result = search_c(train, val, GOLDEN["classes"])
    assert math.isclose(result["C"], run["step_C"][-1], rel_tol=1e-9)
    weight, bias = result["classifier"]
    acc = ((DATA["test"][0] @ weight.t() + bias).argmax(-1) == DATA["test"][1]).float().mean().item()
    assert abs(100 * acc - run["step_test_acc"][-1]) < 1e-3


def test_method_fit_fills_the_head():
    run = GOLDEN["runs"][2]
    x, y = DATA["train"]
    vx, vy = DATA["val"]
    method = LinearProbeMethod()
    head = method.build(None, [f"c{i}" for i in range(GOLDEN["classes"])], method.settings(feature_dim=GOLDEN["dim"]))
    val = (vx[run["val_idx"]], vy[run["val_idx"]])
    data = FeatureData(train=(x[run["train_idx"]], y[run["train_idx"]]), views=None, val=val, search=val)
    chosen = method.fit(head, data, "before")
    assert math.isclose(chosen["C"], run["step_C"][-1], rel_tol=1e-9)
    weight, bias = head.linear_classifier()
    assert torch.equal(head.logits(DATA["test"][0]), DATA["test"][0] @ weight.t() + bias)
    assert set(head.stored_state()) == {"weight", "bias"} and head.num_trainable() == 0
