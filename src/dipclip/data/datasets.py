"""Readers for the CoOp-format dataset folders and for custom data.

``load_dataset(root, key)`` returns a :class:`DatasetSplits` whose items carry absolute paths and whose
class list comes from the split files (``split_zhou_*.json``, ``variants.txt`` or ``classnames.txt``),
never from the training items. Every reader records what is wrong with a folder as :class:`Problem`\\ s;
``load_dataset`` raises the first as a :class:`DipclipError`, and ``dipclip doctor`` prints them all.

Custom data (``--data`` points at the data itself):

* ``imagefolder``: ``ROOT/split_dipclip.json`` if present (written by ``dipclip data make-split``);
  else ``ROOT/train/<class>/*`` with ``ROOT/test/<class>/*`` and optionally ``ROOT/val/<class>/*``
  (without ``test/``, ``val/`` is the test set; without ``val/``, val is empty). A single
  ``ROOT/<class>/*`` tree has no split and is refused, with a pointer to ``dipclip data make-split``:
  used as train and test at once it would report accuracy on the training images. Classes are the
  folder names sorted, with ``_`` shown as a space.
* ``csv``: a CSV file ``path,label[,classname],split`` (with a header row naming the columns; ``split``
  is one of train/val/test, on every row: rows without one are refused, for the same reason), or a folder
  holding ``train.csv``, ``test.csv`` and optionally ``val.csv`` (a header row is optional there). Labels
  are either all whole numbers from 0 in the digits 0-9, with class names from the ``classname`` column or
  from a ``classnames.txt`` (one name per line, in label order) next to the CSV; or all class names, matched
  exactly after stripping spaces, whose class list is that ``classnames.txt`` (every name must be in it) or
  else the sorted unique names of all the dataset's CSV rows (train, val and test together, so a class has
  one index in every split). A label of digits alone is a number, so a dataset mixing digit and name labels
  is refused, and so is a label that only looks like a number (``３``, ``٣``, ``3.0``, ``+3``: not guessed
  at). Paths are relative to the CSV's folder (or absolute) and must lie under it.

A custom split (``split_dipclip.json`` or a CSV) whose test images are also its training images is
refused like a tree without a split.

Every listed path must lie under its data root (the image folder, or the CSV's folder): an absolute
path elsewhere or one climbing out with ``..`` is a problem (symlinks are resolved for the images a run
reads, by :mod:`dipclip.data.validate`).
"""

from __future__ import annotations

import csv
import difflib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import DipclipError
from .registry import CUSTOM, DATASET_KEYS, DatasetInfo, dataset_info
from .types import DatasetSplits, Datum

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)
SPLITS = ("train", "val", "test")
CUSTOM_SPLIT_FILE = "split_dipclip.json"
_MAX_ENTRY_PROBLEMS = 5  # malformed JSON entries reported individually before a summary line
# A label written as text is a whole number in ASCII digits: str.isdigit() also takes '٣', '１' and '³' (and int()
# reads the first two as 3 and 1, and fails on the third), so a label that only looks like a number is refused.
_LABEL_TEXT = re.compile(r"[0-9]+")
# Any other label is a class name, unless it looks like a number in some other way (Unicode digits, a sign, a
# decimal point or an exponent): that is refused rather than read as the number or taken for a class name.
_NUMBER_LIKE = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")

