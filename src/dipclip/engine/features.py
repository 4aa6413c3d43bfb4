"""Image features computed once and reused, and the kinds of training batches the trainer consumes.

Prompt methods that only learn text-side context (CoOp, DIP, ...) never change the image tower, so an
image's features depend only on (backbone, image file, transform, augmentation draw). The
:class:`FeatureStore` computes them once and keeps them on disk under ``cache_root() / "features"``,
keyed by a hash of everything that can change them: the backbone's identity, image size, mean and std,
the device kind (bf16 autocast on CUDA gives other numbers than fp32), torch and open_clip versions, the
transform, the encoding batch size and the item list (paths relative to their common folder, labels, and the
SHA-256 of each file's bytes, memoised by :mod:`dipclip.data.identity`). Files are safetensors written
atomically (temp file + ``os.replace``), and a lock file makes a second process wait for the first instead of
encoding the same split twice, so concurrent runs can share one cache.

An entry is used only after it has been checked: it carries the key's payload (what it was made for) and a
sha256 of its tensors, and its labels must be the split's. A file that fails any check (damaged or zeroed
data, an entry of another view or backbone copied over this one, an old format) is recomputed and replaced,
with a one-line warning naming it; it is never used. Temporary files of killed writes are removed once
they are :data:`~dipclip.paths.STALE_TEMP_SECONDS` old.

Training augmentations are drawn per image from a seed derived from (run seed, view, image index), never
from the global generator. View ``v`` of a training set is therefore a fixed set of tensors:

- ``views="fresh"`` (protocol-exact): epoch ``e`` uses view ``e``, a new random augmentation of every image
  every epoch, encoded ahead of the epoch;
- ``views=N``: epoch ``e`` uses view ``e % N``; N views are encoded once and cycled (Tip-Adapter's scheme).

With ``N >= epochs`` both modes see the same views and give identical numbers. Whether the store is on or
off changes where features are kept, never their values.

An entry keeps two tensors of features: the L2-normalised ones every method reads, and the unnormalised
projected ones DePT's head takes (``FeatureBatches(raw=True)``). Both come from one encoding: the normalised
rows are :func:`~dipclip.backbones.loading.normalize_image_features` of the unnormalised ones on the same device
and batch, exactly what ``Backbone.encode_images`` returns, so they are the bits an image pass gives.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..backbones.loading import Backbone, normalize_image_features
from ..data.identity import items_identity
from ..data.images import BadImage, ImageDataset, collate_skipping_bad
from ..data.transforms import RECIPE_CROP_SCALE, test_transform, train_transform
from ..data.types import Datum
from ..errors import DipclipError, warn
from ..paths import cache_root, cache_unwritable, remove_stale_temps
from .reproducibility import atomic_write_bytes

# 2: class-token last block; 3: entries carry a checksum; 4: items keyed by content; 5: unnormalised features too
FORMAT_VERSION = 5
STORED_TENSORS = ("features", "raw", "labels", "valid")  # in checksum order
ENCODE_BATCH = 64  # fixed, so stored and recomputed features are the same bits whatever the caller's batch
NO_CACHE_ENV = "DIPCLIP_NO_FEATURE_CACHE"
FRESH = "fresh"


def parse_views(views: str | int) -> str | int:
    """``"fresh"`` or a whole number of cached views >= 1 (also accepted as a string, as the CLI gives it)."""
    if isinstance(views, str) and views.strip().lower() == FRESH:
        return FRESH
    try:
        count = int(views)
    except (TypeError, ValueError):
        raise DipclipError(f"views must be 'fresh' or a whole number >= 1, got {views!r}") from None
    if count < 1 or (isinstance(views, float) and views != count):
        raise DipclipError(f"views must be 'fresh' or a whole number >= 1, got {views!r}")
    return count


def view_of_epoch(views: str | int, epoch: int) -> int:
    """Which augmentation view epoch ``epoch`` trains on."""
    return epoch if views == FRESH else epoch % int(views)


def view_seed(seed: int, view: int, index: int) -> int:
    """Seed of one image's augmentation: independent of batch order, workers and the global generator."""
    digest = hashlib.blake2b(f"dipclip-view:{seed}:{view}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _keep_pil(image):
    return image


class SeededViews(Dataset):
    """``(tensor, label, index)`` of every item; with ``seed`` the random transform is drawn per image from
    :func:`view_seed`, so the same (seed, view, index) always gives the same tensor."""

    def __init__(self, items: Sequence[Datum], transform: Callable, seed: int | None = None, view: int = 0,
                 skip_bad_images: bool = False):
        self.images = ImageDataset(items, _keep_pil, skip_bad_images=skip_bad_images)
        self.transform = transform
        self.seed = seed
        self.view = view

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        loaded = self.images[index]
        if isinstance(loaded, BadImage):
            return loaded
        image, label, index = loaded
        if self.seed is None:
            return self.transform(image), label, index
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(view_seed(self.seed, self.view, index))
            return self.transform(image), label, index


def make_views(backbone: Backbone, items: Sequence[Datum], seed: int | None, view: int = 0,
               skip_bad_images: bool = False, crop_scale: float = RECIPE_CROP_SCALE) -> SeededViews:
    """Test-time images (``seed=None``) or training view ``view`` of ``items`` (crops of at least
    ``crop_scale`` of the area)."""
    if seed is None:
        transform = test_transform(backbone.image_size, backbone.mean, backbone.std)
    else:
        transform = train_transform(backbone.image_size, backbone.mean, backbone.std, crop_scale)
    return SeededViews(items, transform, seed, view, skip_bad_images)


def batch_loader(dataset: Dataset, batches: Sequence[Sequence[int]], workers: int, pin: bool) -> DataLoader:
    """A loader over fixed index batches; its private generator leaves the global RNG alone."""
    return DataLoader(dataset, batch_sampler=[list(map(int, b)) for b in batches], num_workers=workers,
                      collate_fn=collate_skipping_bad, pin_memory=pin, generator=torch.Generator().manual_seed(0))


@dataclass
class Encoded:
    """Features of a list of items in item order; rows of skipped (bad) images are zero and not ``valid``."""

    features: torch.Tensor  # [N, D] fp32, L2-normalised
    labels: torch.Tensor  # [N] int64
    valid: torch.Tensor  # [N] bool
    raw: torch.Tensor  # [N, D] fp32, the projected features before normalisation (DePT's head)

    @property
    def skipped(self) -> int:
        return int((~self.valid).sum())

    def good(self, raw: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, labels) of the images not skipped; ``raw``: the unnormalised features."""
        features = self.raw if raw else self.features
        if bool(self.valid.all()):
            return features, self.labels
        return features[self.valid], self.labels[self.valid]


@torch.no_grad()
def encode_dataset(backbone: Backbone, dataset: SeededViews, workers: int = 0, desc: str = "encode",
                   progress: bool = True, rank: int = 0, world: int = 1) -> Encoded:
    """Run the frozen image tower over ``dataset`` in order, :data:`ENCODE_BATCH` images at a time.

    With ``world > 1`` only batches ``rank, rank + world, ...`` run (other rows stay zero and invalid): each
    batch holds the same images as in one process, so :func:`merge_parts` of all ranks gives the same bits.
    """
    n = len(dataset)
    features, raw = torch.zeros(n, backbone.text.output_dim), torch.zeros(n, backbone.text.output_dim)
    labels = torch.tensor([item.label for item in dataset.images.items], dtype=torch.long)
    valid = torch.zeros(n, dtype=torch.bool)
    batches = [range(start, min(start + ENCODE_BATCH, n)) for start in range(0, n, ENCODE_BATCH)]
    loader = batch_loader(dataset, batches[rank::world], workers, backbone.device.type == "cuda")
    bar = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=None if progress else True)  # None: TTY only
    for batch in bar:
        if batch is None:
            continue
        images, _, index = batch
        projected = backbone.encode_images(images.to(backbone.device, non_blocking=True), normalize=False)
        features[index] = normalize_image_features(projected).cpu()  # = encode_images(images), bit for bit
        raw[index] = projected.cpu()
        valid[index] = True
    return Encoded(features, labels, valid, raw)


def merge_parts(parts: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], labels: torch.Tensor,
                dim: int) -> Encoded:
    """One :class:`Encoded` from the ``(row indices, feature rows, unnormalised rows)`` each rank encoded."""
    features, raw = torch.zeros(len(labels), dim), torch.zeros(len(labels), dim)
    valid = torch.zeros(len(labels), dtype=torch.bool)
    for index, rows, raw_rows in parts:
        features[index] = rows
        raw[index] = raw_rows
        valid[index] = True
    return Encoded(features, labels, valid, raw)


def _rank_world() -> tuple[int, int]:
    """(rank, world size) under ``torchrun`` with an initialised process group, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _items_digest(items: Sequence[Datum]) -> tuple[str, str]:
    """(sha256 over relative paths, labels and the content of every file; the common folder, for the
    metadata). Content, not size and mtime: two files swapped in place keep both (:mod:`dipclip.data.identity`)."""
    paths = [os.path.abspath(item.path) for item in items]
    root = os.path.commonpath([os.path.dirname(p) for p in paths]) if paths else ""
    return items_identity(items, root), root


def _labels(items: Sequence[Datum]) -> torch.Tensor:
    return torch.tensor([item.label for item in items], dtype=torch.long)


def _checksum(*tensors: torch.Tensor) -> str:
    """sha256 over the dtypes, shapes and bytes of ``tensors``."""
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
        if tensor.numel():
            digest.update(tensor.contiguous().view(torch.uint8).numpy())  # the buffer itself, no copy
    return digest.hexdigest()


def _entry_problem(tensors: dict[str, torch.Tensor], metadata: dict[str, str], payload: dict,
                   labels: torch.Tensor) -> str | None:
    """Why a stored entry is not the one asked for (``None``: it is)."""
    try:
        stored = json.loads(metadata.get("dipclip_features", "null"))
    except ValueError:
        stored = None
    if not isinstance(stored, dict):
        return "has no dipclip metadata"
    wanted = {k: v for k, v in payload.items() if k != "root"}  # a moved data folder keeps its entries
    differs = sorted(k for k in wanted.keys() | (stored.keys() - {"root"}) if stored.get(k) != wanted.get(k))
    if differs:
        return f"was made for another {', '.join(differs)}"
    if set(tensors) != set(STORED_TENSORS):
        return f"holds tensors {sorted(tensors)}, not {', '.join(STORED_TENSORS[:-1])} and {STORED_TENSORS[-1]}"
    features, raw, stored_labels, valid = (tensors[name] for name in STORED_TENSORS)
    n, shape = len(labels), (len(labels), wanted["backbone"]["embed_dim"])
    if (any(t.dtype != torch.float32 or tuple(t.shape) != shape for t in (features, raw))
            or tuple(valid.shape) != (n,) or valid.dtype != torch.uint8 or not torch.equal(stored_labels, labels)):
        return "does not match the images of this split"
    if metadata.get("sha256") != _checksum(*(tensors[name] for name in STORED_TENSORS)):
        return "fails its checksum (damaged data)"
    if not wanted["skip_bad_images"] and not bool(valid.bool().all()):
        return "marks images as skipped in a run that skips none"
    return None


class FeatureStore:
    """Image features on disk, computed at most once per key (see the module docstring)."""

    def __init__(self, root: str | Path | None = None, enabled: bool = True):
        self.root = Path(root) if root is not None else cache_root() / "features"
        self.enabled = enabled
        self.hits = 0  # loads served from disk (a test and the benchmark read these)
        self.misses = 0  # encodings run
        self.rejected = 0  # entries on disk that failed a check and were recomputed
        self._warned: set[Path] = set()
        self._swept = False

    @classmethod
    def default(cls) -> FeatureStore:
        """The shared store, off when ``$DIPCLIP_NO_FEATURE_CACHE`` is set to anything but 0/empty."""
        return cls(enabled=os.environ.get(NO_CACHE_ENV, "0") in ("", "0", "false"))

    def key(self, backbone: Backbone, items: Sequence[Datum], transform: str, view: dict | None,
            skip_bad_images: bool) -> tuple[str, dict]:
        """(hex key, the payload it hashes): any change to an input changes the key."""
        import open_clip

        items_hash, root = _items_digest(items)
        payload = {
            "format": FORMAT_VERSION,
            "backbone": {"identity": backbone.identity, "name": backbone.name, "image_size": backbone.image_size,
                         "mean": list(backbone.mean), "std": list(backbone.std),
                         "embed_dim": backbone.text.output_dim},
            "device": backbone.device.type,
            "precision": "bf16-autocast" if backbone.device.type == "cuda" else "fp32",
            "torch": torch.__version__,
            "open_clip": getattr(open_clip, "__version__", "?"),
            "transform": transform,
            "view": view,
            "encode_batch": ENCODE_BATCH,
            "skip_bad_images": skip_bad_images,
            "n_items": len(items),
            "items": items_hash,
        }
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
        return digest, payload | {"root": root}

    def test_features(self, backbone: Backbone, items: Sequence[Datum], workers: int = 0,
                      skip_bad_images: bool = False, desc: str = "encode", progress: bool = True) -> Encoded:
        """Features of ``items`` under the deterministic test transform (resize, centre crop)."""
        dataset = make_views(backbone, items, None, skip_bad_images=skip_bad_images)
        return self._get(backbone, dataset, None, workers, desc, progress)

    def view_features(self, backbone: Backbone, items: Sequence[Datum], seed: int, view: int, workers: int = 0,
                      skip_bad_images: bool = False, desc: str = "encode view", progress: bool = True,
                      crop_scale: float = RECIPE_CROP_SCALE) -> Encoded:
        """Features of augmentation view ``view`` of ``items`` for run seed ``seed`` (the entry's key holds the
        transform's repr, crop scale included)."""
        dataset = make_views(backbone, items, seed, view, skip_bad_images, crop_scale)
        return self._get(backbone, dataset, {"seed": seed, "view": view}, workers, desc, progress)

    def _get(self, backbone: Backbone, dataset: SeededViews, view: dict | None, workers: int, desc: str,
             progress: bool) -> Encoded:
        def compute() -> Encoded:
            self.misses += 1
            with torch.random.fork_rng(devices=[]):  # encoding must never move the training RNG
                return encode_dataset(backbone, dataset, workers, desc, progress)

        items = dataset.images.items
        key, payload = self.key(backbone, items, repr(dataset.transform), view, dataset.images.skip_bad_images)
        path = self.root / f"{'test' if view is None else 'view'}-{key[:40]}.safetensors"
        rank, world = _rank_world()
        if world > 1:
            return self._get_distributed(backbone, dataset, path, payload, workers, desc, progress, rank, world)
        if not self.enabled:
            return compute()
        if not self._swept:
            remove_stale_temps(self.root)
            self._swept = True
        labels = _labels(items)
        found = self._load(path, payload, labels)
        if found is not None:
            return found
        with self._locked(path):
            found = self._load(path, payload, labels)  # another process may have written it while we waited
            if found is not None:
                return found
            encoded = compute()
            self._save(path, encoded, payload)
            return encoded

    def _get_distributed(self, backbone: Backbone, dataset: SeededViews, path: Path, payload: dict, workers: int,
                         desc: str, progress: bool, rank: int, world: int) -> Encoded:
        """Under ``torchrun``: rank 0 looks in the store; otherwise every rank encodes its share of the batches,
        all ranks receive all rows, and rank 0 stores the result. Every rank returns the whole split."""
        import torch.distributed as dist

        found = [self._load(path, payload, _labels(dataset.images.items)) if (rank == 0 and self.enabled) else None]
        dist.broadcast_object_list(found, src=0)
        if found[0] is not None:
            return found[0]
        self.misses += 1
        with torch.random.fork_rng(devices=[]):
            mine = encode_dataset(backbone, dataset, workers, f"{desc} [rank {rank}/{world}]", progress, rank, world)
        rows = mine.valid.nonzero().squeeze(1)
        parts: list = [None] * world
        dist.all_gather_object(parts, (rows, mine.features[rows], mine.raw[rows]))
        encoded = merge_parts(parts, mine.labels, mine.features.shape[1])
        if rank == 0 and self.enabled:
            self._save(path, encoded, payload)
        dist.barrier()
        return encoded

    def _load(self, path: Path, payload: dict, labels: torch.Tensor) -> Encoded | None:
        """The entry at ``path`` if it is exactly what ``payload`` asks for; else ``None`` (recompute), with a
        one-line warning when a file was there but failed a check."""
        if not path.is_file():
            return None
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 - not a dict
        except Exception as exc:  # noqa: BLE001 - an unreadable entry is recomputed, never trusted
            problem: str | None = f"cannot be read ({type(exc).__name__})"
        else:
            problem = _entry_problem(tensors, metadata, payload, labels)
        if problem is not None:
            self.rejected += 1
            if path not in self._warned:
                self._warned.add(path)
                warn(f"feature cache entry {path} {problem}; recomputing it (it is never used)")
            return None
        self.hits += 1
        return Encoded(tensors["features"], tensors["labels"], tensors["valid"].bool(), tensors["raw"])

    def _save(self, path: Path, encoded: Encoded, payload: dict) -> None:
        from safetensors.torch import save

        tensors = {"features": encoded.features.contiguous(), "raw": encoded.raw.contiguous(),
                   "labels": encoded.labels.contiguous(), "valid": encoded.valid.to(torch.uint8).contiguous()}
        metadata = {"dipclip_features": json.dumps(payload, sort_keys=True),
                    "sha256": _checksum(*(tensors[name] for name in STORED_TENSORS))}
        if not self.enabled:  # the lock could not be taken: the cache folder is not writable
            return
        try:
            atomic_write_bytes(path, save(tensors, metadata=metadata))
        except OSError as exc:  # read-only, full, or not a folder: go on uncached, as --no-feature-cache would
            self._unwritable(exc)

    def _unwritable(self, exc: OSError) -> None:
        self.enabled = False
        cache_unwritable("feature cache", self.root, exc, " (or pass --no-feature-cache)")

    @contextlib.contextmanager
    def _locked(self, path: Path):
        """An exclusive lock beside ``path`` (POSIX ``flock``; elsewhere none: atomic writes still keep
        concurrent runs correct, they may just encode the same split twice)."""
        try:
            import fcntl
        except ImportError:
            yield
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(path.with_name(path.name + ".lock"), "a+b")  # noqa: SIM115 - closed below
        except OSError as exc:
            self._unwritable(exc)
            yield
            return
        with handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def epoch_index_batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """The epoch's shuffled index batches; the last partial batch is dropped when a full one exists."""
    order = torch.randperm(n, generator=generator)
    stop = (n // batch_size) * batch_size if n >= batch_size else n
    return [order[i:i + batch_size] for i in range(0, stop, batch_size)]


class FeatureBatches:
    """Training batches from stored features of augmentation views (see the module docstring): the normalised
    features, or with ``raw`` the unnormalised ones (DePT's head, which normalises for its similarity itself)."""

    kind = "features"

    def __init__(self, backbone: Backbone, items: Sequence[Datum], batch_size: int, seed: int,
                 views: str | int = FRESH, store: FeatureStore | None = None, workers: int = 0,
                 skip_bad_images: bool = False, progress: bool = True, crop_scale: float = RECIPE_CROP_SCALE,
                 raw: bool = False):
        self.backbone, self.items, self.batch_size, self.seed = backbone, list(items), batch_size, seed
        self.views, self.crop_scale, self.raw = parse_views(views), crop_scale, raw
        self.store = store if store is not None else FeatureStore.default()
        self.workers, self.skip_bad_images, self.progress = workers, skip_bad_images, progress
        self._memo: dict[int, Encoded] = {}  # cycled views stay in memory for the run

    def describe(self) -> dict:
        described = {"kind": self.kind, "views": self.views, "crop_scale": self.crop_scale}
        return (described | {"unnormalised": True}) if self.raw else described  # others' fingerprints unchanged

    def encoded_view(self, view: int) -> Encoded:
        if view in self._memo:
            return self._memo[view]
        encoded = self.store.view_features(self.backbone, self.items, self.seed, view, self.workers,
                                           self.skip_bad_images, desc=f"encode view {view}", progress=self.progress,
                                           crop_scale=self.crop_scale)
        if self.views != FRESH:
            self._memo[view] = encoded
        return encoded

    def batches(self, epoch: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        encoded = self.encoded_view(view_of_epoch(self.views, epoch))
        features = encoded.raw if self.raw else encoded.features
        device = self.backbone.device
        for index in epoch_index_batches(len(self.items), self.batch_size, generator):
            index = index[encoded.valid[index]]
            if len(index) == 0:
                continue
            yield features[index].to(device), encoded.labels[index].to(device)


class ImageBatches:
    """Training batches of images run through the frozen image tower at every step (the peers' way).

    The same index batches and per-image augmentations as :class:`FeatureBatches` with ``views="fresh"``;
    the numbers agree up to float rounding (the image tower sees other batch compositions). For methods
    that need the image tower in the loop; prompt methods use :class:`FeatureBatches`.
    """

    kind = "images"

    def __init__(self, backbone: Backbone, items: Sequence[Datum], batch_size: int, seed: int, workers: int = 0,
                 skip_bad_images: bool = False, crop_scale: float = RECIPE_CROP_SCALE):
        self.backbone, self.items, self.batch_size, self.seed = backbone, list(items), batch_size, seed
        self.workers, self.skip_bad_images, self.crop_scale = workers, skip_bad_images, crop_scale

    def describe(self) -> dict:
        return {"kind": self.kind, "crop_scale": self.crop_scale}

    def batches(self, epoch: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        dataset = make_views(self.backbone, self.items, self.seed, epoch, self.skip_bad_images, self.crop_scale)
        index_batches = epoch_index_batches(len(self.items), self.batch_size, generator)
        loader = batch_loader(dataset, index_batches, self.workers, self.backbone.device.type == "cuda")
        device = self.backbone.device
        for batch in loader:
            if batch is None:
                continue
            images, labels, _ = batch
            yield self.backbone.encode_images(images.to(device, non_blocking=True)), labels.to(device)


class PromptedImageBatches(ImageBatches):
    """Training batches of augmented images themselves, for models whose image features depend on learned
    prompts (MaPLe, PromptSRC): the model runs the image tower with gradients, ``model.logits(images)``.

    The same index batches and per-image augmentations as :class:`ImageBatches` (drawn from (seed, epoch)
    and (seed, view, index)), so a resumed run sees the same images as an uninterrupted one.
    """

    kind = "prompted-images"

    def batches(self, epoch: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        yield from image_batches(self.backbone, self.items, self.seed, epoch,
                                 epoch_index_batches(len(self.items), self.batch_size, generator),
                                 self.workers, self.skip_bad_images, self.crop_scale)


def image_batches(backbone: Backbone, items: Sequence[Datum], seed: int | None, view: int,
                  index_batches: Sequence[Sequence[int]], workers: int = 0, skip_bad_images: bool = False,
                  crop_scale: float = RECIPE_CROP_SCALE) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(image tensors, labels) of ``items`` in ``index_batches``: test images (``seed=None``) or a training view."""
    dataset = make_views(backbone, items, seed, view, skip_bad_images, crop_scale)
    loader = batch_loader(dataset, index_batches, workers, backbone.device.type == "cuda")
    device = backbone.device
    for batch in loader:
        if batch is None:
            continue
        images, labels, _ = batch
        yield images.to(device, non_blocking=True), labels.to(device)


def feature_store(enabled: bool = True) -> FeatureStore:
    """The shared store (:meth:`FeatureStore.default`), or a disabled one that keeps nothing on disk."""
    return FeatureStore.default() if enabled else FeatureStore(enabled=False)
