"""What the ``dipclip`` commands share: the one-line-error parser, argument types and option groups."""

from __future__ import annotations

import argparse
import math
import os

from ..argcheck import class_names, template
from ..argtypes import OneLineErrorParser, int_at_least, seed_arg  # noqa: F401 - re-exported (seed_arg: --seed(s))
from ..errors import DipclipError

FORMATTER = argparse.RawDescriptionHelpFormatter

# The --method values, spelled out so that `--help` needs no torch (importing dipclip.methods loads it);
# tests/test_bad_input_cli.py checks this equals dipclip.probes.all_method_names(): prompt methods, their +dip
# forms, then the feature-space methods (dipclip.probes).
_BASE_METHODS = ("cocoop", "coop", "dept", "dip", "kgcoop", "maple", "prograd", "promptsrc")
FEATURE_METHOD_NAMES = ("clap", "clip-adapter", "clip-lora", "gda", "lp", "lpp", "taskres", "tip-adapter",
                        "tip-adapter-f", "zslp")
METHOD_NAMES = (*_BASE_METHODS, *(f"{name}+dip" for name in _BASE_METHODS if name != "dip"), *FEATURE_METHOD_NAMES)


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def crop_share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a share of the image area in (0, 1], got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def finite_number(minimum: float | None = None, strict: bool = False):
    """An argparse type for finite numbers (>= ``minimum``, or > with ``strict``), with a one-line reason:
    inf or nan would train non-finite weights."""
    bound = "" if minimum is None else f" {'>' if strict else '>='} {minimum:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number{bound}, got {text!r}") from None
        below = minimum is not None and (value <= minimum if strict else value < minimum)
        if not math.isfinite(value) or below:
            raise argparse.ArgumentTypeError(f"must be a finite number{bound}, got {text}")
        return value

    return parse


positive_float = finite_number(0, strict=True)
non_negative_float = finite_number(0)
finite_float = finite_number()


def path_arg(text: str) -> str:
    """A path as the shell would have expanded it: ``~`` and ``~user`` (quoted or after ``=``) included."""
    if not text:
        raise argparse.ArgumentTypeError("the path is empty")
    return os.path.expanduser(text)


def _nearest_existing(path: str) -> str:
    folder = os.path.abspath(path)
    while not os.path.lexists(folder):
        folder = os.path.dirname(folder)
    return folder


def out_dir(text: str) -> str:
    """An output folder: refused at once if it is a file or cannot be created, before any compute is spent."""
    path = path_arg(text)
    if os.path.lexists(path) and not os.path.isdir(path):
        kind = "a broken symlink" if os.path.islink(path) and not os.path.exists(path) else "a file, not a folder"
        raise argparse.ArgumentTypeError(f"{text} is {kind}; give a folder to write into")
    existing = _nearest_existing(path)
    if not os.path.isdir(existing):
        raise argparse.ArgumentTypeError(f"{existing} is a file, so {text} cannot be created; give another folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{existing} is not writable, so nothing can be written to {text}; "
                                         "give a folder you can write to")
    return path


def out_file(text: str) -> str:
    """An output file: refused at once if it is a folder or its folder cannot be created."""
    path = path_arg(text)
    if os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a file name to write")
    out_dir(os.path.dirname(os.path.abspath(path)))
    return path


def views_arg(text: str) -> str | int:
    if text.strip().lower() == "fresh":
        return "fresh"
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected 'fresh' or a whole number >= 1, got {text!r}") from None


def classnames_arg(text: str) -> list[str]:
    """Comma-separated class names: none empty (``a,,b``), none repeated or alike to CLIP's tokenizer (``a,A``)."""
    names = [name.strip() for name in text.split(",")]
    if not any(names):
        raise argparse.ArgumentTypeError("the class list is empty; give names separated by commas, e.g. cat,dog")
    try:
        return class_names("the list", names)
    except DipclipError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def template_arg(text: str) -> str:
    """A template with exactly one ``{}`` slot for the class name."""
    try:
        return template("the template", text)
    except DipclipError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def backbone_args(parser: argparse.ArgumentParser, adapter: str | None = None) -> None:
    """--model/--pretrained/--device. There is no default weight: random weights only with ``--pretrained none``.

    ``adapter``: when the command reads an adapter, says when its recorded backbone is the default."""
    group = parser.add_argument_group("backbone")
    group.add_argument("--model", type=path_arg, default=None, metavar="NAME|CONFIG.json",
                       help="open_clip model name (ViT-B-16, ViT-B-16-SigLIP, coca_ViT-B-32, EVA02-B-16) or an "
                            "open_clip config JSON; optional with an OpenAI .pt, hf-hub: or a transformers folder")
    group.add_argument("--pretrained", type=path_arg, default=None, metavar="TAG|FILE|hf-hub:ORG/NAME|FOLDER",
                       help="open_clip tag (openai), a weights file (~/.cache/clip/ViT-B-16.pt), an open_clip "
                            "hub model (hf-hub:timm/ViT-B-16-SigLIP, read from the Hugging Face cache), a "
                            "transformers CLIP/SigLIP folder (config.json + model.safetensors), an embedded "
                            "model (dipclip-tiny) or 'none' for random weights" +
                            (f" (default: the adapter's own{adapter})" if adapter is not None else
                             " (required: no default, so random weights are never used by accident)"))
    group.add_argument("--device", default="auto", help="auto (CUDA, MPS, else CPU), cpu, cuda, cuda:N, mps")


THREADS_ENV = "DIPCLIP_THREADS"


def threads_arg(parser: argparse.ArgumentParser) -> None:
    """``--threads N`` (added to every command that computes by :func:`dipclip.cli.add_threads_flags`)."""
    parser.add_argument("--threads", type=positive_int, default=None, metavar="N",
                        help=f"torch CPU threads (default: ${THREADS_ENV} when set, else torch's choice, one per "
                             "core); on a shared machine give the cores you may use. With a protocol's --jobs N: per "
                             "worker (default there: cores/N)")


def resolve_threads(flag: int | None) -> int | None:
    """The thread count a command runs with: ``--threads``, else ``$DIPCLIP_THREADS``, else None (torch's)."""
    if flag is not None:
        return flag
    text = os.environ.get(THREADS_ENV, "").strip()
    if not text:
        return None
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError as exc:
        raise DipclipError(f"{THREADS_ENV}={text!r}: {exc} (torch CPU threads); set it to a whole number such as "
                           f"2, or unset it for torch's choice") from None


def output_args(parser: argparse.ArgumentParser, result: str) -> None:
    """``--quiet`` / ``--verbose`` of the sweep commands (protocols, demo); ``result``: what --quiet still prints."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quiet", action="store_true",
                       help=f"print nothing but {result} and errors (no progress, no per-run lines)")
    group.add_argument("--verbose", action="store_true",
                       help="also each run's per-epoch lines (default: on a terminal one overall progress line "
                            "with the ETA, elsewhere one line per run)")


def data_args(parser: argparse.ArgumentParser, required: bool = True, subsample: bool = True) -> None:
    from ..data.registry import DATASET_KEYS

    group = parser.add_argument_group("data")
    group.add_argument("--data", type=path_arg, default=None, metavar="ROOT",
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
    parser.add_argument("--out", type=out_dir, default=default, metavar="DIR",
                        help="output folder" + (f" (default: {default})" if default else ""))
