"""Write the shipped model in the embedded format of :mod:`dipclip.backbones.embedded` and check it.

The full 49,408-row token table would be most of the file, yet the captions use a few thousand tokens:
only those rows are stored (fp16), with their ids, and the loader scatters them back. For every token the
captions use, outputs equal the fp32 model's up to fp16 rounding; `verify_roundtrip` measures that.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from ..backbones.build import file_sha256


def export_model(model: torch.nn.Module, model_cfg: dict, token_ids: torch.Tensor, out_dir: Path,
                 provenance: str, extra: dict | None = None, logit_scale: float | None = None) -> dict:
    """Save ``model.safetensors`` (fp16, pruned vocabulary) and ``open_clip_config.json``; return the meta.

    ``logit_scale``: the temperature the file ships with instead of the learned one (None: the learned one).
    Zero-shot predictions do not depend on it (a positive factor on every logit); the gradients of prompt
    tuning do, and the CoOp family's learning rates were set on CLIP, whose logit scale is 100.
    """
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    state.pop("attn_mask", None)
    if logit_scale is not None:
        state["logit_scale"] = torch.tensor(math.log(logit_scale))
    table = state.pop("token_embedding.weight")
    tensors = {k: v.half().contiguous() for k, v in state.items()}
    tensors["token_embedding.weight"] = table[token_ids].half().contiguous()
    tensors["token_ids"] = token_ids.to(torch.int64).contiguous()
    weights = out_dir / "model.safetensors"
    # one metadata key only: safetensors writes the metadata map in a random order per process, so with two
    # keys the same weights gave two different files (and SHA-256s) on alternate runs
    save_file(tensors, str(weights), metadata={"format": "pt"})
    meta = {"model_cfg": model_cfg, "sha256": file_sha256(weights), "provenance": provenance}
    meta.update(extra or {})
    (out_dir / "open_clip_config.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def load_exported(out_dir: Path) -> torch.nn.Module:
    """Rebuild a model from an exported folder the way the embedded loader does (any folder, not only the
    package's assets), so the recipe can check what it wrote before it is installed."""
    from safetensors.torch import load_file

    from ..backbones.build import build_from_config

    meta = json.loads((out_dir / "open_clip_config.json").read_text())
    model = build_from_config(meta["model_cfg"])
    state = load_file(str(out_dir / "model.safetensors"))
    ids = state.pop("token_ids").long()
    full = torch.zeros_like(model.token_embedding.weight)
    full[ids] = state.pop("token_embedding.weight").float()
    state["token_embedding.weight"] = full
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.eval()


@torch.no_grad()
def verify_roundtrip(reference: torch.nn.Module, exported: torch.nn.Module, tokenizer, prompts: list[str],
                     images: torch.Tensor) -> dict:
    """Largest differences between the fp32 model and the shipped one on normalised features."""
    reference.eval()
    exported.eval()
    ids = tokenizer(prompts)
    text_ref = F.normalize(reference.encode_text(ids).float(), dim=-1)
    text_exp = F.normalize(exported.encode_text(ids).float(), dim=-1)
    img_ref = F.normalize(reference.encode_image(images).float(), dim=-1)
    img_exp = F.normalize(exported.encode_image(images).float(), dim=-1)
    agree = ((img_ref @ text_ref.T).argmax(1) == (img_exp @ text_exp.T).argmax(1)).float().mean()
    return {
        "text_max_abs_diff": float((text_ref - text_exp).abs().max()),
        "image_max_abs_diff": float((img_ref - img_exp).abs().max()),
        "prediction_agreement": float(agree),
    }
