"""argparse types and the one-line-error parser shared by the command line (``cli``) and the pretraining recipe
(``pretrain``), which sits below it: one line saying what a value must be, never a usage dump or a traceback."""

from __future__ import annotations

import argparse

from .argcheck import SEED_MAX


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


def seed_arg(text: str) -> int:
    """A seed from 0 to 2**32 - 1, the seeds numpy (and so Dassl) takes: a negative or a 70-bit one is refused
    here rather than by a generator deep in the run."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number from 0 to {SEED_MAX}, got {text!r}") from None
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"must be from 0 to {SEED_MAX} (the seeds numpy and Dassl take), got {value}")
    return value


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a bad option is one ``dipclip: error:`` line that points at --help, not a usage dump."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"dipclip: error: {message} (see `{self.prog} --help`)\n")
