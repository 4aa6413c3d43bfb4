#!/usr/bin/env python
"""Golden numbers from the authors' own code, for ``tests/test_parity.py``.

    python tools/parity/make_golden.py --official ROOT --out tests/golden

ROOT holds work trees of the official repositories (see tests/golden/README.md for the commits). Each method
runs in its own subprocess with that repository and its Dassl folder first on ``sys.path``; nothing of
theirs is copied or edited. At run time the harness only neutralises what stops their code from running in
fp32 on CPU with torch 2.14: ``.cuda()`` and ``Module.half()`` become no-ops, ``clip.model.convert_weights``
is skipped (the tiny checkpoint holds fp16-exact values, so skipping the fp16 round trip changes no number),
``clip._download`` returns the tiny checkpoint, and ``LRScheduler.__init__`` drops the removed ``verbose``.

Each method's trainer class is built with its own ``build_model`` (so its own optimiser and scheduler via
Dassl's ``build_optimizer``/``build_lr_scheduler`` from its config) and trained with its own
``forward_backward`` on the fixed batches of :mod:`tiny_clip` for 2 epochs x 2 steps. Written per method:
``<method>.json`` (logits at step 0, losses, the gradient at every optimiser step, the learned tensors
before and after, the lr of every step and of every epoch for E = 10 and the method's own E, reference
features) and, where a learned tensor is too large for JSON, ``<method>.init.safetensors`` with its
initial value (the test starts dipclip from the official initial tensors). Also recorded, without training:
the configs each recipe cites as the repository's yacs reads them with its scripts' overrides (``configs``),
the ``NAME=value`` settings of the scripts that fix shots and epochs (``scripts``), DePT's runner settings,
and DePT's own ``load_model`` clipping its head to a small ImageNet-R folder layout.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import tiny_clip  # noqa: E402

# method -> (repository folder under ROOT, its Dassl folder under ROOT)
REPOS = {
    "zeroshot": ("CoOp", "Dassl.pytorch"),
    "coop": ("CoOp", "Dassl.pytorch"),
    "cocoop": ("CoOp", "Dassl.pytorch"),
    "kgcoop": ("KgCoOp/KgCoOp", "KgCoOp/Dassl.ProGrad.pytorch"),
    "prograd": ("Prompt-align/ProGrad.public", "Prompt-align/Dassl.ProGrad.pytorch"),
    "maple": ("multimodal-prompt-learning", "Dassl.pytorch"),
    "promptsrc": ("PromptSRC", "Dassl.pytorch"),
    "dept": ("DePT", "Dassl.pytorch"),
}
FULL_VALUES = 1024  # tensors up to this many numbers are stored in full; larger ones as summaries


# ---------------------------------------------------------------------------------------------- records

def f32(values) -> list[float]:
    """float32 values as the shortest decimals that read back to the same float32 (compact JSON)."""
    import numpy as np

    return [float(np.format_float_scientific(np.float32(v), unique=True)) for v in values]


def record(tensor, full: bool = True, limit: int = FULL_VALUES) -> dict:
    t = tensor.detach().cpu().double()
    out = {"shape": list(t.shape), "sum": t.sum().item(), "abs_sum": t.abs().sum().item(), "norm": t.norm().item(),
           "head": f32(tensor.detach().cpu().float().flatten()[:8].tolist())}
    if full and t.numel() <= limit:
        out["values"] = f32(tensor.detach().cpu().float().flatten().tolist())
    return out


# ---------------------------------------------------------------------------------------------- runtime shims

def install_shims(checkpoint: str) -> None:
    """Make the authors' code run in fp32 on CPU with torch 2.14 without touching their files."""
    import torch
    from torch import nn
    from torch.optim import lr_scheduler

    original_init = lr_scheduler.LRScheduler.__init__

    def scheduler_init(self, optimizer, last_epoch=-1, verbose=None):  # torch >= 2.7 removed `verbose`
        original_init(self, optimizer, last_epoch)

    lr_scheduler.LRScheduler.__init__ = scheduler_init
    nn.Module.cuda = lambda self, *a, **k: self
    nn.Module.half = lambda self: self
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.Tensor.half = lambda self, *a, **k: self  # MaPLe/PromptSRC cast prompts with .half() in forward

    import clip.clip as clip_module
    import clip.model as clip_model

    clip_model.convert_weights = lambda model: None
    clip_module._download = lambda url, root=None: checkpoint
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


def base_cfg(extend_cfg, config_file: str | None, overrides: list) -> object:
    from dassl.config import get_cfg_default

    cfg = get_cfg_default()
    extend_cfg(cfg)
    if config_file:
        cfg.merge_from_file(config_file)
    cfg.merge_from_list(["INPUT.SIZE", (tiny_clip.IMAGE_SIZE, tiny_clip.IMAGE_SIZE), "USE_CUDA", False,
                         *overrides])
    cfg.freeze()
    return cfg


def extend_cfg_of_repo():
    """The repository's own ``extend_cfg`` from its train.py (importing it registers its datasets/trainers)."""
    import importlib

    train = importlib.import_module("train")
    return train.extend_cfg


