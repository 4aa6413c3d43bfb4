"""``dipclip train``: learn a prompt on a few-shot dataset and save its adapter."""

from __future__ import annotations

from .common import (
    FORMATTER,
    METHOD_NAMES,
    backbone_args,
    data_args,
    finite_float,
    non_negative_int,
    out_arg,
    positive_float,
    positive_int,
    probability,
    views_arg,
)


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
               "  dipclip train ... --out runs/dtd-coop --resume      # continue an interrupted run\n",
    )
    train.add_argument("--method", default="dip", choices=METHOD_NAMES, metavar="METHOD",
                       help=f"one of {', '.join(METHOD_NAMES)} (default: dip); NAME+dip = NAME with DIP's prompt")
    backbone_args(train)
    data_args(train)
    run = train.add_argument_group("training")
    run.add_argument("--shots", type=positive_int, default=16, metavar="K", help="images per class (default 16)")
    run.add_argument("--seed", type=int, default=1, help="seed of sampling and training (default 1)")
    run.add_argument("--epochs", type=positive_int, default=10, help="epochs (default 10)")
    run.add_argument("--batch-size", type=positive_int, default=32, help="batch size (default 32)")
    run.add_argument("--optimizer", choices=("sgd", "adamw"), default=None, help="default: the method's (sgd)")
    run.add_argument("--lr", type=positive_float, default=None, help="peak learning rate (default: the method's, 0.002)")
    run.add_argument("--resume", action="store_true", help="continue the run in --out from its last epoch")
    run.add_argument("--eval-every", type=non_negative_int, default=0, metavar="E",
                     help="also evaluate (base and new with --subsample base) every E epochs, into the history "
                          "(for `dipclip analyze`; default 0: only at the end)")
    run.add_argument("--views", type=views_arg, default="fresh", metavar="fresh|N",
                     help="training augmentations: 'fresh' (default; a new random view of every image every "
                          "epoch, protocol-exact) or N views encoded once and cycled over the epochs (faster)")
    run.add_argument("--no-feature-cache", dest="feature_cache", action="store_false",
                     help="keep no image features on disk (same numbers, but every run re-encodes its images)")
    prompt = train.add_argument_group("prompt")
    prompt.add_argument("--n-ctx", type=positive_int, default=None, help="context tokens (default 4)")
    prompt.add_argument("--init-text", default=None, help="context init text (default 'a photo of a')")
    prompt.add_argument("--random-init", action="store_true", help="random N(0, 0.02) context instead of init text")
    prompt.add_argument("--class-position", choices=("end", "middle", "front"), default=None,
                        help="where the class name goes (default end)")
    prompt.add_argument("--class-specific", action="store_true", default=None, help="one context per class")
    prompt.add_argument("--prompt", choices=("full", "dip"), default=None,
                        help="parameterisation of the method's context: full-rank, or DIP (P0 + Dropout(A @ B))")
    prompt.add_argument("--vision-dip", action="store_true", default=None,
                        help="with --prompt dip: the independent vision prompt matrices as DIP too (PromptSRC)")
    prompt.add_argument("--rank", type=positive_int, default=None, help="DIP rank r (default 1)")
    prompt.add_argument("--dip-init", choices=("zero-delta", "residual-svd"), default=None,
                        help="DIP initialisation (default residual-svd)")
    prompt.add_argument("--dip-dropout", type=probability, default=None, help="dropout on A @ B while training (default 0)")
    prompt.add_argument("--prompt-depth", type=positive_int, default=None,
                        help="MaPLe/PromptSRC: layers with learned prompts, clipped to the towers' depth (default 9)")
    prompt.add_argument("--density-k", type=positive_int, default=1, help="k of the ID_k logged per epoch")
    prompt.add_argument("--lambda-do", type=finite_float, default=None,
                        help="Direct Optimisation: subtract lambda * ID_k(P) from the loss (default 0, off)")
    prompt.add_argument("--lambda-pp", type=finite_float, default=None,
                        help="Positional Penalty on the tail singular values of P (default 0, off)")
    prompt.add_argument("--id-k", type=positive_int, default=None, help="k of both ID levers (default 1)")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    out_arg(train, "runs/train")
    train.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    from .. import api

    api.train(
        args.method, model=args.model, pretrained=args.pretrained, data=args.data, dataset=args.dataset,
        shots=args.shots, seed=args.seed, subsample=args.subsample, epochs=args.epochs, batch_size=args.batch_size,
        optimizer=args.optimizer, lr=args.lr, n_ctx=args.n_ctx, init_text=args.init_text,
        random_init=args.random_init, class_position=args.class_position, class_specific=args.class_specific,
        rank=args.rank, dip_init=args.dip_init, dip_dropout=args.dip_dropout, density_k=args.density_k,
        lambda_do=args.lambda_do, lambda_pp=args.lambda_pp, id_k=args.id_k, prompt=args.prompt, vision_dip=args.vision_dip,
        prompt_depth=args.prompt_depth, eval_every=args.eval_every,
        device=args.device, workers=args.workers, skip_bad_images=args.skip_bad_images, out=args.out,
        resume=args.resume, progress=not args.quiet, views=args.views, feature_cache=args.feature_cache,
    )
    print(f"adapter: {args.out}/adapter\nmetrics: {args.out}/metrics.json")
    return 0
