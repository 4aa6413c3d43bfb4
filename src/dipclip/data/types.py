"""The two data types every reader returns and every consumer (trainer, protocols, caches) takes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Datum:
    """One labelled image. ``path`` is absolute at run time; caches store it relative to the image root."""

    path: str
    label: int
    classname: str


@dataclass
class DatasetSplits:
    """A dataset as its split files define it.

    ``classnames`` is indexed by label and comes from the split files (or ``classnames.txt``), never from
    the training items, so that a few-shot subset cannot silently drop a class.
    """

    name: str
    classnames: list[str]
    train: list[Datum] = field(default_factory=list)
    val: list[Datum] = field(default_factory=list)
    test: list[Datum] = field(default_factory=list)
    image_root: Path | None = None
    template: str = "a photo of a {}."

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def split(self, name: str) -> list[Datum]:
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}; expected train, val or test")
        return getattr(self, name)