def build_trainer(trainer_cls, cfg, classnames: list[str], seed: int = 0):
    """The trainer with its own ``build_model``, skipping Dassl's data loading (no dataset on disk)."""
    import torch
    from dassl.engine.trainer import TrainerBase

    trainer = trainer_cls.__new__(trainer_cls)
    TrainerBase.__init__(trainer)
    trainer.check_cfg(cfg)
    trainer.device = torch.device("cpu")
    trainer.start_epoch = trainer.epoch = 0
    trainer.max_epoch = cfg.OPTIM.MAX_EPOCH
    trainer.output_dir = "."
    trainer.cfg = cfg
    lab2cname = dict(enumerate(classnames))
    dataset = types.SimpleNamespace(classnames=list(classnames), num_classes=len(classnames), lab2cname=lab2cname)
    trainer.dm = types.SimpleNamespace(dataset=dataset, num_classes=len(classnames), lab2cname=lab2cname)
    trainer.num_classes, trainer.lab2cname = len(classnames), lab2cname
    torch.manual_seed(seed)
    trainer.build_model()
    model = getattr(trainer, "model", None) or trainer.clip_model
    for name, param in model.named_parameters():
        assert param.dtype == torch.float32, f"{name} is {param.dtype}"
    return trainer


def learned(trainer) -> dict:
    """Every tensor the trainer's optimisers update and that has requires_grad, by registered-model name."""
    out = {}
    for model_name, model in trainer._models.items():
        optim = trainer._optims[model_name]
        in_optim = {id(p) for g in optim.param_groups for p in g["params"]}
        for name, p in model.named_parameters():
            if p.requires_grad and id(p) in in_optim:
                out[f"{model_name}.{name}"] = p
    return out


def train(trainer, forward_backward=None) -> dict:
    """Two epochs of two steps each with the trainer's own forward_backward; gradients are read just
    before every optimiser step (after any gradient surgery, e.g. ProGrad's projection)."""

    params = learned(trainer)
    by_id = {id(p): name for name, p in params.items()}
    init = {name: p.detach().clone() for name, p in params.items()}
    steps: list[dict] = []

    def pre_hook(optimizer, args, kwargs):
        grads = {by_id[id(p)]: p.grad.detach().clone() for g in optimizer.param_groups for p in g["params"]
                 if p.grad is not None and id(p) in by_id}
        steps[-1]["grads"].update(grads)
        steps[-1]["lr"].append([g["lr"] for g in optimizer.param_groups])

    for optim in trainer._optims.values():
        optim.register_step_pre_hook(pre_hook)
    batches = tiny_clip.batches()
    trainer.set_model_mode("train")
    trainer.num_batches = tiny_clip.STEPS_PER_EPOCH
    step = 0
    for epoch in range(tiny_clip.TRAIN_EPOCHS):
        trainer.epoch = epoch
        for batch_idx in range(tiny_clip.STEPS_PER_EPOCH):
            trainer.batch_idx = batch_idx
            images, labels = batches[step]
            steps.append({"grads": {}, "lr": []})
            summary = (forward_backward or trainer.forward_backward)({"img": images, "label": labels})
            steps[-1]["summary"] = {k: float(v) for k, v in summary.items()}
            step += 1
        if hasattr(trainer, "after_epoch_hook"):
            trainer.after_epoch_hook(epoch)
    final = {name: p.detach().clone() for name, p in params.items()}
    return {
        "learned_names": sorted(params),
        "init": init,
        "final": final,
        "steps": steps,
        "updated_differs": {n: bool((final[n] - init[n]).abs().max() > 0) for n in params},
    }


def lr_tables(trainer_cfg, module_or_groups_fn, epochs: list[int], build=None) -> dict:
    """The lr of every param group at every epoch, from Dassl's build_optimizer/build_lr_scheduler."""
    from dassl.optim import build_lr_scheduler, build_optimizer

    tables = {}
    for max_epoch in epochs:
        cfg = trainer_cfg.clone()
        cfg.defrost()
        cfg.OPTIM.MAX_EPOCH = max_epoch
        cfg.freeze()
        module, groups = module_or_groups_fn()
        # the ProGrad/KgCoOp Dassl fork has no param_groups argument; DePT has its own build_optimizer
        if build is not None:
            optim = build(module, cfg.OPTIM, groups)
        else:
            optim = build_optimizer(module, cfg.OPTIM) if groups is None else build_optimizer(module, cfg.OPTIM, groups)
        sched = build_lr_scheduler(optim, cfg.OPTIM)
        rows = []
        for _ in range(max_epoch):
            rows.append([g["lr"] for g in optim.param_groups])
            optim.step()
            sched.step()
        tables[str(max_epoch)] = rows
    return tables


def optim_record(cfg) -> dict:
    """The optimiser and schedule settings of a config (what 4 steps cannot show, e.g. weight decay)."""
    o = cfg.OPTIM
    return {"name": o.NAME, "lr": o.LR, "momentum": o.MOMENTUM, "weight_decay": o.WEIGHT_DECAY,
            "dampening": o.SGD_DAMPNING, "nesterov": o.SGD_NESTEROV, "scheduler": o.LR_SCHEDULER,
            "max_epoch": o.MAX_EPOCH, "warmup_epoch": o.WARMUP_EPOCH, "warmup_type": o.WARMUP_TYPE,
            "warmup_cons_lr": o.WARMUP_CONS_LR, "warmup_recount": o.WARMUP_RECOUNT,
            "batch_size": cfg.DATALOADER.TRAIN_X.BATCH_SIZE}


