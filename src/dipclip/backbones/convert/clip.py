"""Transformers ``CLIPModel`` folders as open_clip's own ``CLIP``: the config (ViT image tower, causal text
transformer pooled at the end-of-text token, QuickGELU when the folder says so) and the state-dict mapping."""

from __future__ import annotations

import torch

from ...errors import DipclipError
from .config_fields import activation, config_number, sections, tower_shape
from .state_dicts import TensorSource, map_encoder_layer, map_linear, map_text

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_VOCAB_SIZE = 49408


def clip_config(raw: dict, shown: str) -> dict:
    """The open_clip model config of a transformers ``CLIPModel`` config."""
    text, vision = sections(raw, shown)
    t, v = tower_shape(text, f"{shown} text_config (clip)"), tower_shape(vision, f"{shown} vision_config (clip)")
    t_act, v_act = activation(text, f"{shown} text_config"), activation(vision, f"{shown} vision_config")
    if (t_act == "quick_gelu") != (v_act == "quick_gelu"):
        raise DipclipError(f"{shown}: the text tower uses {t_act} and the image tower {v_act}; open_clip uses "
                           "QuickGELU in both towers or in neither")
    vocab = config_number(text, "vocab_size", shown)
    if vocab != CLIP_VOCAB_SIZE:
        raise DipclipError(f"{shown}: vocab_size {vocab} is not CLIP's BPE vocabulary ({CLIP_VOCAB_SIZE}); dipclip "
                           "tokenizes transformers CLIP folders with CLIP's BPE")
    if int(vision.get("num_channels", 3)) != 3:
        raise DipclipError(f"{shown}: vision_config.num_channels is {vision.get('num_channels')}, not 3 (RGB)")
    eos = text.get("eos_token_id", 2)
    # transformers pools at the first eos token (at argmax for the legacy eos_token_id 2): argmax is the same
    # whenever eos is the largest id.
    pool = {"pool_type": "argmax"} if eos in (2, vocab - 1) else {"pool_type": "eos", "eos_id": int(eos)}
    vision_cfg = {
        "image_size": config_number(vision, "image_size", shown), "patch_size": config_number(vision, "patch_size", shown),
        "width": v["width"], "layers": v["layers"], "head_width": v["width"] // v["heads"],
        "mlp_ratio": v["mlp_ratio"], "norm_kwargs": {"eps": v["eps"]},
    }
    text_cfg = {
        "context_length": config_number(text, "max_position_embeddings", shown), "vocab_size": vocab,
        "width": t["width"], "heads": t["heads"], "layers": t["layers"], "mlp_ratio": t["mlp_ratio"],
        "norm_kwargs": {"eps": t["eps"]}, **pool,
    }
    for cfg, act in ((vision_cfg, v_act), (text_cfg, t_act)):
        if act == "gelu_pytorch_tanh":
            cfg["act_kwargs"] = {"approximate": "tanh"}
    return {"embed_dim": config_number(raw, "projection_dim", shown), "quick_gelu": v_act == "quick_gelu",
            "vision_cfg": vision_cfg, "text_cfg": text_cfg}


def map_clip(state: dict, cfg: dict, shown: str) -> dict[str, torch.Tensor]:
    src, out = TensorSource(state, shown), {}
    out["logit_scale"] = src.take("logit_scale").reshape([])
    map_text(src, out, "", cfg["text_cfg"]["layers"])
    out["text_projection"] = src.take("text_projection.weight").t().contiguous()
    v = "vision_model."
    src.drop_position_ids(f"{v}embeddings.position_ids")
    out["visual.class_embedding"] = src.take(f"{v}embeddings.class_embedding")
    out["visual.conv1.weight"] = src.take(f"{v}embeddings.patch_embedding.weight")
    out["visual.positional_embedding"] = src.take(f"{v}embeddings.position_embedding.weight")
    map_linear(src, f"{v}pre_layrnorm", out, "visual.ln_pre")
    for i in range(cfg["vision_cfg"]["layers"]):
        map_encoder_layer(src, f"{v}encoder.layers.{i}.", out, f"visual.transformer.resblocks.{i}.", timm_names=False)
    map_linear(src, f"{v}post_layernorm", out, "visual.ln_post")
    out["visual.proj"] = src.take("visual_projection.weight").t().contiguous()
    src.finish()
    return out
