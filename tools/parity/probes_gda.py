#!/usr/bin/env python
"""Golden numbers for GDA from the authors' own functions (mrflogs/ICLR24).

    python tools/parity/probes_gda.py --official ROOT --out tests/golden/probes

ROOT holds a work tree of the repository in ``ROOT/ICLR24`` (commit in tests/golden/probes/README.md). Their
``main_few_shots.run`` (the KS estimator, also main_robustness.py's) and ``main_base2new.run`` (per-class
covariance for the base classes, the synthesised new classes) run on fixed synthetic features; nothing of theirs
is copied or edited. Run-time shims only: ``.cuda()`` is a no-op, the unused ``gdown``/``pkg_resources`` imports
get empty modules, ``cls_acc`` converts its count with ``.item()`` (numpy 2), the "CLIP model" is an identity
``encode_image`` over stored features, the cache loader gives view ``i`` on its ``i``-th pass, and the split
features are set as the module globals their ``run`` reads. Recorders wrap ``cls_acc``, ``torch.linalg.pinv``,
``torch.einsum`` and the module's ``print`` (which reports the chosen alpha).

The inputs are regenerated from :func:`synthetic` (seeded CPU ``torch.Generator``; the test imports this file
for it and checks the stored input sums): main_base2new.py hard-codes 512-dimensional features, too many numbers
to store.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # golden_io beside this file
from golden_io import f32  # noqa: E402

ALPHAS = [0.0001, 0.001, 0.01, 0.1, 1.0, 10.0, 100.0]
FEWSHOT = {"seed": 1, "classes": 4, "shots": 4, "dim": 32, "views": 3, "val": 40, "test": 40, "new": 0, "eval_noise": 0.6}
BASE2NEW = {"seed": 2, "classes": 4, "shots": 16, "dim": 512, "views": 10, "val": 40, "test": 40, "new": 3, "eval_noise": 4.0}


def tensor(t: torch.Tensor, full: bool = True) -> dict:
    t = t.detach().float()
    out = {"shape": list(t.shape), "sum": t.double().sum().item(), "abs_sum": t.double().abs().sum().item()}
    if full:
        out["values"] = f32(t.flatten().tolist())
    return out


def synthetic(spec: dict) -> dict:
    """Class-structured L2-normalised features: views [V, N, D] of N = classes * shots images, val/test splits,
    zero-shot weights near the class centres; with ``new`` > 0 also new classes' weights and test features."""
    g = torch.Generator().manual_seed(spec["seed"])
    c, d, n_new = spec["classes"], spec["dim"], spec["new"]
    centres = torch.nn.functional.normalize(torch.randn(c + n_new, d, generator=g), dim=-1)
    noise = 2.4 / d ** 0.5  # noise vectors of norm about 2.4 x scale, whatever the width

    def draw(labels: torch.Tensor, scale: float) -> torch.Tensor:
        return torch.nn.functional.normalize(centres[labels] + scale * noise * torch.randn(len(labels), d, generator=g),
                                             dim=-1)

    train_labels = torch.arange(c).repeat_interleave(spec["shots"])
    base = centres[train_labels] + 0.5 * noise * torch.randn(len(train_labels), d, generator=g)
    views = torch.stack([torch.nn.functional.normalize(base + 0.2 * noise * torch.randn(base.shape, generator=g),
                                                       dim=-1) for _ in range(spec["views"])])
    val_labels = torch.randint(0, c, (spec["val"],), generator=g)
    test_labels = torch.randint(0, c, (spec["test"],), generator=g)
    weights = torch.nn.functional.normalize(centres + 0.8 * noise * torch.randn(c + n_new, d, generator=g), dim=-1)
    out = {"views": views, "train_labels": train_labels, "val": draw(val_labels, spec["eval_noise"]), "val_labels": val_labels,
           "test": draw(test_labels, spec["eval_noise"]), "test_labels": test_labels, "zeroshot": weights[:c]}
    if n_new:
        new_labels = torch.randint(0, n_new, (spec["test"],), generator=g)
        out |= {"zeroshot_new": weights[c:], "test_new": draw(new_labels + c, spec["eval_noise"]), "test_new_labels": new_labels}
    return out


