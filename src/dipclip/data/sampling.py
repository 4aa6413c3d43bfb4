"""The few-shot subsets and base/new halves that published CoOp-family numbers were trained on.

Few-shot sampling (Dassl's ``DatasetBase.generate_fewshot_dataset`` as CoOp's dataset classes call it,
``repeat=False``):

1. CoOp's ``train.py`` seeds python ``random``, numpy and torch with the run's seed S before the dataset
   is built. Only python ``random`` is drawn from while sampling, and nothing is drawn before it, so a
   private ``random.Random(S)`` yields exactly the same draws without touching global state.
2. The split's ``train`` items are grouped by label in order of first appearance (a ``defaultdict``).
3. For each label in that order: ``rng.sample(items, K)``; a class with fewer than K items keeps all of
   them, in split order, and draws nothing.
4. The same RNG, continuing, then does steps 2-3 on ``val`` with ``min(K, 4)`` shots (a second call to
   ``generate_fewshot_dataset``). ImageNet is the exception: only ``train`` is sampled, and val stays
   the test set.

Sampling covers all classes; base/new subsampling happens afterwards, on train, val and test alike:
sort the labels, base = the first ceil(n/2), new = the rest, relabel each half from 0.

An existing ``<folder>/split_fewshot/shot_{K}-seed_{S}.pkl`` written by the Dassl-based code is
preferred: it is read with an unpickler that only admits Dassl's ``Datum`` class, and its absolute
paths are matched to the split's images by their image-root-relative suffix; one with more images of a class
than ``K`` (or an image twice) is not the K-shot split and is refused. Our own cache is JSON
with paths relative to the image root, written atomically. It records what it was made for (dataset, split
fingerprint, shots, seed) and a sha256 of its rows; an entry that fails a check is resampled and
rewritten with a one-line warning, never used (sampling is deterministic, so nothing is lost).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import DipclipError, warn
from ..paths import cache_unwritable, remove_stale_temps
from ._io import write_json_atomic
from .datasets import dataset_folder
from .registry import CUSTOM, dataset_info
from .types import DatasetSplits, Datum

SUBSAMPLE_CHOICES = ("all", "base", "new")
FEWSHOT_CACHE_FORMAT = "dipclip-fewshot/2"  # 2: records its split fingerprint and a checksum of its rows
_DASSL_DATUM = ("dassl.data.datasets.base_dataset", "Datum")


# ----------------------------------------------------------------------------------------------------
# Sampling


def sample_per_class(items: Sequence[Datum], shots: int, rng: random.Random) -> list[Datum]:
    """``shots`` items per label (all of a smaller class), as Dassl's ``generate_fewshot_dataset``."""
    groups: dict[int, list[Datum]] = {}
    for item in items:
        groups.setdefault(item.label, []).append(item)  # dicts keep first-appearance order
    out: list[Datum] = []
    for group in groups.values():
        out.extend(rng.sample(group, shots) if len(group) >= shots else group)
    return out


def dassl_few_shot(
    train: Sequence[Datum], val: Sequence[Datum] | None, shots: int, seed: int
) -> tuple[list[Datum], list[Datum] | None]:
    """The train and val subsets the Dassl-based code selects for ``shots`` and ``seed``.

    ``val=None`` samples train only (ImageNet) and returns ``None`` for val.
    """
    _check_shots(shots)
    rng = random.Random(seed)  # same stream as random.seed(seed) followed by module-level calls
    few_train = sample_per_class(train, shots, rng)
    few_val = sample_per_class(val, min(shots, 4), rng) if val is not None else None
    return few_train, few_val


def _check_shots(shots: object) -> None:
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise DipclipError(f"--shots must be a positive integer, got {shots!r}; use e.g. --shots 16")


# ----------------------------------------------------------------------------------------------------
# Base/new


