"""A classifier loaded once, and the image lists and result files of ``dipclip predict``.

:class:`Classifier` loads the backbone and computes the class text features once, so a script or a
service classifies many batches without rebuilding either; :func:`dipclip.api.predict` is a thin layer over
it, so the command line and Python give the same numbers by construction. Images are encoded
:data:`~dipclip.engine.features.ENCODE_BATCH` at a time, as evaluation encodes a split, and nothing is kept in
the feature store: a user's photos are not a dataset.

``dipclip predict`` takes image files, folders (searched recursively; image files only, by extension, in
sorted order; hidden names, symlink loops and non-regular files are skipped with one warning) and globs
(``'photos/*.jpg'``, ``'photos/**/*.png'``), expanded by :func:`expand_images`. Its ``--output`` file is
CSV or JSON (:func:`write_predictions`).
"""

from __future__ import annotations

import csv
import glob
import io
import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import DipclipError, warn

if TYPE_CHECKING:
    import torch

    from .backbones.loading import Backbone

IMAGE_FIX = "give image files Pillow can read: PNG, JPEG, ..."
GLOB_CHARACTERS = "*?["
OUTPUT_SUFFIXES = (".csv", ".json")
CSV_FIRST_COLUMNS = ("path", "class_1", "probability_1")


def trained_classnames(adapter_config: dict) -> list[str]:
    """The classes an adapter was trained on (recorded since train_classnames was added), else [] (the API's
    eval, export and predict use this one)."""
    return list(adapter_config.get("train_classnames") or adapter_config.get("classnames") or [])


def backbone_for_adapter(adapter_config: dict, model: str | None, pretrained: str | None, device: str) -> Backbone:
    """The backbone an adapter was trained on, from what it recorded (the config's content and the weights
    file's absolute path), unless ``model``/``pretrained`` say otherwise (the API's eval and export use this one)."""
    from .backbones.loading import load_backbone

    recorded = adapter_config["backbone"]
    if pretrained is None:
        weights_file = recorded.get("weights_file")
        pretrained = weights_file if weights_file and Path(weights_file).is_file() else recorded["pretrained"]
    model_config = recorded.get("model_config") if model is None else None
    return load_backbone(model or recorded.get("model_arg"), pretrained, device=device, model_config=model_config)


