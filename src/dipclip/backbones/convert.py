"""Hugging Face ``transformers`` CLIP and SigLIP folders, converted exactly into the equivalent open_clip model.

A folder as ``CLIPModel.save_pretrained`` / ``SiglipModel.save_pretrained`` writes it (or a snapshot folder of the
Hugging Face cache, e.g. ``openai/clip-vit-base-patch16``): ``config.json`` (``model_type`` ``clip`` or ``siglip``)
and ``model.safetensors`` or ``pytorch_model.bin``, optionally ``preprocessor_config.json`` (mean/std) and, for
SigLIP, the tokenizer files.

- CLIP becomes open_clip's own ``CLIP`` (ViT image tower, causal text transformer pooled at the end-of-text token),
  with QuickGELU when the folder says ``quick_gelu``; the tokenizer is CLIP's BPE at the folder's context length.
- SigLIP becomes a ``CustomTextCLIP`` shaped as open_clip's ``ViT-B-16-SigLIP.json``: a timm SigLIP ViT with a
  MAP (attention-pooling) head and no projection, and a non-causal text transformer pooled at the last token with
  a biased projection; the tokenizer is the folder's own (``clean="canonicalize"``, as open_clip's SigLIP configs).
  The timm image tower is registered under a name that spells out its shape (any size works), and uses the
  folder's own activation (``gelu_pytorch_tanh``: timm's ``gelu_tanh``), so the features equal transformers' own.
- SigLIP2 (``siglip2``) folders hold NaFlex (variable resolution) image towers: refused in one line.

Every tensor of the folder is mapped (q/k/v concatenated, Linear projections transposed into open_clip's
Parameter projections, ...) and loaded with ``strict=True``: a key left over on either side is refused, named.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path

import torch
from torch import nn

from ..errors import DipclipError
from ..files import check_regular_file, read_json, read_safetensors
from .build import build_from_config, file_sha256

CONFIG_NAME = "config.json"
WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin")
PREPROCESSOR_NAME = "preprocessor_config.json"
SUPPORTED_TYPES = ("clip", "siglip")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "spiece.model",
                   "sentencepiece.bpe.model", "vocab.json", "vocab.txt", "merges.txt", "added_tokens.json")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)
CLIP_VOCAB_SIZE = 49408
_FIX = "give a folder written by transformers' save_pretrained (config.json + model.safetensors or pytorch_model.bin)"


# ---------------------------------------------------------------------------------------------- finding a folder


def _expand(path: str) -> Path:
    return Path(os.path.expanduser(str(path)))


def _model_type_of(folder: Path) -> str | None:
    """The ``model_type`` of ``folder/config.json`` when it is a readable JSON object with one, else None."""
    config = folder / CONFIG_NAME
    try:
        check_regular_file(config, "config", "")
        raw = read_json(config, "transformers config", _FIX)
    except DipclipError:
        return None
    kind = raw.get("model_type")
    return kind if isinstance(kind, str) else None


def is_transformers_weights_file(path: str) -> bool:
    """True for ``FOLDER/model.safetensors`` or ``FOLDER/pytorch_model.bin`` next to a transformers
    ``config.json`` (one with a ``model_type``): how an adapter records a converted backbone's weights."""
    file = _expand(path)
    return file.name in WEIGHT_NAMES and _model_type_of(file.parent) is not None


