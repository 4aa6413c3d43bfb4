"""Zero-shot CLIP: class text features from hand-written templates (one, or an averaged ensemble)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..backbones.loading import Backbone
from ..errors import DipclipError
from ..prompts.class_prompts import clean_classname, require_distinct_texts

# The seven templates CoOp's prompt-ensembling zero-shot baseline averages (CLIP's "best 7" for ImageNet).
ENSEMBLE_TEMPLATES = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)


def ensemble_templates(dataset: str | None, dataset_template: str) -> list[str]:
    """The templates of CoOp's ensemble baseline: the seven above, then the dataset's own template, which is
    left out for ImageNet itself (its template is already CLIP's ImageNet prompt). The ImageNet variants and
    every other dataset (custom ones too) get theirs added."""
    templates = list(ENSEMBLE_TEMPLATES)
    if dataset != "imagenet":
        templates.append(dataset_template)
    return templates


@torch.no_grad()
def template_text_features(backbone: Backbone, classnames: Sequence[str], templates: Sequence[str],
                           chunk_size: int = 256) -> list[torch.Tensor]:
    """Per template, the unnormalised fp32 text features [C, D] of every class (checked class list and templates)."""
    if not classnames:
        raise DipclipError("the class list is empty; give at least one class name")
    bad = [t for t in templates if "{}" not in t]
    if not templates or bad:
        raise DipclipError(f"templates must contain '{{}}' where the class name goes, got {bad or 'none'}")
    names = [clean_classname(c) for c in classnames]
    # tokenized in one call, so that a model missing words warns once, not once per template
    token_ids = backbone.tokenize([template.format(name) for template in templates for name in names])
    require_distinct_texts(backbone, names, token_ids[:len(names)])
    per_template = []
    for start in range(0, len(token_ids), len(names)):
        ids = token_ids[start:start + len(names)]
        per_template.append(torch.cat([backbone.text.encode_token_ids(ids[i : i + chunk_size]).float()
                                       for i in range(0, len(ids), chunk_size)]))
    return per_template


@torch.no_grad()
def zeroshot_text_features(backbone: Backbone, classnames: Sequence[str], templates: Sequence[str],
                           chunk_size: int = 256) -> torch.Tensor:
    """Normalised [C, D] features; with several templates, the renormalised mean of their features."""
    total = None
    for features in template_text_features(backbone, classnames, templates, chunk_size):
        features = nn.functional.normalize(features, dim=-1)
        total = features if total is None else total + features  # in template order, as before
    return nn.functional.normalize(total, dim=-1)
