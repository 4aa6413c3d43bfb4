"""``dipclip density`` and ``export``: what an adapter's prompt holds, and its deployable classifier."""

from __future__ import annotations

from .common import FORMATTER, backbone_args, classnames_arg, out_arg, path_arg, positive_int


def add_commands(sub) -> None:
    """Add ``density`` and ``export`` to the CLI's subparsers."""
    density = sub.add_parser(
        "density", formatter_class=FORMATTER, help="Information Density (ID_k) of an adapter's prompt",
        description="ID_k = (s_1 + ... + s_k) / (s_1 + ... + s_m) of the merged prompt P and of the learned\n"
                    "update P - P_init (s: singular values). --energy uses squared singular values.",
        epilog="examples:\n"
               "  dipclip density runs/pets-dip/adapter\n"
               "  dipclip density runs/pets-coop/adapter --k 2 --energy --out runs/pets-coop\n",
    )
    density.add_argument("adapter", type=path_arg, help="adapter folder")
    density.add_argument("--k", type=positive_int, default=None, help="only this k (default: every k)")
    density.add_argument("--energy", action="store_true", help="energy form (squared singular values)")
    backbone_args(density, adapter="")
    out_arg(density, None)
    density.set_defaults(func=cmd_density)

    export = sub.add_parser(
        "export", formatter_class=FORMATTER, help="write the merged prompt and the class text-feature matrix",
        description="Write OUT/classifier.safetensors (prompt, text_features [C, D] normalised, logit_scale\n"
                    "as used, logit_bias on SigLIP-style models) and OUT/classifier.json (class order, the\n"
                    "test-time preprocess: resize, crop, mean, std; the logits formula; the backbone), which\n"
                    "reproduce `dipclip predict` with plain torch + PIL:\n"
                    "  logits = logit_scale * normalize(image_features) @ text_features.T (+ logit_bias)\n"
                    "DePT on its training classes also exports its head and the fused formula. CoCoOp\n"
                    "(image-conditioned) and MaPLe/PromptSRC (image-prompted) have no fixed classifier:\n"
                    "use `dipclip predict` or dipclip.Classifier.",
        epilog="examples:\n"
               "  dipclip export runs/pets-dip/adapter --data ~/data --dataset oxford_pets --out export/pets\n"
               "  dipclip export runs/pets-dip/adapter --classes 'abyssinian,bengal,birman' --out export/cats\n",
    )
    export.add_argument("adapter", type=path_arg, help="adapter folder")
    export.add_argument("--classes", type=classnames_arg, default=None,
                        help="comma-separated class names (default: the adapter's training classes)")
    export.add_argument("--data", type=path_arg, default=None, metavar="ROOT", help="take the classes from this dataset")
    export.add_argument("--dataset", default=None, metavar="KEY", help="dataset key for --data")
    backbone_args(export, adapter="")
    out_arg(export, "export")
    export.set_defaults(func=cmd_export)


def cmd_density(args) -> int:
    from .. import api

    payload = api.density(args.adapter, k=args.k, energy=args.energy, model=args.model,
                          pretrained=args.pretrained, device=args.device, out=args.out)
    print(f"{payload['method']} prompt {tuple(payload['shape'])}, singular values "
          f"{', '.join(f'{s:.4f}' for s in payload['singular_values'])}")
    for k, values in payload["id"].items():
        prompt, update = ("n/a" if values[key] is None else f"{values[key]:.4f}" for key in ("id_prompt", "id_update"))
        print(f"ID_{k}: prompt {prompt}  update {update}")  # n/a: undefined (an all-zero matrix)
    return 0


def cmd_export(args) -> int:
    from .. import api

    info = api.export(args.adapter, classnames=args.classes, data=args.data, dataset=args.dataset,
                      model=args.model, pretrained=args.pretrained, device=args.device, out=args.out)
    if "weight_shape" in info:  # a feature-space method's linear head
        print(f"wrote {args.out}/classifier.safetensors: weight {tuple(info['weight_shape'])} and bias for "
              f"{len(info['classnames'])} classes; preprocessing and formula in classifier.json")
        return 0
    print(f"wrote {args.out}/classifier.safetensors: prompt {tuple(info['prompt_shape'])}, "
          f"text features {tuple(info['text_features_shape'])} for {len(info['classnames'])} classes, "
          f"logit scale {info['logits']['logit_scale']:.6g}; preprocessing and formula in classifier.json")
    return 0
