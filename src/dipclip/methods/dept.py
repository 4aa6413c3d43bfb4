"""DePT (Zhang et al., CVPR 2024): a prompt method plus a decoupled, channel-adjusted head for the base classes.

Follows the authors' code (Koorye/DePT, ``ExtrasLinearProbeCoOp``): channel-wise transforms (cwT: a learned
scale, init 1, and shift, init 0, per feature channel) on the text and on the image features, then a linear
classifier over the training classes, fed during training with both the transformed image features and the
transformed text features of each image's class (labels repeated). Both inputs are the *unnormalised*
projected features, as theirs (the similarity logits use the normalised ones): training reads them from the
feature store, which keeps them beside the normalised ones (the image tower is frozen), and ``logits`` takes
either those [B, D] or images [B, 3, H, W] (evaluation and predict, while the head is on). Loss = 0.3 *
CE(prompt similarity logits) + 0.7 * CE(head logits). At inference the logits are fused the same way (0.3 *
similarity + 0.7 * head) on the training classes, and on any subset of them, with the head's rows clipped to
those classes: the authors keep the head for ImageNet-family targets and clip it to the 200 classes of
ImageNet-A and -R (by wnid folder; dipclip by name, which gives the same rows: :func:`head_rows`). On any
other class list (new classes, other datasets) only the prompt's similarity logits are used, so new-class
accuracy is the prompt's own. The head and the cwT layers learn at 6.5 x the prompt's
learning rate (the authors' staged lr; published: SGD lr 0.0035, batch 4, 10 epochs).
"""

from __future__ import annotations

import torch
from torch import nn

from ..backbones.loading import Backbone, normalize_image_features
from ..errors import DipclipError
from ..prompts.class_prompts import clean_classname
from .base import OptimConfig, PromptCLIP, PromptConfig, PromptMethod, rows_by_name

HEAD_WEIGHT = 0.7
HEAD_LR_SCALE = 6.5
HEAD_MODULES = ("head", "text_transform", "image_transform")


def raw_image_features(backbone: Backbone, inputs: torch.Tensor) -> torch.Tensor:
    """Unnormalised image features: ``inputs`` themselves when they are stored ones [B, D], else those of the
    images [B, 3, H, W] through the frozen image tower."""
    return inputs if inputs.ndim == 2 else backbone.encode_images(inputs, normalize=False)


