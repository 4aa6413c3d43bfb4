"""Feature-space methods: classifiers over frozen CLIP image features (linear probes, adapters, caches).

They are the other half of the few-shot CLIP literature (LP, ZS-LP, CLAP, LP++, CLIP-Adapter, Tip-Adapter(-F),
TaskRes, GDA). Unlike prompt methods they never run the text tower per step: the class text features enter once
(zero-shot weights, from hand-written templates), and everything learned acts on image features. So they train
from the feature store (stored, L2-normalised features of augmented views), in seconds.

Two shapes:

- **trained** (``FeatureMethod.trained``): the one trainer runs the epochs, exactly as for prompts; the method
  gives ``loss`` (and may override ``training_step``), and the head's learnable parameters are optimised with the
  method's recipe (optimiser, lr, schedule per epoch or per step, epochs, batch size);
- **closed form or training-free**: :meth:`FeatureMethod.fit` computes the head from the training features
  (and searches hyperparameters on the few-shot validation split, never on the test split).

Both may search hyperparameters in :meth:`FeatureMethod.fit` (called before training for trained methods with
``stage="before"`` and after it with ``stage="after"``), always on :attr:`FeatureData.val`: Dassl's few-shot
validation split (``min(K, 4)`` images per class, drawn with the training shots). Where the authors searched on
the test set, ``search_split="test"`` reproduces that and is recorded as such in metrics.json.

A head stores only what it learned or computed (PEFT-like): learnable tensors plus, for cache and
discriminant methods, the few-shot features/labels or class statistics they keep (``stored_state``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn

from ..backbones.loading import Backbone
from ..errors import DipclipError
from ..methods.base import OptimConfig

PROTOCOLS = ("fewshot", "base2new", "xd", "dg")
SCHEDULES = ("epoch", "step")


@dataclass(frozen=True)
class HeadOptimConfig(OptimConfig):
    """The prompt recipes' optimiser settings plus what the feature methods' authors also set: AdamW's ``eps``
    (Tip-Adapter-F: 1e-4) and a cosine ``schedule`` stepped per optimisation ``step`` (their
    ``CosineAnnealingLR(T_max=epochs * steps)``) instead of per ``epoch`` (Dassl's). A subclass, so the prompt
    methods' recorded settings (and their resume and reuse checks) stay exactly as they were."""

    eps: float = 1e-8
    schedule: str = "epoch"
    eta_min: float = 0.0  # the per-step cosine's floor (CLIP-LoRA: 1e-6)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.schedule not in SCHEDULES:
            raise DipclipError(f"unknown lr schedule {self.schedule!r}; use {' or '.join(SCHEDULES)}")
        if isinstance(self.eps, bool) or not isinstance(self.eps, int | float) or not math.isfinite(self.eps) \
                or self.eps <= 0:
            raise DipclipError(f"the optimiser eps must be a finite number > 0, got {self.eps!r}")


Pair = tuple[torch.Tensor, torch.Tensor]
SAME_AS_VAL = "same as val"


class FeatureData:
    """What a feature method may read, all from the feature store (L2-normalised fp32, on the model's device).

    ``train``: (features [N, D], labels [N]) of the training images under the test transform (no augmentation);
    ``views(n)``: [n, N, D] features of ``n`` augmented views of the training images (random resized crop + flip,
    the recipes' augmentation; the same views the trainer's cached views use) and their labels [N];
    ``val``: the few-shot validation split under the test transform, or None when the dataset has none;
    ``search``: the split hyperparameters are searched on (``val`` by default; the test split only with the
    authors' way, ``search_split="test"``).

    ``train``, ``val`` and ``search`` may be given as zero-argument functions: they are encoded on first use
    only, so a method that never reads them (CLIP-LoRA, the trained adapters) costs no encoding pass;
    ``search=SAME_AS_VAL`` is the validation split itself (encoded once).
    """

    def __init__(self, train: Pair | Callable[[], Pair], views: Callable[[int], Pair] | None,
                 val: Pair | None | Callable[[], Pair | None], search: Pair | None | Callable[[], Pair | None],
                 search_split: str = "val"):
        self._given = {"train": train, "val": val, "search": search}
        self._resolved: dict[str, Pair | None] = {}
        self.views = views
        self.search_split = search_split

    def _get(self, name: str) -> Pair | None:
        if name not in self._resolved:
            given = self._given[name]
            if name == "search" and given is SAME_AS_VAL:
                self._resolved[name] = self.val
            else:
                self._resolved[name] = given() if callable(given) else given
        return self._resolved[name]

    @property
    def train(self) -> Pair:
        return self._get("train")

    @property
    def val(self) -> Pair | None:
        return self._get("val")

    @property
    def search(self) -> Pair | None:
        return self._get("search")


class FeatureHead(nn.Module):
    """A classifier over image features [B, D] with the prompt models' surface where the engine needs it."""

    origin = "the head"  # what refusals name; model_from_adapter sets "adapter <folder>"
    image_conditioned = False
    image_prompted = False
    takes_raw_features = False
    has_class_head = True  # learned or stored tensors are tied to the training classes
    feature_head = True  # evaluation goes through logits(features), never image @ text.T
    scores_new_classes = False  # True: set_classnames works for classes it was not trained on

    def __init__(self, backbone: Backbone, classnames: list[str], settings: dict):
        super().__init__()
        self.__dict__["backbone"] = backbone  # frozen, shared: not a submodule (never saved, never trained)
        self.settings = dict(settings)
        self.train_classnames = list(classnames)
        self._classnames = list(classnames)

    @property
    def classnames(self) -> list[str]:
        return self._classnames

    def __init_subclass__(cls, **kwargs) -> None:
        """A head's own ``logits`` give scores over its training classes; when :meth:`set_classnames` picked a
        subset of them by name (ImageNet-A/R's 200 of ImageNet's 1,000, as the authors' label mappings and DePT's
        row clipping do), only those columns are returned, in the asked order."""
        super().__init_subclass__(**kwargs)
        inner = cls.__dict__.get("logits")
        if inner is None or getattr(inner, "_picks_rows", False):
            return

        @functools.wraps(inner)
        def logits(self, image_features, text_features=None):
            scores = inner(self, image_features, text_features)
            rows = self.__dict__.get("_subset_rows")
            return scores if rows is None else scores.index_select(-1, rows.to(scores.device))

        logits._picks_rows = True
        cls.logits = logits

    def set_classnames(self, classnames: list[str]) -> None:
        """Other classes than the training ones only where the method can score them (``scores_new_classes``);
        a subset of the training classes (matched by name) scores those columns only."""
        self.__dict__["_subset_rows"] = None
        if list(classnames) == self.train_classnames:
            self._classnames = list(classnames)
            return
        index = {name: i for i, name in enumerate(self.train_classnames)}
        if not self.scores_new_classes and all(name in index for name in classnames) \
                and len(set(classnames)) == len(classnames):
            self.__dict__["_subset_rows"] = torch.tensor([index[name] for name in classnames], dtype=torch.long)
            self._classnames = list(classnames)
            return
        if not self.scores_new_classes:
            raise DipclipError(f"{self.origin} can only score the {len(self.train_classnames)} classes it was "
                               "trained on (or a subset of them, by name); evaluate it on those classes")
        self._classnames = list(classnames)
        self.on_new_classes(classnames)

    def on_new_classes(self, classnames: list[str]) -> None:
        """Rebuild what depends on the class list (zero-shot weights) for methods that score new classes."""

    def logits(self, image_features: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def text_features(self, merged: bool = False) -> torch.Tensor:
        """The zero-shot class text features the head starts from (for export and checks), when it has them."""
        raise DipclipError(f"{self.origin} has no class text features")

    def linear_classifier(self) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """(weight [C, D], bias [C] or None) when the head is one linear map of the features, else None."""
        return None

    # learned and stored tensors ------------------------------------------------------------------------

    def learnable_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(name, p) for name, p in self.named_parameters() if p.requires_grad]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.learnable_named_parameters()]

    def param_groups(self) -> list[dict]:
        return [{"params": self.trainable_parameters(), "lr_scale": 1.0}]

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters())

    def learnable_state(self) -> dict[str, torch.Tensor]:
        return {name: p.detach() for name, p in self.learnable_named_parameters()}

    def stored_state(self) -> dict[str, torch.Tensor]:
        """Computed (not learned) tensors the adapter keeps: a cache's features and labels, class means."""
        return {name: b.detach() for name, b in self.named_buffers() if not name.startswith("_")}

    def load_learnable_state(self, state: dict[str, torch.Tensor]) -> None:
        expected = dict(self.learnable_named_parameters()) | dict(
            (name, b) for name, b in self.named_buffers() if not name.startswith("_"))
        if set(state) != set(expected):
            raise DipclipError(f"stored tensors {sorted(state)} do not match this head's {sorted(expected)}; the "
                               "adapter was made for another method or configuration")
        with torch.no_grad():
            for name, tensor in state.items():
                target = expected[name]
                if target.shape != tensor.shape:
                    raise DipclipError(f"stored tensor {name} has shape {tuple(tensor.shape)}, expected "
                                       f"{tuple(target.shape)}")
                target.copy_(tensor.to(target.device, target.dtype))

    def frozen_digests(self) -> dict[str, str]:
        """Digests of frozen inputs rebuilt from the config (none by default: the backbone identity covers the
        zero-shot weights, and every computed tensor is stored)."""
        return {}

    def train(self, mode: bool = True) -> FeatureHead:
        super().train(mode)
        self.backbone.model.eval()
        return self


