#!/usr/bin/env python
"""Golden numbers for CLIP-Adapter from the authors' own code (gaopengcuhk/CLIP-Adapter ``clip_adapter.py``).

    python tools/parity/probes_clip_adapter.py --official ROOT --out tests/golden/probes

ROOT holds work trees ``ROOT/CLIP-Adapter`` (their one file), ``ROOT/CoOp`` (the ``clip`` package their file
imports: it goes under CoOp's ``trainers/``) and ``ROOT/Dassl.pytorch`` (commits in tests/golden/probes/README_clip_adapter_taskres.md).
Their ``CustomCLIP`` (with their ``Adapter`` and ``TextEncoder``) and their trainer's ``forward_backward`` run on
fixed synthetic features; the optimiser and scheduler come from Dassl's ``build_optimizer``/``build_lr_scheduler``
with CoOp's ``configs/trainers/CoOp/rn50_ep50.yaml`` (MAX_EPOCH cut to ``EPOCHS``). Nothing of theirs is copied
or edited. Run-time shims only: ``.cuda()`` is a no-op, torch >= 2.7's ``LRScheduler`` gets no ``verbose``, the
unused ``pkg_resources`` is an empty module, and the "CLIP model" is an identity ``visual`` over the stored raw
features with an ``encode_text`` that returns fixed raw text features (one row per class; their TextEncoder still
formats and tokenizes the prompts). The trainer object is built without its data manager (``TrainerBase``'s
registry only). Their Adapter is hard-wired to width 1024 (RN50), so the features are 1024-wide.
Written: ``clip_adapter.json`` (seed and input sums: the test regenerates the inputs with ``synthetic``, logits at the initial adapter, then per step the loss, lr and the
test logits, and per epoch the lr after the scheduler step).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # golden_io beside this file
from golden_io import f32, tensor  # noqa: E402

SEED = 0
CLASSES, SHOTS, DIM, TEST = 4, 4, 1024, 12
EPOCHS, BATCH = 3, 8
LOGIT_SCALE = math.log(100.0)  # CLIP's trained logit scale is ln(100) (exp = 100)


def synthetic(seed: int = SEED) -> dict:
    """Raw (unnormalised, norm ~ 10) class-structured image features, raw text features near the class centres,
    and a fixed batch order per epoch."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(CLASSES, DIM, generator=g)
    train_labels = torch.arange(CLASSES).repeat_interleave(SHOTS)
    test_labels = torch.randint(0, CLASSES, (TEST,), generator=g)
    views = torch.stack([0.3 * (0.2 * centres[train_labels] + torch.randn(len(train_labels), DIM, generator=g))
                         for _ in range(EPOCHS)])
    test = 0.3 * (0.2 * centres[test_labels] + torch.randn(TEST, DIM, generator=g))
    text = 0.25 * (centres + 2.0 * torch.randn(CLASSES, DIM, generator=g))
    order = torch.stack([torch.randperm(len(train_labels), generator=g) for _ in range(EPOCHS)])
    return {"views": views, "train_labels": train_labels, "test": test, "test_labels": test_labels, "text": text,
            "order": order}


def install_shims() -> None:
    from torch import nn
    from torch.optim import lr_scheduler

    original_init = lr_scheduler.LRScheduler.__init__

    def scheduler_init(self, optimizer, last_epoch=-1, verbose=None):  # torch >= 2.7 removed `verbose`
        original_init(self, optimizer, last_epoch)

    lr_scheduler.LRScheduler.__init__ = scheduler_init
    nn.Module.cuda = lambda self, *a, **k: self
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.Tensor.to = _to_without_cuda(torch.Tensor.to)
    sys.modules.setdefault("pkg_resources", types.ModuleType("pkg_resources"))
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


def _to_without_cuda(original):
    def to(self, *args, **kwargs):  # their TextEncoder moves the tokens to 'cuda'
        if args and args[0] == "cuda":
            args = ("cpu",) + args[1:]
        return original(self, *args, **kwargs)

    return to


