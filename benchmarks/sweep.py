"""Measured base-to-new sweep: dipclip (``--jobs 1`` and ``--jobs 2``) against the peers' loop, same 12 runs.

4 text-side methods (CoOp, DIP, KgCoOp, ProGrad) x 3 seeds, protocol-exact fresh views (``--views fresh``),
one random open_clip model (``--model``, default ``ViT-S-32``: width 384, 12 + 12 layers, patch 32; ``--pretrained none``) and the synthetic data
of ``benchmarks/speed.py`` (100 Caltech-101 class names, 50 base + 50 new, JPEGs written here as an
``imagefolder`` tree; ``--shots`` training images per class, all of them the run's few-shot set). Three paths,
timed wall-clock one after the other in this one invocation:

(a) ``dipclip base2new ... --jobs 1`` into its own fresh ``--out`` and its own empty ``DIPCLIP_CACHE_DIR``;
(b) the same with ``--jobs 2`` (another fresh ``--out`` and empty cache: nothing of (a) is reused);
(c) the reference loop of ``benchmarks/speed.py`` (imported, not copied): image tower at every step, every
    class prompt at 77 tokens with gradients, prompts re-encoded for every test batch of 100; each run trains
    ``--epochs`` epochs on the base half and evaluates base and new, in this process.

The reference trains every method with CoOp's cross-entropy on the method's prompt (the same tower work;
KgCoOp's extra term and ProGrad's second backward pass are left out, which favours the reference). Both sides
use ``--batch-size`` (default 32). Prints the machine load (``os.getloadavg()``) before and after each path,
a Markdown table of the wall-clock times with the ratios reference / dipclip, and whether ``--jobs 1`` and
``--jobs 2`` gave identical ``results`` in every run's ``metrics.json``.

    python benchmarks/sweep.py                                        # defaults: ViT-S-32, 1 epoch, 4 shots
    python benchmarks/sweep.py --model ViT-B-32 --epochs 2 --shots 16   # much longer

The defaults (``--model ViT-S-32 --epochs 1 --shots 4 --test-per-class 1``) finish in about 10 minutes on 2
idle CPU cores (9.4 min measured; 16.5 min while a test suite ran), the reference taking most of it. Not a test: timings depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import (  # noqa: E402  (benchmarks/ is not a package)
    fmt_ratio,
    log,
    machine,
    make_dataset,
    reference_evaluate,
    reference_train_steps,
)

METHODS = ("coop", "dip", "kgcoop", "prograd")
SEEDS = (1, 2, 3)


def load() -> str:
    return "load average " + " / ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1 / 5 / 15 min)"


def run_dipclip(args, data: Path, out: Path, cache: Path, jobs: int) -> float:
    """Wall-clock seconds of one ``dipclip base2new`` command (a subprocess, as a user runs it)."""
    command = [sys.executable, "-m", "dipclip", "base2new", "--model", args.model, "--pretrained", "none",
               "--device", "cpu", "--data", str(data), "--datasets", "imagefolder",
               "--methods", *METHODS, "--seeds", *map(str, SEEDS), "--shots", str(args.shots),
               "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--views", "fresh",
               "--jobs", str(jobs), "--out", str(out), "--quiet"]
    env = dict(os.environ, DIPCLIP_CACHE_DIR=str(cache))
    log(f"$ DIPCLIP_CACHE_DIR={cache} {' '.join(command[1:])}")
    began = time.perf_counter()
    done = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        log(done.stdout[-3000:])
        raise SystemExit(f"dipclip --jobs {jobs} exited with {done.returncode}")
    return seconds


def run_results(out: Path) -> dict[str, object]:
    """``results`` of every run's metrics.json, by run folder (relative to the protocol folder)."""
    root = out / "base2new"
    return {str(path.parent.relative_to(root)): json.loads(path.read_text())["results"]
            for path in sorted(root.glob("*/shots_*/*/seed*/metrics.json"))}


