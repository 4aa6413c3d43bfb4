"""The protocol commands of the ``dipclip`` CLI: ``base2new``, ``fewshot``, ``xd`` and ``dg``."""

from __future__ import annotations

from .common import FORMATTER, non_negative_int, out_dir, path_arg, positive_int, seed_arg
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
        parser.add_argument("--methods", nargs="+", default=["zeroshot", "coop", "dip"], metavar="METHOD",
                            help="zeroshot and/or prompt methods (default: zeroshot coop dip)")
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
        parser.add_argument("--quiet", action="store_true", help="no progress bars, no per-epoch lines")
        add_override_args(parser, protocol_command=True)
        parser.set_defaults(func=cmd_protocol, protocol=protocol)


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
    runner.run()
    print((runner.root / "summary.md").read_text())
    return 0
