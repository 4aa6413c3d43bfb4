"""``dipclip`` command line. Each command is a thin layer over :mod:`dipclip.api`.

Every failure prints one line (``dipclip: error: ...``, what is wrong and the fix) and exits with status 2,
without a traceback unless ``--debug`` or ``DIPCLIP_DEBUG=1``; an interrupted run exits 130 and resumes
with ``--resume``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import adapter, analysis, data, demo, evaluate, protocols, recipes, train
from .boundary import run_guarded
from .common import FORMATTER, OneLineErrorParser, resolve_threads, threads_arg

# The commands that compute with torch: they take --threads N (and honour $DIPCLIP_THREADS).
COMPUTING = ("train", "eval", "zeroshot", "predict", "density", "export", "base2new", "fewshot", "xd", "dg", "demo",
             "analyze")


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


def _add_debug_flag(parser: argparse.ArgumentParser, top: bool = True) -> None:
    """``--debug`` on the top parser and on every subcommand, so it may follow the command too."""
    parser.add_argument("--debug", action="store_true", default=False if top else argparse.SUPPRESS,
                        help="on an error, also print the Python traceback (or set DIPCLIP_DEBUG=1)")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                if name != "pretrain":  # passes its arguments through untouched
                    _add_debug_flag(child, top=False)


def add_threads_flags(parser: argparse.ArgumentParser) -> None:
    """``--threads N`` on every command of :data:`COMPUTING` (``pretrain`` has its own)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                if name in COMPUTING:
                    threads_arg(child)


def apply_threads(flag: int | None) -> int | None:
    """Set torch's CPU threads from ``--threads`` or ``$DIPCLIP_THREADS`` before any work; None leaves torch's
    choice (and torch unimported). The inter-op pool is sized too when it has not started yet (torch allows
    that once per process). Returns the count applied."""
    threads = resolve_threads(flag)
    if threads is None:
        return None
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # already set, or inter-op work already ran in this process: leave it
        pass
    return threads


def _pretrain_argv(rest: list[str]) -> list[str]:
    """``dipclip pretrain`` keeps its own ``--threads`` (default 2); ``$DIPCLIP_THREADS`` fills it when not given."""
    if any(arg == "--threads" or arg.startswith("--threads=") for arg in rest):
        return rest
    threads = resolve_threads(None)
    return rest if threads is None else ["--threads", str(threads), *rest]


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI. Every failure ends in one ``dipclip: error:`` line and exit status 2 (130 when interrupted);
    the traceback only with ``--debug`` or ``DIPCLIP_DEBUG=1``."""
    argv = list(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        if argv[:1] == ["pretrain"]:  # its own parser, so that `dipclip pretrain --help` is its help
            from ..pretrain import main as pretrain_main

            return int(pretrain_main(_pretrain_argv(argv[1:])) or 0)
        parser = build_parser()
        _add_debug_flag(parser)
        add_threads_flags(parser)
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 0
        if "threads" in args:  # before anything loads or computes; --jobs workers get it as their count
            args.threads = apply_threads(args.threads)
        from ..engine.distributed import init_from_environment

        device = init_from_environment()  # under torchrun: join the group, one GPU per process
        if device is not None and hasattr(args, "device"):
            args.device = device
        return int(args.func(args) or 0)

    return run_guarded(body, argv)


if __name__ == "__main__":
    sys.exit(main())