def config_record(cfg) -> dict:
    """What a recipe takes from a config, as yacs read it with a script's overrides: the optimiser and
    schedule, and the prompt settings of the CoOp-style trainers (and ProGrad's LOSS.LAMBDA)."""
    out = {"optim": optim_record(cfg)}
    coop = cfg.TRAINER.get("COOP")
    if coop is not None:
        out |= {"n_ctx": coop.N_CTX, "ctx_init": coop.CTX_INIT, "csc": coop.CSC,
                "class_token_position": coop.CLASS_TOKEN_POSITION}
        if "W" in coop:
            out["w"] = coop.W
    loss = cfg.get("LOSS")
    if loss is not None and "LAMBDA" in loss:
        out["lambda"] = loss.LAMBDA
    return out


def script_settings(paths: list[str]) -> dict:
    """The plain ``NAME=value`` assignments and ``--load-epoch`` of the authors' bash scripts (the values a
    protocol takes from them: SHOTS, NCTX, CFG, LOADEP, ...), read as text; later assignments win."""
    import re

    out = {}
    for path in paths:
        values = {}
        for line in Path(path).read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            match = re.fullmatch(r"([A-Z_][A-Z0-9_]*)=(\S+)", line)
            if match:
                values[match.group(1)] = match.group(2)
            match = re.search(r"--load-epoch\s+(\S+)", line)
            if match:
                values["--load-epoch"] = match.group(1)
        out[path] = values
    return out


def summarise_run(run: dict, init_file: dict, full_values: int = FULL_VALUES) -> dict:
    """Records of the learned tensors (init, final, update) and of every step. Tensors up to ``full_values``
    numbers are stored in full (0: summaries only, for a method whose every random init both sides rebuild);
    the initial value of a larger one goes to ``init_file``."""
    out = {"learned": {}, "steps": []}
    for name in run["learned_names"]:
        init, final = run["init"][name], run["final"][name]
        out["learned"][name] = {"init": record(init, limit=full_values), "final": record(final, limit=full_values),
                                "delta": record(final - init, full=False)}
        if full_values and init.numel() > full_values:
            init_file[name] = init.contiguous()
    for index, step in enumerate(run["steps"]):  # full gradients at step 0, summaries after
        out["steps"].append({"lr": step["lr"], "summary": step["summary"],
                             "grads": {n: record(g, full=index == 0, limit=full_values)
                                       for n, g in sorted(step["grads"].items())}})
    out["updated_differs"] = run["updated_differs"]
    return out


# ---------------------------------------------------------------------------------------------- methods

def images_and_labels():
    images, labels = tiny_clip.inputs()
    return images, labels, images[: tiny_clip.BATCH], labels[: tiny_clip.BATCH]


def run_zeroshot() -> dict:
    import torch
    from trainers import zsclip

    extend = extend_cfg_of_repo()
    _, _, images0, _ = images_and_labels()
    out = {"cases": {}}
    # ZeroshotCLIP2 appends the dataset template to its class-level list: keep a pristine copy per build
    pristine = list(zsclip.ZeroshotCLIP2.templates)
    for trainer_name, dataset in (("ZeroshotCLIP", "OxfordPets"), ("ZeroshotCLIP", "DescribableTextures"),
                                  ("ZeroshotCLIP2", "ImageNet"), ("ZeroshotCLIP2", "OxfordPets")):
        zsclip.ZeroshotCLIP2.templates = list(pristine)
        cfg = base_cfg(extend, "configs/trainers/CoOp/vit_b16.yaml", ["DATASET.NAME", dataset])
        trainer = build_trainer(getattr(zsclip, trainer_name), cfg, tiny_clip.CLASSNAMES)
        templates = ([zsclip.CUSTOM_TEMPLATES[dataset]] if trainer_name == "ZeroshotCLIP"
                     else list(trainer.templates))
        with torch.no_grad():
            logits = trainer.model_inference(images0)
        out["cases"][f"{trainer_name}/{dataset}"] = {
            "templates": templates, "text_features": record(trainer.text_features), "logits": record(logits)}
    zsclip.ZeroshotCLIP2.templates = pristine
    return out