def transformers_weights(model: str | None, pretrained: str | None) -> str | None:
    """The weights file to convert when ``--model``/``--pretrained`` name a transformers folder, else None.

    A transformers folder may come as ``--pretrained FOLDER`` (``--model`` absent) or ``--model FOLDER
    --pretrained FOLDER``; the weights file inside it (``FOLDER/model.safetensors``, what an adapter records)
    works as ``--pretrained`` too. A folder carries its own architecture, so any other ``--model`` is refused.
    A bare name (``openai``) is an open_clip tag even if a folder of that name happens to exist, unless
    ``--model`` is absent or that same folder."""
    if pretrained is None or pretrained == "none":
        if model is not None and _expand(model).is_dir() and (_expand(model) / CONFIG_NAME).exists():
            raise DipclipError(f"--model {model} is a transformers folder, which holds its own weights: pass "
                               f"--pretrained {model} (and drop --model)")
        return None
    target = _expand(pretrained)
    if target.is_dir():
        explicit_path = os.sep in pretrained or pretrained.startswith(("~", "."))
        same_folder = model is not None and _expand(model).is_dir() and _same(_expand(model), target)
        if model is not None and not same_folder:
            if not explicit_path and not (target / CONFIG_NAME).exists():
                return None  # an open_clip tag that happens to be a folder name here
            raise DipclipError(f"--pretrained {pretrained} is a folder (a transformers CLIP/SigLIP model) that "
                               f"carries its own architecture; drop --model {model} (or give that same folder)")
        return str(weights_in(target))
    if target.is_file() or _is_special(target):
        if is_transformers_weights_file(pretrained):
            if model is not None and not (_expand(model).is_dir() and _same(_expand(model), target.parent)):
                raise DipclipError(f"--pretrained {pretrained} belongs to a transformers folder that carries its own "
                                   f"architecture; drop --model {model}")
            return str(target)
    return None


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _is_special(path: Path) -> bool:
    """Exists but is neither a file nor a folder (a FIFO, socket, device): refused later, never opened."""
    return os.path.exists(path) and not path.is_file() and not path.is_dir()


def weights_in(folder: Path) -> Path:
    """The weights file of a transformers folder (``model.safetensors``, else ``pytorch_model.bin``)."""
    if not (folder / CONFIG_NAME).exists():
        raise DipclipError(f"folder {folder} holds no {CONFIG_NAME}, so it is not a transformers model folder; "
                           f"{_FIX}, or give a weights file")
    for name in WEIGHT_NAMES:
        if os.path.lexists(folder / name):
            return folder / name
    sharded = [name for name in ("model.safetensors.index.json", "pytorch_model.bin.index.json")
               if (folder / name).exists()]
    if sharded:
        raise DipclipError(f"{folder} holds a sharded checkpoint ({sharded[0]}), which dipclip does not read; "
                           "save it unsharded (save_pretrained(..., max_shard_size='100GB'))")
    raise DipclipError(f"transformers folder {folder} holds no weights (looked for {' or '.join(WEIGHT_NAMES)}); "
                       f"{_FIX}")


# ---------------------------------------------------------------------------------------------- reading weights


