#!/usr/bin/env python
"""Golden numbers for TaskRes from the authors' own code (geekyutao/TaskRes ``trainers/taskres.py``).

    python tools/parity/probes_taskres.py --official ROOT --out tests/golden/probes

ROOT holds work trees ``ROOT/TaskRes`` and ``ROOT/Dassl.pytorch`` (commits in tests/golden/probes/README_clip_adapter_taskres.md).
Their ``CustomCLIP`` (``_get_base_text_features`` with ImageNet's 7 IMAGENET_TEMPLATES_SELECT + its
CUSTOM_TEMPLATE, ``TaskResLearner``) and ``TaskRes.forward_backward`` (PREC fp32) run on fixed synthetic
features, with Dassl's ``build_optimizer``/``build_lr_scheduler`` from their
``configs/trainers/TaskRes/adam_lr2e-3_B256_ep200.yaml`` (MAX_EPOCH cut to ``EPOCHS``) and RESIDUAL_SCALE 0.5.
Nothing of theirs is copied or edited. Run-time shims only: ``.cuda()`` is a no-op, torch >= 2.7's
``LRScheduler`` gets no ``verbose``, the unused ``pkg_resources`` is an empty module; the frozen CLIP text tower is
replaced (module attribute ``TextEncoder``) by a fixed table of raw per-template text features, returned for each
class in the order their loop asks (their code still tokenizes the prompts, stacks and averages); the image tower
is the identity over raw features. Written: ``taskres.json`` (seed and input sums: the test regenerates the inputs
with ``synthetic``; the base, the logits at zero residual, per step the loss, lr, residual and test logits; the
ImageNet-A-style row subset of the trained classifier).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # golden_io beside this file
from golden_io import install_dassl_shims, tensor  # noqa: E402

SEED = 0
CLASSES, SHOTS, DIM, TEST, TEMPLATES = 5, 4, 32, 15, 8
EPOCHS, BATCH = 3, 8
SCALE = 0.5
LOGIT_SCALE = math.log(100.0)
SUBSET = [3, 0, 4]  # rows of a target that keeps some of the training classes, in its own order


def synthetic(seed: int = SEED) -> dict:
    """Raw image features, raw per-template text features [C, T, D] (norm ~ 5, like CLIP's), batch orders."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(CLASSES, DIM, generator=g)
    train_labels = torch.arange(CLASSES).repeat_interleave(SHOTS)
    test_labels = torch.randint(0, CLASSES, (TEST,), generator=g)
    views = torch.stack([2.0 * (0.4 * centres[train_labels] + torch.randn(len(train_labels), DIM, generator=g))
                         for _ in range(EPOCHS)])
    test = 2.0 * (0.4 * centres[test_labels] + torch.randn(TEST, DIM, generator=g))
    text = centres[:, None, :] + 1.5 * torch.randn(CLASSES, TEMPLATES, DIM, generator=g)
    order = torch.stack([torch.randperm(len(train_labels), generator=g) for _ in range(EPOCHS)])
    return {"views": views, "train_labels": train_labels, "test": test, "test_labels": test_labels,
            "template_text": text, "order": order}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", required=True, help="folder holding TaskRes and Dassl.pytorch")
    parser.add_argument("--out", default="tests/golden/probes")
    args = parser.parse_args()
    root = Path(args.official)
    sys.path[:0] = [str(root / "TaskRes"), str(root / "Dassl.pytorch")]
    install_dassl_shims()
    import trainers.taskres as official  # their trainers/taskres.py
    from dassl.config import get_cfg_default
    from dassl.engine.trainer import TrainerBase
    from dassl.optim import build_lr_scheduler, build_optimizer
    from yacs.config import CfgNode as CN

    data = synthetic()
    asked: list[int] = []

    class FixedTextEncoder(torch.nn.Module):
        """Stands in for CLIP's frozen text tower: class k's raw template features (their loop asks class by
        class, in order, with all templates at once)."""

        def __init__(self, clip_model):
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(1))  # they read next(text_encoder.parameters()).device

        def forward(self, prompts, tokenized_prompts):
            assert tokenized_prompts.shape[0] == TEMPLATES
            k = len(asked)
            asked.append(k)
            return data["template_text"][k].clone()

    class FixedCLIP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.visual = torch.nn.Identity()
            self.logit_scale = torch.nn.Parameter(torch.tensor(LOGIT_SCALE))

        dtype = torch.float32

        def token_embedding(self, tokens):
            return torch.zeros(*tokens.shape, 4)

    official.TextEncoder = FixedTextEncoder
    cfg = get_cfg_default()
    cfg.TRAINER.TaskRes = CN()
    cfg.TRAINER.TaskRes.PREC = "fp32"
    cfg.TRAINER.TaskRes.RESIDUAL_SCALE = SCALE
    cfg.TRAINER.TaskRes.ENHANCED_BASE = "none"
    cfg.merge_from_file(str(root / "TaskRes" / "configs" / "trainers" / "TaskRes" / "adam_lr2e-3_B256_ep200.yaml"))
    cfg.merge_from_list(["OPTIM.MAX_EPOCH", EPOCHS, "DATASET.NAME", "ImageNet", "USE_CUDA", False])
    cfg.freeze()
    classnames = [f"class {i}" for i in range(CLASSES)]
    templates = list(official.IMAGENET_TEMPLATES_SELECT)  # before their += appends the custom template
    model = official.CustomCLIP(cfg, classnames, FixedCLIP())
    assert asked == list(range(CLASSES))
    for name, param in model.named_parameters():
        if "prompt_learner" not in name:
            param.requires_grad_(False)
    model = model.float()
    trainer = official.TaskRes.__new__(official.TaskRes)
    TrainerBase.__init__(trainer)
    trainer.cfg, trainer.device, trainer.model = cfg, torch.device("cpu"), model
    optim = build_optimizer(model.prompt_learner, cfg.OPTIM)
    sched = build_lr_scheduler(optim, cfg.OPTIM)
    trainer.register_model("prompt_learner", model.prompt_learner, optim, sched)
    trainer.scaler = None

    with torch.no_grad():
        init_logits = model(data["test"])
    steps, epoch_lrs = [], []
    per_epoch = len(data["train_labels"]) // BATCH  # Dassl drops the last partial batch (20 -> 2 x 8)
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
            steps.append({"lr": lr, "loss": summary["loss"], "test_logits": tensor(logits),
                          "residuals": tensor(model.prompt_learner.text_feature_residuals)})
        epoch_lrs.append(optim.param_groups[0]["lr"])
    # their load_model for ImageNet-A/R: base and residual rows of the target's classes, then the same forward
    state = {k: v.clone() for k, v in model.prompt_learner.state_dict().items()}
    rows = torch.tensor(SUBSET)
    subset_learner = official.TaskResLearner(cfg, [classnames[i] for i in SUBSET], FixedCLIP(),
                                             state["base_text_features"][rows].clone())
    subset_learner.load_state_dict({k: v[rows] for k, v in state.items()})
    model.prompt_learner = subset_learner
    with torch.no_grad():
        subset_logits = model(data["test"])
    golden = {
        "source": "geekyutao/TaskRes trainers/taskres.py CustomCLIP, _get_base_text_features, TaskResLearner, "
                  "TaskRes.forward_backward, load_model (ImageNet-A/R rows); Dassl build_optimizer/"
                  "build_lr_scheduler with configs/trainers/TaskRes/adam_lr2e-3_B256_ep200.yaml",
        "seed": SEED, "epochs": EPOCHS, "batch_size": BATCH, "residual_scale": SCALE,
        "logit_scale": float(model.logit_scale.exp()), "templates": templates + [official.CUSTOM_TEMPLATES["ImageNet"]],
        "optim": {"name": cfg.OPTIM.NAME, "lr": cfg.OPTIM.LR, "weight_decay": cfg.OPTIM.WEIGHT_DECAY,
                  "betas": [cfg.OPTIM.ADAM_BETA1, cfg.OPTIM.ADAM_BETA2], "warmup_epoch": cfg.OPTIM.WARMUP_EPOCH,
                  "warmup_lr": cfg.OPTIM.WARMUP_CONS_LR},
        "input_sums": {k: float(v.double().sum()) for k, v in data.items()},
        "base": tensor(state["base_text_features"]), "init_test_logits": tensor(init_logits),
        "steps": steps, "epoch_end_lrs": epoch_lrs,
        "subset_rows": SUBSET, "subset_test_logits": tensor(subset_logits),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "taskres.json").write_text(json.dumps(golden) + "\n")
    print("wrote", out / "taskres.json", "losses", [round(s["loss"], 5) for s in steps], "lrs",
          [s["lr"] for s in steps])


if __name__ == "__main__":
    main()
