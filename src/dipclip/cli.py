"""``dipclip`` command line. Each command is a thin layer over :mod:`dipclip.api`.

User errors print one line (``dipclip: error: ...``) and exit with status 2; an interrupted run exits 130
and resumes with ``--resume``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .errors import DipclipError

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


def _backbone_args(parser: argparse.ArgumentParser, required_default: str | None = "none") -> None:
    group = parser.add_argument_group("backbone")
    group.add_argument("--model", default=None, metavar="NAME|CONFIG.json",
                       help="open_clip model name (ViT-B-16) or an open_clip config JSON; optional with an OpenAI .pt")
    group.add_argument("--pretrained", default=required_default, metavar="TAG|FILE",
                       help="open_clip tag (openai), a weights file (~/.cache/clip/ViT-B-16.pt), an embedded "
                            "model (dipclip-tiny) or 'none' for random weights" +
                            (f" (default: {required_default})" if required_default else
                             " (default: the adapter's own)"))
    group.add_argument("--device", default="auto", help="auto (CUDA, MPS, else CPU), cpu, cuda, cuda:N, mps")


def _data_args(parser: argparse.ArgumentParser, required: bool = True, subsample: bool = True) -> None:
    from .data.registry import DATASET_KEYS

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


def _out_arg(parser: argparse.ArgumentParser, default: str | None) -> None:
    parser.add_argument("--out", default=default, metavar="DIR",
                        help="output folder" + (f" (default: {default})" if default else ""))


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .methods import method_names

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
    train.add_argument("--method", default="dip", choices=method_names(), metavar="METHOD",
                       help=f"one of {', '.join(method_names())} (default: dip); NAME+dip = NAME with DIP's prompt")
    _backbone_args(train)
    _data_args(train)
    run = train.add_argument_group("training")
    run.add_argument("--shots", type=positive_int, default=16, metavar="K", help="images per class (default 16)")
    run.add_argument("--seed", type=int, default=1, help="seed of sampling and training (default 1)")
    run.add_argument("--epochs", type=positive_int, default=10, help="epochs (default 10)")
    run.add_argument("--batch-size", type=positive_int, default=32, help="batch size (default 32)")
    run.add_argument("--optimizer", choices=("sgd", "adamw"), default=None, help="default: the method's (sgd)")
    run.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the method's, 0.002)")
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
    prompt.add_argument("--lambda-do", type=float, default=None,
                        help="Direct Optimisation: subtract lambda * ID_k(P) from the loss (default 0, off)")
    prompt.add_argument("--lambda-pp", type=float, default=None,
                        help="Positional Penalty on the tail singular values of P (default 0, off)")
    prompt.add_argument("--id-k", type=positive_int, default=None, help="k of both ID levers (default 1)")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    _out_arg(train, "runs/train")
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser(
        "eval", formatter_class=FORMATTER, help="accuracy of an adapter on a dataset split",
        description="Evaluate a trained adapter on a split. The backbone is the adapter's own unless\n"
                    "--model/--pretrained say otherwise (an incompatible backbone is refused).",
        epilog="examples:\n"
               "  dipclip eval --adapter runs/pets-dip/adapter --data ~/data --dataset oxford_pets --subsample new\n"
               "  dipclip eval --adapter runs/in-dip/adapter --data ~/data --dataset imagenet_sketch --out runs/sketch\n",
    )
    evaluate.add_argument("--adapter", required=True, metavar="DIR", help="adapter folder (OUT/adapter of train)")
    _backbone_args(evaluate, required_default=None)
    _data_args(evaluate)
    evaluate.add_argument("--split", default="test", choices=("train", "val", "test"), help="default: test")
    _out_arg(evaluate, None)
    evaluate.set_defaults(func=cmd_eval)

    zeroshot = sub.add_parser(
        "zeroshot", formatter_class=FORMATTER, help="zero-shot CLIP accuracy with hand-written templates",
        description="Zero-shot CLIP with the dataset's published template (e.g. 'a photo of a {}, a type of\n"
                    "pet.'), your own --template, or --ensemble (adds CLIP's 7 ImageNet templates).",
        epilog="examples:\n"
               "  dipclip zeroshot --model ViT-B-16 --pretrained openai --data ~/data --dataset eurosat\n"
               "  dipclip zeroshot ... --template 'a photo of a {}.' --template 'art of a {}.' --out runs/zs\n",
    )
    _backbone_args(zeroshot)
    _data_args(zeroshot)
    zeroshot.add_argument("--split", default="test", choices=("train", "val", "test"), help="default: test")
    zeroshot.add_argument("--template", action="append", default=None, help="template with {} (repeatable)")
    zeroshot.add_argument("--ensemble", action="store_true", help="average over CLIP's 7 ImageNet templates too")
    _out_arg(zeroshot, None)
    zeroshot.set_defaults(func=cmd_zeroshot)

    predict = sub.add_parser(
        "predict", formatter_class=FORMATTER, help="top-k classes of image files",
        description="Classify image files: zero-shot with --template, or with a trained --adapter.\n"
                    "Classes come from --classes or from a dataset (--data/--dataset).",
        epilog="examples:\n"
               "  dipclip predict photo1.jpg photo2.png --classes cat,dog,bird --model ViT-B-16 --pretrained openai\n"
               "  dipclip predict img.jpg --adapter runs/pets-dip/adapter --data ~/data --dataset oxford_pets --top-k 3\n",
    )
    predict.add_argument("images", nargs="+", help="image files")
    predict.add_argument("--classes", type=classnames_arg, default=None, help="comma-separated class names")
    predict.add_argument("--adapter", default=None, metavar="DIR", help="adapter folder (default: zero-shot)")
    predict.add_argument("--template", default="a photo of a {}.", help="zero-shot template")
    predict.add_argument("--top-k", type=positive_int, default=5, help="classes per image (default 5)")
    _backbone_args(predict, required_default=None)
    predict.add_argument("--data", default=None, metavar="ROOT", help="take the classes from this dataset")
    predict.add_argument("--dataset", default=None, metavar="KEY", help="dataset key for --data")
    _out_arg(predict, None)
    predict.set_defaults(func=cmd_predict)

    density = sub.add_parser(
        "density", formatter_class=FORMATTER, help="Information Density (ID_k) of an adapter's prompt",
        description="ID_k = (s_1 + ... + s_k) / (s_1 + ... + s_m) of the merged prompt P and of the learned\n"
                    "update P - P_init (s: singular values). --energy uses squared singular values.",
        epilog="examples:\n"
               "  dipclip density runs/pets-dip/adapter\n"
               "  dipclip density runs/pets-coop/adapter --k 2 --energy --out runs/pets-coop\n",
    )
    density.add_argument("adapter", help="adapter folder")
    density.add_argument("--k", type=positive_int, default=None, help="only this k (default: every k)")
    density.add_argument("--energy", action="store_true", help="energy form (squared singular values)")
    _backbone_args(density, required_default=None)
    _out_arg(density, None)
    density.set_defaults(func=cmd_density)

    export = sub.add_parser(
        "export", formatter_class=FORMATTER, help="write the merged prompt and the class text-feature matrix",
        description="Write OUT/classifier.safetensors (prompt, text_features [C, D] normalised, logit_scale)\n"
                    "and OUT/classifier.json (class order, shapes, backbone). Deploy with:\n"
                    "  logits = logit_scale * normalize(image_features) @ text_features.T",
        epilog="examples:\n"
               "  dipclip export runs/pets-dip/adapter --data ~/data --dataset oxford_pets --out export/pets\n"
               "  dipclip export runs/pets-dip/adapter --classes 'abyssinian,bengal,birman' --out export/cats\n",
    )
    export.add_argument("adapter", help="adapter folder")
    export.add_argument("--classes", type=classnames_arg, default=None, help="comma-separated class names")
    export.add_argument("--data", default=None, metavar="ROOT", help="take the classes from this dataset")
    export.add_argument("--dataset", default=None, metavar="KEY", help="dataset key for --data")
    _backbone_args(export, required_default=None)
    _out_arg(export, "export")
    export.set_defaults(func=cmd_export)

    from .cli_analysis import add_analysis_commands
    from .cli_data import add_data_commands
    from .cli_demo import add_demo_commands
    from .cli_protocols import add_protocol_commands

    add_demo_commands(sub)
    add_protocol_commands(sub)
    add_analysis_commands(sub)
    add_data_commands(sub)
    return parser


def cmd_train(args) -> int:
    from . import api

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


def _print_results(metrics: dict) -> None:
    for name, result in metrics["results"].items():
        print(f"{name}: {result['accuracy']:.2f}% ({result['n']} images)")


def cmd_eval(args) -> int:
    from . import api

    metrics = api.evaluate(args.adapter, data=args.data, dataset=args.dataset, split=args.split,
                           subsample=args.subsample, model=args.model, pretrained=args.pretrained,
                           device=args.device, workers=args.workers, skip_bad_images=args.skip_bad_images,
                           out=args.out)
    _print_results(metrics)
    return 0


def cmd_zeroshot(args) -> int:
    from . import api

    metrics = api.zeroshot(model=args.model, pretrained=args.pretrained, data=args.data, dataset=args.dataset,
                           split=args.split, subsample=args.subsample, templates=args.template,
                           ensemble=args.ensemble, device=args.device, workers=args.workers,
                           skip_bad_images=args.skip_bad_images, out=args.out)
    _print_results(metrics)
    return 0


def cmd_predict(args) -> int:
    from . import api

    payload = api.predict(args.images, classnames=args.classes, data=args.data, dataset=args.dataset,
                          adapter=args.adapter, model=args.model, pretrained=args.pretrained,
                          template=args.template, top_k=args.top_k, device=args.device, out=args.out)
    for item in payload["predictions"]:
        ranked = ", ".join(f"{t['class']} {100 * t['probability']:.1f}%" for t in item["top"])
        print(f"{item['image']}: {ranked}")
    return 0


def cmd_density(args) -> int:
    from . import api

    payload = api.density(args.adapter, k=args.k, energy=args.energy, model=args.model,
                          pretrained=args.pretrained, device=args.device, out=args.out)
    print(f"{payload['method']} prompt {tuple(payload['shape'])}, singular values "
          f"{', '.join(f'{s:.4f}' for s in payload['singular_values'])}")
    for k, values in payload["id"].items():
        update = "n/a" if values["id_update"] is None else f"{values['id_update']:.4f}"
        print(f"ID_{k}: prompt {values['id_prompt']:.4f}  update {update}")
    return 0


def cmd_export(args) -> int:
    from . import api

    info = api.export(args.adapter, classnames=args.classes, data=args.data, dataset=args.dataset,
                      model=args.model, pretrained=args.pretrained, device=args.device, out=args.out)
    print(f"wrote {args.out}/classifier.safetensors: prompt {tuple(info['prompt_shape'])}, "
          f"text features {tuple(info['text_features_shape'])} for {len(info['classnames'])} classes")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        from .engine.distributed import init_from_environment

        device = init_from_environment()  # under torchrun: join the group, one GPU per process
        if device is not None and hasattr(args, "device"):
            args.device = device
        return int(args.func(args) or 0)
    except DipclipError as exc:
        print(f"dipclip: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dipclip: interrupted; finished epochs are checkpointed, rerun with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
