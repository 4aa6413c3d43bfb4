"""``dipclip doctor``: check data folders before a long run does, and say how to fix each problem.

For each dataset folder under ``--data`` (or the one ``--dataset`` names) it checks: split files present
and well-formed, labels consistent with class names, every class present, class counts and split sizes
against the published values, every referenced image present and decodable (``fast`` decodes a fixed
sample of up to 200 images per split; full mode decodes all), and that existing Dassl few-shot caches
are safe to read and belong to this split.
"""

from __future__ import annotations

import os
import random
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DipclipError
from .datasets import Problem, dataset_folder, read_classnames_txt, read_dataset
from .images import load_rgb
from .registry import CUSTOM, DATASETS, STANDARD_KEYS, dataset_info
from .sampling import read_dassl_cache
from .types import DatasetSplits
from .validate import outside_root

FAST_SAMPLE = 200
_MAX_LISTED = 10  # individual files listed per (split, kind) before one summary problem

__all__ = ["DoctorReport", "Problem", "doctor", "run_doctor"]


@dataclass
class DoctorReport:
    """Every problem found, and what was checked (dataset key -> split sizes and images decoded)."""

    problems: list[Problem] = field(default_factory=list)
    checked: dict[str, dict[str, int]] = field(default_factory=dict)


def doctor(root: str | Path, key: str | None = None, fast: bool = True) -> list[Problem]:
    """Every problem with the dataset folders under ``root`` (or with dataset ``key`` only)."""
    return run_doctor(root, key, fast).problems


def run_doctor(root: str | Path, key: str | None = None, fast: bool = True) -> DoctorReport:
    """:func:`doctor` plus a summary of what was checked, for the CLI."""
    base = Path(os.path.abspath(os.path.expanduser(str(root))))
    if not base.exists():
        raise DipclipError(f"--data {root} does not exist; point it at the folder that holds the dataset folders")
    report = DoctorReport()
    if key is not None:
        dataset_info(key)  # unknown key -> DipclipError listing the known ones
        keys = [key]
    else:
        keys = [k for k in STANDARD_KEYS if (base / DATASETS[k].folder).is_dir() or base.name == DATASETS[k].folder]
        if not keys:
            folders = ", ".join(f"{DATASETS[k].folder}/" for k in STANDARD_KEYS)
            report.problems.append(Problem(
                "data", f"no dataset folder found under {base}",
                f"--data must hold one or more of: {folders} (or pass --dataset imagefolder/csv for custom data)"))
            return report
    for k in keys:
        _check_dataset(base, k, fast, report)
    return report


def _check_dataset(base: Path, key: str, fast: bool, report: DoctorReport) -> None:
    info = dataset_info(key)
    try:
        splits, problems = read_dataset(base, key)
    except DipclipError as exc:
        report.problems.append(Problem(key, str(exc), f"expected {info.expected_layout}"))
        return
    report.problems.extend(problems)
    if key not in CUSTOM and info.layout in ("imagenet", "imagenetv2", "wnid"):
        _check_classnames_txt(dataset_folder(base, key) / "classnames.txt", key, report)
    if splits is None:
        return
    summary = {s: len(splits.split(s)) for s in ("train", "val", "test")}
    _check_counts(splits, key, report)
    _check_labels(splits, key, report)
    summary["decoded"] = _check_images(splits, key, fast, report, check_exists=info.layout in
                                       ("json", "aircraft", "csv", "imagefolder"))
    if key not in CUSTOM:
        _check_fewshot_caches(dataset_folder(base, key), splits, key, report)
    report.checked[key] = summary


def _check_classnames_txt(path: Path, key: str, report: DoctorReport) -> None:
    problems: list[Problem] = []
    names = read_classnames_txt(path, key, problems)
    if problems or not names:
        return  # the reader has reported it already
    if len(names) != 1000:
        report.problems.append(Problem(key, f"{path} has {len(names)} classes, not ImageNet's 1000",
                                       "restore the 1000-line classnames.txt from CoOp's DATASETS.md", str(path)))
    wnids = list(names)
    if wnids != sorted(wnids):
        report.problems.append(Problem(
            key, f"{path} is not in wnid order, so labels differ from those of the CoOp code (sorted folders)",
            "restore the original classnames.txt (sorted by wnid)", str(path)))


def _check_counts(splits: DatasetSplits, key: str, report: DoctorReport) -> None:
    info = dataset_info(key)
    if info.num_classes is not None and splits.num_classes != info.num_classes:
        what = "class folders" if info.present_only else "classes"
        report.problems.append(Problem(
            key, f"found {splits.num_classes} {what}, but {info.title} has {info.num_classes}",
            "restore the original split file / class folders (the class list comes from them)"))
    if info.split_sizes is None:
        return
    found = tuple(len(splits.split(s)) for s in ("train", "val", "test"))
    if any(e is not None and e != f for e, f in zip(info.split_sizes, found, strict=True)):
        def fmt(sizes):
            return "/".join("-" if n is None else str(n) for n in sizes)

        report.problems.append(Problem(
            key, f"split sizes (train/val/test) are {fmt(found)}, the published {info.title} split has "
            f"{fmt(info.split_sizes)}",
            "restore the original split files and images so that results compare with published tables"))


