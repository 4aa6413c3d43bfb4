"""``dipclip eval``, ``zeroshot`` and ``predict``: accuracy on a split and classes of image files."""

from __future__ import annotations

from .common import (
    FORMATTER,
    backbone_args,
    classnames_arg,
    data_args,
    out_arg,
    out_file,
    path_arg,
    positive_int,
    template_arg,
)


def add_commands(sub) -> None:
    """Add ``eval``, ``zeroshot`` and ``predict`` to the CLI's subparsers."""
    evaluate = sub.add_parser(
        "eval", formatter_class=FORMATTER, help="accuracy of an adapter on a dataset split",
        description="Evaluate a trained adapter on a split. The backbone is the adapter's own unless\n"
                    "--model/--pretrained say otherwise (an incompatible backbone is refused).",
        epilog="examples:\n"
               "  dipclip eval --adapter runs/pets-dip/adapter --data ~/data --dataset oxford_pets --subsample new\n"
               "  dipclip eval --adapter runs/in-dip/adapter --data ~/data --dataset imagenet_sketch --out runs/sketch\n"
               "  dipclip eval --adapter runs/pets-dip/adapter --data ~/data --dataset oxford_pets --split val --per-class\n",
    )
    evaluate.add_argument("--adapter", type=path_arg, required=True, metavar="DIR", help="adapter folder (OUT/adapter of train)")
    backbone_args(evaluate, adapter="")
    data_args(evaluate)
    evaluate.add_argument("--split", default="test", choices=("train", "val", "test"), help="default: test")
    evaluate.add_argument("--per-class", action="store_true",
                          help="also print the 10 worst classes (lowest accuracy first) and the class each is "
                               "most often taken for; metrics.json always holds every class and the confusion matrix")
    out_arg(evaluate, None)
    evaluate.set_defaults(func=cmd_eval)

    zeroshot = sub.add_parser(
        "zeroshot", formatter_class=FORMATTER, help="zero-shot CLIP accuracy with hand-written templates",
        description="Zero-shot CLIP with the dataset's published template (e.g. 'a photo of a {}, a type of\n"
                    "pet.'), your own --template, or --ensemble (CoOp's 7-template ensemble).",
        epilog="examples:\n"
               "  dipclip zeroshot --model ViT-B-16 --pretrained openai --data ~/data --dataset eurosat\n"
               "  dipclip zeroshot ... --template 'a photo of a {}.' --template 'art of a {}.' --out runs/zs\n",
    )
    backbone_args(zeroshot)
    data_args(zeroshot)
    zeroshot.add_argument("--split", default="test", choices=("train", "val", "test"), help="default: test")
    zeroshot.add_argument("--template", action="append", type=template_arg, default=None,
                          help="template with one {} for the class name (repeatable)")
    zeroshot.add_argument("--ensemble", action="store_true", help="CoOp's ensemble baseline: CLIP's 7 templates plus the dataset's own (not on ImageNet); "
                               "with --template, the given templates plus the 7")
    out_arg(zeroshot, None)
    zeroshot.set_defaults(func=cmd_zeroshot)

    predict = sub.add_parser(
        "predict", formatter_class=FORMATTER, help="top-k classes of image files, folders or globs",
        description="Classify images: zero-shot with --template, or with a trained --adapter.\n"
                    "IMAGES are files, folders (their image files, recursively, in sorted order) or quoted globs\n"
                    "('photos/*.jpg', 'photos/**/*.png'). Classes come from --classes, from a dataset\n"
                    "(--data/--dataset), or by default from the adapter's training classes. Results go to the\n"
                    "screen, or with --output to a CSV (path, class_1, probability_1, ..., class_k,\n"
                    "probability_k: one row per image) or JSON file (as predictions.json).",
        epilog="examples:\n"
               "  dipclip predict photo1.jpg photo2.png --classes cat,dog,bird --model ViT-B-16 --pretrained openai\n"
               "  dipclip predict img.jpg --adapter runs/pets-dip/adapter --data ~/data --dataset oxford_pets --top-k 3\n"
               "  dipclip predict photos/ 'more/**/*.jpg' --adapter runs/pets-dip/adapter --output preds.csv\n",
    )
    predict.add_argument("images", type=path_arg, nargs="+", help="image files, folders or quoted globs")
    predict.add_argument("--classes", type=classnames_arg, default=None,
                         help="comma-separated class names (default: the adapter's training classes)")
    predict.add_argument("--adapter", type=path_arg, default=None, metavar="DIR", help="adapter folder (default: zero-shot)")
    predict.add_argument("--template", type=template_arg, default="a photo of a {}.",
                         help="zero-shot template, with one {} for the class name")
    predict.add_argument("--top-k", type=positive_int, default=5, help="classes per image (default 5)")
    backbone_args(predict, adapter=" with --adapter")
    predict.add_argument("--data", type=path_arg, default=None, metavar="ROOT", help="take the classes from this dataset")
    predict.add_argument("--dataset", default=None, metavar="KEY", help="dataset key for --data")
    predict.add_argument("--output", type=out_file, default=None, metavar="FILE",
                         help="write the predictions to FILE.csv or FILE.json instead of the screen (replaces only "
                              "an earlier predict output)")
    predict.add_argument("--quiet", action="store_true", help="no progress bar")
    out_arg(predict, None)
    predict.set_defaults(func=cmd_predict)


def _print_results(metrics: dict) -> None:
    for name, result in metrics["results"].items():
        print(f"{name}: {result['accuracy']:.2f}% ({result['n']} images)")


def cmd_eval(args) -> int:
    from .. import api

    metrics = api.evaluate(args.adapter, data=args.data, dataset=args.dataset, split=args.split,
                           subsample=args.subsample, model=args.model, pretrained=args.pretrained,
                           device=args.device, workers=args.workers, skip_bad_images=args.skip_bad_images,
                           out=args.out)
    _print_results(metrics)
    if args.per_class:
        _print_worst_classes(metrics)
    return 0


def _print_worst_classes(metrics: dict, k: int = 10) -> None:
    from ..engine.evaluate import worst_classes

    for name, result in metrics["results"].items():
        print(f"{name}: worst classes (lowest accuracy first):")
        for c in worst_classes(result, k):
            taken = (f"most often taken for {c['confused_with']} ({c['confused_count']})" if c["confused_with"]
                     else "never mistaken")
            print(f"  {c['name']}: {c['accuracy']:.2f}% of {c['n']} images, {taken}")


def cmd_zeroshot(args) -> int:
    from .. import api

    metrics = api.zeroshot(model=args.model, pretrained=args.pretrained, data=args.data, dataset=args.dataset,
                           split=args.split, subsample=args.subsample, templates=args.template,
                           ensemble=args.ensemble, device=args.device, workers=args.workers,
                           skip_bad_images=args.skip_bad_images, out=args.out)
    _print_results(metrics)
    return 0


def cmd_predict(args) -> int:
    from .. import api

    payload = api.predict(args.images, classnames=args.classes, data=args.data, dataset=args.dataset,
                          adapter=args.adapter, model=args.model, pretrained=args.pretrained,
                          template=args.template, top_k=args.top_k, device=args.device, out=args.out,
                          output=args.output, progress=not args.quiet)
    if args.output is not None:
        print(f"{len(payload['predictions'])} images classified; predictions written to {args.output}")
        return 0
    for item in payload["predictions"]:
        ranked = ", ".join(f"{t['class']} {100 * t['probability']:.1f}%" for t in item["top"])
        print(f"{item['image']}: {ranked}")
    return 0
