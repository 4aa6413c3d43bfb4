"""Image-caption corpus, the held-out split, the image cache and the demo dataset.

The demo dataset is the honest test of the shipped model, so its images are chosen *before* training and
pretraining never sees them: for each demo class a seeded sample of whole file-name groups (colour and
black-and-white twins, ``_01``/``_02`` series, both drawings of one emoji) is held out.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import subprocess
import warnings
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from . import sources
from .sources import Item

# Demo classes: natural, mutually exclusive names with enough images in the sources (about 100 or more, so
# that holding out ~70 still leaves pretraining images of the class). An item belongs to the first of its
# categories that is a demo class; items whose categories name two demo classes (an orca filed under fish
# and mammals) are ambiguous and left to pretraining.
DEMO_CLASSES = (
    "arrow", "bird", "building", "clock", "clothing", "computer", "dessert", "drink", "flag", "fruit", "hand",
    "heart", "insect", "mammal", "meal", "musical instrument", "person", "smiley face", "sport", "tool",
    "traffic sign", "vehicle", "weather symbol",
)
MAX_PIXELS = 40_000_000  # larger clip-art files (a handful, up to 150 Mpx) are skipped, not decoded


@dataclass
class DemoRecord:
    key: str
    classname: str
    split: str  # "train", "val" or "test"


def collect_items(emoji_dir: Path, openclipart_dir: Path, fashion_dir: Path | None, seed: int,
                  fashion_per_class: int, openmoji_dir: Path | None = None) -> list[Item]:
    """Every candidate image with its names, in a deterministic order."""
    rng = random.Random(seed)
    meta = sources.load_emoji_meta(emoji_dir)
    vocab = sources.emoji_vocabulary(meta) | sources.EXTRA_WORDS
    vocab |= {w for cats in sources.OPENCLIPART_FOLDERS.values() for c in cats for w in c.split()}
    items = sources.openclipart_items(openclipart_dir, vocab, rng)
    items += sources.emoji_items(emoji_dir, meta, rng, openmoji_dir)
    if fashion_dir is not None and fashion_per_class > 0:
        items += sources.fashion_items(fashion_dir, fashion_per_class, rng)
    sources.apply_keyword_categories(items)
    seen: dict[str, int] = {}
    for item in items:  # "a-b.png" and "a_b.png" normalise alike; a suffix keeps keys (and demo files) unique
        seen[item.key] = seen.get(item.key, 0) + 1
        if seen[item.key] > 1:
            item.key = f"{item.key}_{seen[item.key]}"
    return sorted(items, key=lambda it: it.key)


def demo_class_of(item: Item) -> str | None:
    hits = [c for c in item.categories if c in DEMO_CLASSES]
    return hits[0] if len(set(hits)) == 1 else None


def holdout_split(items: list[Item], seed: int, fraction: float = 0.6, max_per_class: int = 80,
                  min_test: int = 30, max_train: int = 40, val_per_class: int = 4,
                  by_drawing: bool = True) -> list[DemoRecord]:
    """Hold out whole groups per demo class and split them into the demo's train/val/test.

    Groups are drawn in a seeded order; a group that does not fit the class's remaining budget is skipped,
    so a 50-image series never swallows a class. Within the held-out images groups again stay together,
    so a twin never sits in the demo's train split while the other is tested. The test split is filled
    first, to at least ``min_test`` images, then ``val_per_class`` val images, then up to ``max_train`` train
    images (more than 16, so that different seeds draw different 16-shot subsets); the rest is tested.

    With ``by_drawing`` the demo splits are filled with single drawings instead of whole groups (see
    :func:`drawing_units`); which images are held out from pretraining does not change.
    """
    rng = random.Random(seed)
    by_class: dict[str, dict[str, list[Item]]] = defaultdict(lambda: defaultdict(list))
    for item in items:
        cls = demo_class_of(item)
        if cls is not None and item.source != "fashion-mnist":
            by_class[cls][item.group].append(item)
    # a group must not straddle classes: keep it whole in the class that holds most of it
    group_home: dict[str, str] = {}
    for cls in sorted(by_class):
        for group, members in by_class[cls].items():
            if group not in group_home or len(members) > len(by_class[group_home[group]][group]):
                group_home[group] = cls
    records: list[DemoRecord] = []
    for cls in sorted(by_class):
        groups = {g: m for g, m in sorted(by_class[cls].items()) if group_home[g] == cls}
        total = sum(len(m) for m in groups.values())
        budget = min(max_per_class, round(fraction * total))
        order = sorted(groups)
        rng.shuffle(order)
        chosen: list[list[Item]] = []
        taken = 0
        for group in order:
            size = len(groups[group])
            if taken + size <= budget:
                chosen.append(sorted(groups[group], key=lambda it: it.key))
                taken += size
        if by_drawing:
            chosen = drawing_units(chosen, random.Random(f"{seed}:{cls}"))
        counts = {"train": 0, "val": 0, "test": 0}
        for members in chosen:  # test first (a reliable number), then val, then train; what is left: test
            if counts["test"] < min_test:
                split = "test"
            elif counts["val"] < val_per_class:
                split = "val"
            else:
                split = "train" if counts["train"] < max_train else "test"
            for item in members:
                records.append(DemoRecord(item.key, cls, split))
            counts[split] += len(members)
    return records


def drawing_family(item: Item) -> str:
    """The artwork an image belongs to: OpenMoji's colour and line drawings share one outline."""
    return "openmoji" if item.source == "openmoji-black" else item.source


