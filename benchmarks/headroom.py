"""Can prompt tuning gain anything on base classes here? Zero-shot, a K-shot linear probe and CoOp, 3 seeds.

A learned prompt only moves the class text features. On base classes it can hardly beat a cosine classifier
trained on the same K shots and started at the zero-shot text features (the probe): where the probe does not
rise above zero-shot, no prompt method will, and a testbed built on that model and data cannot show
prompt tuning at all. This measures that in a minute, before hours are spent on runs:

    python benchmarks/headroom.py                                   # dipclip-tiny on the drawing demo
    python benchmarks/headroom.py --dataset demo_fashion --crop-scale 0.5   # as `dipclip demo` trains
    python benchmarks/headroom.py --data ~/fmnist --dataset imagefolder
    python benchmarks/headroom.py --model cfg.json --pretrained model_fp32.pt --data DIR --dataset demo

Columns: zero-shot on the base test images; the probe after 50, 200 and 1000 full-batch Adam steps
(lr 1e-3, the model's logit scale; test accuracy at fixed steps, no selection on the test set); CoOp
(`dipclip train --method coop`, its recipe: SGD lr 0.002, 4 context tokens "a photo of a") at the given
epoch counts (default 20 and the recipe's 200, which the demo runs), and how far its context moved from the
initialisation (mean L2 distance per token; a token embedding's own norm is printed beside it).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
from pathlib import Path

PROBE_STEPS = (50, 200, 1000)


def probe(features, labels, init, scale: float, test_features, test_labels) -> list[float]:
    """Test accuracy of a cosine classifier started at ``init``, after each of PROBE_STEPS Adam steps."""
    import torch
    import torch.nn.functional as F

    weights = init.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([weights], lr=1e-3)
    out = []
    for step in range(1, max(PROBE_STEPS) + 1):
        loss = F.cross_entropy(scale * features @ F.normalize(weights, dim=-1).T, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step in PROBE_STEPS:
            with torch.no_grad():
                pred = (test_features @ F.normalize(weights, dim=-1).T).argmax(1)
            out.append(float((pred == test_labels).float().mean() * 100))
    return out


def run_coop(common: list[str], seed: int, shots: int, epochs: int, folder: Path, init_ctx) -> tuple[float, float]:
    """Base accuracy of CoOp and the mean distance its context tokens moved from their initialisation."""
    from safetensors.torch import load_file

    from dipclip.cli import main as cli

    log = io.StringIO()
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        code = cli(["train", "--method", "coop", *common, "--subsample", "base", "--shots", str(shots), "--seed",
                    str(seed), "--epochs", str(epochs), "--views", "4", "--quiet", "--out", str(folder)])
    if code not in (0, None):
        sys.exit(f"headroom: error: dipclip train failed (exit {code}):\n{log.getvalue()}")
    metrics = json.loads((folder / "metrics.json").read_text())
    ctx = load_file(str(folder / "adapter" / "adapter_model.safetensors"))["context.ctx"]
    moved = float((ctx.float() - init_ctx).norm(dim=-1).mean())
    return metrics["results"]["base"]["accuracy"], moved


def main(argv: list[str] | None = None) -> int:
    from dipclip.argtypes import int_at_least
    from dipclip.cli.common import crop_share

    positive_int = int_at_least(1)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="demo")
    parser.add_argument("--data", default=None, help="dataset root (default: the shipped demo)")
    parser.add_argument("--model", default=None, help="open_clip config JSON, with --pretrained FILE")
    parser.add_argument("--pretrained", default="dipclip-tiny")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--shots", type=positive_int, default=16)
    parser.add_argument("--coop-epochs", type=positive_int, nargs="*", default=[20, 200],
                        help="CoOp runs at these epoch counts (none: probe only)")
    parser.add_argument("--crop-scale", type=crop_share, default=None,
                        help="CoOp's training crops keep at least this share of the image (default: the recipes' "
                             "0.08; `dipclip demo` uses 0.5 on demo_fashion)")
    parser.add_argument("--out", type=Path, default=None, help="write headroom.json here")
    args = parser.parse_args(argv)

    import torch

    from dipclip.api import load_data
    from dipclip.backbones.loading import load_backbone
    from dipclip.engine.evaluate import encode_items
    from dipclip.errors import DipclipError
    from dipclip.methods.zeroshot import zeroshot_text_features

    torch.manual_seed(0)
    try:
        backbone = load_backbone(args.model, args.pretrained)
        base = load_data(args.data, args.dataset, subsample="base")
    except DipclipError as error:
        sys.exit(f"headroom: error: {error}")
    names = base.classnames
    test_x, test_y, _ = encode_items(backbone, base.test)
    init = zeroshot_text_features(backbone, names, [base.template]).float()
    scale = float(backbone.logit_scale)
    zero_shot = float(((test_x @ init.T).argmax(1) == test_y).float().mean() * 100)
    ids = backbone.tokenize(["a photo of a"])[0, 1:5]
    with torch.no_grad():
        init_ctx = backbone.text.embed_tokens(ids[None])[0].float()
    token_norm = float(init_ctx.norm(dim=-1).mean())

    common = ["--pretrained", args.pretrained, "--dataset", args.dataset]
    common += ["--data", args.data] if args.data else []
    common += ["--model", args.model] if args.model else []
    common += ["--crop-scale", str(args.crop_scale)] if args.crop_scale else []
    report: dict = {"classes": len(names), "test_images": len(base.test), "logit_scale": round(scale, 2),
                    "zero_shot": round(zero_shot, 2), "probe": {}, "coop": {}, "coop_moved": {},
                    "token_norm": round(token_norm, 3)}
    with tempfile.TemporaryDirectory() as scratch:
        for seed in args.seeds:
            shots = load_data(args.data, args.dataset, shots=args.shots, seed=seed, subsample="base")
            x, y, _ = encode_items(backbone, shots.train)
            report["probe"][seed] = [round(v, 2) for v in probe(x, y, init, scale, test_x, test_y)]
            for epochs in args.coop_epochs:
                acc, moved = run_coop(common, seed, args.shots, epochs, Path(scratch) / f"coop-{seed}-{epochs}",
                                       init_ctx)
                report["coop"].setdefault(epochs, []).append(round(acc, 2))
                report["coop_moved"].setdefault(epochs, []).append(round(moved, 3))
            print(f"seed {seed}: probe {report['probe'][seed]}, coop {report['coop']}", file=sys.stderr, flush=True)

    def mean(values: list[float]) -> str:
        std = statistics.pstdev(values) if values else 0.0  # population std, as the protocol summaries
        return f"{statistics.mean(values):.2f} ± {std:.2f}"

    probe_cols = [mean([report["probe"][s][i] for s in args.seeds]) for i in range(len(PROBE_STEPS))]
    print(f"{args.pretrained} on {args.dataset}: {len(names)} base classes, {len(base.test)} test images, "
          f"logit scale {scale:.1f}, {args.shots} shots, seeds {args.seeds}, CoOp's crops "
          f"{args.crop_scale or 0.08}-1")
    print("| zero-shot | " + " | ".join(f"probe {s} steps" for s in PROBE_STEPS) + " | "
          + " | ".join(f"CoOp {e} ep (moved)" for e in args.coop_epochs) + " |")
    print("|---" * (1 + len(PROBE_STEPS) + len(args.coop_epochs)) + "|")
    coop_cols = [f"{mean(report['coop'][e])} ({statistics.mean(report['coop_moved'][e]):.2f})"
                 for e in args.coop_epochs]
    print(f"| {zero_shot:.2f} | " + " | ".join(probe_cols + coop_cols) + " |")
    print(f"(a context token's own embedding norm: {token_norm:.2f}; "
          f"best probe gain over zero-shot: {max(statistics.mean([report['probe'][s][i] for s in args.seeds]) for i in range(len(PROBE_STEPS))) - zero_shot:+.2f} points)")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "headroom.json").write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
