"""dipclip: parameter-efficient prompt tuning of CLIP models (DIP, CoOp) with Information Density."""

__version__ = "0.1.0"
