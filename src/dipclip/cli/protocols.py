"""The protocol commands of the ``dipclip`` CLI: ``base2new``, ``fewshot``, ``xd`` and ``dg``."""

from __future__ import annotations

import argparse
import sys

from .common import (
    FEATURE_METHOD_NAMES,
    FORMATTER,
    non_negative_int,
    out_dir,
    output_args,
    path_arg,
    positive_int,
    seed_arg,
)
from .launch import add_launcher_args, launch
from .overrides import add_override_args, override_kwargs

DESCRIPTIONS = {
    "base2new": ("train on the base half of the classes, test on base and new",
                 "Base-to-new generalisation: for each dataset x method x seed, train on the base half of the\n"
                 "classes (16 shots) and test the prompt on the base and on the new classes; HM = 2BN/(B+N)."),
    "fewshot": ("accuracy vs shots (1, 2, 4, 8, 16) on all classes",
                "Few-shot learning: for each dataset x shots x method x seed, train on all classes and test."),
    "xd": ("train on ImageNet, test on the other 10 datasets",
           "Cross-dataset transfer: train on ImageNet (all 1000 classes, 16 shots; ProGrad and KgCoOp 4, as\n"
           "their scripts) once per method x seed, then evaluate that prompt on the full test split of each\n"
           "target dataset."),
    "dg": ("train on ImageNet, test on ImageNet-V2/-Sketch/-A/-R",
           "Domain generalisation: train on ImageNet (as xd) once per method x seed, then evaluate on\n"
           "ImageNet-V2, -Sketch, -A and -R (A and R: a classifier over their 200 classes only)."),
}
DEFAULT_SHOTS = {"base2new": "16", "fewshot": "1 2 4 8 16",
                 "xd": "each method's recipe (16; 4 for prograd and kgcoop, as their scripts)",
                 "dg": "each method's recipe (16; 4 for prograd and kgcoop, as their scripts)"}


def add_commands(subparsers) -> None:
    for protocol, (short, description) in DESCRIPTIONS.items():
        parser = subparsers.add_parser(
            protocol, formatter_class=FORMATTER, help=short,
            description=description + "\n\nRuns go to OUT/{protocol}/{dataset}/shots_{K}/{method}/seed{S}/ with a\n"
            "metrics.json each; finished runs are skipped and interrupted ones resume, so rerunning the same\n"
            "command continues a sweep (a folder holding a run with other settings is refused, naming them).\n"
            "Each run folder is claimed on its own: --jobs N workers, the same command in other terminals or\n"
            "on other machines sharing OUT, and --launcher slurm tasks all take the next free run; a failed run\n"
            "is recorded (failed.json) and the exit status counts them. `dipclip status OUT/PROTOCOL` follows it.\n"
            "The table (mean ± std over seeds, per dataset and the average row) is written to\n"
            "OUT/{protocol}/summary.md, .csv and .json. Each method trains with its authors' recipe for this\n"
            f"protocol (`dipclip recipes show METHOD --protocol {'xd' if protocol == 'dg' else protocol}`); "
            "every flag below\noverrides one value of it.",
            epilog="examples:\n"
                   f"  dipclip {protocol} --model ViT-B-16 --pretrained openai --data ~/data --datasets all\n"
                   f"  dipclip {protocol} --pretrained ~/.cache/clip/ViT-B-16.pt --data ~/data "
                   f"--datasets {'imagenet_a imagenet_r' if protocol == 'dg' else 'dtd eurosat'} "
                   "--methods coop dip --seeds 1 2 3 --out runs\n",
        )
        parser.add_argument("--data", type=path_arg, default=None, metavar="ROOT",
                            help="folder holding the dataset folders (not needed for the shipped demo, demo_fashion)")
        parser.add_argument("--datasets", nargs="+", default=["all"], metavar="KEY",
                            help="dataset keys, each once, or 'all' for the protocol's published list (default)" +
                                 ("; these are the targets, the source is imagenet" if protocol in ("xd", "dg") else ""))
        default_methods = (["zeroshot", "coop", "dip", *FEATURE_METHOD_NAMES] if protocol == "fewshot"
                           else ["zeroshot", "coop", "dip"])
        parser.add_argument("--methods", nargs="+", default=default_methods, metavar="METHOD",
                            help=f"zeroshot, prompt methods and feature-space methods (default: "
                                 f"{' '.join(default_methods)})")
        parser.add_argument("--seeds", nargs="+", type=seed_arg, default=[1, 2, 3], help="each once; default: 1 2 3")
        parser.add_argument("--shots", nargs="+", type=positive_int, default=None,
                            help=("shot counts, each once; " if protocol == "fewshot" else "one shot count; ") +
                                 f"default: {DEFAULT_SHOTS[protocol]}")
        parser.add_argument("--workers", type=non_negative_int, default=0)
        parser.add_argument("--model", type=path_arg, default=None, metavar="NAME|CONFIG.json")
        parser.add_argument("--pretrained", type=path_arg, default=None, metavar="TAG|FILE",
                            help="open_clip tag, weights file, dipclip-tiny, or 'none' for random weights (required)")
        parser.add_argument("--device", default="auto")
        parser.add_argument("--out", type=out_dir, default="runs", metavar="DIR", help="default: runs")
        output_args(parser, "the final table (stdout)")
        parser.add_argument("--plan", action="store_true",
                            help="print the runs as JSON lines (kind, dataset, shots, method, seed, folder, resolved "
                                 "settings) and exit; nothing is loaded or run")
        parser.add_argument("--jobs", type=positive_int, default=1, metavar="N",
                            help="N worker processes on this machine, each taking the next free run (CPU: each gets "
                                 "--threads threads, default cores/N); default 1")
        parser.add_argument("--devices", type=device_list, default=None, metavar="0,1,...",
                            help="GPUs to pin the --jobs workers to, one each in turn (sets CUDA_VISIBLE_DEVICES)")
        add_override_args(parser, protocol_command=True)
        add_launcher_args(parser)
        parser.set_defaults(func=cmd_protocol, protocol=protocol)

    status = subparsers.add_parser(
        "status", formatter_class=FORMATTER, help="where a protocol sweep stands: done, running, failed, pending, ETA",
        description="Reads OUT/PROTOCOL (its plan.jsonl and run folders) and prints each run's state: done, running\n"
                    "(host, pid or SLURM job, since), stale (its worker died: the next worker takes it over and\n"
                    "resumes it), failed (why) or pending, and an ETA from the finished runs' durations.",
        epilog="examples:\n  dipclip status runs/base2new\n  dipclip status runs/fewshot --json\n")
    status.add_argument("folder", type=path_arg, metavar="OUT/PROTOCOL")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.set_defaults(func=cmd_status)