class FeatureMethod:
    """Base of every feature-space method: its name, recipe defaults, what protocols it can do, and how it
    learns (``loss`` for the trainer, ``fit`` for closed-form parts and hyperparameter searches)."""

    name: str = ""
    summary: str = ""
    trained: bool = True  # the one trainer runs epochs over stored feature views
    searches: bool = False  # chooses hyperparameters on FeatureData.search (the few-shot val split by default)
    mixed_settings: frozenset[str] = frozenset()  # settings that take values of several kinds (the method checks)
    protocols: frozenset[str] = frozenset({"fewshot"})
    defaults: dict = {}  # the method's own hyperparameters (the recipe's "head" section overrides them)
    optim_defaults: HeadOptimConfig = HeadOptimConfig()

    def optim_config(self, **overrides) -> HeadOptimConfig:
        return replace(self.optim_defaults, **{k: v for k, v in overrides.items() if v is not None})

    def settings(self, **overrides) -> dict:
        unknown = sorted(set(overrides) - set(self.defaults))
        if unknown:
            raise DipclipError(f"{self.name} has no setting(s) {', '.join(unknown)}; its settings are "
                               f"{', '.join(sorted(self.defaults)) or 'none'}")
        given = {k: v for k, v in overrides.items() if v is not None}
        for key, value in given.items():
            default = self.defaults[key]
            if default is None or isinstance(value, torch.Tensor) or key in self.mixed_settings:
                continue  # no type to hold it to (C, injected zero-shot weights), or several are allowed
            if not _same_kind(value, default):
                raise DipclipError(f"{self.name} setting {key} must be {_kind_of(default)} like its default "
                                   f"{default!r}, got {value!r}; e.g. --method-option {key}={_example(default)}")
        return {**self.defaults, **given}

    def build(self, backbone: Backbone, classnames: list[str], settings: dict) -> FeatureHead:
        raise NotImplementedError

    def fit(self, head: FeatureHead, data: FeatureData, stage: str) -> dict:
        """Closed-form computation and hyperparameter search; ``stage`` "before" (before any training epoch)
        or "after" (after the last). Returns what it chose (``{"alpha": 1.0, ...}``) for metrics.json."""
        return {}

    def loss(self, head: FeatureHead, image_features: torch.Tensor, labels: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = head.logits(image_features)
        return nn.functional.cross_entropy(logits, labels), logits

    def training_step(self, head: FeatureHead, image_features: torch.Tensor, labels: torch.Tensor,
                      optimizer: torch.optim.Optimizer) -> tuple[torch.Tensor, torch.Tensor]:
        loss, logits = self.loss(head, image_features, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach(), logits.detach()

    def end_epoch(self, head: FeatureHead, epoch: int, epochs: int) -> None:
        """After each epoch's last step (e.g. a per-epoch constraint update)."""

    def end_training(self, head: FeatureHead, epochs: int) -> None:
        """After the last epoch, before the adapter is saved."""

    def training_state(self) -> dict[str, torch.Tensor]:
        return {}

    def load_training_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`training_state` (an empty dict: a fresh run)."""

    def epochs_for(self, settings: dict, shots: int | None, n_train: int, batch_size: int) -> int | None:
        """Epochs for a method whose authors count optimisation steps, not epochs (CLIP-LoRA: 500 x shots
        iterations): computed from the training set size; None keeps the recipe's epochs."""
        return None

    def require_protocol(self, protocol: str) -> None:
        if protocol not in self.protocols:
            raise DipclipError(f"{self.name} cannot run the {protocol} protocol ({self.why_not(protocol)})")

    def why_not(self, protocol: str) -> str:
        if protocol == "base2new":
            return "its learned tensors are tied to the training classes, so new classes cannot be scored"
        return f"it supports {', '.join(sorted(self.protocols))}"


def _kind_of(value: object) -> str:
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list | tuple) else type(value).__name__


def _same_kind(value: object, default: object) -> bool:
    """A setting keeps its default's kind: a switch stays a switch, a number a number (not a bool), a list a
    list of the same kind of items (numbers or strings)."""
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int | float):
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, list | tuple):
        return isinstance(value, list | tuple) and (not default or not value or all(
            _same_kind(item, default[0]) for item in value))
    return True


def _example(default: object) -> str:
    import json

    return json.dumps(list(default) if isinstance(default, tuple) else default).replace(" ", "")
