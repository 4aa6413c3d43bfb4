"""Per-dataset hand-crafted templates of the methods that regularise towards zero-shot CLIP, by dipclip key.

Each table is the one in its authors' trainer (KgCoOp: ``trainers/kgcoop.py``; ProGrad:
``ProGrad.public/trainers/prograd.py``), re-keyed from Dassl dataset names to dipclip's dataset keys. They
differ from each other and from the zero-shot templates (``data.registry``: CoOp's ``zsclip.py``), e.g. DTD
is "{} texture." for zero-shot, "a photo of a {}, a type of texture." for KgCoOp and "a texture of {}." for
ProGrad. A dataset without an entry (imagefolder, csv, demo) uses :data:`FALLBACK_TEMPLATE`.
"""

from __future__ import annotations

FALLBACK_TEMPLATE = "a photo of a {}."

_IMAGENET_FAMILY = ("imagenet", "imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r")

KGCOOP_TEMPLATES: dict[str, str] = {
    "oxford_pets": "a photo of a {}, a type of pet.",
    "oxford_flowers": "a photo of a {}, a type of flower.",
    "fgvc_aircraft": "a photo of a {}, a type of aircraft.",
    "dtd": "a photo of a {}, a type of texture.",
    "eurosat": "a centered satellite photo of {}.",
    "stanford_cars": "a photo of a {}.",
    "food101": "a photo of {}, a type of food.",
    "sun397": "a photo of a {}.",
    "caltech101": "a photo of a {}.",
    "ucf101": "a photo of a person doing {}.",
    **{key: "a photo of a {}." for key in _IMAGENET_FAMILY},
}

PROGRAD_TEMPLATES: dict[str, str] = {
    "oxford_pets": "a type of pet, a photo of a {}.",
    "oxford_flowers": "a type of flower, a photo of a {}.",
    "fgvc_aircraft": "a type of aircraft, a photo of a {}.",
    "dtd": "a texture of {}.",
    "eurosat": "a centered satellite photo of {}.",
    "stanford_cars": "a photo of a {}.",
    "food101": "a type of food, a photo of {}.",
    "sun397": "a photo of a {}.",
    "caltech101": "a photo of a {}.",
    "ucf101": "a photo of a person doing {}.",
    **{key: "a photo of a {}." for key in _IMAGENET_FAMILY},
}


def template_for(table: dict[str, str], dataset: str | None) -> str:
    """The table's template of ``dataset``, or :data:`FALLBACK_TEMPLATE` for a dataset it does not list."""
    return table.get(dataset or "", FALLBACK_TEMPLATE)