def run_coop() -> dict:
    import torch
    from trainers import coop

    extend = extend_cfg_of_repo()
    _, _, images0, _ = images_and_labels()
    out = {"cases": {}}
    cases = {
        # base-to-new recipe: 4 tokens from "a photo of a"
        "ctxv1": ("configs/trainers/CoOp/vit_b16_ctxv1.yaml", []),
        # few-shot recipe (scripts/coop/main.sh): 16 random tokens, class at the end
        "rand16": ("configs/trainers/CoOp/vit_b16.yaml", ["TRAINER.COOP.N_CTX", 16, "TRAINER.COOP.CTX_INIT", ""]),
        # class-specific random contexts (CSC True)
        "csc_rand4": ("configs/trainers/CoOp/vit_b16.yaml",
                      ["TRAINER.COOP.N_CTX", 4, "TRAINER.COOP.CTX_INIT", "", "TRAINER.COOP.CSC", True]),
    }
    init_file: dict = {}
    for case, (config, overrides) in cases.items():
        cfg = base_cfg(extend, config, ["DATASET.NAME", "OxfordPets", "TRAINER.COOP.PREC", "fp32", *overrides])
        trainer = build_trainer(coop.CoOp, cfg, tiny_clip.CLASSNAMES)
        trainer.set_model_mode("eval")
        with torch.no_grad():
            logits = trainer.model(images0)
        entry = {"config": config, "overrides": [str(o) for o in overrides], "logits_step0": record(logits),
                 "max_epoch": cfg.OPTIM.MAX_EPOCH, "lr": cfg.OPTIM.LR, "batch_size": cfg.DATALOADER.TRAIN_X.BATCH_SIZE}
        run = train(trainer)
        case_init: dict = {}
        entry |= summarise_run(run, case_init)
        entry["optim"] = optim_record(cfg)
        init_file |= {f"{case}/{k}": v for k, v in case_init.items()}
        if case == "csc_rand4":  # what a class-specific random init looks like (independent draws per class?)
            ctx = run["init"]["prompt_learner.ctx"]
            entry["csc_rows_identical"] = bool(all(torch.equal(ctx[0], ctx[i]) for i in range(1, len(ctx))))
            entry["init_std"] = ctx.std().item()
        if case == "rand16":
            entry["init_std"] = run["init"]["prompt_learner.ctx"].std().item()
        entry["lr_by_epoch"] = lr_tables(cfg, lambda: (torch.nn.Linear(2, 2), None), [10, cfg.OPTIM.MAX_EPOCH])
        out["cases"][case] = entry
    out["_init_file"] = init_file
    # the configs the recipes cite, with the overrides of the script that uses each: scripts/coop/main.sh
    # (few-shot: M=16, CSC False, end) and scripts/cocoop/{base2new,xd}_train.sh with TRAINER=CoOp (none)
    main_sh = ["TRAINER.COOP.N_CTX", 16, "TRAINER.COOP.CSC", False, "TRAINER.COOP.CLASS_TOKEN_POSITION", "end"]
    out["configs"] = {name: config_record(base_cfg(extend, f"configs/trainers/CoOp/{name}.yaml", overrides))
                      for name, overrides in (("vit_b16", main_sh), ("vit_b16_ep100", main_sh), ("vit_b16_ep50", main_sh),
                                              ("vit_b16_ctxv1", []), ("vit_b16_ep50_ctxv1", []))}
    out["scripts"] = script_settings(["scripts/coop/main.sh", "scripts/coop/eval.sh", "scripts/cocoop/base2new_train.sh",
                                      "scripts/cocoop/xd_train.sh"])
    return out


def run_cocoop() -> dict:
    import torch
    from trainers import cocoop

    extend = extend_cfg_of_repo()
    _, _, images0, labels0 = images_and_labels()
    config = "configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml"
    cfg = base_cfg(extend, config, ["DATASET.NAME", "OxfordPets", "TRAINER.COCOOP.PREC", "fp32"])
    trainer = build_trainer(cocoop.CoCoOp, cfg, tiny_clip.CLASSNAMES)
    trainer.set_model_mode("eval")
    with torch.no_grad():
        logits = trainer.model(images0)
    entry = {"config": config, "logits_step0": record(logits), "max_epoch": cfg.OPTIM.MAX_EPOCH, "lr": cfg.OPTIM.LR,
             "batch_size": cfg.DATALOADER.TRAIN_X.BATCH_SIZE}
    init_file: dict = {}
    entry |= summarise_run(train(trainer), init_file)
    entry["optim"] = optim_record(cfg)
    entry["lr_by_epoch"] = lr_tables(cfg, lambda: (torch.nn.Linear(2, 2), None), [10, cfg.OPTIM.MAX_EPOCH])
    return {"cases": {"c4_ctxv1": entry}, "_init_file": {f"c4_ctxv1/{k}": v for k, v in init_file.items()}}


def run_kgcoop() -> dict:
    import torch
    from trainers import kgcoop

    extend = extend_cfg_of_repo()
    _, _, images0, _ = images_and_labels()
    config = "configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml"
    out = {"cases": {}}
    for dataset in ("OxfordPets", "DescribableTextures"):
        # scripts/base2new_train.sh passes TRAINER.COOP.W 8.0
        cfg = base_cfg(extend, config, ["DATASET.NAME", dataset, "TRAINER.COOP.PREC", "fp32", "TRAINER.COOP.W", 8.0])
        trainer = build_trainer(kgcoop.KgCoOp, cfg, tiny_clip.CLASSNAMES)
        trainer.set_model_mode("eval")
        with torch.no_grad():
            logits, score = trainer.model(images0)
        entry = {"config": config, "dataset": dataset, "template": kgcoop.CUSTOM_TEMPLATES[dataset],
                 "logits_step0": record(logits), "score_step0": score.item(), "w": cfg.TRAINER.COOP.W,
                 "anchor_features": record(trainer.model.ori_embedding),
                 "max_epoch": cfg.OPTIM.MAX_EPOCH, "lr": cfg.OPTIM.LR, "batch_size": cfg.DATALOADER.TRAIN_X.BATCH_SIZE}
        entry |= summarise_run(train(trainer), {})
        entry["optim"] = optim_record(cfg)
        entry["lr_by_epoch"] = lr_tables(cfg, lambda: (torch.nn.Linear(2, 2), None), [10, cfg.OPTIM.MAX_EPOCH])
        out["cases"][dataset] = entry
    # scripts/xd_train.sh (its only all-class script, 4 shots on the 11 datasets): the config with its overrides
    xd = base_cfg(extend, config, ["TRAINER.COOP.N_CTX", 4, "TRAINER.COOP.CSC", False, "TRAINER.COOP.W", 8.0,
                                   "TRAINER.COOP.CLASS_TOKEN_POSITION", "end"])
    out["configs"] = {"vit_b16_ep100_ctxv1/xd_train": config_record(xd)}
    out["scripts"] = script_settings(["scripts/xd_train.sh", "scripts/base2new_train.sh"])
    return out


