"""The data commands of the ``dipclip`` CLI: ``data split``, ``data make-split`` and ``doctor``.

``dipclip.cli`` calls :func:`add_commands` with its subparsers; each command's ``func`` takes the
parsed arguments and returns the exit code. User errors raise :class:`DipclipError`.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..data._io import relative_path, write_json_atomic
from ..data.registry import DATASET_KEYS
from .common import FORMATTER as _FMT
from .common import out_file, path_arg, positive_int, seed_arg


def add_commands(subparsers) -> None:
    """Add ``data`` (with ``split`` and ``make-split``) and ``doctor`` to the CLI's subparsers."""
    data = subparsers.add_parser(
        "data", formatter_class=_FMT, help="inspect few-shot splits, write splits for custom data",
        description="Inspect the exact images a run trains on, and prepare custom datasets.",
        epilog="examples:\n"
               "  dipclip data split --data ~/data --dataset oxford_pets --shots 16 --seed 1\n"
               "  dipclip data make-split --data ~/my_images --seed 1\n",
    )
    data.set_defaults(func=lambda args: _print_help(data))
    sub = data.add_subparsers(dest="data_command", metavar="{split,make-split}")

    split = sub.add_parser(
        "split", formatter_class=_FMT, help="print the few-shot train/val images of a run as JSON",
        description=(
            "Print the train and val images a run with these --shots and --seed trains on, as JSON (paths\n"
            "relative to the image root, label, class name), so that runs can be seen and diffed.\n"
            "The subset is the one the Dassl-based code (CoOp, CoCoOp, MaPLe, ...) selects: an existing\n"
            "split_fewshot/shot_K-seed_S.pkl is read safely and preferred; otherwise it is resampled with the\n"
            "same algorithm. Labels are after --subsample (base/new halves are relabelled from 0)."
        ),
        epilog="examples:\n"
               "  dipclip data split --data ~/data --dataset oxford_pets --shots 16 --seed 1\n"
               "  dipclip data split --data ~/data --dataset dtd --shots 4 --seed 2 --subsample base > dtd.json\n"
               "  diff <(dipclip data split --data ~/data --dataset eurosat --shots 1 --seed 1) run1.json\n",
    )
    split.add_argument("--data", type=path_arg, default=None, metavar="ROOT",
                       help="folder holding the dataset folders (not needed for --dataset demo)")
    split.add_argument("--dataset", required=True, choices=DATASET_KEYS, metavar="KEY",
                       help=f"one of: {', '.join(DATASET_KEYS)}")
    split.add_argument("--shots", required=True, type=positive_int, metavar="K", help="images per class (>= 1)")
    split.add_argument("--seed", required=True, type=seed_arg, metavar="S", help="the run's seed (published: 1 2 3)")
    split.add_argument("--subsample", default="all", choices=("all", "base", "new"),
                       help="class half to keep (default: all)")
    split.add_argument("--cache-dir", type=path_arg, default=None, metavar="DIR",
                       help="also read/write our portable JSON few-shot cache under DIR")
    split.add_argument("--out", type=out_file, default=None, metavar="FILE", help="write the JSON to FILE instead of stdout")
    split.set_defaults(func=cmd_split)

    make = sub.add_parser(
        "make-split", formatter_class=_FMT, help="write a 50/20/30 split JSON for a custom ImageFolder tree",
        description=(
            "Write a split_zhou-style JSON ({\"train\": [[relative_path, label, classname], ...], \"val\": ...,\n"
            "\"test\": ...}) for FOLDER/<class>/<image>: per class 50% train, 20% val, 30% test, shuffled with\n"
            "--seed. By default it is written to FOLDER/split_dipclip.json, which --dataset imagefolder\n"
            "then reads. An existing split is never replaced without --force."
        ),
        epilog="examples:\n"
               "  dipclip data make-split --data ~/my_images\n"
               "  dipclip data make-split --data ~/my_images --seed 2 --out ~/splits/my_images_seed2.json\n"
               "  dipclip doctor --data ~/my_images --dataset imagefolder\n",
    )
    make.add_argument("--data", type=path_arg, required=True, metavar="FOLDER", help="ImageFolder tree: FOLDER/<class>/<image>")
    make.add_argument("--out", type=out_file, default=None, metavar="FILE", help="output (default FOLDER/split_dipclip.json)")
    make.add_argument("--seed", type=seed_arg, default=1, metavar="S", help="shuffle seed (default 1)")
    make.add_argument("--force", action="store_true", help="overwrite an existing split file")
    make.set_defaults(func=cmd_make_split)

    doctor = subparsers.add_parser(
        "doctor", formatter_class=_FMT, help="check dataset folders and print how to fix each problem",
        description=(
            "Check every dataset folder under --data (or only --dataset): split files present and\n"
            "well-formed, labels consistent with class names, class counts and split sizes against the\n"
            "published values, every referenced image present and decodable (a sample of 200 per split;\n"
            "--full decodes all), and existing few-shot caches. Prints each problem with its fix; the exit\n"
            "code is 1 if there is any problem, 0 otherwise."
        ),
        epilog="examples:\n"
               "  dipclip doctor --data ~/data\n"
               "  dipclip doctor --data ~/data --dataset imagenet --full\n"
               "  dipclip doctor --data ~/my_images --dataset imagefolder\n",
    )
    doctor.add_argument("--data", type=path_arg, default=None, metavar="ROOT",
                        help="folder holding the dataset folders (not needed for --dataset demo)")
    doctor.add_argument("--dataset", default=None, choices=DATASET_KEYS, metavar="KEY",
                        help="check only this dataset (required for imagefolder and csv)")
    doctor.add_argument("--full", action="store_true", help="decode every image instead of a sample")
    doctor.set_defaults(func=cmd_doctor)


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _data_root(args: argparse.Namespace) -> str:
    """``--data``, or the package's own folder for a shipped dataset (``--dataset demo``)."""
    from ..api import resolve_data_root
    from ..errors import DipclipError

    root = resolve_data_root(args.data, args.dataset)
    if root is None:
        raise DipclipError("--data ROOT is required (the folder that holds the dataset folders)")
    return root


