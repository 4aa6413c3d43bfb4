"""CLIP preprocessing as the CoOp family uses it (bicubic, CLIP mean/std)."""

from __future__ import annotations

from torchvision import transforms as T

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def test_transform(image_size: int, mean=CLIP_MEAN, std=CLIP_STD) -> T.Compose:
    """Resize the short side to ``image_size``, centre crop."""
    return T.Compose([
        T.Resize(image_size, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(image_size),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


RECIPE_CROP_SCALE = 0.08  # Dassl's INPUT.RRCROP_SCALE (0.08, 1.0), which every CoOp-family recipe keeps


def train_transform(image_size: int, mean=CLIP_MEAN, std=CLIP_STD, crop_scale: float = RECIPE_CROP_SCALE
                    ) -> T.Compose:
    """Random resized crop (a share ``crop_scale``-1 of the area) and horizontal flip, as CoOp's recipes."""
    return T.Compose([
        T.RandomResizedCrop(image_size, scale=(crop_scale, 1.0), interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])
