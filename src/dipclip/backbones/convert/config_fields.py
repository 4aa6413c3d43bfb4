"""Fields of a transformers ``config.json`` that CLIP and SigLIP read alike: whole numbers checked, a tower's shape,
its activation, the text and vision sections."""

from __future__ import annotations

from ...errors import DipclipError
from .folders import FIX


def config_number(section: dict, key: str, shown: str, kind: type = int):
    value = section.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DipclipError(f"{shown}: {key} is {value!r}, not {'a whole number' if kind is int else 'a number'}; "
                           f"{FIX}")
    return value


def exact_mlp_ratio(intermediate: int, width: int) -> float:
    """A ratio that gives back exactly ``intermediate`` through ``int(width * ratio)`` (open_clip's and timm's
    rounding): the plain quotient when it does, else one nudged half a unit up."""
    ratio = intermediate / width
    return ratio if int(width * ratio) == intermediate else (intermediate + 0.5) / width


def tower_shape(section: dict, shown: str) -> dict:
    width = config_number(section, "hidden_size", shown)
    heads = config_number(section, "num_attention_heads", shown)
    if width % heads:
        raise DipclipError(f"{shown}: hidden_size {width} is not a multiple of num_attention_heads {heads}")
    return {"width": width, "heads": heads, "layers": config_number(section, "num_hidden_layers", shown),
            "mlp_ratio": exact_mlp_ratio(config_number(section, "intermediate_size", shown), width),
            "eps": float(section.get("layer_norm_eps", 1e-5 if "clip" in shown else 1e-6))}


def activation(section: dict, shown: str) -> str:
    act = section.get("hidden_act", "quick_gelu")
    if act not in ("quick_gelu", "gelu", "gelu_pytorch_tanh"):
        raise DipclipError(f"{shown}: activation {act!r} has no open_clip counterpart (quick_gelu, gelu or "
                           "gelu_pytorch_tanh)")
    return act


def sections(raw: dict, shown: str) -> tuple[dict, dict]:
    text, vision = raw.get("text_config"), raw.get("vision_config")
    if not isinstance(text, dict) or not isinstance(vision, dict):
        raise DipclipError(f"{shown} lacks text_config or vision_config; {FIX}")
    return text, vision
