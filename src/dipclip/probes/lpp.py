"""LP++ (Huang et al., CVPR 2024; FereshteShakeri/FewShot-CLIP-Strong-Baseline ``methods/linear_probe_p2.py``).

logits = W f + b + alpha ⊙ (f T^T), with T the normalised zero-shot weights, W initialised at the class *sums* of
the training features, b at nn.Linear's default init, alpha at 250 x the mean over classes of the class-mean
zero-shot score. Full-batch: ``epochs`` steps of SGD (momentum 0.9) on (W, b) at lr_w = 4N / lambda_max(F^T F);
every 10th step alpha -= lr_alpha * g, g the alpha gradient *accumulated since the start* (their alpha.grad is
never zeroed), lr_alpha = N / (4 max_c sum_i (f_i . t_c)^2). The kept state is the last step with the best
validation accuracy (their model selection). Its own loop in ``fit``: the trainer's per-epoch minibatch SGD
cannot express the data-driven step sizes, the accumulated alpha step and the per-step validation selection.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import FeatureData, FeatureHead, FeatureMethod


def lpp_fit(features, labels, text, val=None, epochs: int = 300, init_seed: int = 1, alpha_every: int = 10,
            alpha_scale: float = 250.0) -> dict:
    """LP++'s loop on normalised features [N, D], labels [N], text weights [C, D]; val = (features, labels)."""
    n, d = features.shape
    c = text.shape[0]
    x, y, t = features.float(), labels.long(), text.float()
    onehot = nn.functional.one_hot(y, c).float()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        linear = nn.Linear(d, c, bias=True)  # their bias init (the weight is overwritten)
    linear.weight.data = onehot.t() @ x
    scores = x @ t.t()
    per_class = (onehot * scores).sum(0) / onehot.sum(0)
    alpha_init = (alpha_scale * per_class.double()).mean()
    alpha = (alpha_init * torch.ones(1, c)).float().requires_grad_()
    lr_w = 4 * n / torch.linalg.eigvalsh((x.t() @ x).double()).max().item()
    lr_alpha = (n / (scores.pow(2).sum(0).max() * 4)).item()
    optimizer = torch.optim.SGD(linear.parameters(), lr_w, momentum=0.9)
    best = (-1.0, None)
    for epoch in range(epochs):
        logits = linear(x) + alpha * scores
        loss = nn.functional.cross_entropy(logits, y)
        optimizer.zero_grad()
        loss.backward()  # alpha.grad accumulates, as theirs
        optimizer.step()
        if (epoch + 1) % alpha_every == 0:
            alpha.data -= lr_alpha * alpha.grad.data
        if val is not None:
            with torch.no_grad():
                acc = ((linear(val[0].float()) + alpha * (val[0].float() @ t.t())).argmax(1) == val[1]
                       ).float().mean().item()
        else:
            acc = 0.0  # no validation split: the last step is kept
        if acc >= best[0]:
            best = (acc, {"weight": linear.weight.detach().clone(), "bias": linear.bias.detach().clone(),
                          "alpha": alpha.detach()[0].clone(), "epoch": epoch, "val_acc": acc})
    return {**best[1], "lr_w": lr_w, "lr_alpha": lr_alpha, "alpha_init": alpha_init.item(), "loss": loss.item()}


class LPPHead(FeatureHead):
    def __init__(self, backbone, classnames: list[str], settings: dict, text: torch.Tensor):
        super().__init__(backbone, classnames, settings)
        c, d = text.shape
        self.register_buffer("weight", torch.zeros(c, d))
        self.register_buffer("bias", torch.zeros(c))
        self.register_buffer("alpha", torch.zeros(c))
        self.register_buffer("_text", text.detach().clone().float())  # zero-shot weights, rebuilt from the backbone

    def logits(self, image_features: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        f = image_features.to(self.weight)
        return f @ self.weight.t() + self.bias + self.alpha * (f @ self._text.t())

    def text_features(self, merged: bool = False) -> torch.Tensor:
        return self._text

    def linear_classifier(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.weight + self.alpha[:, None] * self._text, self.bias.clone()


class LPP(FeatureMethod):
    name = "lpp"
    summary = "LP++: class-sum-initialised linear probe blended with zero-shot logits by learned per-class alpha"
    trained = False  # its own full-batch loop in fit (see the module docstring)
    searches = True
    protocols = frozenset({"fewshot", "xd", "dg"})
    defaults = {"epochs": 300, "init_seed": 1, "alpha_every": 10, "alpha_scale": 250.0, "zeroshot_weights": None,
                "templates": None}

    def build(self, backbone, classnames: list[str], settings: dict) -> LPPHead:
        text = settings.get("zeroshot_weights")
        if text is None:
            from ..methods.zeroshot import zeroshot_text_features

            text = zeroshot_text_features(backbone, classnames, settings.get("templates") or ["a photo of a {}."])
        return LPPHead(backbone, classnames, settings, nn.functional.normalize(torch.as_tensor(text).float(), dim=-1))

    def fit(self, head: LPPHead, data: FeatureData, stage: str) -> dict:
        if stage != "before":
            return {}
        s = head.settings
        views, labels = data.views(1)  # their one augmented pass over the training images
        out = lpp_fit(views[0].to(head.weight), labels.to(head.weight.device), head._text, data.search,
                      s["epochs"], s["init_seed"], s["alpha_every"], s["alpha_scale"])
        with torch.no_grad():
            head.weight.copy_(out["weight"])
            head.bias.copy_(out["bias"])
            head.alpha.copy_(out["alpha"])
        return {"lr_w": out["lr_w"], "lr_alpha": out["lr_alpha"], "alpha_init": out["alpha_init"],
                "best_epoch": out["epoch"], "val_acc": out["val_acc"], "search_split": data.search_split}
