"""Write a ``split_zhou``-style JSON for a custom ImageFolder tree, so that a custom dataset gets a fixed
train/val/test split that every later run (and every collaborator) reads unchanged.

Per class (folder names sorted; images sorted by name): shuffle with ``random.Random(seed)`` (one RNG,
classes in sorted order), then 50% train, 20% val, the rest test, each at least one image. The JSON
holds ``[relative_path, label, classname]`` rows exactly as CoOp's split files do, with paths relative
to the tree's root, and is read by ``--dataset imagefolder``.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from ..errors import DipclipError
from ._io import relative_path, write_json_atomic
from .datasets import CUSTOM_SPLIT_FILE, _subdirs, display_name, list_images

TRAIN_FRACTION = 0.5
VAL_FRACTION = 0.2


def split_counts(n: int) -> tuple[int, int, int]:
    """(train, val, test) sizes for a class of ``n >= 3`` images: 50/20/30, each at least 1."""
    n_val = max(1, round(n * VAL_FRACTION))
    n_train = max(1, round(n * TRAIN_FRACTION))
    n_test = n - n_train - n_val
    if n_test < 1:
        n_train -= 1 - n_test
        n_test = 1
    return n_train, n_val, n_test


def build_split(root: str | Path, seed: int = 1) -> dict[str, list[list]]:
    """The split of the ImageFolder tree ``root`` (``root/<class>/<image>``) as a JSON-ready dict."""
    root = Path(os.path.abspath(os.path.expanduser(str(root))))
    if not root.is_dir():
        raise DipclipError(f"--data {root} is not a folder; expected ROOT/<class>/<image>")
    classes = [c for c in _subdirs(root) if c not in ("train", "val", "test")]
    if not classes:
        raise DipclipError(f"{root} has no class folders; expected ROOT/<class>/<image> (one folder per class)")
    if len(classes) != len(_subdirs(root)):
        raise DipclipError(f"{root} already has train/val/test folders; it is split already (read it with "
                           "--dataset imagefolder)")
    rng = random.Random(seed)
    split: dict[str, list[list]] = {"train": [], "val": [], "test": []}
    too_small = []
    for label, folder in enumerate(classes):
        images = list_images(root / folder)
        if len(images) < 3:
            too_small.append(f"{folder} ({len(images)})")
            continue
        rng.shuffle(images)
        n_train, n_val, _ = split_counts(len(images))
        name = display_name(folder)
        for i, path in enumerate(images):
            which = "train" if i < n_train else "val" if i < n_train + n_val else "test"
            split[which].append([relative_path(path, root), label, name])
    if too_small:
        raise DipclipError(f"class folders need at least 3 images (one per split); too few in: "
                           f"{', '.join(too_small[:10])}")
    return split


def make_split(root: str | Path, out: str | Path | None = None, seed: int = 1, force: bool = False) -> Path:
    """Write the split of ``root`` to ``out`` (default ``root/split_dipclip.json``) atomically.

    An existing split is the source of truth for earlier results, so it is only replaced with ``force``.
    """
    target = Path(out) if out is not None else Path(root) / CUSTOM_SPLIT_FILE
    if target.exists() and not force:
        raise DipclipError(f"{target} already exists; it defines the split of earlier runs. Pass --force to "
                           "overwrite it or --out to write elsewhere")
    return write_json_atomic(target, build_split(root, seed))