def base_new_labels(num_classes: int, which: str) -> list[int]:
    """Old labels kept by ``which``: base = the first ceil(n/2) of the sorted labels, new = the rest."""
    if which not in SUBSAMPLE_CHOICES:
        raise DipclipError(f"--subsample must be one of {', '.join(SUBSAMPLE_CHOICES)}, got {which!r}")
    m = math.ceil(num_classes / 2)
    labels = list(range(num_classes))
    return labels if which == "all" else labels[:m] if which == "base" else labels[m:]


def _relabel(items: Sequence[Datum], relabeler: dict[int, int]) -> list[Datum]:
    return [replace(d, label=relabeler[d.label]) for d in items if d.label in relabeler]


def subsample_classes(
    data: DatasetSplits | Sequence[Sequence[Datum]], which: str = "all"
) -> DatasetSplits | list[list[Datum]]:
    """Keep the base or new half of the classes and relabel it from 0 (CoOp's ``subsample_classes``).

    ``data`` is a :class:`DatasetSplits` (the classes are its ``classnames``; the result is a new
    ``DatasetSplits`` with that half's class names) or a sequence of item lists, as CoOp calls it (the
    classes are the labels of the first list; returns a list of lists). ``which='all'`` keeps everything.
    """
    if isinstance(data, DatasetSplits):
        selected = base_new_labels(data.num_classes, which)
        relabeler = {old: new for new, old in enumerate(selected)}
        return DatasetSplits(
            name=data.name,
            classnames=[data.classnames[old] for old in selected],
            train=_relabel(data.train, relabeler),
            val=_relabel(data.val, relabeler),
            test=_relabel(data.test, relabeler),
            image_root=data.image_root,
            template=data.template,
        )
    lists = [list(x) for x in data]
    if which not in SUBSAMPLE_CHOICES:
        raise DipclipError(f"--subsample must be one of {', '.join(SUBSAMPLE_CHOICES)}, got {which!r}")
    if which == "all" or not lists:
        return lists
    labels = sorted({d.label for d in lists[0]})
    m = math.ceil(len(labels) / 2)
    selected = labels[:m] if which == "base" else labels[m:]
    relabeler = {old: new for new, old in enumerate(selected)}
    return [_relabel(items, relabeler) for items in lists]


# ----------------------------------------------------------------------------------------------------
# Dassl's pickle cache, read safely


class _DasslDatum:
    """Stand-in for ``dassl.data.datasets.base_dataset.Datum``: pickle restores its ``__dict__``."""

    _impath: str
    _label: int
    _classname: str


class _DasslCacheUnpickler(pickle.Unpickler):
    """Admits Dassl's Datum class and nothing else, so a cache cannot run code or build arbitrary objects."""

    def find_class(self, module: str, name: str):
        if (module, name) == _DASSL_DATUM:
            return _DasslDatum
        raise DipclipError(
            f"{self.source}: refusing to unpickle {module}.{name} (only Dassl's Datum is allowed in a few-shot "
            "cache); delete the file if you did not create it"
        )

    source = "few-shot cache"


def dassl_cache_path(root: str | Path, key: str, shots: int, seed: int) -> Path:
    """Where the Dassl-based code keeps the few-shot subset of ``key`` for ``shots`` and ``seed``."""
    return dataset_folder(root, key) / "split_fewshot" / f"shot_{shots}-seed_{seed}.pkl"


