"""Does ``torch.compile`` speed up the text side of a training step? Measured, not assumed.

Same model (random ViT-B-32 text tower, width 512, 12 layers), same 50 class prompts, same context: one
forward + backward of the class text features, eager vs ``torch.compile`` (after its warm-up), in one
process. Prints both times, the ratio and the one-time compile cost.

    python benchmarks/compile.py [--classes 50] [--steps 5] [--threads 2]
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
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from dipclip.backbones.loading import load_backbone
    from dipclip.methods import get_method

    backbone = load_backbone(args.model, "none", device="auto")
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


if __name__ == "__main__":
    raise SystemExit(main())
