"""``dipclip demo`` (the README's first command) and ``dipclip pretrain`` (the recipe of the shipped model)."""

from __future__ import annotations

import argparse

from .common import (
    FORMATTER,
    crop_share,
    out_dir,
    output_args,
    path_arg,
    positive_float,
    positive_int,
    seed_arg,
)


def add_commands(subparsers) -> None:
    demo = subparsers.add_parser(
        "demo", formatter_class=FORMATTER, help="zero-shot, CoOp and DIP base-to-new on the shipped demo data",
        description="Base-to-new on the demo dataset with the shipped small CLIP (dipclip-tiny), offline:\n"
                    "zero-shot, CoOp and DIP over 3 seeds; prints the base / new / HM table with parameter counts\n"
                    "and the Information Density of each learned prompt, and writes the plots. About 2 minutes\n"
                    "on 2 CPU cores (--quick: one seed, a few epochs, for CI). The default data, demo_fashion, are\n"
                    "Fashion-MNIST test images (28 px, never seen in pretraining); its training crops keep at least\n"
                    "half of each image (--crop-scale 0.5; the recipes' 8% would leave 8 x 8 pixels). Everything\n"
                    "else is each method's published base-to-new recipe. The same command runs on real CLIP and\n"
                    "real data with --model/--pretrained/--data/--dataset.",
        epilog="examples:\n"
               "  dipclip demo\n"
               "  dipclip demo --quick --out runs/demo-quick\n"
               "  dipclip demo --lr 0.02 --out runs/demo-lr0.02\n"
               "  dipclip demo --dataset demo --epochs 20 --out runs/demo-drawings   # the other shipped dataset:\n"
               "      held-out drawings, where zero-shot is stronger and 16 shots add nothing (~30 s)\n"
               "  dipclip demo --model ViT-B-16 --pretrained openai --data ~/data --dataset oxford_pets --epochs 50\n",
    )
    demo.add_argument("--model", type=path_arg, default=None, metavar="NAME|CONFIG.json")
    demo.add_argument("--pretrained", type=path_arg, default=None, metavar="TAG|FILE",
                      help="default: dipclip-tiny without --model; with --model required ('none': random)")
    demo.add_argument("--data", type=path_arg, default=None, metavar="ROOT", help="default: the shipped demo data")
    demo.add_argument("--dataset", default="demo_fashion", metavar="KEY",
                      help="default: demo_fashion (Fashion-MNIST); demo (drawings) is the other shipped dataset")
    demo.add_argument("--seeds", nargs="+", type=seed_arg, default=[1, 2, 3], help="default: 1 2 3")
    demo.add_argument("--shots", type=positive_int, default=16, help="default: 16")
    demo.add_argument("--epochs", type=positive_int, default=200,
                      help="default: 200, the base-to-new recipes' of CoOp and DIP")
    demo.add_argument("--lr", type=positive_float, default=None,
                      help="one learning rate for CoOp and DIP (default: each method's published recipe, SGD 0.002)")
    demo.add_argument("--crop-scale", type=crop_share, default=None, metavar="S",
                      help="smallest share of the image area a training crop keeps (default: 0.5 on the shipped "
                           "demo_fashion images, otherwise the recipes' 0.08)")
    demo.add_argument("--quick", action="store_true", help="one seed, 2 epochs, 4 shots: a smoke test")
    demo.add_argument("--device", default="auto")
    demo.add_argument("--out", type=out_dir, default="runs/demo", metavar="DIR", help="default: runs/demo")
    output_args(demo, "the final table (stdout; metrics.json keeps the epochs)")
    demo.set_defaults(func=cmd_demo)

    pretrain = subparsers.add_parser(
        "pretrain", add_help=False, help="rebuild the shipped small CLIP and demo data (see `dipclip pretrain --help`)",
    )
    pretrain.add_argument("args", nargs=argparse.REMAINDER)
    pretrain.set_defaults(func=cmd_pretrain)


def cmd_demo(args) -> int:
    from ..data.registry import dataset_info
    from ..demo import run_demo

    dataset_info(args.dataset)  # a one-line error for an unknown key
    run_demo(args.out, model=args.model, pretrained=args.pretrained, data=args.data, dataset=args.dataset,
             seeds=args.seeds, shots=args.shots, epochs=args.epochs, lr=args.lr, crop_scale=args.crop_scale,
             quick=args.quick, device=args.device,
             progress=not args.quiet, verbose=args.verbose)
    return 0


def cmd_pretrain(args) -> int:
    from ..pretrain import main as pretrain_main

    return pretrain_main(args.args)