__all__ = [
    "CUSTOM_SPLIT_FILE",
    "DATASET_KEYS",
    "IMAGE_EXTENSIONS",
    "Problem",
    "dataset_folder",
    "load_dataset",
    "parse_split_json",
    "read_classnames_txt",
    "read_dataset",
]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a data folder: what is wrong, and what to do about it."""

    dataset: str
    message: str
    fix: str
    path: str | None = None

    def __str__(self) -> str:
        return f"[{self.dataset}] {self.message}\n    fix: {self.fix}"


def load_dataset(root: str | Path, key: str) -> DatasetSplits:
    """Read dataset ``key`` under ``root`` (the ``--data`` folder) as its split files define it.

    Raises :class:`DipclipError` for an unknown key (listing the known ones), a missing folder or file
    (naming it and the expected layout) or a malformed split file.
    """
    splits, problems = read_dataset(root, key)
    if problems:
        first = problems[0]
        more = ""
        if len(problems) > 1:
            more = f" ({len(problems) - 1} more problem(s): run `dipclip doctor --data {root} --dataset {key}`)"
        raise DipclipError(f"{first.message}; {first.fix}{more}")
    assert splits is not None
    return splits


def read_dataset(root: str | Path, key: str) -> tuple[DatasetSplits | None, list[Problem]]:
    """Like :func:`load_dataset` but returns every problem found instead of raising on the first.

    The splits are ``None`` when a problem prevents reading them. Unknown keys and a missing ``--data``
    still raise, since there is nothing to check.
    """
    info = dataset_info(key)
    problems: list[Problem] = []
    if key in CUSTOM:
        path = Path(os.path.abspath(os.path.expanduser(str(root))))
        if not path.exists():
            raise DipclipError(f"--data {root} does not exist; expected {info.expected_layout}")
        reader = _read_imagefolder if key == "imagefolder" else _read_csv
        splits = reader(info, path, problems)
    else:
        folder = dataset_folder(root, key)
        splits = _READERS[info.layout](info, folder, problems)
    if problems:
        return None, problems
    return splits, problems


def dataset_folder(root: str | Path, key: str) -> Path:
    """The folder of ``key`` under ``root``; ``root`` may also be that folder itself."""
    info = dataset_info(key)
    base = Path(os.path.abspath(os.path.expanduser(str(root))))
    if key in CUSTOM:
        return base
    if not base.is_dir():
        raise DipclipError(
            f"--data {root} is not a folder; point --data at the folder that holds {info.folder}/ "
            f"(expected {info.expected_layout})"
        )
    candidate = base / info.folder
    if candidate.is_dir():
        return candidate
    if base.name == info.folder:
        return base
    raise DipclipError(
        f"{key}: folder {candidate} not found under --data; expected {info.expected_layout} (see the data "
        "preparation table in the README, or run `dipclip doctor --data ROOT`)"
    )


# ----------------------------------------------------------------------------------------------------
# split_zhou JSON


def parse_split_json(
    obj: object, image_root: Path, dataset: str, source: str, problems: list[Problem]
) -> tuple[list[str], dict[str, list[Datum]]]:
    """Turn a ``{"train": [[rel_path, label, classname], ...], "val": ..., "test": ...}`` object into items.

    Class names come from all three splits: each label must have one name and labels must run from 0
    without gaps. Structural problems are appended to ``problems``.
    """
    fix = f"restore {source} from the CoOp DATASETS.md download (never regenerate an existing split)"
    out: dict[str, list[Datum]] = {s: [] for s in SPLITS}
    if not isinstance(obj, dict):
        problems.append(Problem(dataset, f"{source} must hold an object with train, val and test lists", fix,
                                source))
        return [], out
    names: dict[int, str] = {}
    bad_entries = escaped = 0
    for split in SPLITS:
        entries = obj.get(split)
        if entries is None:
            problems.append(Problem(dataset, f"{source} has no {split!r} list", fix, source))
            continue
        if not isinstance(entries, list):
            problems.append(Problem(dataset, f"{source}: {split!r} is not a list", fix, source))
            continue
        for i, entry in enumerate(entries):
            parsed = _parse_entry(entry)
            if parsed is None:
                bad_entries += 1
                if bad_entries <= _MAX_ENTRY_PROBLEMS:
                    problems.append(Problem(
                        dataset, f"{source}: {split}[{i}] = {json.dumps(entry)[:80]} is not "
                        "[relative_path, label, classname]", fix, source))
                continue
            rel, label, classname = parsed
            if leaves_root(image_root, rel):
                escaped += 1
                if escaped <= _MAX_ENTRY_PROBLEMS:
                    problems.append(Problem(
                        dataset, f"{source}: {split}[{i}] path {rel!r} leaves the image folder {image_root}",
                        "split files list paths relative to the image folder, without '..'; " + fix, source))
                continue
            known = names.setdefault(label, classname)
            if known != classname:
                problems.append(Problem(
                    dataset, f"{source}: label {label} is named both {known!r} and {classname!r}", fix, source))
                names[label] = classname  # report each further conflict once per new name
            out[split].append(Datum(os.path.join(image_root, rel), label, classname))
    if bad_entries > _MAX_ENTRY_PROBLEMS:
        problems.append(Problem(dataset, f"{source}: {bad_entries - _MAX_ENTRY_PROBLEMS} more malformed "
                                "entries", fix, source))
    if escaped > _MAX_ENTRY_PROBLEMS:
        problems.append(Problem(dataset, f"{source}: {escaped - _MAX_ENTRY_PROBLEMS} more paths leave the image "
                                "folder", fix, source))
    classnames = _dense_classnames(names, dataset, source, fix, problems)
    return classnames, out


def leaves_root(root: str | Path, path: str) -> bool:
    """Whether ``path`` (relative to ``root``, or absolute) lies outside ``root`` by its name alone: an
    absolute path elsewhere, or one that climbs out with ``..``. Symlinks are resolved later, by
    :mod:`dipclip.data.validate`, for the images a run reads."""
    base = os.path.normpath(os.path.abspath(root))
    joined = os.path.normpath(os.path.join(base, path))
    return joined != base and not joined.startswith(base.rstrip(os.sep) + os.sep)


def _parse_entry(entry: object) -> tuple[str, int, str] | None:
    if not isinstance(entry, list | tuple) or len(entry) != 3:
        return None
    rel, label, classname = entry
    if isinstance(label, str) and _LABEL_TEXT.fullmatch(label.strip()):
        label = int(label)  # Dassl reads labels with int(); accept "3" as it does (but only ASCII digits)
    if not isinstance(rel, str) or not rel or not isinstance(classname, str) or isinstance(label, bool):
        return None
    if not isinstance(label, int) or label < 0:
        return None
    return rel, label, classname


def _dense_classnames(names: dict[int, str], dataset: str, source: str, fix: str,
                      problems: list[Problem]) -> list[str]:
    if not names:
        problems.append(Problem(dataset, f"{source} lists no images", fix, source))
        return []
    n = max(names) + 1
    if n > len(names):  # gaps; counted, not listed, so that a label of 10**12 costs nothing
        first = [label for label in range(min(n, len(names) + 10)) if label not in names][:10]
        shown = ", ".join(map(str, first)) + (" ..." if n - len(names) > len(first) else "")
        problems.append(Problem(dataset, f"{source}: labels must run from 0 to {n - 1} but {n - len(names)} "
                                f"are never used ({shown})", fix, source))
        return []
    return [names[label] for label in range(n)]


def _load_json(path: Path, dataset: str, fix: str, problems: list[Problem]) -> object | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        problems.append(Problem(dataset, f"{path} is not valid JSON ({exc})", fix, str(path)))
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(Problem(dataset, f"cannot read {path} ({exc})", fix, str(path)))
    except RecursionError:
        problems.append(Problem(dataset, f"{path} is nested too deeply to be a split file", fix, str(path)))
    return None


def _image_root(info: DatasetInfo, folder: Path, problems: list[Problem]) -> Path | None:
    root = folder / info.image_dir if info.image_dir else folder
    if not root.is_dir():
        problems.append(Problem(info.key, f"image folder {root} not found",
                                f"expected {info.expected_layout}; extract the images there", str(root)))
        return None
    return root


def _read_json_layout(info: DatasetInfo, folder: Path, problems: list[Problem]) -> DatasetSplits | None:
    assert info.split_file is not None
    split_path = folder / info.split_file
    fix = f"(re-)download {info.split_file} (links in CoOp's DATASETS.md) into {folder}"
    if not split_path.is_file():
        problems.append(Problem(info.key, f"split file {split_path} not found",
                                f"{fix}; expected {info.expected_layout}", str(split_path)))
        return None
    image_root = _image_root(info, folder, problems)
    obj = _load_json(split_path, info.key, fix, problems)
    if obj is None or image_root is None:
        return None
    classnames, items = parse_split_json(obj, image_root, info.key, str(split_path), problems)
    return DatasetSplits(info.key, classnames, items["train"], items["val"], items["test"],
                         image_root=image_root, template=info.template)


# ----------------------------------------------------------------------------------------------------
# FGVC Aircraft text files


def _read_lines(path: Path, dataset: str, fix: str, problems: list[Problem]) -> list[str] | None:
    if not path.is_file():
        problems.append(Problem(dataset, f"{path} not found", fix, str(path)))
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(Problem(dataset, f"cannot read {path} ({exc})", fix, str(path)))
        return None


def _read_aircraft(info: DatasetInfo, folder: Path, problems: list[Problem]) -> DatasetSplits | None:
    fix = f"restore the FGVC-Aircraft data/ text files into {folder}; expected {info.expected_layout}"
    variants = _read_lines(folder / "variants.txt", info.key, fix, problems)
    image_root = _image_root(info, folder, problems)
    if variants is None:
        return None
    if len(set(variants)) != len(variants):
        problems.append(Problem(info.key, f"{folder / 'variants.txt'} lists a variant twice", fix))
    cname2lab = {c: i for i, c in enumerate(variants)}
    items: dict[str, list[Datum]] = {}
    for split in SPLITS:
        path = folder / f"images_variant_{split}.txt"
        lines = _read_lines(path, info.key, fix, problems)
        items[split] = []
        for n, line in enumerate(lines or [], start=1):
            image_id, _, variant = line.partition(" ")
            if not variant:
                problems.append(Problem(info.key, f"{path}:{n}: expected '<image id> <variant>'", fix, str(path)))
                continue
            if variant not in cname2lab:
                problems.append(Problem(info.key, f"{path}:{n}: variant {variant!r} is not in variants.txt",
                                        fix, str(path)))
                continue
            if leaves_root(image_root or folder, image_id + ".jpg"):
                problems.append(Problem(info.key, f"{path}:{n}: image id {image_id!r} leaves the image folder",
                                        fix, str(path)))
                continue
            label = cname2lab[variant]
            items[split].append(Datum(os.path.join(image_root or folder, image_id + ".jpg"), label, variant))
    if image_root is None:
        return None
    return DatasetSplits(info.key, list(variants), items["train"], items["val"], items["test"],
                         image_root=image_root, template=info.template)


# ----------------------------------------------------------------------------------------------------
# ImageNet and its variants


def read_classnames_txt(path: Path, dataset: str, problems: list[Problem]) -> dict[str, str]:
    """``<wnid> <class name with spaces>`` lines as an ordered ``{wnid: name}`` (CoOp's classnames.txt)."""
    fix = f"restore {path.name} from CoOp's DATASETS.md (one '<wnid> <class name>' line per class)"
    lines = _read_lines(path, dataset, fix, problems)
    out: dict[str, str] = {}
    for n, line in enumerate(lines or [], start=1):
        wnid, _, name = line.partition(" ")
        name = name.strip()
        if not name:
            problems.append(Problem(dataset, f"{path}:{n}: expected '<wnid> <class name>'", fix, str(path)))
            continue
        if wnid in out:
            problems.append(Problem(dataset, f"{path}:{n}: {wnid} is listed twice", fix, str(path)))
            continue
        out[wnid] = name
    if lines is not None and not out:
        problems.append(Problem(dataset, f"{path} lists no classes", fix, str(path)))
    return out


def list_images(folder: Path) -> list[str]:
    """Absolute paths of the image files in ``folder``, sorted by name (hidden files skipped).

    Sorting makes the order, and so the few-shot draw, the same on every filesystem (Dassl lists
    ImageNet folders unsorted, so its draw there depends on the filesystem; its pkl cache is read when
    present).
    """
    with os.scandir(folder) as it:
        names = [e.name for e in it if not e.name.startswith(".") and e.is_file()
                 and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS]
    names.sort()
    return [os.path.join(folder, name) for name in names]


def _subdirs(folder: Path) -> list[str]:
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def _read_imagenet(info: DatasetInfo, folder: Path, problems: list[Problem]) -> DatasetSplits | None:
    classnames = read_classnames_txt(folder / "classnames.txt", info.key, problems)
    image_root = _image_root(info, folder, problems)
    if not classnames or image_root is None:
        return None
    wnids = list(classnames)
    items: dict[str, list[Datum]] = {}
    for split in ("train", "val"):
        split_dir = image_root / split
        items[split] = []
        if not split_dir.is_dir():
            problems.append(Problem(info.key, f"folder {split_dir} not found",
                                    f"expected {info.expected_layout}", str(split_dir)))
            continue
        present = set(_subdirs(split_dir))
        extra = sorted(present - set(wnids))
        if extra:
            problems.append(Problem(info.key, f"{split_dir} has {len(extra)} folder(s) not in classnames.txt "
                                    f"({', '.join(extra[:5])})", "remove them or restore classnames.txt",
                                    str(split_dir)))
        missing = [w for w in wnids if w not in present]
        if missing:
            problems.append(Problem(info.key, f"{split_dir} lacks {len(missing)} class folder(s) listed in "
                                    f"classnames.txt ({', '.join(missing[:5])})",
                                    "restore the missing class folders", str(split_dir)))
        for label, wnid in enumerate(wnids):
            if wnid in present:
                name = classnames[wnid]
                items[split].extend(Datum(p, label, name) for p in list_images(split_dir / wnid))
    # The val folder is the test set (standard practice), and also serves as val, as in CoOp.
    return DatasetSplits(info.key, [classnames[w] for w in wnids], items["train"], list(items["val"]),
                         items["val"], image_root=image_root, template=info.template)


def _read_imagenetv2(info: DatasetInfo, folder: Path, problems: list[Problem]) -> DatasetSplits | None:
    classnames = read_classnames_txt(folder / "classnames.txt", info.key, problems)
    image_root = _image_root(info, folder, problems)
    if not classnames or image_root is None:
        return None
    names = list(classnames.values())
    test: list[Datum] = []
    present = _subdirs(image_root)
    numeric = {int(d) for d in present if _LABEL_TEXT.fullmatch(d)}
    odd = [d for d in present if not _LABEL_TEXT.fullmatch(d) or int(d) >= len(names)]
    if odd:
        problems.append(Problem(info.key, f"{image_root} has folder(s) that are not class numbers 0.."
                                f"{len(names) - 1}: {', '.join(odd[:5])}", "remove them", str(image_root)))
    missing = [str(i) for i in range(len(names)) if i not in numeric]
    if missing:
        problems.append(Problem(info.key, f"{image_root} lacks {len(missing)} class folder(s) "
                                f"({', '.join(missing[:5])})", "re-extract imagenetv2-matched-frequency",
                                str(image_root)))
    for label in range(len(names)):
        if label in numeric:
            class_dir = image_root / str(label)
            test.extend(Datum(p, label, names[label]) for p in list_images(class_dir))
    return DatasetSplits(info.key, names, [], [], test, image_root=image_root, template=info.template)


def _read_wnid_folders(info: DatasetInfo, folder: Path, problems: list[Problem]) -> DatasetSplits | None:
    classnames = read_classnames_txt(folder / "classnames.txt", info.key, problems)
    image_root = _image_root(info, folder, problems)
    if not classnames or image_root is None:
        return None
    present = set(_subdirs(image_root))
    unknown = sorted(present - set(classnames))
    if unknown:
        problems.append(Problem(info.key, f"{image_root} has folder(s) not in classnames.txt: "
                                f"{', '.join(unknown[:5])}", "restore the ImageNet classnames.txt (1000 lines)",
                                str(image_root)))
    # A/R: the classes are the wnids present as folders, in classnames.txt order (= wnid order, as CoOp's
    # sorted folder listing); Sketch: all classnames.txt classes, so labels match ImageNet's.
    wnids = [w for w in classnames if w in present] if info.present_only else list(classnames)
    test: list[Datum] = []
    for label, wnid in enumerate(wnids):
        if wnid in present:
            test.extend(Datum(p, label, classnames[wnid]) for p in list_images(image_root / wnid))
    return DatasetSplits(info.key, [classnames[w] for w in wnids], [], [], test, image_root=image_root,
                         template=info.template)


# ----------------------------------------------------------------------------------------------------
# Custom data


def display_name(folder_name: str) -> str:
    """Class name shown to the text encoder for a folder name (``_`` becomes a space)."""
    return folder_name.replace("_", " ").strip()


def _read_imagefolder(info: DatasetInfo, root: Path, problems: list[Problem]) -> DatasetSplits | None:
    if not root.is_dir():
        problems.append(Problem(info.key, f"--data {root} is not a folder", f"expected {info.expected_layout}"))
        return None
    split_json = root / CUSTOM_SPLIT_FILE
    if split_json.is_file():
        fix = f"rewrite it with `dipclip data make-split --data {root} --force`"
        obj = _load_json(split_json, info.key, fix, problems)
        if obj is None:
            return None
        classnames, items = parse_split_json(obj, root, info.key, str(split_json), problems)
        if _trained_on_test(info.key, str(split_json), items, f"list each image in train or test, not both, or {fix}",
                            problems):
            return None
        return DatasetSplits(info.key, classnames, items["train"], items["val"], items["test"], image_root=root,
                             template=info.template)
    split_dirs = {s: root / s for s in SPLITS if (root / s).is_dir()}
    make_split = f"write a 50/20/30 split with `dipclip data make-split --data {root}`"
    if "train" in split_dirs and not ("val" in split_dirs or "test" in split_dirs):
        problems.append(Problem(info.key, f"{root} has train/ but no test/ (or val/) folder, so there is nothing "
                                "to test on", f"add {root}/test/<class>/ images, or {make_split} from one "
                                "ROOT/<class>/ tree"))
        return None
    if "train" in split_dirs:
        folders = sorted(set().union(*(_subdirs(d) for d in split_dirs.values())))
        if not folders:
            problems.append(Problem(info.key, f"{root}/train has no class folders", f"expected {info.expected_layout}"))
            return None
        label_of = {f: i for i, f in enumerate(folders)}
        items: dict[str, list[Datum]] = {}
        for split, d in split_dirs.items():
            items[split] = [Datum(p, label_of[f], display_name(f)) for f in _subdirs(d) for p in list_images(d / f)]
        test = items.get("test", items.get("val", []))
        val = items.get("val", []) if "test" in items else []
        return DatasetSplits(info.key, [display_name(f) for f in folders], items["train"], val, test,
                             image_root=root, template=info.template)
    if not _subdirs(root):
        problems.append(Problem(info.key, f"{root} has no class folders", f"expected {info.expected_layout}"))
        return None
    # One ROOT/<class>/ tree has no split: used as train and test at once it would test on training images.
    problems.append(Problem(info.key, f"{root} has class folders but no split ({CUSTOM_SPLIT_FILE}, or train/ and "
                            "test/ folders), so the same images would be trained and tested on",
                            f"{make_split} (then pass the same --data), or arrange the images as "
                            "ROOT/train/<class>/ and ROOT/test/<class>/"))
    return None


def _read_csv(info: DatasetInfo, root: Path, problems: list[Problem]) -> DatasetSplits | None:
    rows: dict[str, list[_CsvRow]] = {s: [] for s in SPLITS}
    if root.is_file():
        base = root.parent
        unsplit = 0
        for split, row in _csv_rows(root, info.key, problems, with_split=True):
            if split is None:
                unsplit += 1
                continue
            rows[split].append(row)
        if unsplit:
            problems.append(Problem(info.key, f"{root}: {unsplit} row(s) have no split (train, val or test), so "
                                    "the same images would be trained and tested on",
                                    "add a split column (header path,label,classname,split) with a value on every "
                                    "row, or give a folder with train.csv and test.csv", str(root)))
            return None
    else:
        base = root
        if not (root / "train.csv").is_file() or not (root / "test.csv").is_file():
            problems.append(Problem(info.key, f"{root} has no train.csv and test.csv",
                                    f"expected {info.expected_layout}", str(root)))
            return None
        for s in SPLITS:
            if (root / f"{s}.csv").is_file():
                rows[s] = [row for _, row in _csv_rows(root / f"{s}.csv", info.key, problems, with_split=False)]
    # Every CSV of the dataset together decides the label mode and the class list, so that a class has one
    # index in train, val and test (base/new halves are cut from that one list).
    every = [row for s in SPLITS for row in rows[s]]
    txt = base / "classnames.txt"
    if _mixed_labels(info.key, every, problems):
        return None
    if any(not row.numbered for row in every):
        resolved = _named_labels(info.key, every, txt, problems)
    else:
        resolved = _numbered_labels(info.key, root, every, txt, problems)
    if resolved is None:
        return None
    classnames, label_of = resolved
    if not rows["train"] and not problems:
        problems.append(Problem(info.key, f"{root} has no training rows", f"expected {info.expected_layout}"))
    escaped = [row.path for row in every if leaves_root(base, row.path)]
    if escaped:
        problems.append(Problem(info.key, f"{root}: path {escaped[0]!r} lies outside {base} ({len(escaped)} such "
                                "path(s))", "keep the CSV in a folder that holds its images, with paths relative "
                                "to it (no '..')", str(root)))
        return None
    items: dict[str, list[Datum]] = {s: [] for s in SPLITS}
    for s in SPLITS:
        for row in rows[s]:
            label = label_of(row)
            items[s].append(Datum(os.path.normpath(os.path.join(base, row.path)), label,
                                  classnames[label] if label < len(classnames) else ""))
    if _trained_on_test(info.key, str(root), items, "list each image in train or test, not both", problems):
        return None
    return DatasetSplits(info.key, classnames, items["train"], items["val"], items["test"], image_root=base,
                         template=info.template)


def _mixed_labels(dataset: str, rows: list[_CsvRow], problems: list[Problem]) -> bool:
    """Whether some labels are integers and others class names (recorded as one problem, naming the first row
    of the rarer kind)."""
    numbered = [row for row in rows if row.numbered]
    named = [row for row in rows if not row.numbered]
    if not numbered or not named:
        return False
    odd, usual = (numbered, named) if len(numbered) <= len(named) else (named, numbered)
    kind = {True: "an integer", False: "a class name"}
    first = odd[0]
    header = " (a header row must name the columns path,label[,classname][,split])" if first.line == 1 else ""
    problems.append(Problem(dataset, f"{first.where}: label {first.label!r} is {kind[first.numbered]} but "
                            f"{usual[0].where} has {kind[usual[0].numbered]} label {usual[0].label!r} "
                            f"({len(numbered)} integer and {len(named)} class-name label(s)){header}",
                            "write every label as a class name, or every label as an integer (a class named by "
                            "digits alone needs integer labels, with a classname column or classnames.txt)",
                            str(first.source)))
    return True


def _named_labels(dataset: str, rows: list[_CsvRow], txt: Path, problems: list[Problem]):
    """Class names as labels: the classes are ``classnames.txt`` (when present) or the sorted names used."""
    clash = next((row for row in rows if row.classname is not None and row.classname != row.label), None)
    if clash is not None:
        problems.append(Problem(dataset, f"{clash.where}: the label {clash.label!r} names the class but the "
                                f"classname column says {clash.classname!r}",
                                "drop the classname column (a class-name label is the class name), or write integer "
                                "labels", str(clash.source)))
        return None
    if txt.is_file():
        listed = _read_lines(txt, dataset, "one class name per line", problems)
        if listed is None:
            return None
        twice = next((name for i, name in enumerate(listed) if name in listed[:i]), None)
        if twice is not None:
            problems.append(Problem(dataset, f"{txt} lists class {twice!r} twice, so its label is ambiguous",
                                    "list each class once", str(txt)))
            return None
        known = set(listed)
        unknown = [row for row in rows if row.label not in known]
        if unknown:
            first = unknown[0]
            close = _close_names(first.label, listed)
            hint = f" (close: {', '.join(map(repr, close))})" if close else " (nothing close)"
            names = len({row.label for row in unknown})
            problems.append(Problem(dataset, f"{first.where}: class {first.label!r} is not in {txt}{hint}; "
                                    f"{len(unknown)} row(s) use {names} unknown name(s)",
                                    f"correct the name (names are matched exactly), or add it to {txt}",
                                    str(first.source)))
            return None
        classnames = listed
    else:
        classnames = sorted({row.label for row in rows})
    index = {name: i for i, name in enumerate(classnames)}
    return classnames, lambda row: index[row.label]


def _close_names(name: str, names: list[str]) -> list[str]:
    """Up to three names like ``name``: the same but for case first, then by similarity."""
    same = [n for n in names if n.casefold() == name.casefold()]
    return list(dict.fromkeys(same + difflib.get_close_matches(name, names, n=3, cutoff=0.6)))[:3]


def _numbered_labels(dataset: str, root: Path, rows: list[_CsvRow], txt: Path, problems: list[Problem]):
    """Integer labels: class names from the classname column or from ``classnames.txt`` in label order."""
    names: dict[int, str] = {}
    for row in rows:
        label, classname = int(row.label), row.classname
        if classname is not None and names.setdefault(label, classname) != classname:
            problems.append(Problem(dataset, f"label {label} is named both {names[label]!r} and "
                                    f"{classname!r}", "give each label one class name"))
            names[label] = classname
    max_label = max((int(row.label) for row in rows), default=-1)
    if txt.is_file():
        listed = _read_lines(txt, dataset, "one class name per line, in label order", problems) or []
        if max_label >= len(listed):
            problems.append(Problem(dataset, f"{txt} names {len(listed)} classes but label {max_label} is used",
                                    "add the missing class names", str(txt)))
            return None
        classnames = listed
        wrong = [(int(row.label), row.classname) for row in rows
                 if row.classname is not None and listed[int(row.label)] != row.classname]
        if wrong:
            label, name = wrong[0]
            problems.append(Problem(dataset, f"a row names label {label} {name!r} but {txt} names it "
                                    f"{listed[label]!r} ({len(wrong)} such row(s))",
                                    "make the classname column agree with classnames.txt (or drop one)", str(txt)))
            return None
    else:
        unnamed = {int(row.label) for row in rows} - set(names)
        if unnamed:
            problems.append(Problem(dataset, f"label {min(unnamed)} has no class name ({len(unnamed)} such "
                                    "label(s); no classname column and no classnames.txt next to the CSV)",
                                    f"add a classname column or {txt}, or write class names as labels"))
            return None
        classnames = _dense_classnames(names, dataset, str(root), "use labels 0..n-1 without gaps", problems)
    return classnames, lambda row: int(row.label)


def _trained_on_test(dataset: str, source: str, items: dict[str, list[Datum]], fix: str,
                     problems: list[Problem]) -> bool:
    """Whether a custom split lists some of its test images among its training images (by path): the
    accuracy would be measured on trained images, as with a folder tree without a split (recorded as a problem)."""
    train = {os.path.normpath(item.path) for item in items["train"]}
    shared = [item.path for item in items["test"] if os.path.normpath(item.path) in train]
    if shared:
        problems.append(Problem(dataset, f"{source}: {len(shared)} of its {len(items['test'])} test images are also "
                                f"training images (first: {shared[0]}), so accuracy would be measured on trained "
                                "images", fix, source))
    return bool(shared)


@dataclass(frozen=True)
class _CsvRow:
    """One row of a CSV as written (cells stripped): its label is still text, a number or a class name."""

    path: str
    label: str
    classname: str | None
    source: Path
    line: int

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"

    @property
    def numbered(self) -> bool:
        return bool(_LABEL_TEXT.fullmatch(self.label))


def _looks_numeric(text: str) -> bool:
    """A label that looks like a number without being ASCII digits (``３``, ``٣``, ``³``, ``3.0``, ``+3``, ``-1``): refused,
    neither guessed at as a number nor taken for a class name."""
    return bool(_NUMBER_LIKE.fullmatch(text)) or text.isnumeric()


def _csv_rows(path: Path, dataset: str, problems: list[Problem], with_split: bool):
    fix = f"use the format {CUSTOM['csv'].expected_layout}"
    table: list[tuple[int, list[str]]] = []  # (line number of the row's first line, cells)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            first_line = 1
            for r in reader:
                if r and any(c.strip() for c in r):
                    table.append((first_line, r))
                first_line = reader.line_num + 1
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        problems.append(Problem(dataset, f"cannot read {path} ({exc})", fix, str(path)))
        return
    if not table:
        problems.append(Problem(dataset, f"{path} is empty", fix, str(path)))
        return
    columns = {"path": 0, "label": 1, "classname": 2}
    start = 0
    header = [c.strip().lower() for c in table[0][1]]
    if "path" in header or "label" in header:
        columns = {name: header.index(name) for name in ("path", "label", "classname", "split") if name in header}
        start = 1
        missing = [name for name in ("path", "label") if name not in columns]
        if missing:
            problems.append(Problem(dataset, f"{path}: the header has no {missing[0]!r} column", fix, str(path)))
            return
        if "split" in columns and not with_split:
            problems.append(Problem(dataset, f"{path}: a 'split' column is only read from a single CSV file",
                                    "drop the column or merge the per-split files", str(path)))
            return
    for n, row in table[start:]:
        cells = [c.strip() for c in row]

        def cell(name: str, cells=cells) -> str | None:
            i = columns.get(name)
            return cells[i] if i is not None and i < len(cells) and cells[i] != "" else None

        p, label, split = cell("path"), cell("label"), cell("split")
        if p is None or label is None or (not _LABEL_TEXT.fullmatch(label) and _looks_numeric(label)):
            problems.append(Problem(dataset, f"{path}:{n}: expected 'path,label[,classname]' with an integer label "
                                    f"written in the digits 0-9, got {','.join(cells)[:80]!r}",
                                    f"{fix}; a label is an integer in the digits 0-9 or a class name (a label that "
                                    "looks like a number otherwise is refused, not guessed at)", str(path)))
            continue
        if split is not None and split.lower() not in SPLITS:
            problems.append(Problem(dataset, f"{path}:{n}: split {split!r} is not train, val or test", fix,
                                    str(path)))
            continue
        yield (split.lower() if split else None), _CsvRow(p, label, cell("classname"), path, n)


_READERS = {
    "json": _read_json_layout,
    "aircraft": _read_aircraft,
    "imagenet": _read_imagenet,
    "imagenetv2": _read_imagenetv2,
    "wnid": _read_wnid_folders,
}
