"""The one trainer. A method contributes its prompt (through the model) and optionally an extra loss.

Each epoch re-seeds python/numpy/torch from (seed, epoch), so a run resumed from its last epoch checkpoint
draws the same batches, augmentations and dropout masks as an uninterrupted run and ends with the same
numbers. The frozen image tower runs under ``no_grad`` (only the learned prompts get gradients), except inside
models with vision prompts, where gradients flow through it to those prompts.

The trainer does not care where image features come from: a batch source yields ``(features, labels)``
per epoch. By default it is :class:`~dipclip.engine.features.FeatureBatches` (augmented views encoded ahead
and kept in the feature store, ``views="fresh"`` or a number of cycled views); a method that needs the image
tower in the loop passes :class:`~dipclip.engine.features.ImageBatches` to :meth:`Trainer.fit` instead.
A model whose image features depend on its own prompts (``image_prompted``: MaPLe, PromptSRC) gets
:class:`~dipclip.engine.features.PromptedImageBatches`: the batches are augmented images and the model runs
the image tower itself, with gradients to its vision prompts. DePT (``takes_raw_features``) gets the
stored unnormalised features of the views.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import torch
from tqdm.auto import tqdm

from ..data.identity import items_identity
from ..data.transforms import RECIPE_CROP_SCALE
from ..data.types import Datum
from ..density import density_report
from ..errors import DipclipError
from ..methods.base import OptimConfig, PromptCLIP, PromptMethod
from .distributed import GradientAveraging, all_reduce_sums, is_main_process, local_slice, rank_and_world
from .features import FRESH, FeatureBatches, FeatureStore, PromptedImageBatches, parse_views
from .reproducibility import atomic_torch_save, epoch_seed, seed_everything

CHECKPOINT_NAME = "checkpoint.pt"
OPTIMIZERS = ("sgd", "adamw", "adam")

# Where a Trainer's lines go when it is given no ``log``: stderr (through tqdm, which keeps bars intact), or the
# sink :func:`run_log` sets; a protocol sweep keeps each run's lines (epochs, accuracies) for --verbose.
_RUN_LOG: ContextVar[Callable[[str], None] | None] = ContextVar("dipclip_run_log", default=None)


@contextmanager
def run_log(sink: Callable[[str], None] | None):
    """Send the lines of the Trainers built inside to ``sink`` (None: stderr, as outside)."""
    token = _RUN_LOG.set(sink)
    try:
        yield
    finally:
        _RUN_LOG.reset(token)


def _default_log(line: str) -> None:
    sink = _RUN_LOG.get()
    if sink is not None:
        sink(line)
    else:
        tqdm.write(line, file=sys.stderr)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 32
    seed: int = 1
    workers: int = 0
    density_k: int = 1
    density_energy: bool = False
    skip_bad_images: bool = False
    eval_every: int = 0  # evaluate every E epochs during training (0: only at the end, outside the history)
    views: str | int = FRESH  # "fresh": a new augmentation every epoch; N: N cached views, cycled
    feature_cache: bool = True  # keep encoded views on disk (never changes the numbers)
    crop_scale: float = RECIPE_CROP_SCALE  # smallest share of the image area a training crop keeps

    def validate(self) -> TrainConfig:
        if self.epochs < 1:
            raise DipclipError(f"--epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise DipclipError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.eval_every < 0:
            raise DipclipError(f"--eval-every must be >= 0, got {self.eval_every}")
        if self.workers < 0:
            raise DipclipError(f"--workers must be >= 0, got {self.workers}")
        parse_views(self.views)
        if not 0 < self.crop_scale <= 1:
            raise DipclipError(f"--crop-scale must be in (0, 1], the smallest share of the image a training crop "
                               f"keeps (the recipes: {RECIPE_CROP_SCALE}); got {self.crop_scale}")
        return self


class BatchSource(Protocol):
    """What the trainer consumes: per epoch, ``(image features [B, D], labels [B])`` batches drawn from
    ``generator`` (seeded from (seed, epoch)); ``describe()`` goes into the resume fingerprint."""

    def describe(self) -> dict: ...

    def batches(self, epoch: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


def in_warmup(optim: OptimConfig, epoch: int) -> bool:
    return epoch < optim.warmup_epochs


def learning_rate(optim: OptimConfig, epoch: int, epochs: int) -> float:
    """Dassl's schedule (constant warm-up, ``WARMUP_RECOUNT=True``) for 0-based ``epoch``.

    The warm-up epochs run at ``warmup_lr``; the cosine then restarts its count, so the first epoch after
    warm-up runs at the peak lr and epoch e at ``0.5 * lr * (1 + cos(pi * (e - W) / E))``, E the epoch count.
    """
    if in_warmup(optim, epoch):
        return optim.warmup_lr
    return 0.5 * optim.lr * (1.0 + math.cos(math.pi * (epoch - optim.warmup_epochs) / epochs))


def step_learning_rate(optim: OptimConfig, step: int, total_steps: int) -> float:
    """The lr of optimisation step ``step`` (0-based) under a cosine over ``total_steps`` steps down to the
    optimiser's ``eta_min``, as torch's ``CosineAnnealingLR`` stepped after every iteration (the feature methods'
    recipes that use it have no warm-up)."""
    floor = getattr(optim, "eta_min", 0.0)
    return floor + 0.5 * (optim.lr - floor) * (1.0 + math.cos(math.pi * step / max(total_steps, 1)))


def group_learning_rate(optim: OptimConfig, epoch: int, epochs: int, lr_scale: float) -> float:
    """A param group's lr: Dassl's constant warm-up sets every group to ``warmup_lr`` (DePT's 6.5x layers
    too); afterwards a group runs at ``lr_scale`` times the schedule."""
    lr = learning_rate(optim, epoch, epochs)
    return lr if in_warmup(optim, epoch) else lr * lr_scale


def make_optimizer(params, optim: OptimConfig) -> torch.optim.Optimizer:
    if optim.optimizer == "sgd":
        return torch.optim.SGD(params, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay)
    if optim.optimizer == "adam":  # Dassl's "adam" (TaskRes): L2 weight decay added to the gradient, not AdamW's
        return torch.optim.Adam(params, lr=optim.lr, weight_decay=optim.weight_decay, eps=getattr(optim, "eps", 1e-8))
    if optim.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=optim.lr, weight_decay=optim.weight_decay,
                                 eps=getattr(optim, "eps", 1e-8))  # feature methods' recipes may set eps
    raise DipclipError(f"unknown optimizer {optim.optimizer!r}; use {' or '.join(OPTIMIZERS)}")


def run_fingerprint(payload: dict, items: Sequence[Datum]) -> str:
    """Identifies what a checkpoint was trained on, so --resume never mixes two different runs: the settings
    ``payload`` and the training items by content (relative path, label, bytes), so a checkpoint is never
    continued on other images under the same names or in another data root with other files."""
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode())
    digest.update(training_items_identity(items).encode())
    return digest.hexdigest()[:20]


def training_items_identity(items: Sequence[Datum]) -> str:
    """Content identity of the training items, paths relative to their common folder (a moved data root with
    the same bytes is the same data)."""
    paths = [os.path.abspath(item.path) for item in items]
    root = os.path.commonpath([os.path.dirname(p) for p in paths]) if paths else None
    return items_identity(items, root)[:20]


def _differences(held: dict, wanted: dict, prefix: str = "") -> list[str]:
    """``key held -> wanted`` for each leaf that differs between two settings payloads."""
    out = []
    for key in sorted(set(held) | set(wanted)):
        a, b = held.get(key), wanted.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != json.loads(json.dumps(b, default=str)):
            out.append(f"{prefix}{key} {a!r} -> {b!r}")
    return out


class Trainer:
    def __init__(self, method: PromptMethod, model: PromptCLIP, optim: OptimConfig, config: TrainConfig,
                 out_dir: str | Path, progress: bool = True, log: Callable[[str], None] | None = None,
                 store: FeatureStore | None = None):
        self.method = method
        self.model = model
        self.optim = optim
        self.config = config.validate()
        if store is None:
            store = FeatureStore.default() if config.feature_cache else FeatureStore(enabled=False)
        self.store = store
        self.out_dir = Path(out_dir)
        self.progress = progress
        self.log = log or _default_log
        self.optimizer = make_optimizer(model.param_groups(), optim)
        self.world = rank_and_world()[1]
        if self.world > 1:
            if not model.image_prompted:
                raise DipclipError("several processes only pay for methods that run the image tower in the loop "
                                   "(maple, promptsrc); train other methods in one process")
            self.optimizer = GradientAveraging(self.optimizer)
        self.epoch_seconds: list[float] = []  # wall time, kept apart from the (bit-reproducible) history

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT_NAME

    def _fingerprint_payload(self, source: BatchSource) -> dict:
        return {
            "method": self.method.name,
            **({"prompt": self.model.prompt_cfg.to_dict()} if hasattr(self.model, "prompt_cfg") else
               {"head": {k: v for k, v in self.model.settings.items() if not isinstance(v, torch.Tensor)}}),
            "optim": asdict(self.optim),
            "train": {k: v for k, v in asdict(self.config).items()
                      if k not in ("workers", "feature_cache", "eval_every")},
            "backbone": self.model.backbone.identity,
            "classes": self.model.classnames,
            "source": source.describe(),
        }

    def _restore(self, fingerprint: str, payload: dict) -> tuple[int, list[dict]]:
        try:
            state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - truncated, not a torch file, or an unsafe pickle
            raise DipclipError(
                f"checkpoint {self.checkpoint_path} is damaged ({type(exc).__name__}); drop --resume and use another "
                "--out to start over"
            ) from None
        if not isinstance(state, dict):
            raise DipclipError(f"checkpoint {self.checkpoint_path} does not hold a dipclip checkpoint; drop --resume "
                               "and use another --out to start over")
        if state.get("fingerprint") != fingerprint:
            held = state.get("settings")
            differing = _differences(json.loads(held), payload) if isinstance(held, str) else []
            named = f" ({'; '.join(differing[:4])})" if differing else " (settings or data)"
            raise DipclipError(
                f"{self.checkpoint_path} belongs to a run with other settings{named}; use another --out, "
                "or delete that folder to start over there"
            )
        self.model.load_learnable_state(state["learned"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.method.load_training_state(state.get("method_state", {}))
        return int(state["epoch"]), list(state["history"])

    def default_source(self, items: Sequence[Datum]) -> BatchSource:
        """Stored features of the views, or the images themselves when the model's image features depend on
        its prompts (``image_prompted``: MaPLe, PromptSRC); the unnormalised stored features for a model
        that takes those (``takes_raw_features``: DePT's head); the loop is the same either way."""
        cfg = self.config
        raw = self.model.takes_raw_features
        if self.model.image_prompted and not raw:
            return PromptedImageBatches(self.model.backbone, items, cfg.batch_size, cfg.seed, cfg.workers,
                                        cfg.skip_bad_images, cfg.crop_scale)
        return FeatureBatches(self.model.backbone, items, cfg.batch_size, cfg.seed, cfg.views, self.store,
                              cfg.workers, cfg.skip_bad_images, progress=self.progress, crop_scale=cfg.crop_scale,
                              raw=raw)

    def fit(self, items: Sequence[Datum], resume: bool = False, source: BatchSource | None = None,
            evaluate: Callable[[PromptCLIP], dict] | None = None) -> list[dict]:
        """Train for the configured epochs; returns the per-epoch history.

        ``source`` gives the batches (default: :meth:`default_source`, stored features of the views).
        ``evaluate`` (with ``eval_every`` > 0) measures e.g. base/new accuracy every E epochs and at the end;
        its result goes into the epoch's history as ``eval`` (what ``dipclip analyze`` correlates with ID).
        It draws no random numbers, so it never changes the training.
        """
        if not items:
            raise DipclipError("the training split is empty; check the dataset and --shots")
        cfg = self.config
        source = source if source is not None else self.default_source(items)
        payload = self._fingerprint_payload(source) | {"data": training_items_identity(items)}
        fingerprint = run_fingerprint(payload, items)
        start, history = 0, []
        self.method.load_training_state({})
        if self.checkpoint_path.exists():
            if not resume:
                raise DipclipError(
                    f"{self.out_dir} already holds a run ({CHECKPOINT_NAME}); pass --resume to continue it or "
                    "choose another --out"
                )
            start, history = self._restore(fingerprint, payload)
            if start:
                self.log(f"resuming from epoch {start}/{cfg.epochs} ({self.checkpoint_path})")
        device = self.model.backbone.device
        for epoch in range(start, cfg.epochs):
            generator = seed_everything(epoch_seed(cfg.seed, epoch))
            lr = learning_rate(self.optim, epoch, cfg.epochs)
            for group in self.optimizer.param_groups:  # a method may give new layers a larger lr (DePT)
                group["lr"] = group_learning_rate(self.optim, epoch, cfg.epochs, group.get("lr_scale", 1.0))
            total_loss, correct, seen, began = 0.0, 0, 0, time.perf_counter()
            steps = max(1, len(items) // cfg.batch_size) if len(items) >= cfg.batch_size else 1
            step_schedule = getattr(self.optim, "schedule", "epoch") == "step"
            batches = source.batches(epoch, generator)
            self.model.train()
            bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, dynamic_ncols=True,
                       total=max(1, len(items) // cfg.batch_size),  # epoch_index_batches drops a partial last
                       disable=None if self.progress else True)  # None: only on a terminal
            for step, (inputs, labels) in enumerate(bar):  # image features, or images for an image-prompted model
                if step_schedule:  # a cosine over every optimisation step (CosineAnnealingLR(T_max=E * steps))
                    lr = step_learning_rate(self.optim, epoch * steps + step, cfg.epochs * steps)
                    for group in self.optimizer.param_groups:
                        group["lr"] = lr * group.get("lr_scale", 1.0)
                inputs, labels = inputs.to(device), labels.to(device)
                if self.world > 1:  # this rank's slice of the global batch; gradients averaged in step()
                    inputs, labels, self.optimizer.total = local_slice(inputs, labels)
                    self.optimizer.local = len(labels)
                    if not len(labels):
                        self.optimizer.zero_grad()
                        self.optimizer.step()
                        continue
                loss, logits = self.method.training_step(self.model, inputs, labels, self.optimizer)
                self._stop_if_not_finite(epoch, lr, loss)
                total_loss += float(loss.detach()) * len(labels)
                correct += int((logits.argmax(dim=-1) == labels).sum())
                seen += len(labels)
                bar.set_postfix(loss=f"{total_loss / seen:.4f}")
            total_loss, correct, seen = all_reduce_sums(total_loss, correct, seen)
            correct, seen = int(correct), int(seen)
            self.model.eval()
            self.method.end_epoch(self.model, epoch, cfg.epochs)  # e.g. PromptSRC's prompt aggregation
            self._stop_if_not_finite(epoch, lr, last=epoch + 1 == cfg.epochs)
            record = self._epoch_record(epoch, lr, total_loss, correct, seen)
            if evaluate is not None and cfg.eval_every and ((epoch + 1) % cfg.eval_every == 0
                                                            or epoch + 1 == cfg.epochs):
                record["eval"] = evaluate(self.model)
            history.append(record)
            seconds = time.perf_counter() - began
            self.epoch_seconds.append(round(seconds, 3))
            line = self._format(record, cfg.epochs, seconds)
            if self.progress:  # --quiet (progress off) keeps the epochs in metrics.json only
                self.log(line)
            if not is_main_process():
                continue
            atomic_torch_save(self.checkpoint_path, {
                "epoch": epoch + 1,
                "learned": self.model.learnable_state(),
                "optimizer": self.optimizer.state_dict(),
                "history": history,
                "fingerprint": fingerprint,
                "settings": json.dumps(payload, sort_keys=True, default=str),  # names what differs on --resume
                "method_state": self.method.training_state(),
            })
        self.method.end_training(self.model, cfg.epochs)
        return history

    def _stop_if_not_finite(self, epoch: int, lr: float, loss: torch.Tensor | None = None,
                            last: bool = False) -> None:
        """The first NaN/inf loss (``loss`` given) or learned tensor ends the run, before anything non-finite
        reaches a checkpoint or an adapter; the last good checkpoint stays as it is. After the ``last`` epoch the
        class text features are checked too (finite values so large that the text tower overflows): before,
        the next epoch's loss catches them, and a text pass every epoch cost a fifth of a small run."""
        if loss is not None:
            if bool(torch.isfinite(loss.detach()).all()):
                return
            what = f"the loss is {float(loss.detach().float().sum())}"
        else:
            tensors = self.model.learnable_state() | self.method.training_state()
            bad = [name for name, t in tensors.items() if not bool(torch.isfinite(t).all())]
            what = f"learned tensor(s) {', '.join(bad[:3])} hold NaN/inf"
            if not bad and not last:
                return
            if not bad:  # the last step can make finite values so large that the text tower overflows
                if not hasattr(self.model, "prompt_cfg"):  # a feature head has no text pass of its own
                    return
                with torch.no_grad():
                    if bool(torch.isfinite(self.model.text_features(merged=True)).all()):
                        return
                what = "the merged prompt's class text features hold NaN/inf (its learned values overflow)"
        kept = (f"the last good checkpoint {self.checkpoint_path} is kept" if self.checkpoint_path.exists()
                else "no checkpoint was written")
        raise DipclipError(f"training diverged in epoch {epoch + 1}: {what} at lr {lr:.3g}; {kept}; lower --lr "
                           f"(e.g. --lr {self.optim.lr / 10:g}) and train into a new --out")

    def _epoch_record(self, epoch: int, lr: float, total_loss: float, correct: int, seen: int) -> dict:
        context = getattr(self.model, "context", None)  # feature heads have no prompt: no density
        density = (density_report(context.merged(), context.initial, self.config.density_k, self.config.density_energy)
                   if context is not None else {"id_prompt": None, "id_update": None})
        return {
            "epoch": epoch + 1,
            "loss": round(total_loss / max(seen, 1), 6),
            "train_accuracy": round(100.0 * correct / max(seen, 1), 4),
            "id_prompt": density["id_prompt"],
            "id_update": density["id_update"],
            "lr": float(f"{lr:.8g}"),
            "images": seen,
        }

    @staticmethod
    def _format(record: dict, epochs: int, seconds: float) -> str:
        def fmt(value):
            return "n/a" if value is None else f"{value:.4f}"

        return (
            f"epoch {record['epoch']}/{epochs}  loss {record['loss']:.4f}  acc {record['train_accuracy']:.2f}%  "
            f"ID(P) {fmt(record['id_prompt'])}  ID(dP) {fmt(record['id_update'])}  lr {record['lr']:.2e}  "
            f"({seconds:.1f}s)"
        )
