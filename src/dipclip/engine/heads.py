"""Fitting a feature-space method (:mod:`dipclip.probes`): its data from the feature store, its closed-form part
and hyperparameter search (:meth:`~dipclip.probes.base.FeatureMethod.fit`), and, for trained ones, the one
trainer's epochs over stored feature views in between."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..backbones.loading import Backbone
from ..data.transforms import RECIPE_CROP_SCALE
from ..data.types import DatasetSplits
from ..errors import DipclipError
from ..probes.base import SAME_AS_VAL, FeatureData, FeatureHead, FeatureMethod
from .features import FeatureStore

SEARCH_SPLITS = ("val", "test")


def feature_data(backbone: Backbone, splits: DatasetSplits, store: FeatureStore, seed: int,
                 search_split: str = "val", crop_scale: float = RECIPE_CROP_SCALE, workers: int = 0,
                 skip_bad_images: bool = False, progress: bool = True) -> FeatureData:
    """The training, augmented-view and search features of ``splits``, all through ``store`` (the views are the
    ones the trainer's cached views use: view ``v`` of run seed ``seed``)."""
    if search_split not in SEARCH_SPLITS:
        raise DipclipError(f"unknown search split {search_split!r}; use val (the few-shot validation split) or test "
                           "(the authors' way for some methods: the test set chooses the hyperparameters)")
    device = backbone.device

    def encoded(items, desc):
        features, labels = store.test_features(backbone, items, workers=workers, skip_bad_images=skip_bad_images,
                                               desc=desc, progress=progress).good()
        return features.to(device), labels.to(device)

    def views(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        stacked, labels = [], None
        for view in range(n):
            got = store.view_features(backbone, splits.train, seed, view, workers, skip_bad_images,
                                      desc=f"encode view {view}", progress=progress, crop_scale=crop_scale)
            features, labels = got.good()
            stacked.append(features)
        return torch.stack(stacked).to(device), labels.to(device)

    # each split is encoded on first use only (a method that never searches never encodes its search split)
    search = (lambda: encoded(splits.test, "encode test (search)")) if search_split == "test" else SAME_AS_VAL
    return FeatureData(train=lambda: encoded(splits.train, "encode train"), views=views,
                       val=lambda: encoded(splits.val, "encode val") if splits.val else None,
                       search=search, search_split=search_split)


def fit_head(method: FeatureMethod, head: FeatureHead, data: FeatureData,
             train: Callable[[], list[dict]] | None) -> tuple[list[dict], dict]:
    """(history, chosen hyperparameters): ``fit`` before, the trainer's epochs (``train``), ``fit`` after."""
    chosen = dict(method.fit(head, data, "before") or {})
    history = train() if (method.trained and train is not None) else []
    chosen.update(method.fit(head, data, "after") or {})
    return history, chosen
