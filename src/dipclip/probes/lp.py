"""Linear probe CLIP (Radford et al. 2021; CoOp's ``lpclip``): multinomial L2-regularised logistic regression.

CoOp's recipe (KaiyangZhou/CoOp, ``lpclip/linear_probe.py``): scikit-learn ``LogisticRegression(solver="lbfgs",
max_iter=1000, penalty="l2", C=c)`` on the training features (test transform), with ``C`` searched on the
few-shot validation split: a coarse sweep over ``1e6, 1e4, ..., 1e-6``, then 8 steps of a bisection in
log10(C) around the best coarse value. Here the same objective is minimised by L-BFGS in torch (float64):

    mean_i CE(W f_i + b, y_i) + ||W||^2 / (2 C N)        (the intercept is not penalised, as in scikit-learn)

so scikit-learn is not needed at run time (``tests/test_probes_lp.py`` checks it against scikit-learn).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import DipclipError
from .base import FeatureData, FeatureHead, FeatureMethod

COARSE_GRID = (1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6)


def fit_logistic_regression(features: torch.Tensor, labels: torch.Tensor, num_classes: int, c: float,
                            max_iter: int = 1000, tol: float = 1e-4, history_size: int = 10
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's multinomial ``LogisticRegression(penalty="l2", C=c)`` objective by L-BFGS from zero.

    Stops as scikit-learn does: at ``max_iter`` iterations, or when the largest absolute gradient entry of the
    objective (mean loss + penalty / N) is at most ``tol``. Returns (weight [C, D], bias [C]) in float32.
    """
    x = features.detach().to(torch.float64)
    y = labels.detach().long().to(x.device)
    n, d = x.shape
    params = torch.zeros(num_classes, d + 1, dtype=torch.float64, device=x.device, requires_grad=True)
    strength = 1.0 / (c * n)
    optimizer = torch.optim.LBFGS([params], lr=1.0, max_iter=max_iter, max_eval=max(15000, max_iter * 5 // 4),
                                  tolerance_grad=tol, tolerance_change=64 * torch.finfo(torch.float64).eps,
                                  history_size=history_size, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        weight, bias = params[:, :d], params[:, d]
        loss = nn.functional.cross_entropy(x @ weight.t() + bias, y) + 0.5 * strength * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    weight, bias = params.detach()[:, :d], params.detach()[:, d]
    return weight.float().contiguous(), bias.float().contiguous()


def accuracy(weight: torch.Tensor, bias: torch.Tensor, features: torch.Tensor, labels: torch.Tensor) -> float:
    predictions = (features.to(weight) @ weight.t() + bias).argmax(dim=-1)
    return (predictions == labels.to(predictions.device)).float().mean().item()


def search_c(train: tuple[torch.Tensor, torch.Tensor], search: tuple[torch.Tensor, torch.Tensor],
             num_classes: int, coarse_grid=COARSE_GRID, steps: int = 8, max_iter: int = 1000, tol: float = 1e-4
             ) -> dict:
    """CoOp's search: the coarse sweep (first best on ties), then ``steps`` rounds comparing the two ends of a
    range [c_left, c_right] (``c_right`` only when strictly better), the range halving in log10 around the
    winner. Returns the chosen C, its classifier, and the trace (every C tried and its accuracy)."""
    features, labels = train
    trace = []

    def evaluate(c: float) -> tuple[float, tuple[torch.Tensor, torch.Tensor]]:
        classifier = fit_logistic_regression(features, labels, num_classes, c, max_iter, tol)
        acc = accuracy(*classifier, *search)
        trace.append({"C": c, "val_acc": acc})
        return acc, classifier

    coarse = [evaluate(c)[0] for c in coarse_grid]
    peak = coarse_grid[max(range(len(coarse)), key=lambda i: (coarse[i], -i))]
    c_left, c_right = 0.1 * peak, 10.0 * peak
    chosen = None
    for _ in range(steps):
        acc_left, clf_left = evaluate(c_left)
        acc_right, clf_right = evaluate(c_right)
        if acc_left < acc_right:
            chosen = (c_right, clf_right)
            log_left, log_right = 0.5 * (math.log10(c_right) + math.log10(c_left)), math.log10(c_right)
        else:
            chosen = (c_left, clf_left)
            log_left, log_right = math.log10(c_left), 0.5 * (math.log10(c_right) + math.log10(c_left))
        c_left, c_right = 10.0 ** log_left, 10.0 ** log_right
    if chosen is None:  # steps == 0: the coarse winner
        chosen = (peak, fit_logistic_regression(features, labels, num_classes, peak, max_iter, tol))
    return {"C": chosen[0], "classifier": chosen[1], "coarse_acc": coarse, "trace": trace}


class LinearProbeHead(FeatureHead):
    """logits = f W^T + b: a linear map computed in closed form (no learnable parameters)."""

    def __init__(self, backbone, classnames: list[str], settings: dict, feature_dim: int):
        super().__init__(backbone, classnames, settings)
        self.register_buffer("weight", torch.zeros(len(classnames), feature_dim))
        self.register_buffer("bias", torch.zeros(len(classnames)))

    def logits(self, image_features: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        return image_features.to(self.weight) @ self.weight.t() + self.bias

    def linear_classifier(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.weight.detach(), self.bias.detach()


def feature_dim_of(backbone, settings: dict) -> int:
    if settings.get("feature_dim"):
        return int(settings["feature_dim"])
    if settings.get("zeroshot_weights") is not None:
        return int(settings["zeroshot_weights"].shape[-1])
    dim = getattr(backbone, "embed_dim", None)
    if dim is None:
        dim = backbone.model.text_projection.shape[-1]
    return int(dim)


class LinearProbeMethod(FeatureMethod):
    name = "lp"
    summary = "linear probe: L2 logistic regression (L-BFGS), C searched on the validation split (CoOp lpclip)"
    trained = False
    searches = True
    protocols = frozenset({"fewshot", "xd", "dg"})
    defaults = {"c_grid": list(COARSE_GRID), "search_steps": 8, "max_iter": 1000, "tol": 1e-4, "C": None,
                "feature_dim": None, "zeroshot_weights": None, "templates": None}

    def build(self, backbone, classnames: list[str], settings: dict) -> LinearProbeHead:
        return LinearProbeHead(backbone, classnames, settings, feature_dim_of(backbone, settings))

    def fit(self, head: LinearProbeHead, data: FeatureData, stage: str) -> dict:
        if stage != "before":
            return {}
        s = head.settings
        features, labels = data.train
        num_classes = len(head.train_classnames)
        if s.get("C") is not None:  # a fixed C: no search
            weight, bias = fit_logistic_regression(features, labels, num_classes, float(s["C"]), s["max_iter"],
                                                   s["tol"])
            chosen = {"C": float(s["C"])}
        else:
            if data.search is None:
                raise DipclipError("the linear probe searches C on a validation split and this dataset has none; "
                                   "give C explicitly (e.g. --head C=1.0)")
            result = search_c(data.train, data.search, num_classes, tuple(s["c_grid"]), s["search_steps"],
                              s["max_iter"], s["tol"])
            weight, bias = result["classifier"]
            chosen = {"C": result["C"], "search_split": data.search_split,
                      "search_trace": [(t["C"], t["val_acc"]) for t in result["trace"]]}
        with torch.no_grad():
            head.weight.copy_(weight.to(head.weight))
            head.bias.copy_(bias.to(head.bias))
        return chosen