def device_list(text: str) -> list[str]:
    """``0,1,2``: GPU indices (or any CUDA_VISIBLE_DEVICES entries), none empty."""
    devices = [part.strip() for part in text.split(",")]
    if not all(devices):
        raise argparse.ArgumentTypeError(f"--devices takes a comma-separated list such as 0,1, got {text!r}")
    return devices


def output_mode(args) -> str:
    """quiet, verbose or normal (the sweep commands' --quiet/--verbose)."""
    return "quiet" if args.quiet else "verbose" if args.verbose else "normal"


def cmd_status(args) -> int:
    import json

    from ..protocols.status import format_status, sweep_status

    status = sweep_status(args.folder)
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    return 0


def cmd_protocol(args) -> int:
    from ..protocols import ProtocolConfig, ProtocolRunner, resolve_datasets

    options = {k: v for k, v in override_kwargs(args).items() if v is not None and k != "epochs"}
    options["workers"] = args.workers
    config = ProtocolConfig(
        protocol=args.protocol, data=args.data, datasets=resolve_datasets(args.protocol, args.datasets),
        methods=args.methods, seeds=args.seeds, shots=args.shots, out=args.out, model=args.model,
        pretrained=args.pretrained, device=args.device, epochs=args.epochs, train_options=options,
        progress=not args.quiet,
    )
    runner = ProtocolRunner(config)
    if args.plan:
        import json

        for line in runner.plan_lines():
            print(json.dumps(line, sort_keys=True))
        return 0
    launched = launch(args, config)
    if launched is not None:
        return launched
    if args.devices and args.jobs == 1:
        args.jobs = len(args.devices)
    runner.run(jobs=args.jobs, devices=args.devices, threads=args.threads, output=output_mode(args))
    print((runner.root / "summary.md").read_text())  # the result: printed with --quiet too
    failed = runner.counts.get("failed", 0)
    if failed:
        print(f"dipclip: error: {failed} run(s) failed, each with its error in its folder's failed.json; "
              f"`dipclip status {runner.root}` lists them, and rerunning the command retries them",
              file=sys.stderr)
        return min(failed, 125)
    return 0