def read_weights(path: str | Path, fix: str) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` or torch (``.bin``/``.pt``) state-dict file; a FIFO or folder is refused
    before it is opened."""
    path = check_regular_file(path, "weights file", fix)
    if str(path).endswith(".safetensors"):
        return read_safetensors(path, "weights file", fix)
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a damaged file
        raise DipclipError(f"cannot read weights file {path} ({type(exc).__name__}); {fix}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DipclipError(f"weights file {path} does not hold a state dict of tensors; {fix}")
    return dict(state)


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``model.load_state_dict(state, strict=True)``, the first missing, unexpected or misshapen key refused."""
    wanted = model.state_dict()
    for key in wanted:
        if key not in state:
            raise DipclipError(f"{source}: the converted weights lack {key} (the model needs it); the checkpoint "
                               "does not match its config")
    for key, value in state.items():
        if key not in wanted:
            raise DipclipError(f"{source}: weight {key} has no place in the model; the checkpoint does not match "
                               "its config")
        if tuple(value.shape) != tuple(wanted[key].shape):
            raise DipclipError(f"{source}: weight {key} has shape {tuple(value.shape)} but the model's is "
                               f"{tuple(wanted[key].shape)}; the checkpoint does not match its config")
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True)


class _Source:
    """The folder's tensors, each taken exactly once: whatever is left at the end is refused."""

    def __init__(self, state: dict[str, torch.Tensor], shown: str):
        self.state = dict(state)
        self.shown = shown

    def take(self, key: str) -> torch.Tensor:
        if key not in self.state:
            raise DipclipError(f"{self.shown} lacks weight {key}, which its config.json implies; the weights do not "
                               "match the config")
        return self.state.pop(key)

    def drop_position_ids(self, key: str) -> None:
        """Old exports keep ``position_ids`` (0..n-1) as a buffer: consumed when it is exactly that."""
        ids = self.state.get(key)
        if ids is not None and torch.equal(ids.flatten().long(), torch.arange(ids.numel())):
            del self.state[key]

    def finish(self) -> None:
        if self.state:
            first = sorted(self.state)[0]
            raise DipclipError(f"{self.shown}: weight {first} (and {len(self.state) - 1} more) has no counterpart in "
                               "the open_clip model; this folder is not a plain CLIP/SigLIP")


def _layer_count(src: _Source, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for key in src.state if (m := pattern.match(key))}
    return max(found) + 1 if found else 0


def _map_encoder_layer(src: _Source, hf: str, out: dict, oc: str, timm_names: bool) -> None:
    """One transformers encoder layer: into open_clip's ``ResidualAttentionBlock`` or timm's ``Block``."""
    q_w, k_w, v_w = (src.take(f"{hf}self_attn.{n}_proj.weight") for n in "qkv")
    q_b, k_b, v_b = (src.take(f"{hf}self_attn.{n}_proj.bias") for n in "qkv")
    if timm_names:
        names = {"ln1": "norm1", "ln2": "norm2", "qkv": "attn.qkv", "out": "attn.proj", "fc1": "mlp.fc1",
                 "fc2": "mlp.fc2"}
        out[f"{oc}{names['qkv']}.weight"] = torch.cat([q_w, k_w, v_w])
        out[f"{oc}{names['qkv']}.bias"] = torch.cat([q_b, k_b, v_b])
    else:
        names = {"ln1": "ln_1", "ln2": "ln_2", "out": "attn.out_proj", "fc1": "mlp.c_fc", "fc2": "mlp.c_proj"}
        out[f"{oc}attn.in_proj_weight"] = torch.cat([q_w, k_w, v_w])
        out[f"{oc}attn.in_proj_bias"] = torch.cat([q_b, k_b, v_b])
    for hf_name, oc_name in (("layer_norm1", names["ln1"]), ("layer_norm2", names["ln2"]),
                             ("self_attn.out_proj", names["out"]), ("mlp.fc1", names["fc1"]),
                             ("mlp.fc2", names["fc2"])):
        for part in ("weight", "bias"):
            out[f"{oc}{oc_name}.{part}"] = src.take(f"{hf}{hf_name}.{part}")


def _map_linear(src: _Source, hf: str, out: dict, oc: str) -> None:
    for part in ("weight", "bias"):
        out[f"{oc}.{part}"] = src.take(f"{hf}.{part}")


def _map_text(src: _Source, out: dict, oc: str, layers: int) -> None:
    t = "text_model."
    src.drop_position_ids(f"{t}embeddings.position_ids")
    out[f"{oc}token_embedding.weight"] = src.take(f"{t}embeddings.token_embedding.weight")
    out[f"{oc}positional_embedding"] = src.take(f"{t}embeddings.position_embedding.weight")
    for i in range(layers):
        _map_encoder_layer(src, f"{t}encoder.layers.{i}.", out, f"{oc}transformer.resblocks.{i}.", timm_names=False)
    _map_linear(src, f"{t}final_layer_norm", out, f"{oc}ln_final")


def _map_clip(state: dict, cfg: dict, shown: str) -> dict[str, torch.Tensor]:
    src, out = _Source(state, shown), {}
    out["logit_scale"] = src.take("logit_scale").reshape([])
    _map_text(src, out, "", cfg["text_cfg"]["layers"])
    out["text_projection"] = src.take("text_projection.weight").t().contiguous()
    v = "vision_model."
    src.drop_position_ids(f"{v}embeddings.position_ids")
    out["visual.class_embedding"] = src.take(f"{v}embeddings.class_embedding")
    out["visual.conv1.weight"] = src.take(f"{v}embeddings.patch_embedding.weight")
    out["visual.positional_embedding"] = src.take(f"{v}embeddings.position_embedding.weight")
    _map_linear(src, f"{v}pre_layrnorm", out, "visual.ln_pre")
    for i in range(cfg["vision_cfg"]["layers"]):
        _map_encoder_layer(src, f"{v}encoder.layers.{i}.", out, f"visual.transformer.resblocks.{i}.", timm_names=False)
    _map_linear(src, f"{v}post_layernorm", out, "visual.ln_post")
    out["visual.proj"] = src.take("visual_projection.weight").t().contiguous()
    src.finish()
    return out


def _map_siglip(state: dict, cfg: dict, shown: str, vision_layers: int) -> dict[str, torch.Tensor]:
    src, out = _Source(state, shown), {}
    out["logit_scale"] = src.take("logit_scale").reshape([])
    out["logit_bias"] = src.take("logit_bias").reshape([])
    _map_text(src, out, "text.", cfg["text_cfg"]["layers"])
    _map_linear(src, "text_model.head", out, "text.text_projection")
    v, trunk = "vision_model.", "visual.trunk."
    src.drop_position_ids(f"{v}embeddings.position_ids")
    _map_linear(src, f"{v}embeddings.patch_embedding", out, f"{trunk}patch_embed.proj")
    out[f"{trunk}pos_embed"] = src.take(f"{v}embeddings.position_embedding.weight").unsqueeze(0)
    for i in range(vision_layers):
        _map_encoder_layer(src, f"{v}encoder.layers.{i}.", out, f"{trunk}blocks.{i}.", timm_names=True)
    _map_linear(src, f"{v}post_layernorm", out, f"{trunk}norm")
    head, pool = f"{v}head.", f"{trunk}attn_pool."
    out[f"{pool}latent"] = src.take(f"{head}probe")
    in_w, in_b = src.take(f"{head}attention.in_proj_weight"), src.take(f"{head}attention.in_proj_bias")
    width = in_w.shape[1]
    out[f"{pool}q.weight"], out[f"{pool}kv.weight"] = in_w[:width].contiguous(), in_w[width:].contiguous()
    out[f"{pool}q.bias"], out[f"{pool}kv.bias"] = in_b[:width].contiguous(), in_b[width:].contiguous()
    _map_linear(src, f"{head}attention.out_proj", out, f"{pool}proj")
    _map_linear(src, f"{head}layernorm", out, f"{pool}norm")
    _map_linear(src, f"{head}mlp.fc1", out, f"{pool}mlp.fc1")
    _map_linear(src, f"{head}mlp.fc2", out, f"{pool}mlp.fc2")
    src.finish()
    return out


# ---------------------------------------------------------------------------------------------- configs


def _get(section: dict, key: str, shown: str, kind: type = int):
    value = section.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DipclipError(f"{shown}: {key} is {value!r}, not {'a whole number' if kind is int else 'a number'}; "
                           f"{_FIX}")
    return value


def _mlp_ratio(intermediate: int, width: int) -> float:
    """A ratio that gives back exactly ``intermediate`` through ``int(width * ratio)`` (open_clip's and timm's
    rounding): the plain quotient when it does, else one nudged half a unit up."""
    ratio = intermediate / width
    return ratio if int(width * ratio) == intermediate else (intermediate + 0.5) / width


def _tower_shape(section: dict, shown: str) -> dict:
    width = _get(section, "hidden_size", shown)
    heads = _get(section, "num_attention_heads", shown)
    if width % heads:
        raise DipclipError(f"{shown}: hidden_size {width} is not a multiple of num_attention_heads {heads}")
    return {"width": width, "heads": heads, "layers": _get(section, "num_hidden_layers", shown),
            "mlp_ratio": _mlp_ratio(_get(section, "intermediate_size", shown), width),
            "eps": float(section.get("layer_norm_eps", 1e-5 if "clip" in shown else 1e-6))}


def _activation(section: dict, shown: str) -> str:
    act = section.get("hidden_act", "quick_gelu")
    if act not in ("quick_gelu", "gelu", "gelu_pytorch_tanh"):
        raise DipclipError(f"{shown}: activation {act!r} has no open_clip counterpart (quick_gelu, gelu or "
                           "gelu_pytorch_tanh)")
    return act


def _sections(raw: dict, shown: str) -> tuple[dict, dict]:
    text, vision = raw.get("text_config"), raw.get("vision_config")
    if not isinstance(text, dict) or not isinstance(vision, dict):
        raise DipclipError(f"{shown} lacks text_config or vision_config; {_FIX}")
    return text, vision


def clip_config(raw: dict, shown: str) -> dict:
    """The open_clip model config of a transformers ``CLIPModel`` config."""
    text, vision = _sections(raw, shown)
    t, v = _tower_shape(text, f"{shown} text_config (clip)"), _tower_shape(vision, f"{shown} vision_config (clip)")
    t_act, v_act = _activation(text, f"{shown} text_config"), _activation(vision, f"{shown} vision_config")
    if (t_act == "quick_gelu") != (v_act == "quick_gelu"):
        raise DipclipError(f"{shown}: the text tower uses {t_act} and the image tower {v_act}; open_clip uses "
                           "QuickGELU in both towers or in neither")
    vocab = _get(text, "vocab_size", shown)
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
        "image_size": _get(vision, "image_size", shown), "patch_size": _get(vision, "patch_size", shown),
        "width": v["width"], "layers": v["layers"], "head_width": v["width"] // v["heads"],
        "mlp_ratio": v["mlp_ratio"], "norm_kwargs": {"eps": v["eps"]},
    }
    text_cfg = {
        "context_length": _get(text, "max_position_embeddings", shown), "vocab_size": vocab,
        "width": t["width"], "heads": t["heads"], "layers": t["layers"], "mlp_ratio": t["mlp_ratio"],
        "norm_kwargs": {"eps": t["eps"]}, **pool,
    }
    for cfg, act in ((vision_cfg, v_act), (text_cfg, t_act)):
        if act == "gelu_pytorch_tanh":
            cfg["act_kwargs"] = {"approximate": "tanh"}
    return {"embed_dim": _get(raw, "projection_dim", shown), "quick_gelu": v_act == "quick_gelu",
            "vision_cfg": vision_cfg, "text_cfg": text_cfg}


def siglip_config(raw: dict, shown: str) -> dict:
    """The open_clip model config of a transformers ``SiglipModel`` config (as ``ViT-B-16-SigLIP.json``
    shapes it, the image tower a registered timm SigLIP ViT of the folder's shape)."""
    text, vision = _sections(raw, shown)
    t = _tower_shape(text, f"{shown} text_config (siglip)")
    v = _tower_shape(vision, f"{shown} vision_config (siglip)")
    t_act, v_act = _activation(text, f"{shown} text_config"), _activation(vision, f"{shown} vision_config")
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
    image_size, patch_size = _get(vision, "image_size", shown), _get(vision, "patch_size", shown)
    timm_name = register_siglip_vit(image_size, patch_size, v["width"], v["layers"], v["heads"],
                                    _get(vision, "intermediate_size", shown), v["eps"], v_act)
    text_cfg = {
        "context_length": _get(text, "max_position_embeddings", shown),
        "vocab_size": _get(text, "vocab_size", shown),
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

    mlp_ratio = _mlp_ratio(mlp_width, width)

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


# ---------------------------------------------------------------------------------------------- loading


def _display_name(folder: Path) -> str:
    """``ORG/NAME`` for a Hugging Face cache snapshot (``models--ORG--NAME/snapshots/<rev>``), else the folder name."""
    parts = folder.parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        return parts[-3].removeprefix("models--").replace("--", "/")
    return folder.name or str(folder)


def _preprocessing(folder: Path, defaults: tuple) -> tuple[tuple, tuple]:
    path = folder / PREPROCESSOR_NAME
    if not os.path.lexists(path):
        return defaults
    raw = read_json(path, "preprocessor config", "fix or remove preprocessor_config.json")
    found = []
    for key, default in zip(("image_mean", "image_std"), defaults, strict=True):
        value = raw.get(key, default)
        if (not isinstance(value, list | tuple) or len(value) != 3
                or not all(isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in value)
                or (key == "image_std" and not all(x > 0 for x in value))):
            raise DipclipError(f"preprocessor config {path}: {key} is {value!r}, not three finite numbers"
                               f"{' above 0' if key == 'image_std' else ''}; fix or remove the file")
        found.append(tuple(float(x) for x in value))
    return found[0], found[1]


def _check_tokenizer_files(folder: Path) -> None:
    """Refuse a tokenizer file that is not a regular file (a FIFO would block the tokenizer's reader forever)."""
    for name in TOKENIZER_FILES:
        if os.path.lexists(folder / name):
            check_regular_file(folder / name, "tokenizer file", "replace it with the tokenizer's real file")


def load_transformers(weights: str | Path):
    """``(clip_model, tokenizer, identity, name)`` of the transformers folder holding ``weights``.

    ``identity`` is by content: the sha256 of the weights file, then that of the converted open_clip config
    together with the preprocessing and the tokenizer's form (``config.json`` metadata such as the transformers
    version does not change it)."""
    from . import tokenizers

    weights = _expand(str(weights))
    folder = weights.parent
    config_path = folder / CONFIG_NAME
    raw = read_json(config_path, "transformers config", _FIX)
    kind = raw.get("model_type")
    if kind == "siglip2":
        raise DipclipError(f"{config_path}: SigLIP2 folders (model_type siglip2) hold a NaFlex variable-resolution "
                           "image tower, which dipclip does not convert; use open_clip's SigLIP2 (e.g. --pretrained "
                           "hf-hub:timm/ViT-B-16-SigLIP2)")
    if kind not in SUPPORTED_TYPES:
        raise DipclipError(f"{config_path}: model_type {kind!r} is not a CLIP or SigLIP model (dipclip converts "
                           f"transformers folders of model_type {' or '.join(SUPPORTED_TYPES)}); give such a folder, "
                           "an open_clip checkpoint, or an open_clip name with --model")
    shown = f"transformers {kind} folder {folder}"
    check_regular_file(weights, "weights file", _FIX)  # before hashing: a FIFO would block
    if kind == "clip":
        model_cfg = clip_config(raw, str(config_path))
        mean, std = _preprocessing(folder, (CLIP_MEAN, CLIP_STD))
    else:
        model_cfg = siglip_config(raw, str(config_path))
        mean, std = _preprocessing(folder, (SIGLIP_MEAN, SIGLIP_STD))
    state = read_weights(weights, _FIX)
    if kind == "clip":
        mapped = _map_clip(state, model_cfg, shown)
    else:
        layers = _get(raw["vision_config"], "num_hidden_layers", shown)
        mapped = _map_siglip(state, model_cfg, shown, layers)
    clip_model = build_from_config(model_cfg)
    load_strict(clip_model, mapped, shown)
    clip_model.visual.image_mean, clip_model.visual.image_std = mean, std
    context = model_cfg["text_cfg"]["context_length"]
    if kind == "clip":
        tokenizer = tokenizers.clip_bpe(context)
        tokenizer_form = {"kind": "clip-bpe", "context_length": context}
    else:
        _check_tokenizer_files(folder)
        tokenizer = tokenizers.hugging_face(str(folder), context, clean="canonicalize")
        tokenizer_form = {"kind": "hf", "context_length": context,
                          "files": {name: file_sha256(folder / name) for name in TOKENIZER_FILES
                                    if (folder / name).is_file()}}
    described = json.dumps({"model_cfg": model_cfg, "mean": mean, "std": std, "tokenizer": tokenizer_form},
                           sort_keys=True).encode()
    identity = f"sha256:{file_sha256(weights)}/config-sha256:{hashlib.sha256(described).hexdigest()[:16]}"
    return clip_model, tokenizer, identity, _display_name(folder)
