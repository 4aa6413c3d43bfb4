"""The recipe that builds dipclip's shipped model and demo dataset (``python -m dipclip.pretrain --help``)."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``dipclip pretrain`` (kept import-light: torch loads only when it runs)."""
    from .recipe import main as recipe_main

    return recipe_main(argv)


__all__ = ["main"]