def run_prograd() -> dict:
    import torch
    from trainers import prograd

    extend = extend_cfg_of_repo()
    _, _, images0, _ = images_and_labels()
    config = "configs/trainers/ProGrad/rn50.yaml"
    out = {"cases": {}}
    # scripts/base2new_train_prograd.sh: N_CTX 16, CTX_INIT True, LOSS.LAMBDA 1.0 (0.8 in the README for some)
    # OxfordPets: a prefix with a comma (the word count drops its last token); its CE and KL gradients conflict
    # at step 0 on this testbed, so the projection (and LAMBDA) acts; DTD: a short prefix, no conflict
    for case, dataset, lam in (("OxfordPets", "OxfordPets", 1.0), ("OxfordPets_l0.8", "OxfordPets", 0.8),
                               ("DescribableTextures", "DescribableTextures", 1.0)):
        cfg = base_cfg(extend, config, ["DATASET.NAME", dataset, "TRAINER.COOP.PREC", "fp32",
                                        "TRAINER.COOP.N_CTX", 16, "TRAINER.COOP.CTX_INIT", True,
                                        "LOSS.LAMBDA", lam, "MODEL.BACKBONE.NAME", "ViT-B/16"])
        trainer = build_trainer(prograd.ProGrad, cfg, tiny_clip.CLASSNAMES)
        trainer.set_model_mode("eval")
        with torch.no_grad():
            logits = trainer.model(images0)
            zs_logits = trainer.zs_clip(images0)
        learner = trainer.model.prompt_learner
        entry = {"config": config, "dataset": dataset, "lambda": lam, "template": prograd.CUSTOM_TEMPLATES[dataset],
                 "prompt_token_ids": learner.tokenized_prompts[:, :24].tolist(),
                 "logits_step0": record(logits), "zs_logits_step0": record(zs_logits),
                 "teacher_text_features": record(trainer.zs_clip.text_features),
                 "max_epoch": cfg.OPTIM.MAX_EPOCH, "lr": cfg.OPTIM.LR, "batch_size": cfg.DATALOADER.TRAIN_X.BATCH_SIZE}
        cosines: list[list[float]] = []
        entry |= summarise_run(train(trainer, recording_cosines(trainer, cosines)), {})
        entry["optim"] = optim_record(cfg)
        entry["conflict_cosine"] = cosines  # per step: cos(CE grad, KL grad) of each tensor, as the code tests it
        entry["lr_by_epoch"] = lr_tables(cfg, lambda: (torch.nn.Linear(2, 2), None), [10, cfg.OPTIM.MAX_EPOCH])
        out["cases"][case] = entry
    # the three configs of the README's commands, with the overrides of scripts/prograd.sh (few-shot, and the
    # ImageNet source eval.sh loads) and base2new_train_prograd.sh: N_CTX 16, CSC False, end, LAMBDA 1.0
    script = ["TRAINER.COOP.N_CTX", 16, "TRAINER.COOP.CSC", False, "TRAINER.COOP.CLASS_TOKEN_POSITION", "end",
              "LOSS.LAMBDA", 1.0]
    out["configs"] = {name: config_record(base_cfg(extend, f"configs/trainers/ProGrad/{name}.yaml", script))
                      for name in ("rn50", "rn50_ep100", "rn50_ep50")}
    out["scripts"] = script_settings(["scripts/prograd.sh", "scripts/eval.sh", "scripts/base2new_train_prograd.sh",
                                      "scripts/base2new_test_prograd.sh"])
    return out


def recording_cosines(trainer, cosines: list):
    """ProGrad's forward_backward, noting the first torch.dot per parameter (the normalised-gradient cosine
    its Dassl fork compares with 0) so the golden file says whether the projection acted."""
    import torch

    def forward_backward(batch):
        original, calls = torch.dot, []

        def dot(a, b):
            value = original(a, b)
            calls.append(value.item())
            return value

        torch.dot = dot
        try:
            summary = trainer.forward_backward(batch)
        finally:
            torch.dot = original
        # per parameter: dot(a_norm, b_norm), then dot(a, b_norm) only when the first was negative
        step, i = [], 0
        while i < len(calls):
            step.append(calls[i])
            i += 2 if calls[i] < 0 else 1
        cosines.append(step)
        return summary

    return forward_backward


