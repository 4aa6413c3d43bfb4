"""GDA: Gaussian discriminant analysis over CLIP features (Wang et al., ICLR 2024, "A hard-to-beat baseline for
training-free CLIP-based adaptation"; mrflogs/ICLR24).

Training-free. From the L2-normalised features of ``augment_epoch`` augmented views of every training image,
class means ``mu`` [C, D] and a shared precision matrix ``P`` [D, D] give the linear classifier

    W = P @ mu.T  ([D, C]),   b = log(1 / C) - diag(mu @ P @ mu.T) / 2
    logits = 100 * f @ W_zs.T + alpha * (f @ W + b)

with ``alpha`` searched on ``[1e-4, 1e-3, 1e-2, 0.1, 1, 10, 100]`` (first strictly best accuracy; 0.1 when
none beats accuracy 0). The precision matrix, as the authors estimate it:

- ``"ks"`` (main_few_shots.py, main_robustness.py): with ``X`` the class-centred features of all ``M`` views,
  ``S = cov(X)`` (torch.cov, unbiased), ``P = D * pinv((M - 1) * S + trace(S) * I)``;
- ``"class_mean"`` (main_base2new.py, base classes): ``P = pinv(mean over classes of cov(features of class))``.

Base-to-new (main_base2new.py): each new class's mean is the mean of its ``k`` (64) nearest training view
features by the new class's text feature ``w`` and ``text_repeats`` (16) copies of ``w``; the precision is the
mean over new classes of ``D * pinv((k - 1) * S_w + trace(S_w) * I)``, ``S_w`` the covariance of those ``k``
features about ``w`` (divided by ``k - 1``); ``alpha`` stays the one searched on the base classes. So a head made
for base-to-new keeps the training view features (``train_views``) to score classes named later.
"""

from __future__ import annotations

import torch

from ..backbones.loading import Backbone
from ..errors import DipclipError
from .base import FeatureData, FeatureHead, FeatureMethod, HeadOptimConfig
from .tip_adapter import TextEncoder, correct_count, text_encoder_of

ALPHAS = [0.0001, 0.001, 0.01, 0.1, 1.0, 10.0, 100.0]  # main_few_shots.py / main_base2new.py
COVARIANCES = ("ks", "class_mean")


