"""dipclip: parameter-efficient prompt tuning of CLIP models (DIP, CoOp) with Information Density."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["Classifier", "__version__"]


def __getattr__(name: str):
    """``dipclip.Classifier`` on first use, so ``import dipclip`` stays light (no torch until it is needed)."""
    if name == "Classifier":
        from .classifier import Classifier

        return Classifier
    raise AttributeError(f"module 'dipclip' has no attribute {name!r}")