class Classifier:
    """Class scores of images for a fixed class list: zero-shot with a template, or a trained adapter
    (every method: text prompts, image-conditioned CoCoOp, image-prompted MaPLe/PromptSRC, DePT's head).

    Build it with :meth:`from_adapter` or :meth:`from_classnames`; ``images`` are file paths, PIL images or a
    preprocessed tensor [N, 3, H, W] (the backbone's test transform already applied)."""

    def __init__(self, backbone: Backbone, classnames: list[str], method: str, *,
                 text_features: torch.Tensor | None = None, prompt_model: Any = None):
        self.backbone = backbone
        self.method = method
        self._classnames = list(classnames)
        self._text_features = text_features
        self._prompt_model = prompt_model
        from .data.transforms import test_transform

        self.transform = test_transform(backbone.image_size, backbone.mean, backbone.std)

    @classmethod
    def from_classnames(cls, classnames: Sequence[str], *, model: str | None, pretrained: str | None,
                        template: str = "a photo of a {}.", device: str = "auto",
                        backbone: Backbone | None = None) -> Classifier:
        """Zero-shot CLIP: the class text features of ``template`` filled with each class name."""
        from .argcheck import class_names
        from .backbones.loading import load_backbone
        from .methods.zeroshot import zeroshot_text_features

        classnames = class_names("the class list", list(classnames))
        backbone = backbone or load_backbone(model, pretrained, device=device)
        return cls(backbone, classnames, "zeroshot",
                   text_features=zeroshot_text_features(backbone, classnames, [template]))

    @classmethod
    def from_adapter(cls, path: str | Path, *, classnames: Sequence[str] | None = None, model: str | None = None,
                     pretrained: str | None = None, device: str = "auto",
                     backbone: Backbone | None = None) -> Classifier:
        """A trained adapter on its own backbone (unless ``model``/``pretrained`` say otherwise), over
        ``classnames`` or by default the classes it was trained on."""
        from .adapters import load_adapter, model_from_adapter
        from .argcheck import class_names
        from .engine.evaluate import classifier_text_features

        loaded = load_adapter(path)
        classnames = list(classnames or trained_classnames(loaded.config))
        if not classnames:
            raise DipclipError(f"adapter {path} records no training classes; pass the class names "
                               "(--classes a,b,c, or classnames=[...] in Python)")
        classnames = class_names("the class list", classnames)
        backbone = backbone or backbone_for_adapter(loaded.config, model, pretrained, device)
        prompt_model = model_from_adapter(loaded, backbone, classnames)
        # CoCoOp's class text features change with every image; a feature-space head (dipclip.probes) scores
        # image features itself; every other kind has them once
        feature_head = getattr(prompt_model, "feature_head", False)
        text_features = None if feature_head or (prompt_model.image_conditioned and not prompt_model.image_prompted) \
            else classifier_text_features(prompt_model)
        return cls(backbone, classnames, loaded.method, text_features=text_features, prompt_model=prompt_model)

    @property
    def classnames(self) -> list[str]:
        return list(self._classnames)

    @property
    def text_features(self) -> torch.Tensor:
        """The normalised class text features [C, D] (for DePT with its head, the text side of its scores)."""
        if self._text_features is None:
            why = ("scores image features with its own head (a probe, cache or adapter)"
                   if getattr(self._prompt_model, "feature_head", False) else "prompts change with every image")
            raise DipclipError(f"{self.method} {why}, so it has no fixed class text features; use logits() or "
                               "classify()")
        return self._text_features

    def _batch_logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Finite logits [B, C] of one preprocessed batch, on the backbone's device."""
        from .engine.evaluate import SCORES_FIX, checked_logits
        from .tensor_checks import require_finite

        model, backbone = self._prompt_model, self.backbone
        if model is not None and model.image_prompted:  # the model runs its own image tower on the images
            logits = checked_logits(model, batch, self._text_features)
        elif model is not None and getattr(model, "feature_head", False):  # probes, caches, adapters
            logits = checked_logits(model, backbone.encode_images(batch, normalize=not model.takes_raw_features))
        elif model is not None and model.image_conditioned:  # CoCoOp: text features from each image's
            logits = checked_logits(model, backbone.encode_images(batch))
        else:
            logits = backbone.logits(backbone.encode_images(batch), self._text_features)
        return require_finite(logits, f"the class scores of {self.method}", SCORES_FIX)

    def _batches(self, images: Any, progress: bool) -> Iterator[torch.Tensor]:
        """Preprocessed batches of ``images`` on the backbone's device, ENCODE_BATCH at a time."""
        import torch
        from PIL import Image
        from tqdm.auto import tqdm

        from .data.images import load_rgb, to_rgb
        from .engine.features import ENCODE_BATCH

        if isinstance(images, torch.Tensor):
            if images.dim() != 4 or images.shape[1] != 3:
                raise DipclipError(f"an image tensor must be [N, 3, H, W], got {list(images.shape)}; preprocess "
                                   "with Classifier.transform and stack")
            count = len(images)
        else:
            images = [images] if isinstance(images, str | os.PathLike | Image.Image) else list(images)
            count = len(images)
        bar = tqdm(total=count, desc="predict", unit="image", leave=False, dynamic_ncols=True,
                   disable=None if progress else True)  # None: a bar only on a terminal
        with bar, torch.no_grad():
            for start in range(0, count, ENCODE_BATCH):
                chunk = images[start:start + ENCODE_BATCH]
                if not isinstance(chunk, torch.Tensor):
                    chunk = torch.stack([self.transform(to_rgb(item) if isinstance(item, Image.Image)
                                                        else load_rgb(str(item), IMAGE_FIX)) for item in chunk])
                yield chunk.to(self.backbone.device)
                bar.update(len(chunk))

    def logits(self, images: Any, *, progress: bool = False) -> torch.Tensor:
        """The class logits [N, C] (on the CPU) of ``images``."""
        import torch

        parts = [self._batch_logits(batch).cpu() for batch in self._batches(images, progress)]
        return torch.cat(parts) if parts else torch.zeros(0, len(self._classnames))

    def probabilities(self, images: Any, *, progress: bool = False) -> torch.Tensor:
        """Softmax probabilities [N, C] (on the CPU), taken per batch on the backbone's device."""
        import torch

        parts = [self._batch_logits(batch).softmax(dim=-1).cpu() for batch in self._batches(images, progress)]
        return torch.cat(parts) if parts else torch.zeros(0, len(self._classnames))

    def classify(self, images: Any, top_k: int = 5, *, progress: bool = False) -> list[list[tuple[str, float]]]:
        """For each image, its ``top_k`` classes with probabilities, most probable first."""
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise DipclipError(f"top_k must be a whole number >= 1, got {top_k!r}")
        k = min(top_k, len(self._classnames))
        ranked = []
        for row in self.probabilities(images, progress=progress):
            values, indices = row.topk(k)
            ranked.append([(self._classnames[i], float(v))
                           for v, i in zip(values.tolist(), indices.tolist(), strict=True)])
        return ranked


# ----------------------------------------------------------------------------------------------------
# Which files `dipclip predict` classifies


