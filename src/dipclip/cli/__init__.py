"""``dipclip`` command line. Each command is a thin layer over :mod:`dipclip.api`.

User errors print one line (``dipclip: error: ...``) and exit with status 2; an interrupted run exits 130
and resumes with ``--resume``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..errors import DipclipError
from . import adapter, analysis, data, demo, evaluate, protocols, recipes, train
from .common import FORMATTER, OneLineErrorParser


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = OneLineErrorParser(
        prog="dipclip", formatter_class=FORMATTER,
        description="Parameter-efficient prompt tuning of CLIP: DIP (Dense Information Prompt), CoOp,\n"
                    "zero-shot CLIP and the Information Density (ID) of learned prompts.",
        epilog="examples:\n"
               "  dipclip train --method dip --model ViT-B-16 --pretrained openai --data ~/data --dataset dtd\n"
               "  dipclip eval --adapter runs/dtd/adapter --data ~/data --dataset dtd\n"
               "  dipclip predict cat.jpg --classes cat,dog --model ViT-B-16 --pretrained openai\n"
               "Run `dipclip COMMAND --help` for each command's options.",
    )
    parser.add_argument("--version", action="version", version=f"dipclip {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineErrorParser)

    for family in (train, evaluate, adapter, demo, protocols, analysis, data, recipes):
        family.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        from ..engine.distributed import init_from_environment

        device = init_from_environment()  # under torchrun: join the group, one GPU per process
        if device is not None and hasattr(args, "device"):
            args.device = device
        return int(args.func(args) or 0)
    except DipclipError as exc:
        print(f"dipclip: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dipclip: interrupted; finished epochs are checkpointed, rerun with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
