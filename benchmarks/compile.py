"""Does ``torch.compile`` speed up dipclip's hot paths? Measured, not assumed.

``--part text`` (default): the text side of a training step. Same model (random ViT-B-32 text tower, width
512, 12 layers), same 50 class prompts, same context: one forward + backward of the class text features.
``--part image``: the frozen image tower over one encoding batch (64 images), as the feature store runs it
for a large split. Eager vs ``torch.compile`` (after its warm-up), in one process; prints both times, the
ratio, the one-time compile cost and the break-even point.

    python benchmarks/compile.py [--part text|image] [--classes 50] [--steps 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, default=50)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--part", choices=("text", "image"), default="text")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from dipclip.backbones.loading import load_backbone
    from dipclip.methods import get_method

    backbone = load_backbone(args.model, "none", device="auto")
    if args.part == "image":
        return image_part(backbone, args.steps)
    names = [f"class number {i}" for i in range(args.classes)]
    coop = get_method("coop")
    model = coop.build(backbone, names, coop.prompt_config())

    def step(forward) -> float:
        began = time.perf_counter()
        features = forward(model.context())
        features.float().square().sum().backward()
        model.context.ctx.grad = None
        if backbone.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - began

    eager = model.class_prompts.forward
    compiled = torch.compile(model.class_prompts.forward)
    began = time.perf_counter()
    step(compiled)  # compilation happens here
    compile_cost = time.perf_counter() - began
    step(eager)
    eager_times = [step(eager) for _ in range(args.steps)]
    compiled_times = [step(compiled) for _ in range(args.steps)]
    e, c = statistics.median(eager_times), statistics.median(compiled_times)
    print(f"device {backbone.device}, {args.classes} classes, median of {args.steps} steps")
    print(f"eager     {e * 1000:8.1f} ms/step")
    print(f"compiled  {c * 1000:8.1f} ms/step (one-time compile {compile_cost:.1f} s)")
    print(f"ratio eager/compiled: {e / c:.2f}x; break-even after {compile_cost / max(e - c, 1e-9):.0f} steps"
          if c < e else f"ratio eager/compiled: {e / c:.2f}x (compiled is not faster)")
    return 0


def image_part(backbone, steps: int) -> int:
    from dipclip.engine.features import ENCODE_BATCH

    images = torch.randn(ENCODE_BATCH, 3, backbone.image_size, backbone.image_size, device=backbone.device)

    def encode(run) -> tuple[float, torch.Tensor]:
        began = time.perf_counter()
        with torch.no_grad():
            features = run(images)
        if backbone.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - began, features

    eager = backbone.encode_images
    compiled = torch.compile(backbone.encode_images)
    compile_cost, compiled_features = encode(compiled)
    _, eager_features = encode(eager)
    eager_times = [encode(eager)[0] for _ in range(steps)]
    compiled_times = [encode(compiled)[0] for _ in range(steps)]
    e, c = statistics.median(eager_times), statistics.median(compiled_times)
    gap = float((eager_features - compiled_features).abs().max())
    print(f"device {backbone.device}, image tower, batches of {ENCODE_BATCH}, median of {steps}")
    print(f"eager     {e * 1000:8.1f} ms/batch")
    print(f"compiled  {c * 1000:8.1f} ms/batch (one-time compile {compile_cost:.1f} s); max |feature gap| {gap:.1e}")
    if c < e:
        images_even = compile_cost / (e - c) * ENCODE_BATCH
        print(f"ratio eager/compiled: {e / c:.2f}x; break-even after about {images_even:,.0f} images")
    else:
        print(f"ratio eager/compiled: {e / c:.2f}x (compiled is not faster)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
