#!/usr/bin/env python
"""Golden numbers for Tip-Adapter and Tip-Adapter-F from the authors' own functions (gaopengcuhk/Tip-Adapter).

    python tools/parity/probes_tip_adapter.py --official ROOT --out tests/golden/probes

ROOT holds a work tree of the repository in ``ROOT/Tip-Adapter`` (see tests/golden/probes/README.md for the
commit). Their ``utils.build_cache_model``, ``utils.search_hp``, ``main.run_tip_adapter`` and
``main.run_tip_adapter_F`` run on fixed synthetic features; nothing of theirs is copied or edited. Run-time shims
only: ``cls_acc`` converts its count with ``.item()`` (numpy 2), ``.cuda()`` is a no-op, the unused ``gdown``/``pkg_resources`` imports get empty modules, ``Tensor.half()`` becomes ``.float()`` (fp32 on CPU), the "CLIP model" is an
identity ``encode_image`` over the stored features, and the loaders are lists of fixed batches (the cache loader
gives view ``i`` on its ``i``-th pass; the training loader gives a fixed view and order per epoch). Recorders
(not changes) wrap ``cls_acc``, ``search_hp``, ``F.cross_entropy``, ``torch.save`` and the optimiser's ``step``.
Written: ``tip_adapter.json`` (inputs, cache, logits at the configured beta/alpha and at the searched ones, the
searched pair on the grids of two configs) and ``tip_adapter_f.json`` (the training batches, loss, lr and learned
keys after every step, the epoch their code keeps, the search with those keys and the resulting test logits).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # golden_io beside this file
from golden_io import tensor  # noqa: E402

SEED = 0
CLASSES, SHOTS, DIM, VIEWS, VAL, TEST = 4, 4, 32, 3, 40, 40
GRIDS = {"oxford_pets": ([7, 3], [200, 20]), "fgvc": ([30, 30], [200, 20])}  # configs/<dataset>.yaml
INIT = {"init_beta": 1, "init_alpha": 1.17}  # configs/oxford_pets.yaml
F_EPOCHS, F_BATCH = 2, 8


def synthetic(seed: int = SEED) -> dict:
    """Class-structured L2-normalised features (class centres + noise) and zero-shot weights near the centres."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(CLASSES, DIM, generator=g), dim=-1)

    def draw(labels: torch.Tensor, noise: float) -> torch.Tensor:
        x = centres[labels] + noise * torch.randn(len(labels), DIM, generator=g)
        return torch.nn.functional.normalize(x, dim=-1)

    train_labels = torch.arange(CLASSES).repeat_interleave(SHOTS)
    base = centres[train_labels] + 0.15 * torch.randn(len(train_labels), DIM, generator=g)
    views = torch.stack([torch.nn.functional.normalize(base + 0.05 * torch.randn(base.shape, generator=g), dim=-1)
                         for _ in range(VIEWS)])
    val_labels = torch.randint(0, CLASSES, (VAL,), generator=g)
    test_labels = torch.randint(0, CLASSES, (TEST,), generator=g)
    zeroshot = torch.nn.functional.normalize(centres + 0.25 * torch.randn(CLASSES, DIM, generator=g), dim=-1)
    order = [torch.randperm(len(train_labels), generator=g) for _ in range(F_EPOCHS)]
    return {"views": views, "train_labels": train_labels, "val": draw(val_labels, 0.15), "val_labels": val_labels,
            "test": draw(test_labels, 0.15), "test_labels": test_labels, "zeroshot": zeroshot,
            "order": torch.stack(order)}


def install_shims() -> None:
    from torch import nn

    nn.Module.cuda = lambda self, *a, **k: self
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.Tensor.half = lambda self, *a, **k: self.float()  # fp32 throughout (their GPU run is fp16)
    for unused in ("pkg_resources", "gdown"):  # imported by their clip/datasets modules, never called here
        sys.modules.setdefault(unused, types.ModuleType(unused))
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


