"""Feature-space methods by name (linear probes, adapters, caches). An explicit table: importing a module registers
nothing. :func:`get_any_method` and :func:`all_method_names` cover prompt methods and these alike."""

from __future__ import annotations

from ..errors import DipclipError
from ..methods import get_method, method_names
from .base import PROTOCOLS, FeatureData, FeatureHead, FeatureMethod
from .clap import CLAP, ZeroShotLinearProbe
from .clip_adapter import ClipAdapter
from .clip_lora import CLIPLoRA
from .gda import GDA
from .lp import LinearProbeMethod
from .lpp import LPP
from .taskres import TaskRes
from .tip_adapter import TipAdapter, TipAdapterF

FEATURE_METHODS: dict[str, type[FeatureMethod]] = {
    "lp": LinearProbeMethod, "zslp": ZeroShotLinearProbe, "clap": CLAP, "lpp": LPP,
    "tip-adapter": TipAdapter, "tip-adapter-f": TipAdapterF, "gda": GDA, "clip-lora": CLIPLoRA,
    "clip-adapter": ClipAdapter, "taskres": TaskRes,
}


def feature_method_names() -> list[str]:
    return sorted(FEATURE_METHODS)


def is_feature_method(name: str) -> bool:
    return name in FEATURE_METHODS


def get_feature_method(name: str) -> FeatureMethod:
    if name not in FEATURE_METHODS:
        raise DipclipError(f"unknown feature method {name!r}; available: {', '.join(feature_method_names())}")
    return FEATURE_METHODS[name]()


def all_method_names() -> list[str]:
    """Every accepted --method value: prompt methods (and their ``+dip`` forms), then feature-space methods."""
    return method_names() + feature_method_names()


def get_any_method(name: str):
    """A prompt method or a feature-space method by name."""
    if name in FEATURE_METHODS:
        return FEATURE_METHODS[name]()
    try:
        return get_method(name)
    except DipclipError:
        raise DipclipError(f"unknown method {name!r}; available: {', '.join(all_method_names())}") from None


__all__ = ["FEATURE_METHODS", "PROTOCOLS", "FeatureData", "FeatureHead", "FeatureMethod", "all_method_names",
           "feature_method_names", "get_any_method", "get_feature_method", "is_feature_method"]
