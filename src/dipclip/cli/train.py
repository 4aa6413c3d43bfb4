"""``dipclip train``: learn a prompt on a few-shot dataset and save its adapter."""

from __future__ import annotations

import json

from .common import FORMATTER, METHOD_NAMES, backbone_args, data_args, out_arg, positive_int, seed_arg
from .overrides import add_override_args, override_kwargs


def add_commands(sub) -> None:
    """Add ``train`` to the CLI's subparsers."""
    train = sub.add_parser(
        "train", formatter_class=FORMATTER, help="learn a prompt on a few-shot dataset, save its adapter",
        description="Learn a prompt (CoOp or DIP) on K images per class, save the adapter to OUT/adapter,\n"
                    "evaluate it, and write OUT/metrics.json. A killed run continues with --resume and ends\n"
                    "with the same metrics as an uninterrupted one. With --subsample base the prompt is also\n"
                    "evaluated on the new classes (base-to-new).",
        epilog="examples:\n"
               "  dipclip train --method dip --model ViT-B-16 --pretrained openai \\\n"
               "      --data ~/data --dataset oxford_pets --shots 16 --seed 1 --subsample base --out runs/pets-dip\n"
               "  dipclip train --method coop --pretrained ~/.cache/clip/ViT-B-16.pt --data ~/data --dataset dtd \\\n"
               "      --epochs 50 --optimizer adamw --lr 1e-3 --out runs/dtd-coop\n"
               "  dipclip train ... --out runs/dtd-coop --resume      # continue an interrupted run\n"
               "  dipclip train --method maple --recipe xd ... --dry-run  # the resolved configuration, as JSON\n"
               "Defaults are the method's published recipe for --recipe (see `dipclip recipes show METHOD`);\n"
               "every flag overrides one value, and metrics.json records the recipe and the overrides.\n",
    )
    train.add_argument("--method", default="dip", choices=METHOD_NAMES, metavar="METHOD",
                       help=f"one of {', '.join(METHOD_NAMES)} (default: dip); NAME+dip = NAME with DIP's prompt")
    backbone_args(train)
    data_args(train)
    train.add_argument("--shots", type=positive_int, default=16, metavar="K", help="images per class (default 16)")
    train.add_argument("--seed", type=seed_arg, default=1, help="seed of sampling and training (default 1)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last epoch")
    train.add_argument("--dry-run", action="store_true",
                       help="print the fully resolved configuration (recipe + overrides) as JSON and exit")
    add_override_args(train)
    train.add_argument("--quiet", action="store_true",
                       help="no progress bars and no per-epoch lines (metrics.json keeps them)")
    out_arg(train, "runs/train")
    train.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    from .. import api

    if args.dry_run:
        from ..backbones.loading import require_weights

        require_weights(args.model, args.pretrained)  # refused as the run would be, without loading anything
        print(json.dumps(api.train_config(
            args.method, recipe=args.recipe, model=args.model, pretrained=args.pretrained, data=args.data,
            dataset=args.dataset, shots=args.shots, seed=args.seed, subsample=args.subsample, device=args.device,
            workers=args.workers, skip_bad_images=args.skip_bad_images, **override_kwargs(args)), indent=2))
        return 0
    api.train(
        args.method, recipe=args.recipe, model=args.model, pretrained=args.pretrained, data=args.data,
        dataset=args.dataset, shots=args.shots, seed=args.seed, subsample=args.subsample, device=args.device,
        workers=args.workers, skip_bad_images=args.skip_bad_images, out=args.out, resume=args.resume,
        progress=not args.quiet, **override_kwargs(args),
    )
    print(f"adapter: {args.out}/adapter\nmetrics: {args.out}/metrics.json")
    return 0