def _is_image_name(name: str) -> bool:
    from .data.datasets import IMAGE_EXTENSIONS

    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _regular(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:  # a broken link or a symlink loop
        return False


def _sorted_paths(paths: list[str]) -> list[str]:
    """``paths`` sorted by their parts, each file once (a second path to it through a linked folder, as
    ``**`` follows links, is left out)."""
    kept, seen = [], set()
    for path in sorted(paths, key=lambda path: Path(path).parts):
        info = os.stat(path)
        if (info.st_dev, info.st_ino) not in seen:
            seen.add((info.st_dev, info.st_ino))
            kept.append(path)
    return kept


def _folder_images(folder: str) -> tuple[list[str], int]:
    """(image files under ``folder``, sorted by path; how many image-named entries were skipped). Linked
    folders are followed once (a link back up the tree is not a loop forever); hidden names are left out."""
    found: list[str] = []
    skipped = 0
    seen: set[tuple[int, int]] = set()
    for root, folders, files in os.walk(folder, followlinks=True):
        try:
            info = os.stat(root)
        except OSError:
            folders[:] = []
            continue
        if (info.st_dev, info.st_ino) in seen:
            folders[:] = []
            continue
        seen.add((info.st_dev, info.st_ino))
        folders[:] = [name for name in folders if not name.startswith(".")]
        for name in files:
            if _is_image_name(name):
                path = os.path.join(root, name)
                if _regular(path):
                    found.append(path)
                else:
                    skipped += 1
    return _sorted_paths(found), skipped


def expand_images(sources: Sequence[str | os.PathLike]) -> list[str]:
    """The image files ``sources`` name, in order: a file as given (checked later, so a FIFO or a loop is
    refused by name), a folder's image files (recursive, sorted), a glob's matching image files (sorted;
    ``**`` matches any depth). A folder or glob without images is refused in one line."""
    images: list[str] = []
    skipped = 0
    for source in map(str, sources):
        if os.path.isdir(source):
            found, missed = _folder_images(source)
            if not found:
                raise DipclipError(f"{source} is a folder holding no image files (.jpg, .png, ...); give image "
                                   "files, or a folder or glob that holds some")
            images += found
            skipped += missed
        elif not os.path.lexists(source) and any(char in source for char in GLOB_CHARACTERS):
            matches = [path for path in glob.glob(source, recursive=True) if _is_image_name(os.path.basename(path))]
            found = [path for path in matches if _regular(path)]
            if not found:
                what = "no file matches" if not matches else "no regular image file matches"
                raise DipclipError(f"{what} {source} (image files: .jpg, .png, ...); check the pattern (quote it "
                                   "so dipclip expands it; ** matches any depth)")
            images += _sorted_paths(found)
            skipped += len(matches) - len(found)
        else:
            images.append(source)
    if skipped:
        warn(f"skipped {skipped} image name(s) that are not regular files (broken links, symlink loops, pipes)")
    return images


# ----------------------------------------------------------------------------------------------------
# --output: a CSV or JSON file of predictions


def _output_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise DipclipError(f"--output {path} must end in .csv or .json (the format is taken from the name); "
                           "give e.g. preds.csv")
    return suffix[1:]


def _written_by_predict(path: Path, kind: str) -> bool:
    """Whether the regular file ``path`` is a ``dipclip predict`` --output of this kind."""
    if kind == "csv":
        try:
            with open(path, encoding="utf-8", newline="") as handle:
                header = next(csv.reader([handle.readline(1 << 16)]), [])
        except (OSError, UnicodeDecodeError, csv.Error):
            return False
        return tuple(header[:3]) == CSV_FIRST_COLUMNS
    import json

    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return (isinstance(record, dict) and set(record) == {"method", "classnames", "predictions"}
            and isinstance(record["predictions"], list))


def check_output(output: str | Path | None) -> None:
    """Refuse, before anything loads, an --output that is not .csv/.json, is not a regular file, or holds
    anything but an earlier ``dipclip predict`` output of the same format (that one is replaced)."""
    if output is None:
        return
    path = Path(output)
    kind = _output_kind(path)
    if not os.path.lexists(path):
        return
    fix = "give another --output, or delete it to replace it"
    if os.path.isdir(path):
        raise DipclipError(f"--output {path} is a folder; give a file name ending in .csv or .json")
    if not _regular(str(path)):
        raise DipclipError(f"--output {path} is not a regular file (a broken link, a loop, a pipe or a device); "
                           + fix)
    if not _written_by_predict(path, kind):
        raise DipclipError(f"--output {path} holds a file `dipclip predict` did not write, which it would "
                           "write over; " + fix)


def predictions_csv(payload: dict) -> str:
    """One row per image: ``path, class_1, probability_1, ..., class_k, probability_k``."""
    k = max((len(item["top"]) for item in payload["predictions"]), default=0)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path"] + [f"{name}_{rank}" for rank in range(1, k + 1) for name in ("class", "probability")])
    for item in payload["predictions"]:
        writer.writerow([item["image"]] + [value for top in item["top"] for value in (top["class"], top["probability"])])
    return buffer.getvalue()


def write_predictions(payload: dict, output: str | Path) -> None:
    """Write ``payload`` (what :func:`dipclip.api.predict` returns) atomically as CSV or JSON by suffix."""
    from .engine.reproducibility import atomic_write_bytes, atomic_write_json

    path = Path(output)
    if _output_kind(path) == "json":
        atomic_write_json(path, payload)
    else:
        atomic_write_bytes(path, predictions_csv(payload).encode("utf-8"))
