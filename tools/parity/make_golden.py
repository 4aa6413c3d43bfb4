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
initial value (the test starts dipclip from the official initial tensors).
"""

from __future__ import annotations

import argparse
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
INIT_FILE_LIMIT = FULL_VALUES


# ---------------------------------------------------------------------------------------------- records

def f32(values) -> list[float]:
    """float32 values as the shortest decimals that read back to the same float32 (compact JSON)."""
    import numpy as np

    return [float(np.format_float_scientific(np.float32(v), unique=True)) for v in values]


def record(tensor, full: bool = True) -> dict:
    t = tensor.detach().cpu().double()
    out = {"shape": list(t.shape), "sum": t.sum().item(), "abs_sum": t.abs().sum().item(), "norm": t.norm().item(),
           "head": f32(tensor.detach().cpu().float().flatten()[:8].tolist())}
    if full and t.numel() <= FULL_VALUES:
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


def lr_tables(trainer_cfg, module_or_groups_fn, epochs: list[int]) -> dict:
    """The lr of every param group at every epoch, from Dassl's build_optimizer/build_lr_scheduler."""
    from dassl.optim import build_lr_scheduler, build_optimizer

    tables = {}
    for max_epoch in epochs:
        cfg = trainer_cfg.clone()
        cfg.defrost()
        cfg.OPTIM.MAX_EPOCH = max_epoch
        cfg.freeze()
        module, groups = module_or_groups_fn()
        optim = build_optimizer(module, cfg.OPTIM, param_groups=groups)
        sched = build_lr_scheduler(optim, cfg.OPTIM)
        rows = []
        for _ in range(max_epoch):
            rows.append([g["lr"] for g in optim.param_groups])
            optim.step()
            sched.step()
        tables[str(max_epoch)] = rows
    return tables


def summarise_run(run: dict, init_file: dict) -> dict:
    out = {"learned": {}, "steps": []}
    for name in run["learned_names"]:
        init, final = run["init"][name], run["final"][name]
        entry = {"init": record(init), "final": record(final), "delta": record(final - init, full=False)}
        if init.numel() > INIT_FILE_LIMIT:
            init_file[name] = init.contiguous()
        out["learned"][name] = entry
    for index, step in enumerate(run["steps"]):  # full gradients at step 0, summaries after
        out["steps"].append({"lr": step["lr"], "summary": step["summary"],
                             "grads": {n: record(g, full=index == 0) for n, g in sorted(step["grads"].items())}})
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
        entry["lr_by_epoch"] = lr_tables(cfg, lambda: (torch.nn.Linear(2, 2), None), [10, cfg.OPTIM.MAX_EPOCH])
        out["cases"][dataset] = entry
    return out


def run_prograd() -> dict:
    import torch
    from trainers import prograd

    extend = extend_cfg_of_repo()
    _, _, images0, _ = images_and_labels()
    config = "configs/trainers/ProGrad/rn50.yaml"
    out = {"cases": {}}
    # scripts/base2new_train_prograd.sh: N_CTX 16, CTX_INIT True, LOSS.LAMBDA 1.0 (0.8 in the README for some)
    for case, dataset, lam in (("OxfordPets", "OxfordPets", 1.0), ("DescribableTextures_l0.8", "DescribableTextures", 0.8)):
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
        entry |= summarise_run(train(trainer), {})
        entry["lr_by_epoch"] = lr_tables(cfg, lambda: (torch.nn.Linear(2, 2), None), [10, cfg.OPTIM.MAX_EPOCH])
        out["cases"][case] = entry
    return out


RUNNERS = {"zeroshot": run_zeroshot, "coop": run_coop, "cocoop": run_cocoop, "kgcoop": run_kgcoop,
           "prograd": run_prograd}


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
        for method in args.methods.split(","):
            if method not in REPOS:
                parser.error(f"unknown method {method!r}; use {', '.join(REPOS)}")
            env = dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="",
                       PYTHONDONTWRITEBYTECODE="1")
            print(f"[make_golden] {method}", flush=True)
            subprocess.run([sys.executable, str(Path(__file__).resolve()), "--official", str(official), "--out",
                            str(out), "--worker", method, "--checkpoint", checkpoint], check=True, env=env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