def _check_labels(splits: DatasetSplits, key: str, report: DoctorReport) -> None:
    n = splits.num_classes
    doubled = [name for name, count in Counter(splits.classnames).items() if count > 1]
    if doubled:
        report.problems.append(Problem(key, f"class names {', '.join(map(repr, doubled[:5]))} are given to several "
                                       "labels; the text encoder cannot tell such classes apart",
                                       "give every class its own name (rename folders or fix the split file)"))
    if n == 1:
        report.problems.append(Problem(key, f"only one class ({splits.classnames[0]!r}): nothing to learn or test",
                                       "add at least one more class"))
    for split in ("train", "val", "test"):
        items = splits.split(split)
        wrong = [d for d in items if not 0 <= d.label < n or d.classname != splits.classnames[d.label]]
        for d in wrong[:_MAX_LISTED]:
            expected = splits.classnames[d.label] if 0 <= d.label < n else f"a label in 0..{n - 1}"
            report.problems.append(Problem(key, f"{split}: {d.path} has label {d.label} named {d.classname!r}, "
                                           f"expected {expected!r}", "fix the split file", d.path))
        if len(wrong) > _MAX_LISTED:
            report.problems.append(Problem(key, f"{split}: {len(wrong) - _MAX_LISTED} more items whose class "
                                           "name does not match their label", "fix the split file"))
    info = dataset_info(key)
    needed = ("test",) if info.test_only else ("train", "test")
    for split in needed:
        present = {d.label for d in splits.split(split)}
        missing = [splits.classnames[i] for i in range(n) if i not in present]
        if missing:
            shown = ", ".join(repr(m) for m in missing[:5]) + (" ..." if len(missing) > 5 else "")
            report.problems.append(Problem(key, f"{len(missing)} class(es) have no {split} images: {shown}",
                                           "restore their images (or folders) and split entries"))


def _check_images(splits: DatasetSplits, key: str, fast: bool, report: DoctorReport, check_exists: bool) -> int:
    seen: set[str] = set()
    decoded = 0
    for split in ("train", "val", "test"):
        paths = [d.path for d in splits.split(split) if d.path not in seen]
        seen.update(paths)
        escaped = outside_root(paths, splits.image_root)
        for p, resolved in escaped[:_MAX_LISTED]:
            report.problems.append(Problem(key, f"{split}: image {p} resolves to {resolved}, outside the data root "
                                           f"{splits.image_root}", "a split may only list images under its data "
                                           "root: copy the file there instead of linking it, or fix the split file", p))
        if len(escaped) > _MAX_LISTED:
            report.problems.append(Problem(key, f"{split}: {len(escaped) - _MAX_LISTED} more images resolve outside "
                                           "the data root", "fix the split file or the symlinks"))
        if escaped:
            outside = {p for p, _ in escaped}
            paths = [p for p in paths if p not in outside]
        missing: list[str] = []
        present = paths
        if check_exists:
            missing, irregular = [], []
            for p in paths:
                try:
                    mode = os.stat(p).st_mode
                except OSError:
                    missing.append(p)
                    continue
                if not stat.S_ISREG(mode):
                    irregular.append(p)
            if irregular:  # a named pipe, device or socket is never opened (it could block forever)
                _report_files(report, key, split, irregular, "image path {} is not a regular file",
                              "replace it with the image file; the split file references it")
            if missing or irregular:
                gone = set(missing) | set(irregular)
                present = [p for p in paths if p not in gone]
        if fast and len(present) > FAST_SAMPLE:
            present = random.Random(0).sample(present, FAST_SAMPLE)
        bad: list[tuple[str, str]] = []
        for p in present:
            try:
                load_rgb(p)
            except DipclipError as exc:
                bad.append((p, str(exc)))
            decoded += 1
        _report_files(report, key, split, missing, "image missing: {}",
                      "restore the file (re-extract the dataset); the split file references it")
        for p, message in bad[:_MAX_LISTED]:
            report.problems.append(Problem(key, f"{split}: {message}",
                                           "replace the file with a good copy (training can skip it with "
                                           "--skip-bad-images)", p))
        if len(bad) > _MAX_LISTED:
            report.problems.append(Problem(key, f"{split}: {len(bad) - _MAX_LISTED} more undecodable images",
                                           "re-extract the dataset; run `dipclip doctor --full` to list all"))
    return decoded


def _report_files(report: DoctorReport, key: str, split: str, paths: list[str], message: str, fix: str) -> None:
    for p in paths[:_MAX_LISTED]:
        report.problems.append(Problem(key, f"{split}: " + message.format(p), fix, p))
    if len(paths) > _MAX_LISTED:
        report.problems.append(Problem(key, f"{split}: {len(paths) - _MAX_LISTED} more: " + message.format("..."),
                                       fix))


def _check_fewshot_caches(folder: Path, splits: DatasetSplits, key: str, report: DoctorReport) -> None:
    cache_dir = folder / "split_fewshot"
    if not cache_dir.is_dir():
        return
    for pkl in sorted(cache_dir.glob("shot_*-seed_*.pkl")):
        try:
            read_dassl_cache(pkl, splits)
        except DipclipError as exc:
            report.problems.append(Problem(key, str(exc), f"delete {pkl}; dipclip then resamples the same "
                                           "subset from the split file", str(pkl)))