class ChannelTransform(nn.Module):
    """y = scale * x + shift per channel (the authors' cwT/FiLM without conditioning)."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))
        self.shift = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


def head_rows(train_classnames: list[str], classnames: list[str]) -> torch.Tensor | None:
    """Rows of a head over ``train_classnames`` for ``classnames``, or None when some class is not among them.

    The authors clip the head to ImageNet-A/R by wnid folder (``elp_coop.py`` ``load_model``: a mask over
    ImageNet's classnames.txt); dipclip matches by name, which is the same wherever a name is unique. CLIP's
    ImageNet names repeat two ("missile", "sunglasses"): a repeated name takes the one training row that keeps
    the class order around it (the targets list their classes in classnames.txt order, as the source does),
    which is the row the folder gives; a repeated name that the order cannot settle is refused."""
    if [clean_classname(n) for n in classnames] == [clean_classname(n) for n in train_classnames]:
        return torch.arange(len(classnames), dtype=torch.long)
    try:
        return rows_by_name(train_classnames, classnames, "DePT's head rows")
    except DipclipError:  # a repeated training name among the asked ones
        return _rows_by_class_order(train_classnames, classnames)


def _rows_by_class_order(train_classnames: list[str], classnames: list[str]) -> torch.Tensor:
    index: dict[str, list[int]] = {}
    for i, name in enumerate(train_classnames):
        index.setdefault(clean_classname(name), []).append(i)
    asked = [clean_classname(name) for name in classnames]
    rows: list[int | None] = [index[name][0] if len(index[name]) == 1 else None for name in asked]
    for position, name in enumerate(asked):
        if rows[position] is not None:
            continue
        below = max((r for r in rows[:position] if r is not None), default=-1)
        above = min((r for r in rows[position + 1:] if r is not None), default=len(train_classnames))
        fits = [i for i in index[name] if below < i < above and i not in rows]
        if len(fits) != 1:
            raise DipclipError(f"class name {classnames[position]!r} occurs more than once among the training "
                               "classes and the class order does not tell which one is meant, so DePT's head "
                               "rows cannot be matched to it; make the class names unique")
        rows[position] = fits[0]
    return torch.tensor(rows, dtype=torch.long)


class DePTCLIP(PromptCLIP):
    has_class_head = True

    def __init__(self, backbone: Backbone, classnames: list[str], prompt_cfg: PromptConfig):
        super().__init__(backbone, classnames, prompt_cfg)
        dim = backbone.text.output_dim
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(prompt_cfg.init_seed)
            self.text_transform = ChannelTransform(dim)
            self.image_transform = ChannelTransform(dim)
            self.head = nn.Linear(dim, len(classnames))
        # the head's rows for the current class list (all of them on the training classes); None: head off
        self.register_buffer("rows", torch.arange(len(classnames)), persistent=False)
        self.to(backbone.device)

    def set_classnames(self, classnames: list[str]) -> None:
        super().set_classnames(classnames)
        rows = head_rows(self.train_classnames, self.classnames)
        self.rows = None if rows is None else rows.to(self.head.weight.device)

    @property
    def head_active(self) -> bool:
        return self.rows is not None

    @property
    def image_conditioned(self) -> bool:  # the fused logits are not a fixed text classifier
        return self.head_active

    @property
    def image_prompted(self) -> bool:  # with the head on, logits() takes images: the head needs raw features
        return self.head_active

    @property
    def takes_raw_features(self) -> bool:  # ... or the stored unnormalised features [B, D] (training)
        return self.head_active

    def param_groups(self) -> list[dict]:
        named = self.learnable_named_parameters()
        head = [p for name, p in named if name.split(".")[0] in HEAD_MODULES]
        prompt = [p for name, p in named if name.split(".")[0] not in HEAD_MODULES]
        return [{"params": prompt, "lr_scale": 1.0}, {"params": head, "lr_scale": HEAD_LR_SCALE}]

    def raw_text_features(self) -> torch.Tensor:
        return self.class_prompts(self.context_matrix()).float()

    def head_logits(self, raw_image_features: torch.Tensor) -> torch.Tensor:
        """The head over the current classes (its rows clipped to them) of unnormalised image features."""
        return self.head(self.image_transform(raw_image_features))[:, self.rows]

    def logits(self, inputs: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        """With the head on, ``inputs`` are images [B, 3, H, W] or unnormalised image features [B, D];
        otherwise normalised image features."""
        if not self.head_active:
            return super().logits(inputs, text_features)
        raw_image = raw_image_features(self.backbone, inputs)
        if text_features is None:
            text_features = nn.functional.normalize(self.raw_text_features(), dim=-1)
        image = normalize_image_features(raw_image)
        similarity = self.backbone.logits(image, text_features)
        return (1 - HEAD_WEIGHT) * similarity + HEAD_WEIGHT * self.head_logits(raw_image)


class DePT(PromptMethod):
    name = "dept"
    summary = "DePT: CoOp prompt + channel-adjusted linear head on the base classes (fused 0.3/0.7)"
    prompt_defaults = PromptConfig(parameterization="full")
    optim_defaults = OptimConfig(lr=0.0035)

    def build(self, backbone: Backbone, classnames: list[str], prompt_cfg: PromptConfig) -> PromptCLIP:
        return DePTCLIP(backbone, classnames, prompt_cfg)

    def loss(self, model: PromptCLIP, images: torch.Tensor, labels: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Training on the training classes: ``images`` are the batch's stored unnormalised features [B, D] (the
        trainer's default) or its augmented images [B, 3, H, W] (the same numbers up to float rounding)."""
        raw_image = raw_image_features(model.backbone, images)
        raw_text = model.raw_text_features()
        image = normalize_image_features(raw_image)
        similarity = model.backbone.logits(image, nn.functional.normalize(raw_text, dim=-1))
        head_inputs = torch.cat([model.text_transform(raw_text[labels]), model.image_transform(raw_image)])
        head_logits = model.head(head_inputs)
        loss = (1 - HEAD_WEIGHT) * nn.functional.cross_entropy(similarity, labels) + \
            HEAD_WEIGHT * nn.functional.cross_entropy(head_logits, torch.cat([labels, labels]))
        extra = self.extra_loss(model, image, similarity, labels)
        fused = (1 - HEAD_WEIGHT) * similarity + HEAD_WEIGHT * head_logits[len(labels):]
        return (loss if extra is None else loss + extra), fused