def run_maple() -> dict:
    """Cross-dataset config (depth 3, lr 0.0026, 2 epochs) on the wide testbed (MaPLe hard-codes 512/768), and
    the same at depth 2 (below the testbed's 3 layers, where the last layer keeps its input tokens)."""
    import torch
    from trainers import maple

    extend = extend_cfg_of_repo()
    _, _, images0, _ = images_and_labels()
    config = "configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx_cross_datasets.yaml"
    out: dict = {"cases": {}, "_init_file": {}}
    for case, extra in (("cross_datasets", []), ("cross_datasets_depth2", ["TRAINER.MAPLE.PROMPT_DEPTH", 2])):
        cfg = base_cfg(extend, config, ["DATASET.NAME", "ImageNet", "TRAINER.MAPLE.PREC", "fp32", *extra])
        trainer = build_trainer(maple.MaPLe, cfg, tiny_clip.CLASSNAMES)
        learner = trainer.model.prompt_learner
        projections = learner.compound_prompt_projections
        structure = {"deep_projections_identical": all(torch.equal(projections[0].weight, p.weight) and
                                                       torch.equal(projections[0].bias, p.bias) for p in projections),
                     "first_projection_differs": not torch.equal(learner.proj.weight, projections[0].weight),
                     "compound_prompts_std": torch.stack(list(learner.compound_prompts_text)).std().item()}
        # the random inits (1.2M numbers) are replaced by fixed draws both sides can make, keeping their
        # structure: the layer-0 map its own, the deep maps one shared draw (copies), deep text prompts N(0, 0.02)
        overrides = {"proj.weight": ("maple.proj.weight", learner.proj.weight),
                     "proj.bias": ("maple.proj.bias", learner.proj.bias)}
        for i, (p, prompt) in enumerate(zip(projections, learner.compound_prompts_text, strict=True)):
            overrides[f"compound_prompt_projections.{i}.weight"] = ("maple.deep_proj.weight", p.weight)
            overrides[f"compound_prompt_projections.{i}.bias"] = ("maple.deep_proj.bias", p.bias)
            overrides[f"compound_prompts_text.{i}"] = (f"maple.compound_prompts_text.{i}", prompt)
        with torch.no_grad():
            for key, param in overrides.values():
                param.copy_(tiny_clip.init_draw(key, tuple(param.shape)))
        trainer.set_model_mode("eval")
        with torch.no_grad():
            logits = trainer.model(images0)
        entry = {"config": config, "overrides": [str(o) for o in extra], "logits_step0": record(logits),
                 "max_epoch": cfg.OPTIM.MAX_EPOCH, "lr": cfg.OPTIM.LR, "batch_size": cfg.DATALOADER.TRAIN_X.BATCH_SIZE,
                 "depth": cfg.TRAINER.MAPLE.PROMPT_DEPTH, "official_init": structure,
                 "init_overrides": {k: v[0] for k, v in overrides.items()}}
        init_file: dict = {}
        entry |= summarise_run(train(trainer), init_file, full_values=0)
        entry["optim"] = optim_record(cfg)
        entry["lr_by_epoch"] = lr_tables(cfg, lambda: (torch.nn.Linear(2, 2), None), [10, cfg.OPTIM.MAX_EPOCH])
        if not extra:
            entry.pop("overrides")  # the published config as it is (the file's first case)
        out["cases"][case] = entry
        out["_init_file"] |= {f"{case}/{k}": v for k, v in init_file.items()}
    b2n = base_cfg(extend, "configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml", [])
    out["cases"]["base_to_new"] = {
        "optim": optim_record(b2n), "max_epoch": b2n.OPTIM.MAX_EPOCH, "lr": b2n.OPTIM.LR,
        "batch_size": b2n.DATALOADER.TRAIN_X.BATCH_SIZE, "depth": b2n.TRAINER.MAPLE.PROMPT_DEPTH,
        "n_ctx": b2n.TRAINER.MAPLE.N_CTX,
        "lr_by_epoch": lr_tables(b2n, lambda: (torch.nn.Linear(2, 2), None), [10, b2n.OPTIM.MAX_EPOCH])}
    out["scripts"] = script_settings(["scripts/maple/xd_train_maple.sh"])
    return out


def run_promptsrc() -> dict:
    """Cross-dataset config (depth 3+3, GPA 6/10) trained for MAX_EPOCH 2, so the GPA model is loaded at the
    end as in a full run, and the same at depth 2+2 (below the testbed's 3 layers); GPA weights recorded for
    every config at its own E."""
    import torch
    from trainers import promptsrc

    extend = extend_cfg_of_repo()
    _, _, images0, _ = images_and_labels()
    config = "configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets.yaml"
    cases = {}
    for case, extra in (("cross_datasets_e2", []),
                        ("cross_datasets_e2_depth2", ["TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT", 2,
                                                      "TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION", 2])):
        cfg = base_cfg(extend, config, ["DATASET.NAME", "ImageNet", "TRAINER.PROMPTSRC.PREC", "fp32",
                                        "OPTIM.MAX_EPOCH", tiny_clip.TRAIN_EPOCHS, *extra])
        trainer = build_trainer(promptsrc.PromptSRC, cfg, tiny_clip.CLASSNAMES)
        trainer.set_model_mode("eval")
        with torch.no_grad():
            logits = trainer.model(images0)
        learner = trainer.model.prompt_learner
        fixed = learner.fixed_embeddings / learner.fixed_embeddings.norm(dim=-1, keepdim=True)
        entry = {"config": config, "logits_step0": record(logits), "lr": cfg.OPTIM.LR,
                 "templates": list(promptsrc.IMAGENET_TEMPLATES), "frozen_text_features": record(fixed),
                 "gpa_weights_train": [float(w) for w in trainer.gauss],
                 "text_loss_weight": cfg.TRAINER.PROMPTSRC.TEXT_LOSS_WEIGHT,
                 "image_loss_weight": cfg.TRAINER.PROMPTSRC.IMAGE_LOSS_WEIGHT}
        if extra:
            entry |= {"overrides": [str(o) for o in extra], "depth_text": cfg.TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT,
                      "depth_vision": cfg.TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION}
        entry |= summarise_run(train(trainer), {})
        entry["optim"] = optim_record(cfg)
        entry["gpa_loaded"] = trainer.step_counter == trainer.model.total_epochs + 1
        cases[case] = entry
    configs = {}
    for name in ("vit_b16_c2_ep20_batch4_4+4ctx", "vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets",
                 "vit_b16_c2_ep50_batch4_4+4ctx_few_shot"):
        c = base_cfg(extend, f"configs/trainers/PromptSRC/{name}.yaml", [])
        t = c.TRAINER.PROMPTSRC
        gauss = trainer.get_gauss(t.GPA_MEAN, t.GPA_STD)
        weights = [gauss(a) for a in range(1, c.OPTIM.MAX_EPOCH + 1)]
        configs[name] = {"optim": optim_record(c), "max_epoch": c.OPTIM.MAX_EPOCH, "lr": c.OPTIM.LR, "batch_size": c.DATALOADER.TRAIN_X.BATCH_SIZE,
                         "gpa_mean": t.GPA_MEAN, "gpa_std": t.GPA_STD, "depth_text": t.PROMPT_DEPTH_TEXT,
                         "depth_vision": t.PROMPT_DEPTH_VISION, "n_ctx_text": t.N_CTX_TEXT, "n_ctx_vision": t.N_CTX_VISION,
                         "gpa_weights": [float(w / sum(weights)) for w in weights],
                         "lr_by_epoch": lr_tables(c, lambda: (torch.nn.Linear(2, 2), None), [10, c.OPTIM.MAX_EPOCH])}
    return {"cases": cases, "configs": configs, "scripts": script_settings(["scripts/promptsrc/xd_train.sh"])}


