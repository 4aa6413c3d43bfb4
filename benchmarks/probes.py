"""Few-shot protocol of the feature-space methods: the peers' re-encoding loops against dipclip's feature store.

One process, one random open_clip model (``--model``, default ``ViT-B-32``; ``--pretrained none``), one
synthetic ``imagefolder`` dataset (``make_dataset`` of ``benchmarks/speed.py``, imported: colour blobs + noise as
JPEGs, ``--classes`` Caltech-101 class names, with ``train/``, ``val/`` and ``test/`` folders: the val split is
what the searching methods (lp, lpp, tip-adapter(-f), gda) choose their hyperparameters on). The protocol:
methods lp, zslp, clap, lpp, clip-adapter, tip-adapter, tip-adapter-f, taskres, gda (clip-lora runs the image
tower and is left out) x shots 1 2 4 8 16 x seeds 1 2 3, every run with its method's ``fewshot`` recipe
(epochs, batch size, crop scale, optimiser), ``--epochs`` capping the trained methods' epochs on both sides.

- reference: each run encodes, with the image tower (``backbone.encode_images`` on batches of dipclip's own
  seeded views, ``dipclip.engine.features.make_views``), what its repository encodes, and nothing is shared
  between runs: the test split every run; the val split when the method searches on it; the training images
  under the test transform (lp); its augmented passes (tip-adapter, tip-adapter-f, gda: 10; zslp, clap: a pool
  of 20 views, those the run reads; lpp: 1); and for the trained adapters that run the image tower in their
  loop (clip-adapter, taskres, tip-adapter-f) a new augmented pass every epoch. The head's own work (closed
  forms, searches, epochs over features) is dipclip's method code, the same on both sides. With ``--ref-epochs
  R`` the reference's epoch loop runs at most R epochs and its time is extrapolated linearly to the run's epochs
  (the mean epoch time); the rest of the run is measured.
- dipclip: the real path, ``dipclip.api.train(method, data=..., dataset="imagefolder", shots=K, seed=S, ...)``
  for every run in this process, with one shared feature store (an empty ``DIPCLIP_CACHE_DIR``): every image and
  view is encoded once and read back by every method, seed and shot count that uses it. ``views`` per the
  authors: ``"fresh"`` (a new view every epoch) for the epoch-trained adapters, the 20-view pool for zslp/clap.
  A run pays for the encodings it is the first to need, so the per-method split depends on the order above.

    python benchmarks/probes.py --quick    # ViT-S-32, 10 classes, shots 1 2, seed 1, 2 epochs
    python benchmarks/probes.py --epochs 2 --ref-epochs 1             # all shots and seeds, capped epochs
    python benchmarks/probes.py                                       # the recipes' epochs (a GPU's job)

``--quick`` took 10.6 min on 2 shared CPU cores (load average 3.4 to 6.3). At its size (10 classes, 1-2 shots,
20 test images) the images are few and the heads' own work dominates both sides (tip-adapter's 200 x 20 grid
search, lp's C search, CLAP's multipliers), so its ratio is near 1; the store pays off as the test split, the
shot counts and the epochs of the re-encoding adapters grow. The other two commands were not run on CPU.

Printed: the machine load (``os.getloadavg()``) before and after each side, a table per method of reference
seconds, dipclip seconds and their ratio (and the total), the mean test accuracy of both sides (they agree up to
float rounding of batch compositions and, for zslp/clap, the reference reading only the views it trains on),
and how many entries dipclip's feature store holds. Not a test: timings depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import fmt_ratio, log, machine, make_dataset  # noqa: E402  (benchmarks/ is not a package)

METHODS = ("lp", "zslp", "clap", "lpp", "clip-adapter", "tip-adapter", "tip-adapter-f", "taskres", "gda")
EPOCH_ENCODERS = {"clip-adapter", "taskres", "tip-adapter-f"}  # their repositories run the image tower per step
VIEW_POOL = {"zslp", "clap"}  # CLAP's repository: a pool of augmented passes, extracted once per run
SHOTS, SEEDS = (1, 2, 4, 8, 16), (1, 2, 3)


def load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def write_data(root: Path, classes: int, train_per_class: int, val_per_class: int, test_per_class: int) -> None:
    """``root/{train,val,test}/<class>/*.jpg``: speed.py's images, the last ``val_per_class`` training images of
    every class moved to ``val/`` (same class colours as train and test)."""
    make_dataset(root, classes, train_per_class + val_per_class, test_per_class, (320, 240), seed=1)
    for folder in sorted((root / "train").iterdir()):
        target = root / "val" / folder.name
        target.mkdir(parents=True, exist_ok=True)
        for i in range(train_per_class, train_per_class + val_per_class):
            (folder / f"{i}.jpg").rename(target / f"{i}.jpg")


def plan(method: str, shots: int, seed: int, n_train: int, cap: int | None):
    """dipclip's own resolution of the method's fewshot recipe, ``cap`` bounding a trained method's epochs."""
    from dipclip.api import _feature_plan

    arguments = dict(recipe="fewshot", dataset="imagefolder", shots=shots, seed=seed, subsample="all",
                     batch_size=None, method_options=None, optimizer=None, lr=None, search_split="val")
    head_method, _, _, settings, _, train_cfg = _feature_plan(method, epochs=None, n_train=n_train, **arguments)
    epochs = min(train_cfg.epochs, cap) if (cap and head_method.trained) else None
    views = int(settings["augment_views"]) if method in VIEW_POOL else "fresh"
    return _feature_plan(method, epochs=epochs, views=views, n_train=n_train, **arguments), epochs, views


# --------------------------------------------------------------------------------------------------------
# The reference: every run encodes its own images, as the methods' repositories do
# --------------------------------------------------------------------------------------------------------

def encode(backbone, items, seed: int | None = None, view: int = 0, crop_scale: float = 0.08):
    """The image tower over ``items`` (test transform, or augmented view ``view`` of run seed ``seed``)."""
    from dipclip.engine.features import encode_dataset, make_views

    encoded = encode_dataset(backbone, make_views(backbone, items, seed, view, crop_scale=crop_scale),
                             progress=False)
    features, labels = encoded.good()
    return features.to(backbone.device), labels.to(backbone.device)


class ReferenceData:
    """What :class:`~dipclip.probes.base.FeatureData` gives, encoded on first use within one run only."""

    def __init__(self, backbone, splits, seed: int, crop_scale: float):
        self.backbone, self.splits, self.seed, self.crop_scale = backbone, splits, seed, crop_scale
        self.search_split = "val"
        self._memo: dict = {}

    def _get(self, key, make):
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    @property
    def train(self):
        return self._get("train", lambda: encode(self.backbone, self.splits.train))

    @property
    def val(self):
        return self._get("val", lambda: encode(self.backbone, self.splits.val)) if self.splits.val else None

    @property
    def search(self):
        return self.val

    def view(self, v: int):
        return self._get(("view", v), lambda: encode(self.backbone, self.splits.train, self.seed, v, self.crop_scale))

    def views(self, n: int):
        got = [self.view(v) for v in range(n)]
        return torch.stack([features for features, _ in got]), got[0][1]


class PoolBatches:
    """zslp/clap's training batches: epoch ``e`` reads view ``e % pool`` of the run's own extracted views."""

    kind = "reference-pool"

    def __init__(self, data: ReferenceData, pool: int, batch_size: int):
        self.data, self.pool, self.batch_size = data, pool, batch_size

    def describe(self) -> dict:
        return {"kind": self.kind, "pool": self.pool}

    def batches(self, epoch: int, generator: torch.Generator):
        from dipclip.engine.features import epoch_index_batches

        features, labels = self.data.view(epoch % self.pool)
        for index in epoch_index_batches(len(labels), self.batch_size, generator):
            yield features[index], labels[index]


def reference_run(backbone, data_root: Path, method: str, shots: int, seed: int, cap: int | None,
                  ref_epochs: int | None, out: Path) -> tuple[float, float]:
    """(seconds, test accuracy) of one run the peers' way (epoch loop extrapolated beyond ``ref_epochs``)."""
    from dipclip.api import load_data
    from dipclip.engine.features import FeatureStore, ImageBatches
    from dipclip.engine.heads import fit_head
    from dipclip.engine.trainer import Trainer

    began = time.perf_counter()
    splits = load_data(str(data_root), "imagefolder", shots, seed, "all")
    (head_method, _, _, settings, optim_cfg, train_cfg), epochs, _ = plan(method, shots, seed, len(splits.train), cap)
    epochs = train_cfg.epochs
    if ref_epochs and head_method.trained and epochs > ref_epochs:
        train_cfg = replace(train_cfg, epochs=ref_epochs).validate()
    if settings.get("templates") is None and "templates" in head_method.defaults:
        settings["templates"] = [splits.template]
    head = head_method.build(backbone, splits.classnames, settings)
    data = ReferenceData(backbone, splits, seed, train_cfg.crop_scale)
    trainer = Trainer(head_method, head, optim_cfg, train_cfg, out, progress=False, log=lambda _: None,
                      store=FeatureStore(enabled=False))
    if method in EPOCH_ENCODERS:
        source = ImageBatches(backbone, splits.train, train_cfg.batch_size, seed, crop_scale=train_cfg.crop_scale)
    else:
        source = PoolBatches(data, int(settings.get("augment_views", 1)), train_cfg.batch_size)
    fit_head(head_method, head, data, lambda: trainer.fit(splits.train, source=source))
    features, labels = encode(backbone, splits.test)
    head.eval()
    with torch.no_grad():
        accuracy = 100.0 * float((head.logits(features).argmax(-1) == labels).float().mean())
    seconds = time.perf_counter() - began
    ran = trainer.epoch_seconds
    if ran and len(ran) < epochs:  # the epochs not run, at the mean epoch time
        seconds += (epochs - len(ran)) * sum(ran) / len(ran)
    return seconds, accuracy


def dipclip_run(backbone, data_root: Path, method: str, shots: int, seed: int, cap: int | None,
                out: Path) -> tuple[float, float]:
    """(seconds, test accuracy) of ``dipclip.api.train`` (shared feature store under DIPCLIP_CACHE_DIR)."""
    from dipclip.api import load_data, train

    n_train = len(load_data(str(data_root), "imagefolder", shots, seed, "all").train)  # not timed: plan input
    _, epochs, views = plan(method, shots, seed, n_train, cap)
    began = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        metrics = train(method, data=str(data_root), dataset="imagefolder", shots=shots, seed=seed, epochs=epochs,
                        views=views, backbone=backbone, out=out, progress=False)
    return time.perf_counter() - began, float(metrics["results"]["test"]["accuracy"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="reduced run: ViT-S-32, 10 classes, shots 1 2, seed 1, 2 test images per class, "
                             "epochs capped at 2")
    parser.add_argument("--model", default=None, help="open_clip model, random weights (default ViT-B-32; "
                                                      "--quick: ViT-S-32)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--classes", type=int, default=None, help="classes (default 100; --quick: 10)")
    parser.add_argument("--shots", type=int, nargs="+", default=None, help="shot counts (default 1 2 4 8 16)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default 1 2 3)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--test-per-class", type=int, default=None, help="test images per class (default 10)")
    parser.add_argument("--val-per-class", type=int, default=8, help="val images per class (default 8; the "
                                                                     "few-shot val split draws min(K, 4))")
    parser.add_argument("--epochs", type=int, default=None,
                        help="cap on the trained methods' recipe epochs, both sides (default: none; --quick 2)")
    parser.add_argument("--ref-epochs", type=int, default=None,
                        help="reference epochs actually run per trained run; the rest extrapolated (default all)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    args = parser.parse_args(argv)
    quick = args.quick
    model = args.model or ("ViT-S-32" if quick else "ViT-B-32")
    classes = args.classes or (10 if quick else 100)
    shots = args.shots or ([1, 2] if quick else list(SHOTS))
    seeds = args.seeds or ([1] if quick else list(SEEDS))
    test_per_class = args.test_per_class or (2 if quick else 10)
    cap = args.epochs or (2 if quick else None)
    if min(classes, test_per_class, args.val_per_class, *shots) < 1 or (cap is not None and cap < 1):
        parser.error("--classes, --shots, --test-per-class, --val-per-class and --epochs need whole numbers >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)

    work = args.keep or Path(tempfile.mkdtemp(prefix="dipclip-probes-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["DIPCLIP_CACHE_DIR"] = str(work / "cache")  # an empty, shared store for dipclip's side
    from dipclip.backbones.loading import load_backbone

    device = torch.device(args.device)
    began_all = time.perf_counter()
    log(f"machine: {machine()}; device {device}")
    log(f"model {model} (random weights); {classes} classes, shots {' '.join(map(str, shots))}, seeds "
        f"{' '.join(map(str, seeds))}, {test_per_class} test and {args.val_per_class} val images per class; "
        f"epochs {'recipe' if cap is None else f'min(recipe, {cap})'}, reference epoch loop "
        f"{'run in full' if not args.ref_epochs else f'run <= {args.ref_epochs} epochs, extrapolated'}"
        f"{'  [--quick]' if quick else ''}")
    data_root = work / "images"
    write_data(data_root, classes, max(shots), args.val_per_class, test_per_class)
    backbone = load_backbone(model, "none", device=device, announce=False)
    runs = [(m, k, s) for s in seeds for k in shots for m in args.methods]
    times: dict[str, dict[str, float]] = {side: dict.fromkeys(args.methods, 0.0) for side in ("reference", "dipclip")}
    accuracy: dict[str, dict[str, list[float]]] = {side: {m: [] for m in args.methods} for side in times}
    loads = {}
    for side in ("dipclip", "reference"):
        loads[side] = [load()]
        log(f"\n[{side}: {len(runs)} runs]  load average {loads[side][0]} (1 / 5 / 15 min)")
        side_began = time.perf_counter()
        for method, k, seed in runs:
            out = work / side / f"shots_{k}" / method / f"seed{seed}"
            if side == "dipclip":
                seconds, acc = dipclip_run(backbone, data_root, method, k, seed, cap, out)
            else:
                seconds, acc = reference_run(backbone, data_root, method, k, seed, cap, args.ref_epochs, out)
            times[side][method] += seconds
            accuracy[side][method].append(acc)
            log(f"  {side:9s} {method:14s} {k:2d} shots seed {seed}: {seconds:8.2f} s  (test {acc:.2f}%)")
        loads[side].append(load())
        log(f"  {side} wall {time.perf_counter() - side_began:.1f} s;  load average {loads[side][1]}")

    entries = sorted((work / "cache" / "features").glob("*.safetensors"))
    log(f"\ndipclip's store: {len(entries)} entries ({sum(1 for p in entries if p.name.startswith('view-'))} "
        f"training views, {sum(1 for p in entries if p.name.startswith('test-'))} test-transform splits)")
    log(f"\n[{len(runs)} runs: {len(args.methods)} methods x {len(shots)} shot counts x {len(seeds)} seeds, {model} "
        f"random, {classes} classes]\n")
    log("| method | reference (s) | dipclip (s) | reference / dipclip | mean test acc ref / dipclip |")
    log("|---|---|---|---|---|")
    for method in args.methods:
        ref, ours = times["reference"][method], times["dipclip"][method]
        ra, oa = (sum(accuracy[side][method]) / len(accuracy[side][method]) for side in ("reference", "dipclip"))
        log(f"| {method} | {ref:.1f} | {ours:.1f} | {fmt_ratio(ref, ours).strip()} | {ra:.1f} / {oa:.1f} |")
    total_ref, total_ours = sum(times["reference"].values()), sum(times["dipclip"].values())
    log(f"| **total** | {total_ref:.1f} | {total_ours:.1f} | {fmt_ratio(total_ref, total_ours).strip()} | |")
    log(f"\ntotal ratio reference / dipclip: {total_ref / total_ours:.2f}x")
    log("load averages (1 / 5 / 15 min) before -> after: "
        + "; ".join(f"{side}: {v[0]} -> {v[1]}" for side, v in loads.items()))
    wall = time.perf_counter() - began_all
    log(f"benchmark wall time {wall / 60:.1f} min")
    if args.json:
        args.json.write_text(json.dumps({
            "machine": machine(), "device": str(device), "quick": quick, "model": model, "classes": classes,
            "shots": shots, "seeds": seeds, "test_per_class": test_per_class, "val_per_class": args.val_per_class,
            "epochs_cap": cap, "ref_epochs": args.ref_epochs, "seconds": times, "accuracy": accuracy,
            "total": {"reference_s": total_ref, "dipclip_s": total_ours, "ratio": total_ref / total_ours},
            "loads": loads, "store_entries": len(entries), "wall_seconds": wall}, indent=2) + "\n")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
