"""Tiny on-disk fixtures in the CoOp dataset layouts (8x8 images, a handful per class)."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
from PIL import Image


def write_image(path: Path, color=(200, 30, 30), mode: str = "RGB", size=(8, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    Image.new(mode, size, color).save(path, fmt)
    return path


class Fixtures:
    """Builders for dataset folders under one ``--data`` root."""

    def __init__(self, root: Path):
        self.root = root

    def json_dataset(self, folder="oxford_pets", image_dir="images", split_file="split_zhou_OxfordPets.json",
                     classes=("abyssinian", "american bulldog", "beagle"), sizes=(4, 2, 2), images=True) -> dict:
        """A split_zhou JSON with ``sizes`` (train, val, test) images per class, items interleaved by class."""
        base = self.root / folder
        img_root = base / image_dir if image_dir else base
        split = {}
        for split_name, n in zip(("train", "val", "test"), sizes, strict=True):
            rows = []
            for i in range(n):
                for label, name in enumerate(classes):
                    rel = f"{name.replace(' ', '_')}/{split_name}_{i}.jpg"
                    rows.append([rel, label, name])
                    if images:
                        write_image(img_root / rel, color=(label * 40 % 256, i * 30 % 256, 100))
            split[split_name] = rows
        img_root.mkdir(parents=True, exist_ok=True)
        (base / split_file).write_text(json.dumps(split))
        return split

    def aircraft(self, variants=("707-320", "A300B4", "Cessna 172"), sizes=(3, 2, 2)) -> None:
        base = self.root / "fgvc_aircraft"
        (base / "images").mkdir(parents=True)
        (base / "variants.txt").write_text("".join(v + "\n" for v in variants))
        n = 0
        for split, k in zip(("train", "val", "test"), sizes, strict=True):
            lines = []
            for v in variants:
                for _ in range(k):
                    image_id = f"{1000000 + n:07d}"
                    n += 1
                    lines.append(f"{image_id} {v}\n")
                    write_image(base / "images" / f"{image_id}.jpg")
            (base / f"images_variant_{split}.txt").write_text("".join(lines))

    def classnames_txt(self, folder: str, classes: dict[str, str]) -> None:
        base = self.root / folder
        base.mkdir(parents=True, exist_ok=True)
        (base / "classnames.txt").write_text("".join(f"{w} {n}\n" for w, n in classes.items()))

    def imagenet(self, classes: dict[str, str], per_class=(3, 2)) -> None:
        self.classnames_txt("imagenet", classes)
        for split, k in zip(("train", "val"), per_class, strict=True):
            for wnid in classes:
                for i in range(k):
                    write_image(self.root / "imagenet" / "images" / split / wnid / f"{wnid}_{i}.JPEG")

    def wnid_folders(self, folder: str, image_dir: str, classes: dict[str, str], present, per_class=2) -> None:
        self.classnames_txt(folder, classes)
        for wnid in present:
            for i in range(per_class):
                write_image(self.root / folder / image_dir / wnid / f"{i}.jpg")

    def imagenetv2(self, classes: dict[str, str], per_class=2) -> None:
        self.classnames_txt("imagenetv2", classes)
        for label in range(len(classes)):
            for i in range(per_class):
                write_image(self.root / "imagenetv2" / "imagenetv2-matched-frequency-format-val" / str(label)
                            / f"{i}.jpeg")


@pytest.fixture
def write_img():
    """The image writer, for tests that build their own trees."""
    return write_image


@pytest.fixture
def fx(tmp_path) -> Fixtures:
    return Fixtures(tmp_path / "data")


WNIDS = {
    "n01440764": "tench",
    "n01443537": "goldfish",
    "n01484850": "great white shark",
    "n01491361": "tiger shark",
    "n01494475": "hammerhead shark",
    "n01496331": "electric ray",
}


@pytest.fixture
def wnids() -> dict[str, str]:
    return dict(WNIDS)

@pytest.fixture
def dassl_datum(monkeypatch):
    """Dassl's Datum class under its real module path, so pickles reference it exactly as Dassl's do."""
    names = ["dassl", "dassl.data", "dassl.data.datasets", "dassl.data.datasets.base_dataset"]
    modules = {n: types.ModuleType(n) for n in names}

    class Datum:  # mirrors dassl.data.datasets.base_dataset.Datum
        def __init__(self, impath="", label=0, domain=0, classname=""):
            self._impath = impath
            self._label = label
            self._domain = domain
            self._classname = classname

    Datum.__module__ = names[-1]
    Datum.__qualname__ = "Datum"
    modules[names[-1]].Datum = Datum
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return Datum
