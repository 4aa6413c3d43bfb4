"""argparse types shared by the command line (``cli``) and the pretraining recipe (``pretrain``), which sits
below it: one line saying what a value must be, never a traceback."""

from __future__ import annotations

import argparse


def int_at_least(minimum: int, multiple: int = 1):
    """Whole numbers >= ``minimum`` (and multiples of ``multiple``)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        if value % multiple:
            raise argparse.ArgumentTypeError(f"must be a multiple of {multiple}, got {value}")
        return value

    return parse
