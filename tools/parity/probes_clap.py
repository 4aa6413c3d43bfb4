"""Golden numbers for ZS-LP and CLAP from jusiro/CLAP's ``trainers/adapters.py``, on CPU in fp32.

    python tools/parity/probes_clap.py --official /tmp/official/CLAP

Their module imports Dassl and their bundled OpenAI ``clip`` at import time for the trainer and the text tower,
neither of which the feature-space computation uses; run-time stubs stand in for those imports (nothing of
theirs is edited). Their own ``AdapterMethod`` (prototypes, ``init_lagrangian_multipliers``,
``zero_shot_constraint``), ``CustomCLIP.forward_lp`` and ``ADAPTER.forward_backward`` (fp32 branch) then run on
seeded synthetic features, with Dassl's SGD (momentum 0.9, no weight decay, no dampening) at lr 0.1.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import types
from pathlib import Path

import torch

SEED, CLASSES, DIM, SHOTS, VIEWS, STEPS, BATCH, LR = 0, 4, 8, 2, 3, 3, 8, 0.1


def stub_imports() -> None:
    class Registry:
        def register(self):
            return lambda cls: cls

    def compute_accuracy(output, target, topk=(1,)):
        return [100.0 * (output.argmax(-1) == target).float().mean()]

    modules = {
        "dassl": {}, "dassl.engine": {"TRAINER_REGISTRY": Registry(), "SimpleTrainer": object},
        "dassl.metrics": {"compute_accuracy": compute_accuracy},
        "dassl.utils": {"load_pretrained_weights": None, "load_checkpoint": None, "AverageMeter": None,
                        "MetricMeter": None},
        "dassl.optim": {"build_optimizer": None, "build_lr_scheduler": None},
        "clip": {"clip": None}, "clip.simple_tokenizer": {"SimpleTokenizer": lambda: None},
        "datasets": {}, "datasets.imagenet_templates": {"IMAGENET_TEMPLATES": [], "IMAGENET_TEMPLATES_SELECT": []},
    }
    for name, attrs in modules.items():
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        sys.modules[name] = module


def inputs() -> dict:
    g = torch.Generator().manual_seed(SEED)
    base = 5.0 * torch.randn(CLASSES, DIM, generator=g)  # unnormalised text prototypes, as theirs
    labels = torch.arange(CLASSES).repeat_interleave(SHOTS).repeat(VIEWS)  # VIEWS augmented passes
    features = torch.nn.functional.normalize(base[labels] / 5.0 + torch.randn(len(labels), DIM, generator=g), dim=-1)
    test = torch.nn.functional.normalize(torch.randn(10, DIM, generator=g), dim=-1)
    perms = [torch.randperm(len(labels), generator=g) for _ in range(STEPS)]
    return {"base": base, "features": features, "labels": labels, "test": test, "perms": perms}


def run(adapters, constraint: str, data: dict) -> dict:
    ns = types.SimpleNamespace
    cfg = ns(TRAINER=ns(ADAPTER=ns(INIT="ZS", CONSTRAINT=constraint, PREC="fp32")))
    clip_model = ns(dtype=torch.float32, logit_scale=torch.nn.Parameter(torch.tensor(100.0).log(),
                                                                         requires_grad=False))
    adapter = adapters.AdapterMethod(cfg, clip_model, data["base"].clone())
    model = ns(adapter=adapter, logit_scale=clip_model.logit_scale)
    model.forward_lp = lambda f: adapters.CustomCLIP.forward_lp(model, f)
    model.forward_features = lambda f: adapters.CustomCLIP.forward_features(model, f)
    logits_zs = model.forward_features(data["features"])
    if constraint != "none":
        adapter.init_lagrangian_multipliers(data["labels"], logits_zs)
    optim = torch.optim.SGD([adapter.prototypes], lr=LR, momentum=0.9, weight_decay=0.0, dampening=0.0,
                            nesterov=False)

    def backward_and_update(loss):  # Dassl's SimpleTrainer.model_backward_and_update
        optim.zero_grad()
        loss.backward()
        optim.step()

    trainer = ns(cfg=cfg, model=model, device="cpu", features_test=data["test"],
                 labels_test=torch.zeros(len(data["test"]), dtype=torch.long), batch_idx=0, num_batches=2,
                 model_backward_and_update=backward_and_update, update_lr=lambda: None)
    losses = []
    for perm in data["perms"]:
        idx = perm[:BATCH]
        summary = adapters.ADAPTER.forward_backward(trainer, data["features"][idx].numpy(), data["labels"][idx])
        losses.append(summary["loss"])
    return {"logits_zs": logits_zs.tolist(), "multipliers": adapter.alpha_constraint.tolist(),
            "losses": losses, "prototypes": adapter.prototypes.detach().tolist(),
            "logits_test": model.forward_features(data["test"]).detach().tolist()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--official", required=True, help="a work tree of jusiro/CLAP")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[2] / "tests/golden/probes/clap.json"))
    args = parser.parse_args()
    stub_imports()
    sys.path.insert(0, str(Path(args.official) / "trainers"))
    adapters = importlib.import_module("adapters")
    torch.set_num_threads(1)
    data = inputs()
    golden = {"source": "jusiro/CLAP trainers/adapters.py", "seed": SEED, "classes": CLASSES, "dim": DIM,
              "shots": SHOTS, "views": VIEWS, "steps": STEPS, "batch": BATCH, "lr": LR,
              "zslp": run(adapters, "none", data), "clap": run(adapters, "l2", data)}
    Path(args.out).write_text(json.dumps(golden, indent=1))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
