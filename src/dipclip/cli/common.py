"""What the ``dipclip`` commands share: the one-line-error parser, argument types and option groups."""

from __future__ import annotations

import argparse

FORMATTER = argparse.RawDescriptionHelpFormatter


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a bad option is one line that points at --help instead of a usage dump."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def int_at_least(minimum: int):
    """An argparse type for whole numbers >= ``minimum``, with a one-line reason when not."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def views_arg(text: str) -> str | int:
    if text.strip().lower() == "fresh":
        return "fresh"
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected 'fresh' or a whole number >= 1, got {text!r}") from None


def classnames_arg(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("the class list is empty; give names separated by commas, e.g. cat,dog")
    return names


def backbone_args(parser: argparse.ArgumentParser, required_default: str | None = "none") -> None:
    group = parser.add_argument_group("backbone")
    group.add_argument("--model", default=None, metavar="NAME|CONFIG.json",
                       help="open_clip model name (ViT-B-16) or an open_clip config JSON; optional with an OpenAI .pt")
    group.add_argument("--pretrained", default=required_default, metavar="TAG|FILE",
                       help="open_clip tag (openai), a weights file (~/.cache/clip/ViT-B-16.pt), an embedded "
                            "model (dipclip-tiny) or 'none' for random weights" +
                            (f" (default: {required_default})" if required_default else
                             " (default: the adapter's own)"))
    group.add_argument("--device", default="auto", help="auto (CUDA, MPS, else CPU), cpu, cuda, cuda:N, mps")


def data_args(parser: argparse.ArgumentParser, required: bool = True, subsample: bool = True) -> None:
    from ..data.registry import DATASET_KEYS

    group = parser.add_argument_group("data")
    group.add_argument("--data", default=None, metavar="ROOT",
                       help="folder holding the dataset folders (CoOp layout), or the custom folder/CSV "
                            "(not needed for --dataset demo)")
    group.add_argument("--dataset", required=required, choices=DATASET_KEYS, metavar="KEY",
                       help=f"one of: {', '.join(DATASET_KEYS)}")
    if subsample:
        group.add_argument("--subsample", default="all", choices=("all", "base", "new"),
                           help="class half (base-to-new protocol): all, base or new (default: all)")
    group.add_argument("--workers", type=non_negative_int, default=0, help="DataLoader worker processes (default 0)")
    group.add_argument("--skip-bad-images", action="store_true",
                       help="skip and count unreadable images instead of stopping at the first")


def out_arg(parser: argparse.ArgumentParser, default: str | None) -> None:
    parser.add_argument("--out", default=default, metavar="DIR",
                        help="output folder" + (f" (default: {default})" if default else ""))