def cls_acc_numpy2(output, target, topk=1):
    """Their ``utils.cls_acc`` with its last conversion done by ``.item()`` (numpy 2)."""
    pred = output.topk(topk, 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    acc = correct[:topk].reshape(-1).float().sum(0, keepdim=True).item()
    return 100 * acc / target.shape[0]


class IdentityCLIP:
    dtype = torch.float32

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return images.clone()


class PassLoader:
    def __init__(self, passes):
        self.passes, self.count = passes, 0

    def __len__(self) -> int:
        return len(self.passes[0])

    def __iter__(self):
        batches = self.passes[self.count % len(self.passes)]
        self.count += 1
        return iter(batches)


def install_shims() -> None:
    from torch import nn

    nn.Module.cuda = lambda self, *a, **k: self
    torch.Tensor.cuda = lambda self, *a, **k: self
    for unused in ("pkg_resources", "gdown"):
        module = types.ModuleType(unused)
        import packaging.version

        module.packaging = packaging  # `from pkg_resources import packaging` in their clip/clip.py
        sys.modules.setdefault(unused, module)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


def run_official(module, data: dict, with_new: bool) -> dict:
    """Their ``run`` with recorders; returns what it computed."""
    seen, pinvs, einsums, printed = [], [], [], []
    original_pinv, original_einsum = torch.linalg.pinv, torch.einsum

    def pinv(*a, **k):
        pinvs.append(original_pinv(*a, **k))
        return pinvs[-1]

    def einsum(*a, **k):
        einsums.append(original_einsum(*a, **k))
        return einsums[-1]

    def acc(output, target, topk=1):
        seen.append(output.detach().clone())
        return cls_acc_numpy2(output, target, topk)

    module.cls_acc = acc
    module.print = lambda *a, **k: printed.append(" ".join(str(x) for x in a))
    module.val_features, module.val_labels = data["val"], data["val_labels"]
    module.test_features, module.test_labels = data["test"], data["test_labels"]
    loader = PassLoader([[(v[s:s + 16], data["train_labels"][s:s + 16]) for s in range(0, len(v), 16)]
                         for v in data["views"]])
    cfg = {"augment_epoch": data["views"].shape[0], "seed": 1}
    torch.linalg.pinv, torch.einsum = pinv, einsum
    try:
        if with_new:
            module.test_features_new, module.test_labels_new = data["test_new"], data["test_new_labels"]
            module.run(cfg, loader, data["zeroshot"].T.contiguous(), data["zeroshot_new"].T.contiguous(),
                       IdentityCLIP())
        else:
            module.run(cfg, loader, data["zeroshot"].T.contiguous(), IdentityCLIP())
    finally:
        torch.linalg.pinv, torch.einsum = original_pinv, original_einsum
    chosen = [line for line in printed if line.startswith("best_val_alpha")]
    alpha = float(chosen[0].split()[1])
    out = {"alpha": alpha, "val_logits_per_alpha": [tensor(t, False) for t in seen[:len(ALPHAS)]],
           "val_accuracy_per_alpha": [cls_acc_numpy2(t, data["val_labels"]) for t in seen[:len(ALPHAS)]],
           "weight": tensor(einsums[0], not with_new), "precision": tensor(pinvs[0], not with_new),
           "test_logits": tensor(seen[len(ALPHAS)])}
    if with_new:
        out["new_weight"] = tensor(einsums[2], False)
        out["new_test_logits"] = tensor(seen[len(ALPHAS) + 1])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", required=True, help="folder holding the ICLR24 work tree")
    parser.add_argument("--out", default="tests/golden/probes")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(args.official) / "ICLR24"))
    install_shims()
    import main_base2new
    import main_few_shots

    golden = {"source": "mrflogs/ICLR24 main_few_shots.run, main_base2new.run", "alphas": ALPHAS}
    for name, spec, module, with_new in (("fewshot", FEWSHOT, main_few_shots, False),
                                         ("base2new", BASE2NEW, main_base2new, True)):
        data = synthetic(spec)
        golden[name] = {"spec": spec, "input_sums": {k: v.double().sum().item() for k, v in data.items()},
                        **run_official(module, data, with_new)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gda.json").write_text(json.dumps(golden) + "\n")
    print("wrote", out / "gda.json", {k: (golden[k]["alpha"], golden[k]["val_accuracy_per_alpha"])
                                      for k in ("fewshot", "base2new")})


if __name__ == "__main__":
    main()