def class_means(vecs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.cat([vecs[labels == i].mean(dim=0, keepdim=True) for i in range(num_classes)])


def precision_ks(vecs: torch.Tensor, labels: torch.Tensor, mus: torch.Tensor) -> torch.Tensor:
    """``D * pinv((M - 1) * S + trace(S) * I)``, ``S`` the covariance of the class-centred features."""
    centred = torch.cat([vecs[labels == i] - mus[i].unsqueeze(0) for i in range(mus.shape[0])])
    cov = centred.T.cov()
    dim = centred.shape[1]
    return dim * torch.linalg.pinv((centred.shape[0] - 1) * cov + cov.trace()
                                   * torch.eye(dim, device=vecs.device, dtype=vecs.dtype))


def precision_class_mean(vecs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``pinv`` of the mean of the per-class (unbiased) covariances."""
    covs = torch.cat([vecs[labels == i].T.cov().unsqueeze(0) for i in range(num_classes)])
    return torch.linalg.pinv(covs.mean(dim=0))


def discriminant(mus: torch.Tensor, precision: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(W [D, C], b [C]) with uniform priors."""
    priors = torch.ones(mus.shape[0], device=mus.device, dtype=mus.dtype) / mus.shape[0]
    weight = torch.einsum("nd, dc -> cn", mus, precision)
    bias = priors.log() - torch.einsum("nd, dc, nc -> n", mus, precision, mus) / 2
    return weight, bias


def new_class_statistics(vecs: torch.Tensor, text: torch.Tensor, k: int, text_repeats: int
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Means [C', D] and the shared precision [D, D] synthesised for classes with text features ``text``."""
    if vecs.shape[0] < k:
        raise DipclipError(f"scoring new classes needs at least k={k} training view features, the head kept "
                           f"{vecs.shape[0]}")
    dim = vecs.shape[1]
    eye = torch.eye(dim, device=vecs.device, dtype=vecs.dtype)
    means, precisions = [], []
    for w in text:
        near = vecs[torch.topk(w @ vecs.T, k=k, largest=True)[1]]
        means.append(torch.cat([near, w.unsqueeze(0).repeat(text_repeats, 1)]).mean(dim=0, keepdim=True))
        diff = near - w.unsqueeze(0)
        cov = diff.T @ diff / (k - 1)
        precisions.append(dim * torch.linalg.pinv((k - 1) * cov + cov.trace() * eye).unsqueeze(0))
    return torch.cat(means), torch.cat(precisions).mean(dim=0)


class GDAHead(FeatureHead):
    """``weight`` [D, C] and ``bias`` [C] of the discriminant, ``alpha``; with ``new_classes``, also the training
    view features ``train_views`` [M, D] to synthesise new classes' statistics."""

    def __init__(self, backbone: Backbone, classnames: list[str], settings: dict,
                 text_encoder: TextEncoder | None = None):
        super().__init__(backbone, classnames, settings)
        if self.settings["covariance"] not in COVARIANCES:
            raise DipclipError(f"gda covariance must be one of {', '.join(COVARIANCES)}, got "
                               f"{self.settings['covariance']!r}")
        self.__dict__["text_encoder"] = text_encoder or text_encoder_of(backbone, list(self.settings["templates"]))
        zeroshot = self.text_encoder(list(classnames)).float()
        self.register_buffer("_zeroshot", zeroshot, persistent=False)
        dim, classes = zeroshot.shape[1], len(classnames)
        self.register_buffer("weight", torch.zeros(dim, classes))
        self.register_buffer("bias", torch.zeros(classes))
        self.register_buffer("alpha", torch.tensor(0.1))
        self.scores_new_classes = bool(self.settings["new_classes"])
        if self.scores_new_classes:
            self.register_buffer("train_views", torch.zeros(0, dim))
        # the base classes' discriminant, restored when the head goes back to them
        self._base = None
        self._fitted = False

    def set_statistics(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        self.weight = weight.detach().float().clone()
        self.bias = bias.detach().float().clone()

    def load_learnable_state(self, state: dict[str, torch.Tensor]) -> None:
        if self.scores_new_classes and "train_views" in state:
            self.train_views = torch.zeros_like(state["train_views"], device=self._zeroshot.device)
        super().load_learnable_state(state)

    def set_classnames(self, classnames: list[str]) -> None:
        if list(classnames) == self.train_classnames and self._base is not None:
            self._zeroshot, weight, bias = self._base
            self.set_statistics(weight, bias)
            self._base = None
        super().set_classnames(classnames)

    def on_new_classes(self, classnames: list[str]) -> None:
        if self.train_views.shape[0] == 0:
            raise DipclipError(f"{self.origin} kept no training features to score new classes")
        if self._base is None:
            self._base = (self._zeroshot, self.weight, self.bias)
        text = self.text_encoder(list(classnames)).float().to(self.train_views.device)
        mus, precision = new_class_statistics(self.train_views, text, int(self.settings["topk"]),
                                              int(self.settings["text_repeats"]))
        self._zeroshot = text
        self.set_statistics(*discriminant(mus, precision))

    def zeroshot_logits(self, image_features: torch.Tensor) -> torch.Tensor:
        return 100.0 * image_features @ self._zeroshot.T

    def gda_logits(self, image_features: torch.Tensor) -> torch.Tensor:
        return image_features @ self.weight + self.bias

    def logits(self, image_features: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        return self.zeroshot_logits(image_features) + self.alpha * self.gda_logits(image_features)

    def linear_classifier(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return 100.0 * self._zeroshot + self.alpha * self.weight.T, self.alpha * self.bias

    def text_features(self, merged: bool = False) -> torch.Tensor:
        return self._zeroshot


class GDA(FeatureMethod):
    name = "gda"
    summary = "GDA (Wang et al., ICLR 2024): training-free Gaussian discriminant analysis fused with zero-shot CLIP"
    trained = False
    searches = True
    protocols = frozenset({"fewshot", "base2new", "dg"})
    defaults = {"templates": ["a photo of a {}."], "augment_epoch": 10, "covariance": "ks", "alphas": ALPHAS,
                "default_alpha": 0.1, "search": True, "new_classes": False, "topk": 64, "text_repeats": 16}
    optim_defaults = HeadOptimConfig()  # unused: nothing is trained

    def build(self, backbone: Backbone, classnames: list[str], settings: dict,
              text_encoder: TextEncoder | None = None) -> GDAHead:
        return GDAHead(backbone, classnames, {**self.defaults, **settings}, text_encoder)

    @staticmethod
    def statistics(vecs: torch.Tensor, labels: torch.Tensor, num_classes: int, covariance: str
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        mus = class_means(vecs, labels, num_classes)
        if covariance == "ks":
            precision = precision_ks(vecs, labels, mus)
        else:
            precision = precision_class_mean(vecs, labels, num_classes)
        return mus, precision

    def search(self, head: GDAHead, features: torch.Tensor, labels: torch.Tensor) -> float:
        features, labels = features.to(head.weight.device).float(), labels.to(head.weight.device)
        best, best_alpha = 0, float(head.settings["default_alpha"])
        with torch.no_grad():
            clip_logits, gda_logits = head.zeroshot_logits(features), head.gda_logits(features)
            for alpha in head.settings["alphas"]:
                correct = correct_count(clip_logits + alpha * gda_logits, labels)
                if correct > best:
                    best, best_alpha = correct, float(alpha)
        return best_alpha

    def fit(self, head: GDAHead, data: FeatureData, stage: str) -> dict:
        if stage != "before" and head._fitted:
            return dict(head.chosen)
        n = int(head.settings["augment_epoch"])
        views, labels = data.views(n)
        device = head.weight.device
        vecs = views.reshape(-1, views.shape[-1]).float().to(device)  # view-major, as the authors' loop
        vec_labels = labels.to(device).repeat(n)
        classes = len(head.train_classnames)
        counts = torch.bincount(vec_labels, minlength=classes)
        if int(counts.min()) < (2 if head.settings["covariance"] == "class_mean" else 1):
            raise DipclipError("gda needs training images of every class (two views per class for the "
                               "class_mean covariance)")
        with torch.no_grad():
            head.set_statistics(*discriminant(*self.statistics(vecs, vec_labels, classes,
                                                               head.settings["covariance"])))
            if head.scores_new_classes:
                head.train_views = vecs.clone()
            alpha = float(head.settings["default_alpha"])
            searched = bool(head.settings["search"]) and data.search is not None
            if searched:
                alpha = self.search(head, *data.search)
            head.alpha.fill_(alpha)
        head._fitted = True
        out = {"alpha": alpha, "searched": searched}
        if searched:
            out["search_split"] = data.search_split
        head.chosen = out
        return dict(out)