def run_dept() -> dict:
    """ExtrasLinearProbeCoOp, base-to-new (SUBSAMPLE_CLASSES base): CoOp's defaults (16 random tokens), the
    linear head and cwT layers at 6.5x lr; plus the ImageNet case (SUBSAMPLE_CLASSES all keeps the head)."""
    import torch
    from trainers import elp_coop
    from trainers.optim import build_optimizer as dept_build_optimizer

    extend = extend_cfg_of_repo()
    _, _, images0, _ = images_and_labels()
    config = "configs/trainers/ExtrasLinearProbeCoOp/vit_b16_ep10_bs4_lr35.yaml"
    out: dict = {"cases": {}}
    init_file: dict = {}
    for case, dataset, subsample in (("base", "OxfordPets", "base"), ("imagenet_all", "ImageNet", "all")):
        cfg = base_cfg(extend, config, ["DATASET.NAME", dataset, "DATASET.SUBSAMPLE_CLASSES", subsample,
                                        "TRAINER.COOP.PREC", "fp32"])
        trainer = build_trainer(elp_coop.ExtrasLinearProbeCoOp, cfg, tiny_clip.CLASSNAMES)
        trainer.set_model_mode("eval")
        with torch.no_grad():
            logits = trainer.model(images0)
        entry = {"config": config, "dataset": dataset, "subsample": subsample, "logits_step0": record(logits),
                 "max_epoch": cfg.OPTIM.MAX_EPOCH, "lr": cfg.OPTIM.LR, "lr_exp": cfg.OPTIM.LR_EXP,
                 "batch_size": cfg.DATALOADER.TRAIN_X.BATCH_SIZE, "n_ctx": cfg.TRAINER.COOP.N_CTX,
                 "ctx_init": cfg.TRAINER.COOP.CTX_INIT, "head_weight": cfg.TRAINER.LINEAR_PROBE.WEIGHT,
                 "group_sizes": [sum(p.numel() for p in g["params"] if p.requires_grad)
                                 for g in trainer.optim.param_groups]}
        model = trainer.model
        entry["head_shape"] = list(model.linear_probe_proj.weight.shape) if hasattr(model.linear_probe_proj, "weight") \
            else None
        if case == "imagenet_all":  # the same head path as "base" (so the same training numbers): logits only
            entry["learned_init"] = {n: record(p) for n, p in learned(trainer).items()}
            out["cases"][case] = entry
            continue
        case_init: dict = {}
        entry |= summarise_run(train(trainer), case_init)
        entry["optim"] = optim_record(cfg)
        init_file |= {f"{case}/{k}": v for k, v in case_init.items()}

        def staged(model=model):
            return model, None

        def build(module, optim_cfg, groups=None):
            return dept_build_optimizer(module, optim_cfg)[0]

        entry["lr_by_epoch"] = lr_tables(cfg, staged, [10, cfg.OPTIM.MAX_EPOCH], build=build)
        out["cases"][case] = entry
    out["_init_file"] = init_file
    # ImageNet-R targets: the trainer's own load_model clips the head's rows by the wnid folders present
    out["cases"]["imagenet_r_clipped"] = dept_clipped_head(extend, list(tiny_clip.CLASSNAMES), [1, 3, 4], images0)
    # two training classes share a name (as "missile" and "sunglasses" do in CLIP's ImageNet names): the folder
    # decides which row the target keeps
    names = ["golden_retriever", "cat", "sunflower", "cat", "pizza"]
    out["cases"]["imagenet_r_repeated_name"] = dept_clipped_head(extend, names, [2, 3, 4], images0)
    configs = importlib.import_module("configs")  # DePT's runner settings (plain data)
    out["runner"] = {name: configs.get_config(name)["train"] for name in ("coop_dept",)}
    return out