def drawing_units(groups: list[list[Item]], rng: random.Random) -> list[list[Item]]:
    """Split held-out groups into independent drawings, in a seeded order.

    An emoji concept's group holds three independent artworks (Twemoji, Noto, OpenMoji); as in a real dataset,
    where one kind of object is photographed many times, different artworks of one concept may sit in the
    demo's train and test splits. Twins of one drawing (OpenMoji's colour and line versions, clip-art
    colour/black-and-white files and numbered series) stay together.
    """
    units: list[list[Item]] = []
    for members in groups:
        by_family: dict[str, list[Item]] = defaultdict(list)
        for item in members:
            by_family[drawing_family(item)].append(item)
        units.extend(by_family[family] for family in sorted(by_family))
    rng.shuffle(units)
    return units


def render(item: Item, size: int, fashion_images: np.ndarray | None = None) -> Image.Image | None:
    """An RGB ``size`` x ``size`` image: transparent parts on white, cropped to the drawing, padded square."""
    from ..data.images import to_rgb

    if item.source == "fashion-mnist":
        index = int(item.path.rsplit("#", 1)[1])
        grey = Image.fromarray(fashion_images[index])
        return grey.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(_rasterise(item.path) if item.path.endswith(".svg") else item.path) as img:
            if img.width * img.height > MAX_PIXELS:
                return None
            img.load()
            if img.mode == "P":
                img = img.convert("RGBA")
            if img.mode in ("RGBA", "LA"):
                bbox = img.getchannel("A").getbbox()
                if bbox is None:
                    return None
                img = img.crop(bbox)
            rgb = to_rgb(img)
    bbox = Image.eval(rgb.convert("L"), lambda v: 255 - v).getbbox()  # trim white margins too
    if bbox is None:
        return None
    rgb = rgb.crop(bbox)
    side = max(rgb.size)
    side = int(side * 1.06) + 2
    canvas = Image.new("RGB", (side, side), (255, 255, 255))
    canvas.paste(rgb, ((side - rgb.width) // 2, (side - rgb.height) // 2))
    return canvas.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)


def _rasterise(svg_path: str, side: int = 160) -> io.BytesIO:
    """An SVG drawn as a transparent PNG by ``rsvg-convert`` (Debian ``librsvg2-bin``)."""
    png = subprocess.run(["rsvg-convert", "-w", str(side), "-h", str(side), svg_path], check=True,
                         capture_output=True, timeout=60).stdout
    return io.BytesIO(png)


def _render_worker(args):
    item, size = args
    try:
        img = render(item, size)
    except (OSError, ValueError, Image.DecompressionBombError, subprocess.SubprocessError):
        return None
    return None if img is None else np.asarray(img, dtype=np.uint8)


def build_image_cache(items: list[Item], size: int, work_dir: Path, workers: int = 2,
                      fashion_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decode every image once into a uint8 array ``[N, size, size, 3]`` kept in ``work_dir``.

    Returns the array and a boolean mask of the items that decoded (unreadable or huge files are False).
    """
    digest = hashlib.sha256(json.dumps([it.path for it in items]).encode()).hexdigest()[:12]
    cache = work_dir / f"images_{size}px_{digest}.npz"
    if cache.is_file():
        data = np.load(cache)
        return data["images"], data["ok"]
    from multiprocessing import get_context

    from tqdm import tqdm

    images = np.full((len(items), size, size, 3), 255, dtype=np.uint8)
    ok = np.zeros(len(items), dtype=bool)
    fashion = [i for i, it in enumerate(items) if it.source == "fashion-mnist"]
    others = [i for i, it in enumerate(items) if it.source != "fashion-mnist"]
    if fashion:
        array = sources.read_idx(fashion_dir / "train-images-idx3-ubyte.gz")
        for i in fashion:
            images[i] = np.asarray(render(items[i], size, array))
            ok[i] = True
    with get_context("fork").Pool(workers) as pool:
        results = pool.imap(_render_worker, [(items[i], size) for i in others], chunksize=16)
        for i, arr in tqdm(zip(others, results, strict=True), total=len(others), desc="decode images",
                           mininterval=5):
            if arr is not None:
                images[i] = arr
                ok[i] = True
    work_dir.mkdir(parents=True, exist_ok=True)
    np.savez(cache, images=images, ok=ok)
    return images, ok


def write_demo(items: list[Item], records: list[DemoRecord], images: np.ndarray, out_dir: Path,
               size: int) -> dict:
    """The demo dataset in CoOp's folder format: ``images/<class>/<key>.png`` and ``split_zhou_Demo.json``."""
    index = {it.key: i for i, it in enumerate(items)}
    classnames = sorted({r.classname for r in records})
    label_of = {c: i for i, c in enumerate(classnames)}
    split: dict[str, list] = {"train": [], "val": [], "test": []}
    image_root = out_dir / "images"
    for record in records:
        folder = record.classname.replace(" ", "_")
        rel = f"{folder}/{record.key}.png"
        target = image_root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        img = Image.fromarray(images[index[record.key]])
        if img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.LANCZOS)
        img.save(target, optimize=True)
        split[record.split].append([rel, label_of[record.classname], record.classname])
    for rows in split.values():
        rows.sort(key=lambda row: (row[1], row[0]))
    (out_dir / "split_zhou_Demo.json").write_text(json.dumps(split, indent=0) + "\n")
    return {name: len(rows) for name, rows in split.items()} | {"classes": len(classnames)}


def save_manifest(items: list[Item], records: list[DemoRecord], path: Path) -> None:
    """Every item with its names and whether it was held out: the exact record of what pretraining saw."""
    held = {r.key: asdict(r) for r in records}
    rows = [asdict(it) | {"labels": sorted(it.labels), "heldout": held.get(it.key)} for it in items]
    path.write_text(json.dumps(rows, indent=0) + "\n")


# Fashion-MNIST demo: drawn from the *test* set (t10k), of which pretraining takes nothing (it samples
# ``--fashion-per-class`` images of the training set), so every image is unseen; per class, in this order.
FASHION_DEMO_COUNTS = {"train": 64, "val": 16, "test": 100}
FASHION_DEMO_SPLIT_FILE = "split_zhou_DemoFashion.json"


def write_fashion_demo(fashion_dir: Path, out_dir: Path, seed: int,
                       counts: dict[str, int] = FASHION_DEMO_COUNTS) -> dict:
    """A CoOp-format dataset of Fashion-MNIST test images at their native 28 px greyscale.

    Labels keep Fashion-MNIST's own order (t-shirt ... ankle boot), so base = its first five classes.
    Unlike the drawing demo, whose class names were trained on as caption categories (zero-shot is already
    as good as 16 shots make it), this is a photo domain the model saw only a few images of per class:
    the shots carry what the text side lacks, as on a real downstream dataset.
    """
    images = sources.read_idx(fashion_dir / "t10k-images-idx3-ubyte.gz")
    labels = sources.read_idx(fashion_dir / "t10k-labels-idx1-ubyte.gz")
    rng = random.Random(seed)
    split: dict[str, list] = {name: [] for name in counts}
    for label, classname in enumerate(sources.FASHION_CLASSES):
        indices = np.flatnonzero(labels == label).tolist()
        if len(indices) < sum(counts.values()):
            raise ValueError(f"{fashion_dir}: {len(indices)} test images of {classname!r}, "
                             f"{sum(counts.values())} needed")
        chosen = rng.sample(indices, sum(counts.values()))
        start = 0
        for part, n in counts.items():
            for index in sorted(chosen[start:start + n]):
                rel = f"{classname.replace(' ', '_')}/t10k_{index:05d}.png"
                target = out_dir / "images" / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(images[index]).save(target, optimize=True)
                split[part].append([rel, label, classname])
            start += n
    (out_dir / FASHION_DEMO_SPLIT_FILE).write_text(json.dumps(split, indent=0) + "\n")
    return {name: len(rows) for name, rows in split.items()} | {"classes": len(sources.FASHION_CLASSES)}
