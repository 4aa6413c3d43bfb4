"""The flags that override one value of a method's recipe: shared by ``train`` and the protocol commands."""

from __future__ import annotations

import argparse

from .common import (
    crop_share,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    probability,
    views_arg,
)

RECIPE_CHOICES = ("base2new", "fewshot", "xd")


def method_option(text: str) -> tuple[str, object]:
    """``KEY=VALUE``: a number >= 0 (prompt methods' loss weights), or for a feature method's settings a JSON value
    (``search_step=[200,20]``, ``search=false``, ``covariance="ks"``; a bare word is a string)."""
    import json

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. kg_weight=8), got {text!r}")
    try:
        return key.strip(), non_negative_float(value)
    except argparse.ArgumentTypeError:
        pass
    try:
        parsed = json.loads(value)
    except ValueError:
        return key.strip(), value.strip()
    if isinstance(parsed, int | float) and not isinstance(parsed, bool):
        return key.strip(), non_negative_float(value)  # a negative number: the same refusal as before
    return key.strip(), parsed


def add_override_args(parser: argparse.ArgumentParser, *, protocol_command: bool = False) -> None:
    """Every flag that overrides the recipe. Unset flags keep the recipe's value."""
    run = parser.add_argument_group("training (defaults: the method's published recipe; `dipclip recipes show METHOD`)")
    if not protocol_command:
        run.add_argument("--recipe", choices=RECIPE_CHOICES, default="base2new",
                         help="which published recipe of the method to start from (default base2new)")
    run.add_argument("--epochs", type=positive_int, default=None, help="epochs (default: the recipe's)")
    run.add_argument("--batch-size", type=positive_int, default=None, help="batch size (default: the recipe's)")
    run.add_argument("--optimizer", choices=("sgd", "adamw", "adam"), default=None,
                     help="default: the recipe's (sgd for the prompt methods; adam is Dassl's, L2 in the gradient)")
    run.add_argument("--lr", type=positive_float, default=None, help="peak learning rate (default: the recipe's)")
    run.add_argument("--views", type=views_arg, default="fresh", metavar="fresh|N",
                     help="training augmentations: 'fresh' (default; a new random view of every image every "
                          "epoch, protocol-exact) or N views encoded once and cycled over the epochs (faster)")
    run.add_argument("--crop-scale", type=crop_share, default=None, metavar="S",
                     help="smallest share of the image area a random training crop keeps (default: the recipes' "
                          "0.08, Dassl's INPUT.RRCROP_SCALE); larger for tiny images, where 8%% is a few pixels")
    run.add_argument("--eval-every", type=non_negative_int, default=0, metavar="E",
                     help="also evaluate (base and new with --subsample base) every E epochs, into the history "
                          "(for `dipclip analyze`; default 0: only at the end)")
    run.add_argument("--no-feature-cache", dest="feature_cache", action="store_false",
                     help="keep no image features on disk (same numbers, but every run re-encodes its images)")
    run.add_argument("--search-split", choices=("val", "test"), default="val",
                     help="feature methods that choose hyperparameters (lp, lpp, tip-adapter, tip-adapter-f, gda): "
                          "on the few-shot validation split (default), or 'test', the authors' way for some of them "
                          "(the test set then picks them: recorded as such in metrics.json and marked in tables)")
    prompt = parser.add_argument_group("prompt")
    prompt.add_argument("--n-ctx", type=positive_int, default=None, help="context tokens (default: the recipe's)")
    prompt.add_argument("--init-text", default=None, help="context init text (default: the recipe's)")
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
    prompt.add_argument("--dip-dropout", type=probability, default=None,
                        help="dropout on A @ B while training (default 0)")
    prompt.add_argument("--prompt-depth", type=positive_int, default=None,
                        help="MaPLe/PromptSRC: layers with learned prompts, clipped to the towers' depth "
                             "(default: the recipe's, 9; 3 in xd)")
    prompt.add_argument("--density-k", type=positive_int, default=1, help="k of the ID_k logged per epoch")
    prompt.add_argument("--lambda-do", type=non_negative_float, default=None,
                        help="Direct Optimisation: subtract lambda * ID_k(P) from the loss (default 0, off)")
    prompt.add_argument("--lambda-pp", type=non_negative_float, default=None,
                        help="Positional Penalty on the tail singular values of P (default 0, off)")
    prompt.add_argument("--id-k", type=positive_int, default=None, help="k of both ID levers (default 1)")
    method = parser.add_argument_group("method options")
    method.add_argument("--prograd-lambda", type=non_negative_float, default=None,
                        help="ProGrad: the fraction of the conflicting gradient component removed (LOSS.LAMBDA; "
                             "default: the recipe's, 1.0; 0.8 for Flowers, DTD, EuroSAT at 8-16 shots in fewshot)")
    method.add_argument("--method-option", action="append", type=method_option, default=None, metavar="KEY=VALUE",
                        help="any other option of the method's recipe (repeatable), e.g. kg_weight=8 or gpa_mean=15")


def override_kwargs(args: argparse.Namespace) -> dict:
    """The keyword arguments of :func:`dipclip.api.train` that the override flags set."""
    options = dict(args.method_option or [])
    if args.prograd_lambda is not None:
        options["prograd_lambda"] = args.prograd_lambda
    return dict(
        epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr, views=args.views,
        eval_every=args.eval_every, feature_cache=args.feature_cache, crop_scale=args.crop_scale, n_ctx=args.n_ctx,
        init_text=args.init_text, random_init=args.random_init, class_position=args.class_position, class_specific=args.class_specific,
        prompt=args.prompt, vision_dip=args.vision_dip, rank=args.rank, dip_init=args.dip_init,
        dip_dropout=args.dip_dropout, prompt_depth=args.prompt_depth, density_k=args.density_k,
        lambda_do=args.lambda_do, lambda_pp=args.lambda_pp, id_k=args.id_k, method_options=options or None,
        search_split=args.search_split,
    )
