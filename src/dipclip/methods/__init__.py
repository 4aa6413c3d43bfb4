"""Prompt methods by name. An explicit table: importing a module registers nothing."""

from ..errors import DipclipError
from .base import OptimConfig, PromptCLIP, PromptConfig, PromptMethod
from .coop import CoOp
from .dip import DIP
from .kgcoop import KgCoOp

METHODS: dict[str, type[PromptMethod]] = {"coop": CoOp, "dip": DIP, "kgcoop": KgCoOp}


def get_method(name: str) -> PromptMethod:
    try:
        return METHODS[name]()
    except KeyError:
        raise DipclipError(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}") from None


__all__ = ["METHODS", "OptimConfig", "PromptCLIP", "PromptConfig", "PromptMethod", "get_method"]
