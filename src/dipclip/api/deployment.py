"""Using a trained adapter outside training: :func:`predict` on images, its prompt's :func:`density`, and
:func:`export` of a classifier that reproduces ``predict`` without dipclip."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from ..adapters import load_adapter, model_from_adapter
from ..argcheck import checked, class_names
from ..backbones.loading import Backbone
from ..classifier import backbone_for_adapter as _backbone_for_adapter  # one rule for eval, export, predict
from ..classifier import trained_classnames as _trained_classnames
from ..density import density_report, singular_values
from ..engine.evaluate import classifier_text_features
from ..engine.reproducibility import atomic_write_bytes, atomic_write_json
from ..errors import DipclipError
from ..files import check_regular_file
from ..tensor_checks import OVERFLOW_FIX, require_finite
from .common import keep_other_results, load_data


@checked
def predict(
    images: Sequence[str],
    *,
    classnames: Sequence[str] | None = None,
    data: str | None = None,
    dataset: str | None = None,
    adapter: str | Path | None = None,
    model: str | None = None,
    pretrained: str | None = None,
    template: str = "a photo of a {}.",
    top_k: int = 5,
    device: str = "auto",
    out: str | Path | None = None,
    backbone: Backbone | None = None,
    output: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Top-k classes with probabilities for each image (zero-shot, or with an adapter), through
    :class:`~dipclip.classifier.Classifier`, so this equals ``Classifier.classify`` by construction.

    ``images`` are files, folders (their image files, recursively, sorted) and globs (``photos/*.jpg``,
    ``**`` for any depth); see :func:`~dipclip.classifier.expand_images`. ``output`` (``.csv`` or ``.json``)
    replaces only an earlier ``predict`` output; ``progress``: a bar on a terminal."""
    from ..classifier import IMAGE_FIX, Classifier, check_output, expand_images, write_predictions
    from ..data.images import check_image

    if not images:
        raise DipclipError("no images given; pass one or more image files, folders or globs")
    images = expand_images(images)
    keep_other_results(out, "predict", {"images": list(images)})
    check_output(output)
    for path in images:  # before any model is loaded; a FIFO or device would block the decoder forever
        if os.path.lexists(path):
            check_regular_file(path, "image", "give image files")
        check_image(path, IMAGE_FIX)  # predict has no split file nor --skip-bad-images
    if top_k < 1:
        raise DipclipError(f"--top-k must be >= 1, got {top_k}")
    if classnames is None and dataset is not None:
        classnames = load_data(data, dataset).classnames
    config = load_adapter(adapter).config if adapter is not None else {}
    classnames = classnames or _trained_classnames(config)  # an adapter's own classes by default
    if not classnames:
        raise DipclipError("no class names given; pass --classes a,b,c or --data ROOT --dataset KEY")
    classnames = class_names("the class list", list(classnames))  # a dataset's or adapter's too
    if adapter is not None:
        classifier = Classifier.from_adapter(adapter, classnames=classnames, model=model, pretrained=pretrained,
                                             device=device, backbone=backbone)
    else:
        classifier = Classifier.from_classnames(classnames, model=model, pretrained=pretrained, template=template,
                                                device=device, backbone=backbone)
    ranked = classifier.classify(images, top_k, progress=progress)
    predictions = [{"image": str(path), "top": [{"class": name, "probability": round(value, 6)}
                                                for name, value in top]}
                   for path, top in zip(images, ranked, strict=True)]
    payload = {"method": classifier.method, "classnames": classnames, "predictions": predictions}
    if out is not None:
        atomic_write_json(Path(out) / "predictions.json", payload)
    if output is not None:
        write_predictions(payload, output)
    return payload


