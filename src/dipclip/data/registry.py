"""What each dataset key means on disk, and the facts ``doctor`` checks a folder against.

The folder names, image roots, split files, class counts and base/new counts are those of the CoOp
family's DATASETS.md layout, so that a ``--data`` folder prepared for CoOp, CoCoOp, MaPLe, PromptSRC,
KgCoOp or ProGrad works unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import DipclipError

DEFAULT_TEMPLATE = "a photo of a {}."


@dataclass(frozen=True)
class DatasetInfo:
    """Static description of one dataset key.

    ``layout`` selects the reader: ``json`` (a ``split_zhou_*.json``), ``aircraft`` (FGVC text files),
    ``imagenet`` (``classnames.txt`` + ``images/{train,val}/<wnid>/``), ``imagenetv2`` (numeric
    folders), ``wnid`` (``classnames.txt`` + ``<image_dir>/<wnid>/``), or the custom ``imagefolder`` and
    ``csv``. ``split_sizes`` (train, val, test) are the sizes of the published splits; ``None`` where a
    size is not fixed or not known.
    """

    key: str
    title: str
    folder: str
    image_dir: str
    layout: str
    template: str = DEFAULT_TEMPLATE
    split_file: str | None = None
    num_classes: int | None = None
    base_new: tuple[int, int] | None = None
    split_sizes: tuple[int | None, int | None, int | None] | None = None
    test_only: bool = False
    present_only: bool = False  # ImageNet-A/R: only the wnids present as folders are classes

    @property
    def expected_layout(self) -> str:
        """One line describing the expected files, for error messages."""
        img = f"{self.folder}/{self.image_dir}/" if self.image_dir else f"{self.folder}/"
        if self.layout == "json":
            return f"{self.folder}/{self.split_file} with images under {img}"
        if self.layout == "aircraft":
            return (f"{self.folder}/variants.txt, {self.folder}/images_variant_{{train,val,test}}.txt "
                    f"and images under {img}")
        if self.layout == "imagenet":
            return f"{self.folder}/classnames.txt and {img}train/<wnid>/, {img}val/<wnid>/"
        if self.layout == "imagenetv2":
            return f"{self.folder}/classnames.txt and {img}<0..999>/"
        if self.layout == "wnid":
            return f"{self.folder}/classnames.txt and {img}<wnid>/"
        if self.layout == "imagefolder":
            return "ROOT/<class>/<image> or ROOT/{train,val,test}/<class>/<image> (or ROOT/split_dipclip.json)"
        if self.layout == "csv":
            return "a CSV file path,label[,classname][,split], or a folder with train.csv[, val.csv], test.csv"
        return self.folder


def _json(key, title, folder, image_dir, split_name, n, base_new, sizes, template=DEFAULT_TEMPLATE):
    return DatasetInfo(key=key, title=title, folder=folder, image_dir=image_dir, layout="json",
                       template=template, split_file=f"split_zhou_{split_name}.json", num_classes=n,
                       base_new=base_new, split_sizes=sizes)


# Split sizes are those of the published CoOp splits (CoOp paper, dataset statistics table); each is
# consistent with the source dataset's own size (e.g. pets 2944 + 736 = the 3680 trainval images).
DATASETS: dict[str, DatasetInfo] = {
    info.key: info
    for info in [
        DatasetInfo(key="imagenet", title="ImageNet", folder="imagenet", image_dir="images",
                    layout="imagenet", num_classes=1000, base_new=(500, 500),
                    split_sizes=(1_281_167, 50_000, 50_000)),
        _json("caltech101", "Caltech101", "caltech-101", "101_ObjectCategories", "Caltech101", 100, (50, 50),
              (4128, 1649, 2465)),
        _json("oxford_pets", "OxfordPets", "oxford_pets", "images", "OxfordPets", 37, (19, 18),
              (2944, 736, 3669), template="a photo of a {}, a type of pet."),
        _json("stanford_cars", "StanfordCars", "stanford_cars", "", "StanfordCars", 196, (98, 98),
              (6509, 1635, 8041)),
        _json("oxford_flowers", "OxfordFlowers", "oxford_flowers", "jpg", "OxfordFlowers", 102, (51, 51),
              (4093, 1633, 2463), template="a photo of a {}, a type of flower."),
        _json("food101", "Food101", "food-101", "images", "Food101", 101, (51, 50),
              (50500, 20200, 30300), template="a photo of {}, a type of food."),
        DatasetInfo(key="fgvc_aircraft", title="FGVCAircraft", folder="fgvc_aircraft", image_dir="images",
                    layout="aircraft", template="a photo of a {}, a type of aircraft.", num_classes=100,
                    base_new=(50, 50), split_sizes=(3334, 3333, 3333)),
        _json("sun397", "SUN397", "sun397", "SUN397", "SUN397", 397, (199, 198), (15880, 3970, 19850)),
        _json("dtd", "DescribableTextures", "dtd", "images", "DescribableTextures", 47, (24, 23),
              (2820, 1128, 1692), template="{} texture."),
        _json("eurosat", "EuroSAT", "eurosat", "2750", "EuroSAT", 10, (5, 5), (13500, 5400, 8100),
              template="a centered satellite photo of {}."),
        _json("ucf101", "UCF101", "ucf101", "UCF-101-midframes", "UCF101", 101, (51, 50), (7639, 1898, 3783),
              template="a photo of a person doing {}."),
        DatasetInfo(key="imagenetv2", title="ImageNetV2", folder="imagenetv2",
                    image_dir="imagenetv2-matched-frequency-format-val", layout="imagenetv2",
                    num_classes=1000, split_sizes=(None, None, 10_000), test_only=True),
        DatasetInfo(key="imagenet_sketch", title="ImageNet-Sketch", folder="imagenet-sketch", image_dir="images",
                    layout="wnid", num_classes=1000, split_sizes=(None, None, 50_889), test_only=True),
        DatasetInfo(key="imagenet_a", title="ImageNet-A", folder="imagenet-adversarial", image_dir="imagenet-a",
                    layout="wnid", num_classes=200, split_sizes=(None, None, 7_500), test_only=True,
                    present_only=True),
        DatasetInfo(key="imagenet_r", title="ImageNet-R", folder="imagenet-rendition", image_dir="imagenet-r",
                    layout="wnid", num_classes=200, split_sizes=(None, None, 30_000), test_only=True,
                    present_only=True),
    ]
}

# The two custom layouts: ``--data`` points at the data itself, not at a folder of datasets.
CUSTOM: dict[str, DatasetInfo] = {
    "imagefolder": DatasetInfo(key="imagefolder", title="ImageFolder", folder="", image_dir="",
                               layout="imagefolder"),
    "csv": DatasetInfo(key="csv", title="CSV", folder="", image_dir="", layout="csv"),
}

# Shipped inside the package (built from held-out public-domain clip art, see dipclip.pretrain); `--data` may
# be omitted for it. Not one of the published datasets, so `--datasets all` never includes it.
EMBEDDED_DATASETS: dict[str, DatasetInfo] = {
    "demo": DatasetInfo(key="demo", title="Demo", folder="demo", image_dir="images", layout="json",
                        split_file="split_zhou_Demo.json"),
    "demo_fashion": DatasetInfo(key="demo_fashion", title="DemoFashion", folder="demo_fashion", image_dir="images",
                                layout="json", split_file="split_zhou_DemoFashion.json"),
}

# The 15 CoOp-layout keys, in the order of the reference table, then the custom ones.
STANDARD_KEYS: tuple[str, ...] = tuple(DATASETS)
DATASET_KEYS: tuple[str, ...] = STANDARD_KEYS + tuple(CUSTOM) + tuple(EMBEDDED_DATASETS)
# The 11 datasets of the base-to-new, few-shot and cross-dataset tables, and the 4 ImageNet variants.
TRAINABLE_KEYS: tuple[str, ...] = tuple(k for k, v in DATASETS.items() if not v.test_only)
DG_KEYS: tuple[str, ...] = ("imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r")


def dataset_info(key: str) -> DatasetInfo:
    """The metadata of ``key``; a :class:`DipclipError` listing the known keys otherwise."""
    if key in DATASETS:
        return DATASETS[key]
    if key in CUSTOM:
        return CUSTOM[key]
    if key in EMBEDDED_DATASETS:
        return EMBEDDED_DATASETS[key]
    raise DipclipError(f"unknown dataset {key!r}; choose one of: {', '.join(DATASET_KEYS)}")