def dept_clipped_head(extend, train_names: list[str], present: list[int], images0) -> dict:
    """DePT's cross-dataset path to ImageNet-R, run by its own code on a small folder layout: an ImageNet
    (all classes) model saved by Dassl, an ImageNet-R folder with the wnid folders of ``present`` (plus the
    README.txt it ignores), its dataset class, and the trainer's load_model, which clips the head's rows to
    the target (``elp_coop.py`` load_model). Records the target classes, the kept rows and the fused logits."""
    import tempfile

    import torch
    from datasets.imagenet_r import ImageNetR
    from trainers import elp_coop

    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"  # Dassl checkpoints hold scheduler objects
    config = "configs/trainers/ExtrasLinearProbeCoOp/vit_b16_ep10_bs4_lr35.yaml"
    wnids = [f"n{i + 1:08d}" for i in range(len(train_names))]
    with tempfile.TemporaryDirectory() as tmp:
        source_cfg = base_cfg(extend, config, ["DATASET.NAME", "ImageNet", "DATASET.SUBSAMPLE_CLASSES", "all",
                                               "TRAINER.COOP.PREC", "fp32"])
        source = build_trainer(elp_coop.ExtrasLinearProbeCoOp, source_cfg, train_names)
        source.save_model(0, os.path.join(tmp, "model"))
        source_head = source.model.linear_probe_proj.weight.detach().clone()
        folder = Path(tmp) / "data" / "imagenet-rendition"
        (folder / "imagenet-r").mkdir(parents=True)
        (folder / "classnames.txt").write_text("".join(f"{w} {n}\n" for w, n in zip(wnids, train_names, strict=True)))
        (folder / "imagenet-r" / "README.txt").write_text("ignored\n")
        for i in present:
            (folder / "imagenet-r" / wnids[i]).mkdir()
            (folder / "imagenet-r" / wnids[i] / "0.jpg").write_bytes(b"")
        cfg = base_cfg(extend, config, ["DATASET.NAME", "ImageNetR", "DATASET.SUBSAMPLE_CLASSES", "all",
                                        "DATASET.ROOT", str(Path(tmp) / "data"), "TRAINER.COOP.PREC", "fp32"])
        dataset = ImageNetR(cfg)
        trainer = build_trainer(elp_coop.ExtrasLinearProbeCoOp, cfg, dataset.classnames)
        trainer.dm.dataset = dataset
        trainer.load_model(os.path.join(tmp, "model"), epoch=1)
        head = trainer.model.linear_probe_proj.weight.detach()
        rows = [next(i for i in range(len(source_head)) if torch.equal(source_head[i], row)) for row in head]
        trainer.set_model_mode("eval")
        with torch.no_grad():
            logits = trainer.model(images0)
    return {"config": config, "train_classnames": train_names, "wnids": wnids,
            "present_wnids": [wnids[i] for i in present], "target_classnames": list(dataset.classnames),
            "rows": rows, "logits": record(logits),
            "learned_init": {n: record(p) for n, p in learned(source).items()}}


RUNNERS = {"zeroshot": run_zeroshot, "coop": run_coop, "cocoop": run_cocoop, "kgcoop": run_kgcoop,
           "prograd": run_prograd, "maple": run_maple, "promptsrc": run_promptsrc, "dept": run_dept}
WIDE_METHODS = ("maple",)


# ---------------------------------------------------------------------------------------------- driver

def worker(method: str, official: Path, out: Path, checkpoint: str) -> None:
    repo, dassl = REPOS[method]
    repo_dir, dassl_dir = official / repo, official / dassl
    sys.path[:0] = [str(repo_dir), str(dassl_dir)]
    os.chdir(repo_dir)
    install_shims(checkpoint)
    result = RUNNERS[method]()
    init_file = result.pop("_init_file", {})
    if init_file:
        from safetensors.torch import save_file

        save_file({k: v.float().contiguous() for k, v in sorted(init_file.items())}, str(out / f"{method}.init.safetensors"))
    result["meta"] = {"method": method, "repo": repo, "dassl": dassl, "checkpoint_digest": tiny_clip.state_digest(
        __import__("torch").load(checkpoint, weights_only=True)), "classnames": tiny_clip.CLASSNAMES,
        "batch": tiny_clip.BATCH, "steps_per_epoch": tiny_clip.STEPS_PER_EPOCH, "epochs": tiny_clip.TRAIN_EPOCHS}
    (out / f"{method}.json").write_text(json.dumps(result, sort_keys=True, separators=(",", ":")) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", required=True, type=Path, help="folder with the official work trees")
    parser.add_argument("--out", required=True, type=Path, help="where the golden files go")
    parser.add_argument("--methods", default=",".join(REPOS), help="comma-separated subset")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    official, out = args.official.resolve(), args.out.resolve()
    if args.worker:
        worker(args.worker, official, out, args.checkpoint)
        return 0
    import tempfile

    import torch

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = str(Path(tmp) / "tiny-openai-clip.pt")
        torch.save(tiny_clip.openai_state_dict(), checkpoint)
        wide = str(Path(tmp) / "tiny-openai-clip-wide.pt")
        if any(m in WIDE_METHODS for m in args.methods.split(",")):
            torch.save(tiny_clip.openai_state_dict(**tiny_clip.WIDE), wide)
        for method in args.methods.split(","):
            if method not in REPOS:
                parser.error(f"unknown method {method!r}; use {', '.join(REPOS)}")
            env = dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="",
                       PYTHONDONTWRITEBYTECODE="1")
            print(f"[make_golden] {method}", flush=True)
            subprocess.run([sys.executable, str(Path(__file__).resolve()), "--official", str(official), "--out",
                            str(out), "--worker", method, "--checkpoint", wide if method in WIDE_METHODS else checkpoint],
                           check=True, env=env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
