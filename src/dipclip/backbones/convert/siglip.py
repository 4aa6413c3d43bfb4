"""Transformers ``SiglipModel`` folders as an open_clip ``CustomTextCLIP`` shaped as ``ViT-B-16-SigLIP.json``: the
config (a timm SigLIP ViT with a MAP head, registered under a name that spells out its shape, and a non-causal
text transformer pooled at the last token with a biased projection) and the state-dict mapping."""

from __future__ import annotations

import re

import torch
from torch import nn

from ...errors import DipclipError
from .config_fields import activation, config_number, exact_mlp_ratio, sections, tower_shape
from .state_dicts import TensorSource, map_encoder_layer, map_linear, map_text

SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)


def siglip_config(raw: dict, shown: str) -> dict:
    """The open_clip model config of a transformers ``SiglipModel`` config (as ``ViT-B-16-SigLIP.json``
    shapes it, the image tower a registered timm SigLIP ViT of the folder's shape)."""
    text, vision = sections(raw, shown)
    t = tower_shape(text, f"{shown} text_config (siglip)")
    v = tower_shape(vision, f"{shown} vision_config (siglip)")
    t_act, v_act = activation(text, f"{shown} text_config"), activation(vision, f"{shown} vision_config")
    if t_act == "quick_gelu" or v_act == "quick_gelu":
        raise DipclipError(f"{shown}: SigLIP towers with QuickGELU have no open_clip counterpart")
    if not vision.get("vision_use_head", True):
        raise DipclipError(f"{shown}: vision_use_head is false (no attention-pooling head), so the model gives no "
                           "image feature; use a SigLIP with its head")
    if int(vision.get("num_channels", 3)) != 3:
        raise DipclipError(f"{shown}: vision_config.num_channels is {vision.get('num_channels')}, not 3 (RGB)")
    embed_dim = int(text.get("projection_size") or t["width"])
    if v["width"] != embed_dim:
        raise DipclipError(f"{shown}: the image features ({v['width']}) and text features ({embed_dim}) differ in "
                           "size; not a SigLIP model")
    image_size, patch_size = config_number(vision, "image_size", shown), config_number(vision, "patch_size", shown)
    timm_name = register_siglip_vit(image_size, patch_size, v["width"], v["layers"], v["heads"],
                                    config_number(vision, "intermediate_size", shown), v["eps"], v_act)
    text_cfg = {
        "context_length": config_number(text, "max_position_embeddings", shown),
        "vocab_size": config_number(text, "vocab_size", shown),
        "tokenizer_kwargs": {"clean": "canonicalize"},
        "width": t["width"], "heads": t["heads"], "layers": t["layers"], "mlp_ratio": t["mlp_ratio"],
        "no_causal_mask": True, "proj_bias": True, "pool_type": "last",
        "norm_kwargs": {"eps": t["eps"]},
    }
    if t_act == "gelu_pytorch_tanh":
        text_cfg["act_kwargs"] = {"approximate": "tanh"}
    if isinstance(text.get("pad_token_id"), int):
        text_cfg["pad_id"] = text["pad_token_id"]
    return {
        "embed_dim": embed_dim, "init_logit_bias": -10, "custom_text": True,
        "vision_cfg": {"image_size": image_size, "timm_model_name": timm_name, "timm_model_pretrained": False,
                       "timm_pool": "map", "timm_proj": "none"},
        "text_cfg": text_cfg,
    }


_SIGLIP_NAME = re.compile(r"dipclip_siglip_vit_i(\d+)_p(\d+)_w(\d+)_d(\d+)_h(\d+)_m(\d+)_eps([0-9e.\-]+)_(gelu|gelu_tanh)$")


