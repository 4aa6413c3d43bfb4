"""What content identity costs: hashing every test image against evaluating it.

A run's data identity is the SHA-256 of every file it reads (:mod:`dipclip.data.identity`), memoised by a
git-style stat key. This benchmark writes ``--images`` JPEGs of ImageNet's typical size (500 x 375, about
110 KB) and measures, in one process on the same files:

- the data check every run already does (header decode, :func:`dipclip.data.validate.check_images`);
- hashing them cold (no memo), then again from the on-disk memo (a new process), then from the memory memo;
- decoding and transforming them on one core, the floor of any evaluation (on a GPU the image tower is
  faster than the loader, so this is what a GPU evaluation costs per image and core);
- evaluating them: decode, test transform and a random ViT-B/16 image tower (the first ``--eval-images``,
  extrapolated per image), the work the identity protects.

It prints per-image costs, the projection to ImageNet's 50,000 validation images, and the ratios. The files
are in the page cache once written, so "cold" here is hashing speed, not disk speed (a first read from a
spinning disk is bounded by the read the evaluation needs anyway).

    python benchmarks/identity.py --images 2000 --eval-images 64
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def write_images(folder: Path, count: int) -> list[str]:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, size=(375 // 5, 500 // 5, 3), dtype=np.uint8)
    paths = []
    for i in range(count):
        small = np.roll(base, i, axis=1) ^ np.uint8(i % 251)
        image = Image.fromarray(small).resize((500, 375), Image.BILINEAR)
        noise = rng.integers(0, 24, size=(375, 500, 3), dtype=np.uint8)
        image = Image.fromarray(np.asarray(image) ^ noise)
        path = folder / f"class_{i % 10}" / f"{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, "JPEG", quality=75)
        paths.append(str(path))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--eval-images", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["DIPCLIP_CACHE_DIR"] = str(Path(tmp) / "cache")
        from dipclip.data import identity
        from dipclip.data.types import Datum
        from dipclip.data.validate import _CHECKED, check_images

        root = Path(tmp) / "images"
        paths = write_images(root, args.images)
        size = sum(os.path.getsize(p) for p in paths) / len(paths)
        time.sleep(identity.RACY_SECONDS + 0.5)  # files older than the racy window are memoised
        items = [Datum(p, i % 10, f"class_{i % 10}") for i, p in enumerate(paths)]

        began = time.perf_counter()
        check_images(items, root)
        check = (time.perf_counter() - began) / len(paths)
        _CHECKED.clear()

        identity.forget_memory()
        began = time.perf_counter()
        identity.items_identity(items, root)
        cold = (time.perf_counter() - began) / len(paths)
        identity.forget_memory()
        began = time.perf_counter()
        identity.items_identity(items, root)
        disk = (time.perf_counter() - began) / len(paths)
        began = time.perf_counter()
        identity.items_identity(items, root)
        memory = (time.perf_counter() - began) / len(paths)

        import open_clip

        from dipclip.backbones.loading import load_backbone
        from dipclip.engine.features import FeatureStore

        backbone = load_backbone("ViT-B-16", "none", device="cpu")
        from dipclip.engine.features import make_views

        views = make_views(backbone, items[:200], None)
        began = time.perf_counter()
        for index in range(len(views)):
            views[index]
        decode = (time.perf_counter() - began) / len(views)
        store = FeatureStore(enabled=False)
        subset = items[: args.eval_images]
        store.test_features(backbone, subset[:8], progress=False)  # warm-up
        began = time.perf_counter()
        store.test_features(backbone, subset, progress=False)
        evaluate = (time.perf_counter() - began) / len(subset)

    n = 50_000
    print(f"{len(paths)} JPEGs of {size / 1024:.0f} KB, 500x375; torch {torch.__version__}, open_clip "
          f"{open_clip.__version__}, {args.threads} threads")
    print("| per image | ms | 50,000 images | share of evaluating them |")
    print("|---|---|---|---|")
    for name, seconds in (("data check (header decode)", check), ("hash, cold (no memo)", cold),
                          ("hash, on-disk memo (new process)", disk), ("hash, memory memo", memory),
                          ("decode + test transform, one core (a GPU run's loader floor)", decode),
                          ("evaluate (ViT-B/16, CPU)", evaluate)):
        print(f"| {name} | {seconds * 1e3:.3f} | {seconds * n:.1f} s | {seconds / evaluate:.2%} |")
    print(f"against decoding alone (evaluation on a GPU is bounded by it): cold hashing {cold / decode:.1%}, "
          f"memoised {disk / decode:.1%}")
    print(f"cold hashing is {evaluate / cold:.0f}x cheaper than evaluating; the memo is "
          f"{cold / disk:.0f}x (disk) and {cold / memory:.0f}x (memory) cheaper than hashing")


if __name__ == "__main__":
    main()
