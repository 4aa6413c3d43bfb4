"""Prompt parameterisations (one file each) and the class-prompt layout they are spliced into."""

from .class_prompts import CLASS_POSITIONS, ClassPrompts
from .coop import FullRankContext
from .dip import DIP_INITS, LowRankContext

__all__ = ["CLASS_POSITIONS", "ClassPrompts", "DIP_INITS", "FullRankContext", "LowRankContext"]
