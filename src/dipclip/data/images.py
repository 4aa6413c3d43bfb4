"""Decoding images safely and serving them to a DataLoader.

Every image becomes 8-bit RGB: palette and RGBA/LA images are composited on white, greyscale (including
16-bit and float) is scaled to 8 bits and expanded. A missing or undecodable file raises
:class:`DipclipError` naming it; with ``skip_bad_images`` the dataset yields a :class:`BadImage` marker
instead, :func:`collate_skipping_bad` drops it and the batch's ``skipped`` lists the paths so the trainer
can count and report them. Images above :data:`MAX_IMAGE_PIXELS` are refused before they are decoded.
Only regular files are opened: a named pipe, device or socket in a split is refused (or skipped) without
being opened, since opening one can block forever.
"""

from __future__ import annotations

import contextlib
import os
import stat
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import DipclipError
from .types import Datum

# Pillow's own default bomb limit is ~89 Mpx (a warning) and twice that an error; we refuse anything
# above this many pixels with a clear message instead of risking tens of GB of RAM.
MAX_IMAGE_PIXELS = 120_000_000


def _file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def open_regular(path: str, fix: str | None = None) -> BinaryIO:
    """``path`` opened for reading once it is known to be a regular file (symlinks to one are fine).

    A named pipe, device or socket is refused from ``stat`` alone, before any ``open``: opening a pipe
    blocks until a writer appears, which could be never. The file is opened non-blocking and checked again
    on its descriptor, so one swapped in between is refused too.
    """
    fix = fix or "fix the split file (for a dataset, `dipclip doctor` lists every bad file)"
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        if any(char in str(path) for char in "*?["):  # a shell passes a pattern that matched nothing as it is
            raise DipclipError(f"no file matches {path}; check the pattern and the folder ({fix})") from None
        raise DipclipError(f"image not found: {path}; check the path ({fix})") from None
    except OSError as exc:  # a symlink loop, a name too long, no permission
        raise DipclipError(f"cannot read image {path} ({exc.strerror}); {fix}") from None
    if not stat.S_ISREG(info.st_mode):
        raise DipclipError(f"image path {path} is {_file_kind(info.st_mode)}, not an image file; {fix}")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        raise DipclipError(f"cannot read image {path} ({exc.strerror}); {fix}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise DipclipError(f"image path {path} is {_file_kind(mode)}, not an image file; {fix}")
    return os.fdopen(fd, "rb")


@contextlib.contextmanager
def _opened_image(path: str, fix: str | None = None) -> Iterator[Image.Image]:
    """The lazily decoded image at ``path`` (header read, size checked); every failure is a DipclipError
    whose fix is ``fix`` where the caller knows better than the split-file default (``predict``)."""
    try:
        with open_regular(path, fix) as handle, warnings.catch_warnings():
            # Pillow warns from ~89 Mpx; our own limit below decides, so that the threshold is one number.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(handle) as img:
                w, h = img.size
                if w * h > MAX_IMAGE_PIXELS:
                    raise DipclipError(
                        f"image {path} is {w}x{h} ({w * h / 1e6:.0f} Mpx), above the {MAX_IMAGE_PIXELS / 1e6:.0f} Mpx "
                        "safety limit; downscale it or remove it from the split"
                    )
                yield img
    except DipclipError:
        raise
    except Image.DecompressionBombError as exc:
        raise DipclipError(f"image {path} refused as a decompression bomb ({exc}); downscale it") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        reason = "not an image format Pillow knows" if isinstance(exc, UnidentifiedImageError) else exc
        raise DipclipError(
            f"cannot decode image {path} ({reason}); {fix or 'replace the file or pass --skip-bad-images'}"
        ) from None


def load_rgb(path: str, fix: str | None = None) -> Image.Image:
    """Open an image as RGB; RGBA/LA/palette images are composited on white, greyscale is expanded."""
    with _opened_image(path, fix) as img:
        img.load()
        return to_rgb(img)


def check_image(path: str, fix: str | None = None) -> None:
    """Raise :class:`DipclipError` unless ``path`` is a regular file whose header decodes, within the pixel
    limit. Reads the header and checks the file's structure (PNG chunk checksums, ...) without decoding the
    pixels, so checking a split costs a fraction of encoding it."""
    with _opened_image(path, fix) as img:
        img.verify()


def to_rgb(img: Image.Image) -> Image.Image:
    """``img`` as 8-bit RGB (see the module docstring for how each mode is converted)."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I") or img.mode == "F":
        img = _high_depth_to_l(img)
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


def _high_depth_to_l(img: Image.Image) -> Image.Image:
    """16/32-bit integer or float greyscale to 8 bits by scaling (Pillow's own conversion clips at 255)."""
    arr = np.asarray(img, dtype=np.float64)
    if img.mode.startswith("I;16"):
        top = 65535.0
    else:
        top = float(arr.max()) if arr.size and arr.max() > 255 else 255.0
    arr = np.clip(np.nan_to_num(arr) * (255.0 / top), 0, 255)
    return Image.fromarray(arr.round().astype(np.uint8))  # 2-D uint8 -> mode "L"


@dataclass(frozen=True)
class BadImage:
    """What :class:`ImageDataset` yields for an image it skipped: which file and why."""

    index: int
    path: str
    reason: str

    def __bool__(self) -> bool:
        return False


class ImageDataset(torch.utils.data.Dataset):
    """(image tensor, label, index) for a list of items.

    With ``skip_bad_images`` a file that cannot be decoded yields a falsy :class:`BadImage`, which
    :func:`collate_skipping_bad` drops (its path goes to the batch's ``skipped``). ``bad_paths`` collects
    them too, in the process that decoded them (the main process when ``num_workers=0``).
    """

    def __init__(self, items: Sequence[Datum], transform: Callable, skip_bad_images: bool = False):
        self.items = list(items)
        self.transform = transform
        self.skip_bad_images = skip_bad_images
        self.bad_paths: list[str] = []

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        item = self.items[index]
        try:
            image = load_rgb(item.path)
        except DipclipError as exc:
            if self.skip_bad_images:
                self.bad_paths.append(item.path)
                return BadImage(index, item.path, str(exc))
            raise
        return self.transform(image), item.label, index


class Batch(tuple):
    """``(images, labels, indices)``, unpackable as a plain tuple, plus ``skipped``: paths dropped from it."""

    skipped: tuple[str, ...]

    def __new__(cls, images, labels, indices, skipped: Sequence[str] = ()):
        self = super().__new__(cls, (images, labels, indices))
        self.skipped = tuple(skipped)
        return self

    def __reduce__(self):  # survives the trip from DataLoader workers
        return (Batch, (self[0], self[1], self[2], self.skipped))

    def pin_memory(self, device=None) -> Batch:
        """DataLoader calls this with ``pin_memory=True``; keeps ``skipped``."""
        return Batch(*(t.pin_memory() for t in self), skipped=self.skipped)

    def to(self, *args, **kwargs) -> Batch:
        return Batch(*(t.to(*args, **kwargs) for t in self), skipped=self.skipped)


def collate_skipping_bad(batch) -> Batch | None:
    """Stack the good items of ``batch``; ``None`` when every item was skipped."""
    good = [b for b in batch if b is not None and not isinstance(b, BadImage)]
    skipped = [b.path for b in batch if isinstance(b, BadImage)]
    if not good:
        return None
    images = torch.stack([b[0] for b in good])
    labels = torch.tensor([b[1] for b in good], dtype=torch.long)
    indices = torch.tensor([b[2] for b in good], dtype=torch.long)
    return Batch(images, labels, indices, skipped=skipped)