def read_dassl_cache(path: str | Path, splits: DatasetSplits) -> dict[str, list[Datum]]:
    """The ``train`` (and ``val``, when present) lists of a Dassl few-shot pkl, as items of ``splits``.

    Each pickled ``_impath`` is absolute on the machine that wrote it; it is matched to the image of
    ``splits`` whose image-root-relative path is its longest suffix, and its label must agree.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            unpickler = _DasslCacheUnpickler(f)
            unpickler.source = str(path)
            data = unpickler.load()
    except DipclipError:
        raise
    except Exception as exc:  # a truncated or foreign file: pickle raises many types
        raise DipclipError(f"cannot read few-shot cache {path} ({type(exc).__name__}: {exc}); delete it to "
                           "resample from the split file") from None
    if not isinstance(data, dict) or not isinstance(data.get("train"), list):
        raise DipclipError(f"few-shot cache {path} does not hold {{'train': [...], 'val': [...]}}; delete it")
    lookup = _rel_lookup(splits, ("train", "val"))
    out: dict[str, list[Datum]] = {}
    for split in ("train", "val"):
        if split not in data:
            continue
        if not isinstance(data[split], list):
            raise DipclipError(f"few-shot cache {path}: {split!r} is not a list; delete it")
        out[split] = [_reroot(d, lookup, path) for d in data[split]]
    return out


def _reroot(obj: object, lookup: dict[str, Datum], path: Path) -> Datum:
    impath = getattr(obj, "_impath", None)
    label = getattr(obj, "_label", None)
    if not isinstance(obj, _DasslDatum) or not isinstance(impath, str) or not isinstance(label, int):
        raise DipclipError(f"few-shot cache {path} holds an entry that is not a Dassl Datum; delete it")
    parts = [p for p in impath.replace("\\", "/").split("/") if p]
    for i in range(len(parts)):
        item = lookup.get("/".join(parts[i:]))
        if item is not None:
            if item.label != label:
                raise DipclipError(f"few-shot cache {path} gives {impath} label {label} but the split file says "
                                   f"{item.label}; the cache belongs to another split: delete it")
            return item
    raise DipclipError(f"few-shot cache {path} lists {impath}, which is not in this dataset's split; the cache "
                       "belongs to another split: delete it to resample")


def _rel_paths(splits: DatasetSplits, name: str):
    """(image-root-relative ``/``-separated path, item) for each item of split ``name``, fast for 1M items."""
    root = str(splits.image_root) if splits.image_root is not None else ""
    prefix = root.rstrip(os.sep) + os.sep if root else ""
    for item in splits.split(name):
        p = item.path
        rel = p[len(prefix):] if prefix and p.startswith(prefix) else os.path.relpath(p, root or None)
        yield rel.replace(os.sep, "/"), item


def _rel_lookup(splits: DatasetSplits, names: Sequence[str]) -> dict[str, Datum]:
    """Image-root-relative path -> item, for the given splits."""
    lookup: dict[str, Datum] = {}
    for name in names:
        for rel, item in _rel_paths(splits, name):
            lookup.setdefault(rel, item)
    return lookup


def check_dassl_counts(path: str | Path, data: dict[str, list[Datum]], splits: DatasetSplits, shots: int,
                       sample_val: bool = True) -> None:
    """A Dassl pkl is the ``shots``-shot split only if no class has more than ``shots`` training images (and
    ``min(shots, 4)`` val images), each listed once: one with more (renamed, or written for other shots) would
    train on more images than ``metrics.json`` says, so it is refused."""
    for split, most in (("train", shots), ("val", min(shots, 4))):
        if split == "val" and not sample_val:
            continue
        items = data.get(split) or []
        counts: dict[int, int] = {}
        seen: set[Datum] = set()
        for item in items:
            if item in seen:
                raise DipclipError(f"few-shot cache {path} lists {item.path} twice in {split!r}, so it is not a "
                                   "few-shot split; delete it to resample from the split file")
            seen.add(item)
            counts[item.label] = counts.get(item.label, 0) + 1
        over = [(label, count) for label, count in counts.items() if count > most]
        if over:
            label, count = over[0]
            name = splits.classnames[label] if 0 <= label < len(splits.classnames) else label
            more = f" (and {len(over) - 1} more classes)" if len(over) > 1 else ""
            raise DipclipError(f"few-shot cache {path} holds {count} {split} images of class {name!r}{more}, more "
                               f"than the {most} of --shots {shots}, so it is not the {shots}-shot split; delete it "
                               "to resample, or check --shots")


# ----------------------------------------------------------------------------------------------------
# Our portable cache


def split_fingerprint(splits: DatasetSplits) -> str:
    """A short hash of the class list and the train/val items (relative paths, labels), in order.

    It names our cache file, so that two data folders with the same key (two custom datasets, or two
    versions of a split) never share a cache, while a moved folder still finds its own.
    """
    h = hashlib.sha1()
    h.update(json.dumps(splits.classnames).encode())
    for name in ("train", "val"):
        h.update(f"\n#{name}".encode())
        for rel, item in _rel_paths(splits, name):
            h.update(f"\n{rel}\t{item.label}".encode())
    return h.hexdigest()[:12]


def cache_file(cache_dir: str | Path, key: str, shots: int, seed: int, fingerprint: str) -> Path:
    """Our JSON cache for ``key``/``shots``/``seed`` of the split with ``fingerprint`` under ``cache_dir``."""
    return Path(cache_dir) / key / f"shot_{shots}-seed_{seed}-{fingerprint}.json"


def write_cache(path: str | Path, splits: DatasetSplits, selection: FewShotSelection, shots: int,
                seed: int) -> Path:
    """Write a selection as JSON, paths relative to the image root (portable; never pickled)."""
    lookup = {item: rel for rel, item in _rel_lookup(splits, ("train", "val")).items()}

    def rows(items: list[Datum] | None):
        return None if items is None else [[lookup[d], d.label, d.classname] for d in items]

    train, val = rows(selection.train), rows(selection.val)
    return write_json_atomic(path, {
        "format": FEWSHOT_CACHE_FORMAT,
        "dataset": splits.name,
        "split": split_fingerprint(splits),
        "shots": shots,
        "seed": seed,
        "source": selection.source,
        "sha256": _rows_checksum(train, val),
        "train": train,
        "val": val,
    })


def _rows_checksum(train: object, val: object) -> str:
    return hashlib.sha256(json.dumps([train, val], separators=(",", ":")).encode()).hexdigest()


class CacheMismatch(DipclipError):
    """Our few-shot cache file is not the selection asked for; ``problem`` says why."""

    def __init__(self, path: Path, problem: str):
        self.problem = problem
        super().__init__(f"few-shot cache {path} {problem}; delete it to resample from the split file")


def read_cache(path: str | Path, splits: DatasetSplits, shots: int, seed: int) -> FewShotSelection:
    """Read our JSON cache back as items of ``splits``; a cache that does not match raises
    :class:`CacheMismatch`."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (OSError, ValueError, RecursionError) as exc:
        raise CacheMismatch(path, f"cannot be read ({type(exc).__name__})") from None
    if not isinstance(obj, dict) or obj.get("format") != FEWSHOT_CACHE_FORMAT:
        found = obj.get("format") if isinstance(obj, dict) else None
        raise CacheMismatch(path, f"is not a {FEWSHOT_CACHE_FORMAT} file (format {found!r})")
    wanted = {"dataset": splits.name, "split": split_fingerprint(splits), "shots": shots, "seed": seed}
    differs = [key for key, value in wanted.items() if obj.get(key) != value]
    if differs:
        raise CacheMismatch(path, f"was made for another {', '.join(differs)}")
    train, val = obj.get("train"), obj.get("val")
    if not isinstance(train, list) or not (val is None or isinstance(val, list)):
        raise CacheMismatch(path, "does not hold train and val lists")
    if obj.get("sha256") != _rows_checksum(train, val):
        raise CacheMismatch(path, "fails its checksum (damaged or edited)")
    lookup = _rel_lookup(splits, ("train", "val"))

    def items(rows):
        out = []
        for row in rows:
            item = lookup.get(row[0]) if isinstance(row, list) and len(row) >= 2 else None
            if item is None or item.label != row[1]:
                raise CacheMismatch(path, f"lists {str(row)[:80]}, which is not in this dataset's split")
            out.append(item)
        return out

    return FewShotSelection(items(train), None if val is None else items(val), "cache", str(path))