class FixedCLIP(torch.nn.Module):
    """What their CustomCLIP reads of a CLIP model: ``visual`` (identity over raw features), ``logit_scale``,
    ``dtype`` and ``encode_text`` (the fixed raw text features, one row per prompt, in class order)."""

    def __init__(self, text: torch.Tensor):
        super().__init__()
        self.visual = torch.nn.Identity()
        self.logit_scale = torch.nn.Parameter(torch.tensor(LOGIT_SCALE))
        self.register_buffer("text", text.clone())
        self.prompts_seen: list[int] = []

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        assert tokens.shape[0] == self.text.shape[0]
        self.prompts_seen.append(tokens.shape[0])
        return self.text.clone()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", required=True, help="folder holding CLIP-Adapter, CoOp, Dassl.pytorch")
    parser.add_argument("--out", default="tests/golden/probes")
    args = parser.parse_args()
    root = Path(args.official)
    sys.path[:0] = [str(root / "CoOp"), str(root / "Dassl.pytorch")]
    install_shims()
    spec = importlib.util.spec_from_file_location("clip_adapter_official", root / "CLIP-Adapter" / "clip_adapter.py")
    official = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(official)
    from dassl.config import get_cfg_default
    from dassl.engine.trainer import TrainerBase
    from dassl.optim import build_lr_scheduler, build_optimizer

    data = synthetic()
    cfg = get_cfg_default()
    cfg.merge_from_file(str(root / "CoOp" / "configs" / "trainers" / "CoOp" / "rn50_ep50.yaml"))
    cfg.merge_from_list(["OPTIM.MAX_EPOCH", EPOCHS, "DATASET.NAME", "OxfordPets", "USE_CUDA", False])
    cfg.freeze()
    classnames = [f"class_{i}" for i in range(CLASSES)]

    torch.manual_seed(SEED)  # their Adapter's default nn.Linear init draws from the global generator
    model = official.CustomCLIP(cfg, classnames, FixedCLIP(data["text"]))
    for name, param in model.named_parameters():
        if "adapter" not in name:
            param.requires_grad_(False)
    trainer = official.CLIP_Adapter.__new__(official.CLIP_Adapter)
    TrainerBase.__init__(trainer)
    trainer.cfg, trainer.device, trainer.model = cfg, torch.device("cpu"), model
    optim = build_optimizer(model.adapter, cfg.OPTIM)
    sched = build_lr_scheduler(optim, cfg.OPTIM)
    trainer.register_model("clip_adapter", model.adapter, optim, sched)

    with torch.no_grad():
        init_test_logits = model(data["test"])
    init_weights = {n: p.detach().clone() for n, p in model.adapter.named_parameters()}
    steps, epoch_lrs = [], []
    per_epoch = len(data["train_labels"]) // BATCH
    trainer.num_batches = per_epoch
    for epoch in range(EPOCHS):
        idx = data["order"][epoch]
        feats, labels = data["views"][epoch][idx], data["train_labels"][idx]
        for b in range(per_epoch):
            trainer.batch_idx = b
            lr = optim.param_groups[0]["lr"]
            summary = trainer.forward_backward({"img": feats[b * BATCH:(b + 1) * BATCH],
                                                "label": labels[b * BATCH:(b + 1) * BATCH]})
            with torch.no_grad():
                logits = model(data["test"])
            steps.append({"lr": lr, "loss": summary["loss"], "test_logits": tensor(logits)})
        epoch_lrs.append(optim.param_groups[0]["lr"])
    final = {n: p.detach() for n, p in model.adapter.named_parameters()}
    golden = {
        "source": "gaopengcuhk/CLIP-Adapter clip_adapter.py CustomCLIP, Adapter, CLIP_Adapter.forward_backward; "
                  "Dassl build_optimizer/build_lr_scheduler with CoOp configs/trainers/CoOp/rn50_ep50.yaml",
        "seed": SEED, "epochs": EPOCHS, "batch_size": BATCH, "logit_scale": float(model.logit_scale.exp()),
        "optim": {"name": cfg.OPTIM.NAME, "lr": cfg.OPTIM.LR, "momentum": cfg.OPTIM.MOMENTUM,
                  "weight_decay": cfg.OPTIM.WEIGHT_DECAY, "warmup_epoch": cfg.OPTIM.WARMUP_EPOCH,
                  "warmup_lr": cfg.OPTIM.WARMUP_CONS_LR},
        # the inputs are regenerated by synthetic(SEED) in the test; their sums check that they are the same
        "input_sums": {k: float(v.double().sum()) for k, v in data.items()},
        "prompts": [official.CUSTOM_TEMPLATES["OxfordPets"].format(c.replace("_", " ")) for c in classnames],
        "init_weight_sums": {n: float(w.double().sum()) for n, w in init_weights.items()},
        "init_weight_heads": {n: f32(w.flatten()[:16].tolist()) for n, w in init_weights.items()},
        "init_test_logits": tensor(init_test_logits),
        "steps": steps, "epoch_end_lrs": epoch_lrs,
        "final_weight_sums": {n: float(w.double().sum()) for n, w in final.items()},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "clip_adapter.json").write_text(json.dumps(golden) + "\n")
    print("wrote", out / "clip_adapter.json", "losses", [round(s["loss"], 5) for s in steps], "lrs",
          [s["lr"] for s in steps])


if __name__ == "__main__":
    main()