def cls_acc_numpy2(output, target, topk=1):
    """Their ``utils.cls_acc`` with its last conversion done by ``.item()``: numpy 2 no longer turns the
    one-element array their ``float(... .numpy())`` makes into a float (the same number otherwise)."""
    pred = output.topk(topk, 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    acc = correct[:topk].reshape(-1).float().sum(0, keepdim=True).item()
    return 100 * acc / target.shape[0]


class IdentityCLIP:
    """Their code calls ``clip_model.encode_image(images)`` and ``clip_model.dtype``: features in, features out."""

    dtype = torch.float32

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return images.clone()


class PassLoader:
    """The i-th pass over the loader yields the i-th list of batches (a fresh augmentation per pass)."""

    def __init__(self, passes: list[list[tuple[torch.Tensor, torch.Tensor]]]):
        self.passes, self.count = passes, 0

    def __len__(self) -> int:
        return len(self.passes[0])

    def __iter__(self):
        batches = self.passes[self.count % len(self.passes)]
        self.count += 1
        return iter(batches)


def f_batches(data: dict) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Epoch e: view e % VIEWS of the training images in the order ``order[e]``, in batches of F_BATCH."""
    out = []
    for epoch in range(F_EPOCHS):
        idx = data["order"][epoch]
        feats, labels = data["views"][epoch % VIEWS][idx], data["train_labels"][idx]
        out.append([(feats[s:s + F_BATCH], labels[s:s + F_BATCH]) for s in range(0, len(idx), F_BATCH)])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", required=True, help="folder holding the Tip-Adapter work tree")
    parser.add_argument("--out", default="tests/golden/probes")
    args = parser.parse_args()
    repo = Path(args.official) / "Tip-Adapter"
    sys.path.insert(0, str(repo))
    install_shims()
    import main as tip_main  # their main.py
    import utils as tip_utils  # their utils.py

    tip_utils.cls_acc = tip_main.cls_acc = cls_acc_numpy2
    data = synthetic()
    cache_dir = tempfile.mkdtemp()
    cfg = {"load_cache": False, "load_pre_feat": False, "search_hp": True, "augment_epoch": VIEWS, "shots": SHOTS,
           "cache_dir": cache_dir, "lr": 0.001, "train_epoch": F_EPOCHS, "search_scale": GRIDS["oxford_pets"][0],
           "search_step": GRIDS["oxford_pets"][1], **INIT}
    clip_weights = data["zeroshot"].T.contiguous()  # their [D, C]
    cache_loader = PassLoader([[(v[s:s + 8], data["train_labels"][s:s + 8]) for s in range(0, len(v), 8)]
                               for v in data["views"]])

    # Tip-Adapter --------------------------------------------------------------------------------------------
    keys, values = tip_utils.build_cache_model(cfg, IdentityCLIP(), cache_loader)  # [D, N], [N, C]
    seen: list[torch.Tensor] = []
    original_acc = tip_main.cls_acc

    def recording_acc(output, target, topk=1):
        seen.append(output.detach().clone())
        return original_acc(output, target, topk)

    searched: list[tuple[float, float]] = []
    original_search = tip_main.search_hp

    def recording_search(*a, **k):
        searched.append(original_search(*a, **k))
        return searched[-1]

    tip_main.cls_acc, tip_main.search_hp = recording_acc, recording_search
    tip_main.run_tip_adapter(cfg, keys, values, data["val"], data["val_labels"], data["test"], data["test_labels"],
                             clip_weights)
    # calls: zero-shot val, tip val at init, zero-shot test, tip test at the searched pair
    zs_val, tip_val_init, _, tip_test_best = seen
    search = {}
    for name, (scale, step) in GRIDS.items():
        grid_cfg = {**cfg, "search_scale": scale, "search_step": step}
        beta, alpha = tip_utils.search_hp(grid_cfg, keys, values, data["val"], data["val_labels"], clip_weights)
        search[name] = {"search_scale": scale, "search_step": step, "beta": beta, "alpha": alpha}
    golden = {
        "source": "gaopengcuhk/Tip-Adapter utils.build_cache_model, utils.search_hp, main.run_tip_adapter",
        "config": {k: cfg[k] for k in ("augment_epoch", "init_beta", "init_alpha", "search_scale", "search_step")},
        "inputs": {k: tensor(v) for k, v in data.items() if k != "order"},
        "cache_keys": tensor(keys.T), "cache_values": tensor(values),
        "zeroshot_val_logits": tensor(zs_val), "tip_val_logits_init": tensor(tip_val_init),
        "searched": {"beta": searched[0][0], "alpha": searched[0][1]}, "tip_test_logits_searched": tensor(tip_test_best),
        "search": search,
    }

    # Tip-Adapter-F ------------------------------------------------------------------------------------------
    steps: list[dict] = []
    losses: list[float] = []
    saves: list[torch.Tensor] = []
    original_ce = tip_main.F.cross_entropy

    def recording_ce(*a, **k):
        loss = original_ce(*a, **k)
        losses.append(loss.item())
        return loss

    class RecordingAdamW(torch.optim.AdamW):
        def step(self, closure=None):
            lr = self.param_groups[0]["lr"]
            out = super().step(closure)
            steps.append({"lr": lr, "weight": self.param_groups[0]["params"][0].detach().clone()})
            return out

    original_save, original_adamw = torch.save, torch.optim.AdamW

    def recording_save(obj, path, *a, **k):
        saves.append(obj.detach().clone())
        return original_save(obj, path, *a, **k)

    seen.clear()
    searched.clear()
    tip_main.F.cross_entropy, torch.optim.AdamW, torch.save = recording_ce, RecordingAdamW, recording_save
    original_load = torch.load
    torch.load = lambda path, *a, **k: original_load(path, *a, **{**k, "weights_only": False})
    try:
        torch.manual_seed(SEED)
        tip_main.run_tip_adapter_F(cfg, keys, values, data["val"], data["val_labels"], data["test"],
                                   data["test_labels"], clip_weights, IdentityCLIP(), PassLoader(f_batches(data)))
    finally:
        tip_main.F.cross_entropy, torch.optim.AdamW, torch.save, torch.load = (original_ce, original_adamw,
                                                                                original_save, original_load)
    per_epoch = len(f_batches(data)[0])
    # cls_acc calls: one per training step, then one test evaluation per epoch, then the final test evaluation
    test_evals = [seen[(e + 1) * per_epoch + e] for e in range(F_EPOCHS)]
    accs = [original_acc(t, data["test_labels"]) for t in test_evals]
    kept = max(range(F_EPOCHS), key=lambda e: (accs[e], -e))  # first strict best, as their loop
    assert torch.equal(saves[-1], steps[(kept + 1) * per_epoch - 1]["weight"])
    golden_f = {
        "source": "gaopengcuhk/Tip-Adapter main.run_tip_adapter_F (AdamW eps 1e-4, CosineAnnealingLR per step)",
        "config": {k: cfg[k] for k in ("augment_epoch", "init_beta", "init_alpha", "search_scale", "search_step",
                                       "lr", "train_epoch")},
        "batch_size": F_BATCH, "order": [o.tolist() for o in data["order"]],
        "epoch_views": [e % VIEWS for e in range(F_EPOCHS)],
        "losses": losses, "lrs": [s["lr"] for s in steps], "weights": [tensor(s["weight"]) for s in steps],
        "test_acc_per_epoch": accs, "kept_epoch": kept,
        "searched": {"beta": searched[0][0], "alpha": searched[0][1]},
        "tip_test_logits_searched": tensor(seen[-1]),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tip_adapter.json").write_text(json.dumps(golden) + "\n")
    (out / "tip_adapter_f.json").write_text(json.dumps(golden_f) + "\n")
    print("wrote", out / "tip_adapter.json", out / "tip_adapter_f.json", "searched", golden["searched"],
          golden["search"], "F kept epoch", kept, "F searched", golden_f["searched"])


if __name__ == "__main__":
    main()