def run_reference(args, data: Path) -> tuple[float, dict[str, tuple[float, float]]]:
    """Wall-clock seconds of the 12 reference runs (model loading included) and their base/new accuracies."""
    from dipclip.backbones.loading import load_backbone
    from dipclip.data.datasets import load_dataset
    from dipclip.data.sampling import subsample_classes
    from dipclip.methods import get_method

    began = time.perf_counter()
    splits = load_dataset(data, "imagefolder")  # the class order dipclip reads: base = the first 50 folders
    base, new = subsample_classes(splits, "base"), subsample_classes(splits, "new")
    backbone = load_backbone(args.model, "none", device=torch.device("cpu"))
    accuracies = {}
    for seed in SEEDS:
        for name in METHODS:
            method = get_method(name)
            torch.manual_seed(seed)
            model = method.build(backbone, list(base.classnames), method.prompt_config())
            run_began = time.perf_counter()
            reference_train_steps(model, base.train, args.batch_size, 10**9, seed, epochs=args.epochs)
            _, base_acc, _ = reference_evaluate(model, base.test)
            new_model = method.build(backbone, list(new.classnames), method.prompt_config())
            with torch.no_grad():  # the learned (class-shared) context, on the new class names
                for target, learned in zip(new_model.trainable_parameters(), model.trainable_parameters(),
                                           strict=True):
                    target.copy_(learned)
            _, new_acc, _ = reference_evaluate(new_model, new.test)
            accuracies[f"{name}/seed{seed}"] = (base_acc, new_acc)
            log(f"  reference {name:8s} seed {seed}: {time.perf_counter() - run_began:7.1f} s "
                f"(base {base_acc:.2f}%, new {new_acc:.2f}%)")
    return time.perf_counter() - began, accuracies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-S-32", help="open_clip model, random weights (default ViT-S-32)")
    parser.add_argument("--epochs", type=int, default=1, help="training epochs of every run (default 1)")
    parser.add_argument("--shots", type=int, default=4,
                        help="training images per class, all of them the few-shot set (default 4)")
    parser.add_argument("--test-per-class", type=int, default=1, help="test images per class (default 1)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    args = parser.parse_args(argv)
    if min(args.epochs, args.shots, args.test_per_class, args.batch_size) < 1:
        parser.error("--epochs, --shots, --test-per-class and --batch-size need whole numbers >= 1")

    work = args.keep or Path(tempfile.mkdtemp(prefix="dipclip-sweep-"))
    work.mkdir(parents=True, exist_ok=True)
    began_all = time.perf_counter()
    log(f"machine: {machine()}")
    log(f"model {args.model} (random weights); {len(METHODS)} methods x {len(SEEDS)} seeds; {args.epochs} "
        f"epoch(s), {args.shots} shots, {args.test_per_class} test images per class, batch {args.batch_size}, "
        "--views fresh")
    data = work / "images"
    make_dataset(data, 100, args.shots, args.test_per_class, (320, 240), seed=1)
    log(f"data: {data} (100 classes, 50 base + 50 new)")

    seconds, loads = {}, {}
    for jobs in (1, 2):
        key = f"jobs{jobs}"
        loads[key] = [load()]
        log(f"\n[(dipclip --jobs {jobs})]  {loads[key][0]}")
        seconds[key] = run_dipclip(args, data, work / f"runs-{key}", work / f"cache-{key}", jobs)
        loads[key].append(load())
        log(f"  {seconds[key]:.1f} s;  {loads[key][1]}")
    loads["reference"] = [load()]
    log(f"\n[reference loop, this process, {torch.get_num_threads()} threads]  {loads['reference'][0]}")
    seconds["reference"], ref_accuracies = run_reference(args, data)
    loads["reference"].append(load())
    log(f"  {seconds['reference']:.1f} s;  {loads['reference'][1]}")

    one, two = run_results(work / "runs-jobs1"), run_results(work / "runs-jobs2")
    runs = len(METHODS) * len(SEEDS)
    same = sorted(one) == sorted(two) and len(one) == runs and all(one[k] == two[k] for k in one)
    log(f"\n[--jobs 1 vs --jobs 2: {len(one)} and {len(two)} runs]")
    for folder in sorted(one):
        a, b = one[folder], two.get(folder)
        log(f"  {folder:40s} {'identical' if a == b else 'DIFFERENT'}  {json.dumps(a, sort_keys=True)[:110]}")
    log(f"  results of every run identical: {'yes' if same else 'NO'}")

    ref = seconds["reference"]
    log(f"\n[sweep: {len(METHODS)} methods x {len(SEEDS)} seeds, {args.model} random, {args.epochs} epoch(s), "
        f"{args.shots} shots, {args.test_per_class} test/class, --views fresh]\n")
    log("| path | wall-clock | reference / path |")
    log("|---|---|---|")
    log(f"| reference loop (peers' way) | {ref / 60:.1f} min | 1.00x |")
    for jobs in (1, 2):
        ours = seconds[f"jobs{jobs}"]
        log(f"| dipclip `--jobs {jobs}` | {ours / 60:.1f} min | {fmt_ratio(ref, ours).strip()} |")
    log("\nload averages (1 / 5 / 15 min) before -> after each path: "
        + "; ".join(f"{k}: {v[0][13:].split(' (')[0]} -> {v[1][13:].split(' (')[0]}" for k, v in loads.items()))
    log(f"benchmark wall time {(time.perf_counter() - began_all) / 60:.1f} min")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