@checked
def density(
    adapter: str | Path,
    *,
    k: int | None = None,
    energy: bool = False,
    model: str | None = None,
    pretrained: str | None = None,
    device: str = "cpu",
    out: str | Path | None = None,
    backbone: Backbone | None = None,
) -> dict:
    """Information Density of an adapter's merged prompt and of its learned update, for every k.

    An adapter whose class text features overflow is refused like in ``eval``/``predict``/``export``: its
    density would describe a prompt that classifies nothing."""
    keep_other_results(out, "density", {"adapter": str(adapter)})
    loaded = load_adapter(adapter)
    backbone = backbone or _backbone_for_adapter(loaded.config, model, pretrained, device)
    classnames = loaded.config.get("classnames") or ["object"]
    prompt_model = model_from_adapter(loaded, backbone, classnames)
    classifier_text_features(prompt_model)
    context = prompt_model.context
    prompt, update = context.merged(), context.merged() - context.initial
    m = min(prompt.reshape(-1, prompt.shape[-1]).shape)
    ks = [k] if k is not None else list(range(1, m + 1))
    with torch.no_grad():
        per_k = {}
        for value in ks:
            report = density_report(prompt, context.initial, value, energy, source=prompt_model.origin)
            per_k[str(value)] = {"id_prompt": report["id_prompt"], "id_update": report["id_update"]}
        singular = singular_values(prompt)  # finite: density_report refused the prompt otherwise
        update_norm = require_finite(update.double().norm(), f"{prompt_model.origin}: its update's norm",
                                     OVERFLOW_FIX)
    payload = {
        "adapter": str(adapter),
        "method": loaded.method,
        "energy": energy,
        "shape": list(prompt.shape),
        "singular_values": [round(s, 6) for s in singular.tolist()],
        "update_norm": round(float(update_norm), 6),
        "id": per_k,
    }
    if out is not None:
        atomic_write_json(Path(out) / "density.json", payload)
    return payload


@checked
def export(
    adapter: str | Path,
    *,
    classnames: Sequence[str] | None = None,
    data: str | None = None,
    dataset: str | None = None,
    model: str | None = None,
    pretrained: str | None = None,
    device: str = "cpu",
    out: str | Path = "export",
    backbone: Backbone | None = None,
) -> dict:
    """Write what reproduces ``predict`` without dipclip: ``classifier.safetensors`` (the merged prompt, the
    normalised class text-feature matrix, the logit scale as used, and the logit bias of SigLIP-style models)
    and ``classifier.json`` (class order, the test-time ``preprocess``, the ``logits`` formula, the backbone).

    ``logits = logit_scale * normalize(image_features) @ text_features.T`` (``+ logit_bias``); DePT on its
    training classes (or a subset) also exports its linear head and the fused formula. Methods whose classifier
    depends on the image (CoCoOp) or that prompt the image tower (MaPLe, PromptSRC) are refused.
    """
    from safetensors.torch import save
    from torchvision import transforms as T

    from ..data.transforms import test_transform

    keep_other_results(out, "export", {"adapter": str(adapter)})
    loaded = load_adapter(adapter)
    if classnames is None and dataset is not None:
        classnames = load_data(data, dataset).classnames
    classnames = list(classnames or _trained_classnames(loaded.config))
    if not classnames:
        raise DipclipError("no class names given; pass --classes a,b,c or --data ROOT --dataset KEY")
    class_names("the class list", classnames)  # a dataset's or adapter's too
    backbone = backbone or _backbone_for_adapter(loaded.config, model, pretrained, device)
    prompt_model = model_from_adapter(loaded, backbone, classnames)
    head = getattr(prompt_model, "has_class_head", False) and getattr(prompt_model, "head_active", False)
    elsewhere = "use `dipclip predict`, or `dipclip.Classifier.from_adapter(path)` in Python"
    if prompt_model.image_conditioned and not head:
        raise DipclipError(f"{loaded.method} prompts change with every image (its meta-net conditions them on the "
                           f"image features), so there is no fixed classifier to export; {elsewhere}")
    if prompt_model.image_prompted and not head:
        raise DipclipError(f"{loaded.method} also prompts the image tower, so its image features are not the "
                           f"backbone's and a text-feature matrix cannot reproduce it; {elsewhere}")
    similarity = "logit_scale * normalize(image_features) @ text_features.T" + (
        " + logit_bias" if backbone.logit_bias is not None else "")
    linear = _feature_linear(loaded.method, prompt_model, elsewhere)
    if linear is not None:  # a feature-space method whose head is one linear map of the features
        tensors = {"weight": linear[0], "bias": linear[1]}
        logits = {"formula": "normalize(image_features) @ weight.T + bias",
                  "image_features": "the backbone's encode_image(pixels) in float32, before normalisation; "
                                    "normalize = divide by its L2 norm"}
    else:
        tensors, logits = _prompt_classifier(prompt_model, backbone, similarity, head)
    for name, tensor in tensors.items():  # nothing non-finite is ever written
        require_finite(tensor, f"{prompt_model.origin}: its exported {name}", OVERFLOW_FIX)
    logits |= {"logit_scale": float(tensors["logit_scale"]) if "logit_scale" in tensors else None,
               "logit_bias": float(tensors["logit_bias"]) if "logit_bias" in tensors else None,
               "probabilities": "softmax(logits, dim=-1), columns in classnames order"}
    steps = {type(step): step for step in test_transform(backbone.image_size, backbone.mean, backbone.std).transforms}
    resize, crop, normalize = steps[T.Resize], steps[T.CenterCrop], steps[T.Normalize]
    preprocess = {  # read off the transform predict and eval apply, so it cannot drift from it
        "image_size": backbone.image_size,
        "convert": "RGB: 8-bit RGB as is; RGBA/LA/P composited on a white background; greyscale repeated to 3 "
                   "channels (Pillow's convert('RGB')); 16/32-bit greyscale first scaled to 8 bits",
        "resize": {"shorter_side": resize.size if isinstance(resize.size, int) else list(resize.size),
                   "interpolation": resize.interpolation.value, "max_size": resize.max_size,
                   "how": "Pillow Image.resize on the RGB image: shorter side to shorter_side, longer side "
                          "int(shorter_side * long / short), resample=Image.BICUBIC when interpolation is bicubic"},
        "center_crop": {"size": list(crop.size),
                        "how": "top = int(round((height - size[0]) / 2)), left = int(round((width - size[1]) / 2))"},
        "to_tensor": "float32 [3, H, W] = uint8 pixels / 255",
        "mean": [float(v) for v in normalize.mean],
        "std": [float(v) for v in normalize.std],
        "normalize": "(pixels - mean[c]) / std[c] per channel c",
    }
    out = Path(out)
    atomic_write_bytes(out / "classifier.safetensors", save(tensors, metadata={"method": loaded.method}))
    info = {
        "adapter": str(adapter),
        "method": loaded.method,
        "classnames": classnames,
        **{f"{name}_shape": list(tensors[name].shape) for name in ("prompt", "text_features", "weight")
           if name in tensors},
        "preprocess": preprocess,
        "logits": logits,
        "backbone": backbone.describe(),
        "files": ["classifier.safetensors", "classifier.json"],
    }
    atomic_write_json(out / "classifier.json", info)
    return info