def cmd_split(args: argparse.Namespace) -> int:
    """``dipclip data split``: the selected train and val images as JSON."""
    from ..data.datasets import load_dataset
    from ..data.sampling import apply_selection, base_new_labels, select_few_shot

    args.data = _data_root(args)
    splits = load_dataset(args.data, args.dataset)
    base_new_labels(splits.num_classes, args.subsample)
    selection = select_few_shot(splits, args.data, args.dataset, args.shots, args.seed, args.cache_dir)
    few = apply_selection(splits, selection, args.subsample)

    def rows(items):
        return [{"path": relative_path(d.path, few.image_root), "label": d.label, "classname": d.classname}
                for d in items]

    out = {
        "dataset": args.dataset,
        "shots": args.shots,
        "seed": args.seed,
        "subsample": args.subsample,
        "source": selection.source,
        "classnames": few.classnames,
        "train": rows(few.train),
        "val": rows(few.val),
    }
    if args.out:
        write_json_atomic(args.out, out)
        print(f"wrote {len(few.train)} train and {len(few.val)} val images ({selection.source}) to {args.out}",
              file=sys.stderr)
    else:
        sys.stdout.write(json.dumps(out, indent=1) + "\n")
    return 0


def cmd_make_split(args: argparse.Namespace) -> int:
    """``dipclip data make-split``: write a split JSON for a custom ImageFolder tree."""
    from ..data.make_split import make_split

    path = make_split(args.data, args.out, seed=args.seed, force=args.force)
    with open(path, encoding="utf-8") as f:
        counts = {k: len(v) for k, v in json.load(f).items()}
    print(f"wrote {path}: {counts['train']} train, {counts['val']} val, {counts['test']} test images")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    """``dipclip doctor``: print every problem with its fix; exit code 1 if any."""
    from ..data.doctor import run_doctor

    report = run_doctor(_data_root(args), args.dataset, fast=not args.full)
    for problem in report.problems:
        print(problem)
    for key, summary in report.checked.items():
        print(f"checked {key}: {summary['train']} train, {summary['val']} val, {summary['test']} test images, "
              f"{summary['decoded']} decoded")
    if report.problems:
        print(f"{len(report.problems)} problem(s) found")
        return 1
    print(f"no problems found in {len(report.checked)} dataset(s)" + ("" if args.full else
          " (images sampled; --full decodes every image)"))
    return 0
