"""Check a run's data before any compute is spent on it (before the backbone loads, before epoch 1).

A bad image or split found after 200 epochs costs the run; found here it costs seconds. What is refused
(:class:`DipclipError`, one line, naming the first problem and how many more there are):

- splits: an empty training or test split, a training split with a class that has no images or with a
  single class, a test split of a single-class dataset, labels outside the class list or whose class name
  is not the list's, an empty class name, or two that CLIP's tokenizer reads alike (``Cat`` and ``cat``);
- images (every one the run will read: its training images and the test splits it evaluates): a path
  that resolves outside the data root (``../``, absolute paths, symlinks), a missing file, anything but a
  regular file (a named pipe would block the run forever), a header that does not decode, an image above
  the pixel limit. With ``skip_bad_images`` unreadable images are counted and skipped instead (a warning);
  a path outside the data root is refused all the same.

What is allowed but worth knowing is returned as warnings (printed, and kept in ``metrics.json`` as
``data_warnings``): fewer training images in a class than ``--shots``, a single-class new half, skipped images,
test images that are also training images of the run (a published split file, which is never rewritten; the
custom readers refuse such a split).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..argcheck import classname_problem
from ..errors import DipclipError
from .images import check_image
from .types import DatasetSplits, Datum

_SHOWN = 5  # classes named in one message
# Images found good in this process, by (path, size, mtime, inode): the runs of a protocol share test splits.
_CHECKED: set[tuple[str, int, int, int]] = set()


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def _where(splits: DatasetSplits) -> str:
    return f"{splits.name} ({splits.image_root})" if splits.image_root is not None else splits.name


def check_classes(splits: DatasetSplits) -> None:
    """Class names are non-empty and unique as CLIP's tokenizer reads them (``Cat`` and ``cat`` are one text:
    the two classes would get the same text feature, and every image of one counted wrong), and every item's
    label and class name are those of the class list."""
    where = _where(splits)
    problem = classname_problem(splits.classnames)
    if problem is not None:
        raise DipclipError(f"{where} {problem}: rename the folders or fix the split file")
    n = splits.num_classes
    for split in ("train", "val", "test"):
        for item in splits.split(split):
            if isinstance(item.label, bool) or not isinstance(item.label, int) or not 0 <= item.label < n:
                raise DipclipError(f"{where}: {split} image {item.path} has label {item.label!r}, outside the "
                                   f"{n} classes 0..{n - 1}; fix the split file")
            if item.classname != splits.classnames[item.label]:
                raise DipclipError(f"{where}: {split} image {item.path} is labelled {item.label} "
                                   f"({item.classname!r}) but class {item.label} is "
                                   f"{splits.classnames[item.label]!r}; fix the split file")


def check_training_split(splits: DatasetSplits) -> None:
    """Something to learn from: at least two classes, each with at least one training image."""
    where = _where(splits)
    if not splits.train:
        raise DipclipError(f"the training split of {where} is empty; check the split file, --shots and "
                           "--subsample (`dipclip doctor` lists the problems)")
    if splits.num_classes < 2:
        raise DipclipError(f"{where} has a single class ({splits.classnames[0]!r}) to train on: a prompt learns "
                           "nothing from it; give the data at least two classes")
    present = {item.label for item in splits.train}
    missing = [name for label, name in enumerate(splits.classnames) if label not in present]
    if missing:
        raise DipclipError(f"{len(missing)} class(es) of {where} have no training images: {_names(missing)}; add "
                           "their images or split entries, or remove the classes")


def check_test_split(splits: DatasetSplits, split: str, name: str, half: bool = False) -> list[str]:
    """The split evaluated as ``name`` is not empty, and not of a single-class dataset; returns warnings
    (a single-class base/new ``half`` is allowed, with a warning)."""
    where = _where(splits)
    items = splits.split(split)
    if not items:
        raise DipclipError(f"the {split} split of {where} evaluated as {name!r} is empty, so there is no accuracy "
                           "to report; check the split file and --subsample")
    if splits.num_classes < 2:
        message = (f"{name!r} has a single class ({splits.classnames[0]!r}): every prediction is that class, so "
                   "its accuracy is 100% by construction")
        if not half:
            raise DipclipError(f"{where}: {message}; evaluate on data with at least two classes")
        return [message]
    return []


def shot_warnings(splits: DatasetSplits, shots: int | None) -> list[str]:
    """One warning listing the classes that have fewer training images than ``shots``, with their counts."""
    if shots is None:
        return []
    counts = Counter(item.label for item in splits.train)
    short = [(name, counts[label]) for label, name in enumerate(splits.classnames) if counts[label] < shots]
    if not short:
        return []
    listed = ", ".join(f"{name!r} {count}" for name, count in short[:_SHOWN])
    more = f" and {len(short) - _SHOWN} more" if len(short) > _SHOWN else ""
    return [f"--shots {shots}, but {len(short)} of {splits.num_classes} classes have fewer training images "
            f"({listed}{more}); they train on all they have"]


def overlap_warnings(splits: DatasetSplits, tests: Sequence[tuple[str, DatasetSplits, bool]]) -> list[str]:
    """One warning per evaluated test split that holds some of the run's training images (by path): their
    accuracy is not a test accuracy."""
    train = {os.path.normpath(item.path) for item in splits.train}
    warnings = []
    for name, other, _ in tests:
        shared = [item.path for item in other.test if os.path.normpath(item.path) in train]
        if shared:
            warnings.append(f"{len(shared)} of the {len(other.test)} {name!r} test images are also training images "
                            f"of this run (first: {shared[0]}), so part of that accuracy is on trained images: "
                            "list each image in one split only")
    return warnings


def _inside(path: str, root_real: str, dirs: dict[str, str]) -> str | None:
    """The resolved path when ``path`` resolves outside ``root_real``, else ``None``.

    Folders are resolved once each; a file is resolved only when it is itself a symlink."""
    folder, name = os.path.split(os.path.abspath(path))
    real_folder = dirs.get(folder)
    if real_folder is None:
        real_folder = dirs[folder] = os.path.realpath(folder)
    real = os.path.join(real_folder, name)
    if os.path.islink(real):
        real = os.path.realpath(real)
    if real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep):
        return None
    return real


def outside_root(paths: Iterable[str], root: str | Path | None) -> list[tuple[str, str]]:
    """(path, where it resolves) for every path that resolves outside ``root``; nothing without a root."""
    if root is None:
        return []
    root_real = os.path.realpath(root)
    dirs: dict[str, str] = {}
    found = []
    for path in paths:
        resolved = _inside(path, root_real, dirs)
        if resolved is not None:
            found.append((path, resolved))
    return found


def check_images(items: Sequence[Datum], root: str | Path | None, skip_bad_images: bool = False) -> list[str]:
    """Every image of ``items`` (each path once) is inside ``root``, a regular file, and its header decodes
    within the pixel limit; returns warnings (images to be skipped, with ``skip_bad_images``)."""
    unique = list({item.path: item for item in items}.values())
    escaped = outside_root((item.path for item in unique), root)
    if escaped:
        path, resolved = escaped[0]
        more = f" ({len(escaped) - 1} more do)" if len(escaped) > 1 else ""
        raise DipclipError(f"image {path} resolves to {resolved}, outside the data root {root}{more}; a split may only "
                           "list images under its data root: fix the split file (relative paths, no '..') or move "
                           "the images there")
    bad: list[str] = []
    for item in unique:
        try:
            info = os.stat(item.path)
            seen = (item.path, info.st_size, info.st_mtime_ns, info.st_ino)
        except OSError:
            seen = None
        if seen is not None and seen in _CHECKED:
            continue
        try:
            check_image(item.path)
        except DipclipError as exc:
            bad.append(str(exc))
        else:
            if seen is not None:
                _CHECKED.add(seen)
    if not bad:
        return []
    if skip_bad_images:
        return [f"{len(bad)} of {len(unique)} images cannot be read and will be skipped (first: {bad[0]})"]
    more = f" ({len(bad) - 1} more bad images: `dipclip doctor` lists them)" if len(bad) > 1 else ""
    raise DipclipError(bad[0] + more)


def check_for_training(splits: DatasetSplits, tests: Sequence[tuple[str, DatasetSplits, bool]] = (),
                       shots: int | None = None, skip_bad_images: bool = False) -> list[str]:
    """All checks of a training run: its (few-shot, subsampled) ``splits`` and each evaluated test split
    ``(name, splits, half)``; returns the warnings to print and record."""
    warnings = []
    for candidate in (splits, *(other for _, other, _ in tests)):
        check_classes(candidate)
    check_training_split(splits)
    for name, other, half in tests:
        warnings += check_test_split(other, "test", name, half)
    warnings += shot_warnings(splits, shots)
    warnings += overlap_warnings(splits, tests)
    warnings += check_images(splits.train, splits.image_root, skip_bad_images)
    for _, other, _ in tests:
        warnings += check_images(other.test, other.image_root, skip_bad_images)
    return warnings


def check_for_evaluation(splits: DatasetSplits, split: str, name: str, half: bool = False,
                         skip_bad_images: bool = False) -> list[str]:
    """All checks of an evaluation of ``splits``' ``split`` (reported as ``name``); returns warnings."""
    check_classes(splits)
    warnings = check_test_split(splits, split, name, half)
    return warnings + check_images(splits.split(split), splits.image_root, skip_bad_images)