@torch.no_grad()
def _prompt_classifier(prompt_model, backbone: Backbone, similarity: str, head: bool) -> tuple[dict, dict]:
    """(tensors, logits description) of a prompt model's exported classifier (DePT: with its linear head)."""
    tensors = {  # the prompt in the asked class order (a class-specific one's rows are matched by name)
        "prompt": prompt_model.context_matrix(merged=True).cpu().contiguous(),
        "text_features": classifier_text_features(prompt_model).cpu().contiguous(),
        # the scale exactly as backbone.logits multiplies by it: exp of the stored log-scale, as float32
        "logit_scale": backbone.logit_scale.detach().float().cpu().reshape(1),
    }
    if backbone.logit_bias is not None:  # SigLIP-style models: logits = scale * cos + bias
        tensors["logit_bias"] = backbone.logit_bias.detach().float().cpu().reshape(1)
    logits = {"formula": similarity,
              "image_features": "the backbone's encode_image(pixels) in float32, before normalisation; "
                                "normalize = divide by its L2 norm"}
    if head:  # DePT: fused with its linear head on the raw (unnormalised) image features
        from ..methods.dept import HEAD_WEIGHT

        rows = prompt_model.rows
        tensors |= {
            "head.weight": prompt_model.head.weight[rows].detach().float().cpu().contiguous(),
            "head.bias": prompt_model.head.bias[rows].detach().float().cpu().contiguous(),
            "image_transform.scale": prompt_model.image_transform.scale.detach().float().cpu().contiguous(),
            "image_transform.shift": prompt_model.image_transform.shift.detach().float().cpu().contiguous(),
        }
        weights = round(1 - HEAD_WEIGHT, 12), HEAD_WEIGHT  # the same float32 numbers DePT multiplies by
        logits |= {
            "formula": f"{weights[0]:g} * ({similarity}) + {weights[1]:g} * ((image_features * "
                       "image_transform.scale + image_transform.shift) @ head.weight.T + head.bias)",
            "similarity_weight": weights[0],
            "head_weight": weights[1],
        }
    return tensors, logits


def _feature_linear(method: str, model, elsewhere: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(weight [C, D], bias [C]) of a feature-space head that is one linear map of the normalised features; a
    head that is not (a cache, an MLP on raw features, LoRA'd towers) is refused; None for prompt models."""
    from ..probes import FeatureHead

    if not isinstance(model, FeatureHead):
        return None
    linear = model.linear_classifier()
    if linear is None:
        raise DipclipError(f"{method}'s classifier is not one linear map of the image features, so a weight matrix "
                           f"cannot reproduce it; {elsewhere}")
    weight, bias = linear
    weight = weight.detach().float().cpu().contiguous()
    bias = (torch.zeros(weight.shape[0]) if bias is None else bias.detach().float().cpu()).contiguous()
    return weight, bias
