"""Zero-shot accuracy on a CoOp-format split, with the library's own image pipeline.

Used by the recipe (on the model it is about to ship) and by the tests (on the model as shipped), so both
report the same number for the same thing: overall, base half and new half, as in base-to-new tables.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F


def read_split(dataset_dir: Path, split: str = "test") -> tuple[list[tuple[str, int]], list[str]]:
    """``[(absolute image path, label)]`` of one split and the class names in label order."""
    data = json.loads(next(Path(dataset_dir).glob("split_zhou_*.json")).read_text())
    names: dict[int, str] = {}
    for rows in data.values():
        for _, label, classname in rows:
            names[int(label)] = classname
    classnames = [names[i] for i in range(len(names))]
    root = Path(dataset_dir) / "images"
    return [(str(root / rel), int(label)) for rel, label, _ in data[split]], classnames


@torch.no_grad()
def image_features(model, paths: list[str], image_size: int, batch_size: int = 128) -> torch.Tensor:
    from ..data.images import load_rgb
    from ..data.transforms import test_transform

    transform = test_transform(image_size)
    feats = []
    for start in range(0, len(paths), batch_size):
        batch = torch.stack([transform(load_rgb(p)) for p in paths[start:start + batch_size]])
        feats.append(F.normalize(model.encode_image(batch).float(), dim=-1))
    return torch.cat(feats)


@torch.no_grad()
def text_features(model, tokenizer, classnames: list[str], template: str) -> torch.Tensor:
    prompts = [template.format(c.replace("_", " ")) for c in classnames]
    return F.normalize(model.encode_text(tokenizer(prompts)).float(), dim=-1)


def zero_shot_report(model, tokenizer, dataset_dir: Path, templates: tuple[str, ...], image_size: int,
                     split: str = "test") -> dict:
    """``{template: {"all": %, "base": %, "new": %}}`` plus class and image counts.

    Base = the first ceil(n/2) labels, new = the rest; each half is classified among its own classes only,
    exactly as base-to-new evaluation does.
    """
    model.eval()
    items, classnames = read_split(dataset_dir, split)
    feats = image_features(model, [p for p, _ in items], image_size)
    labels = torch.tensor([label for _, label in items])
    n_base = math.ceil(len(classnames) / 2)
    report: dict = {"classes": len(classnames), "images": len(items), "base_classes": n_base,
                    "chance_all": round(100 / len(classnames), 2)}
    for template in templates:
        text = text_features(model, tokenizer, classnames, template)
        sims = feats @ text.T
        row = {"all": float((sims.argmax(1) == labels).float().mean() * 100)}
        for half, lo, hi in (("base", 0, n_base), ("new", n_base, len(classnames))):
            mask = (labels >= lo) & (labels < hi)
            pred = sims[mask][:, lo:hi].argmax(1) + lo
            row[half] = float((pred == labels[mask]).float().mean() * 100)
        report[template] = {k: round(v, 2) for k, v in row.items()}
    return report