def register_siglip_vit(image_size: int, patch_size: int, width: int, depth: int, heads: int, mlp_width: int,
                        eps: float, act: str) -> str:
    """Register (once) a timm SigLIP ViT of this exact shape, MAP-pooled, no class token; its name spells the
    shape out, so :func:`ensure_registered` can register it again from the name alone."""
    import timm

    act_name = "gelu_tanh" if act in ("gelu_pytorch_tanh", "gelu_tanh") else "gelu"
    name = (f"dipclip_siglip_vit_i{image_size}_p{patch_size}_w{width}_d{depth}_h{heads}_m{mlp_width}_eps{eps!r}_"
            f"{act_name}")
    if timm.is_model(name):
        return name
    from functools import partial

    from timm.models import register_model
    from timm.models.vision_transformer import VisionTransformer

    mlp_ratio = exact_mlp_ratio(mlp_width, width)

    def create(pretrained: bool = False, pretrained_cfg=None, pretrained_cfg_overlay=None, cache_dir=None,
               **kwargs) -> VisionTransformer:
        if pretrained:
            raise DipclipError(f"{name} is dipclip's shape-named SigLIP tower: its weights come from a checkpoint")
        args = dict(img_size=image_size, patch_size=patch_size, embed_dim=width, depth=depth, num_heads=heads,
                    mlp_ratio=mlp_ratio, class_token=False, global_pool="map", act_layer=act_name,
                    norm_layer=partial(nn.LayerNorm, eps=eps))
        model = VisionTransformer(**dict(args, **kwargs))
        model.pretrained_cfg = model.default_cfg = {"architecture": name, "input_size": (3, image_size, image_size)}
        return model

    create.__name__ = create.__qualname__ = name
    create.__module__ = __name__
    globals()[name] = create
    register_model(create)
    return name


def ensure_registered(model_cfg: dict) -> None:
    """Register the shape-named timm tower a config names (a config recorded by an earlier run)."""
    match = _SIGLIP_NAME.match(str(model_cfg.get("vision_cfg", {}).get("timm_model_name", "")))
    if match:
        *ints, eps, act = match.groups()
        register_siglip_vit(*(int(x) for x in ints), float(eps), act)


def map_siglip(state: dict, cfg: dict, shown: str, vision_layers: int) -> dict[str, torch.Tensor]:
    src, out = TensorSource(state, shown), {}
    out["logit_scale"] = src.take("logit_scale").reshape([])
    out["logit_bias"] = src.take("logit_bias").reshape([])
    map_text(src, out, "text.", cfg["text_cfg"]["layers"])
    map_linear(src, "text_model.head", out, "text.text_projection")
    v, trunk = "vision_model.", "visual.trunk."
    src.drop_position_ids(f"{v}embeddings.position_ids")
    map_linear(src, f"{v}embeddings.patch_embedding", out, f"{trunk}patch_embed.proj")
    out[f"{trunk}pos_embed"] = src.take(f"{v}embeddings.position_embedding.weight").unsqueeze(0)
    for i in range(vision_layers):
        map_encoder_layer(src, f"{v}encoder.layers.{i}.", out, f"{trunk}blocks.{i}.", timm_names=True)
    map_linear(src, f"{v}post_layernorm", out, f"{trunk}norm")
    head, pool = f"{v}head.", f"{trunk}attn_pool."
    out[f"{pool}latent"] = src.take(f"{head}probe")
    in_w, in_b = src.take(f"{head}attention.in_proj_weight"), src.take(f"{head}attention.in_proj_bias")
    width = in_w.shape[1]
    out[f"{pool}q.weight"], out[f"{pool}kv.weight"] = in_w[:width].contiguous(), in_w[width:].contiguous()
    out[f"{pool}q.bias"], out[f"{pool}kv.bias"] = in_b[:width].contiguous(), in_b[width:].contiguous()
    map_linear(src, f"{head}attention.out_proj", out, f"{pool}proj")
    map_linear(src, f"{head}layernorm", out, f"{pool}norm")
    map_linear(src, f"{head}mlp.fc1", out, f"{pool}mlp.fc1")
    map_linear(src, f"{head}mlp.fc2", out, f"{pool}mlp.fc2")
    src.finish()
    return out