# ----------------------------------------------------------------------------------------------------
# What the trainer calls


@dataclass
class FewShotSelection:
    """The selected train and val items (all classes), and where they came from.

    ``source`` is ``dassl-pkl`` (an existing Dassl cache), ``cache`` (our JSON cache) or ``sampled``;
    ``val`` is ``None`` where the dataset keeps its full val split (ImageNet).
    """

    train: list[Datum]
    val: list[Datum] | None
    source: str
    path: str | None = None


def select_few_shot(splits: DatasetSplits, root: str | Path, key: str, shots: int, seed: int,
                    cache_dir: str | Path | None = None) -> FewShotSelection:
    """Pick the few-shot train/val items: a Dassl pkl if present, else our cache, else sample (and cache).

    ``splits`` is the whole dataset as :func:`~dipclip.data.datasets.load_dataset` returns it (all classes).

    With ``cache_dir`` the selection is also written to ``cache_dir/<key>/shot_{K}-seed_{S}-<split
    fingerprint>.json`` when that file does not exist yet.
    """
    _check_shots(shots)
    info = dataset_info(key)
    if info.test_only:
        raise DipclipError(f"{key} is a test-only dataset; train on imagenet and evaluate on {key}")
    if not splits.train:
        raise DipclipError(f"{key} has no training images under {splits.image_root}; run `dipclip doctor`")
    sample_val = info.layout != "imagenet"
    selection: FewShotSelection | None = None
    if key not in CUSTOM:
        pkl = dassl_cache_path(root, key, shots, seed)
        if pkl.is_file():
            data = read_dassl_cache(pkl, splits)
            if sample_val and "val" not in data:
                raise DipclipError(f"few-shot cache {pkl} has no 'val' list; delete it to resample")
            check_dassl_counts(pkl, data, splits, shots, sample_val)
            selection = FewShotSelection(data["train"], data.get("val") if sample_val else None, "dassl-pkl",
                                         str(pkl))
    ours = cache_file(cache_dir, key, shots, seed, split_fingerprint(splits)) if cache_dir is not None else None
    rewrite = ours is not None and not ours.is_file()
    if ours is not None:
        remove_stale_temps(ours.parent)  # left by killed writes
    if selection is None and ours is not None and ours.is_file():
        try:
            selection = read_cache(ours, splits, shots, seed)
        except CacheMismatch as exc:
            warn(f"few-shot cache {ours} {exc.problem}; resampling it from the split file (it is never used)")
            rewrite = True
    if selection is None:
        train, val = dassl_few_shot(splits.train, splits.val if sample_val else None, shots, seed)
        selection = FewShotSelection(train, val, "sampled")
    if rewrite:
        try:
            write_cache(ours, splits, selection, shots, seed)
        except OSError as exc:  # a cache is a convenience: an unwritable one must not stop a run
            cache_unwritable("few-shot cache", ours.parent, exc)
    return selection


def few_shot_splits(splits: DatasetSplits, root: str | Path, key: str, shots: int, seed: int,
                    subsample: str = "all", cache_dir: str | Path | None = None) -> DatasetSplits:
    """The dataset a run trains on: few-shot train and val (all classes), then the base/new half.

    Train and val are replaced by the ``shots``-per-class subsets of :func:`select_few_shot` (ImageNet
    keeps its val, which is its test set); then train, val and test are cut to the ``subsample`` half and
    relabelled from 0, with that half's class names.
    """
    base_new_labels(splits.num_classes, subsample)  # validate before any work
    return apply_selection(splits, select_few_shot(splits, root, key, shots, seed, cache_dir), subsample)


def apply_selection(splits: DatasetSplits, selection: FewShotSelection, subsample: str = "all") -> DatasetSplits:
    """``splits`` with train/val replaced by ``selection`` (val kept when it is ``None``), then subsampled."""
    few = DatasetSplits(
        name=splits.name,
        classnames=list(splits.classnames),
        train=list(selection.train),
        val=list(splits.val if selection.val is None else selection.val),
        test=list(splits.test),
        image_root=splits.image_root,
        template=splits.template,
    )
    return subsample_classes(few, subsample)
