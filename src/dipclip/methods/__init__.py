"""Prompt methods by name. An explicit table: importing a module registers nothing."""

from dataclasses import replace

from ..errors import DipclipError
from .base import OptimConfig, PromptCLIP, PromptConfig, PromptMethod
from .cocoop import CoCoOp
from .coop import CoOp
from .dept import DePT
from .dip import DIP
from .kgcoop import KgCoOp
from .maple import MaPLe
from .prograd import ProGrad
from .promptsrc import PromptSRC

METHODS: dict[str, type[PromptMethod]] = {
    "coop": CoOp, "dip": DIP, "cocoop": CoCoOp, "kgcoop": KgCoOp, "prograd": ProGrad, "maple": MaPLe,
    "promptsrc": PromptSRC,
    "dept": DePT,
}


PROMPT_VARIANTS = ("full", "dip")


def with_prompt(method: PromptMethod, parameterization: str) -> PromptMethod:
    """The same method with its context matrix in another parameterisation (DIP as a plug-in switch).

    ``dip`` swaps the full-rank context for ``P0 + Dropout(A @ B)`` with DIP's defaults; the method's loss,
    extra modules and recipe are unchanged, and at step 0 the model is exactly the method's own initial model.
    """
    if parameterization not in PROMPT_VARIANTS:
        raise DipclipError(f"unknown prompt parameterisation {parameterization!r}; use full or dip")
    if method.prompt_defaults.parameterization == parameterization:
        return method
    if parameterization == "dip":
        dip = DIP.prompt_defaults
        method.prompt_defaults = replace(method.prompt_defaults, parameterization="dip", rank=dip.rank,
                                         dip_init=dip.dip_init, dip_dropout=dip.dip_dropout)
        method.name = f"{method.name}+dip"
    else:
        method.prompt_defaults = replace(method.prompt_defaults, parameterization="full")
        method.name = f"{method.name}+full"
    return method


def method_names() -> list[str]:
    """Every accepted --method value: the methods, and each full-rank one with the DIP switch (`kgcoop+dip`)."""
    names = sorted(METHODS)
    return names + [f"{n}+dip" for n in names if METHODS[n].prompt_defaults.parameterization == "full"]


def get_method(name: str) -> PromptMethod:
    base, _, variant = name.partition("+")
    if base not in METHODS or (variant and variant not in PROMPT_VARIANTS):
        raise DipclipError(f"unknown method {name!r}; available: {', '.join(method_names())}")
    method = METHODS[base]()
    return with_prompt(method, variant) if variant else method


__all__ = ["METHODS", "method_names", "with_prompt", "OptimConfig", "PromptCLIP", "PromptConfig", "PromptMethod", "get_method"]
