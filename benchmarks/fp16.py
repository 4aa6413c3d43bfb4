"""How far does the authors' fp16 move a run from dipclip's fp32? The same run in both, on the parity testbed.

Every official config trains in fp16: CLIP's weights, the learned tensors and every activation and gradient
are half precision (CoOp's ``PREC fp16``, MaPLe's and PromptSRC's ``.half()``), SGD updates fp16 tensors, no
loss scaling. dipclip trains in fp32 (bf16 autocast on CUDA). This trains one run twice on the parity testbed
(``tools/parity/tiny_clip.py``: the tiny random OpenAI-format CLIP whose weights are fp16-exact, and its fixed
images and labels), from the same initial tensors, through dipclip's own ``training_step``, and prints how
far apart the two end:

    python benchmarks/fp16.py                       # CoOp, KgCoOp, ProGrad, CoCoOp, PromptSRC, DePT; 50 epochs
    python benchmarks/fp16.py --methods coop --epochs 200 --emulation both

fp16 on a CPU (``--emulation``):
- ``round`` (default): the run stays in fp32 tensors, and a ``TorchDispatchMode`` rounds the result of every
  floating-point aten op to fp16 (forward, backward and the optimiser's own ops, so the learned tensors, their
  gradients and SGD's momentum are fp16 values, and an update below half an fp16 step of a value is lost, as
  in fp16). Each op still accumulates in fp32 before its result is rounded, as CUDA's fp16 matmuls
  (tensor cores) and reductions do; results above 65504 become inf, as in fp16.
- ``half``: ``.half()`` on the towers, the learned tensors and the images (CPU half kernels, torch >= 2.1);
  dipclip casts the towers' features to fp32 before the similarity logits, so logits and loss stay fp32
  here: the partial emulation, printed as a cross-check.

Columns (fp16 minus fp32, at the end of training unless said): ``loss`` max |difference| over all steps and
its ratio to the fp32 loss there; ``logits`` max |difference| on 256 held-out testbed images, and its ratio
to how far training moved the fp32 logits from the initial ones; ``acc`` training-image accuracy fp32 / fp16
and the share of held-out predictions that agree; ``drift`` |theta16 - theta32| / |theta32 - theta0| over all
learned tensors (the fp16 run's distance from the fp32 run, relative to how far fp32 training moved them).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import sys
import tempfile
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[1] / "tools" / "parity"
METHODS = ("coop", "kgcoop", "prograd", "cocoop", "promptsrc", "dept")
# the published prompt of each (the parity tests' settings): n_ctx and init text
PROMPTS = {"coop": dict(n_ctx=4, init_text="a photo of a"), "kgcoop": dict(n_ctx=4, init_text="a photo of a"),
           "prograd": dict(n_ctx=16, dataset="oxford_pets"), "cocoop": dict(n_ctx=4, init_text="a photo of a"),
           "promptsrc": dict(n_ctx=4, init_text="a photo of a", prompt_depth=3), "dept": dict(n_ctx=16, init_text=""),
           "maple": dict(n_ctx=2, init_text="a photo of a", prompt_depth=3)}
HELD_OUT = 256


def load_tiny():
    spec = importlib.util.spec_from_file_location("parity_tiny_clip", TOOLS / "tiny_clip.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fp16_rounding():
    """A dispatch mode that rounds every fp32 result of every aten op to fp16 precision (in place where the
    op writes into an argument, as the optimiser's updates do; views are left as they are)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_map

    def rounded(x):
        if isinstance(x, torch.Tensor) and x.dtype == torch.float32:
            return x.to(torch.float16).to(torch.float32)
        return x

    def round_in_place(x):
        if isinstance(x, torch.Tensor) and x.dtype == torch.float32:
            x.copy_(x.to(torch.float16))
        elif isinstance(x, (list, tuple)):
            for item in x:
                round_in_place(item)

    class Fp16Rounding(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            schema = func._schema
            written = False
            for index, argument in enumerate(schema.arguments):
                if argument.alias_info is not None and argument.alias_info.is_write:
                    written = True
                    round_in_place(args[index] if index < len(args) else kwargs.get(argument.name))
            if written or any(r.alias_info is not None for r in schema.returns):
                return out  # in-place results are rounded above; views share their (rounded) storage
            return tree_map(rounded, out)

    return Fp16Rounding()


def backbone_and_data(tiny, folder: Path, wide: bool):
    import torch

    from dipclip.backbones.loading import load_backbone

    path = folder / ("tiny-wide.pt" if wide else "tiny.pt")
    if not path.exists():
        torch.save(tiny.openai_state_dict(**(tiny.WIDE if wide else {})), path)
    with contextlib.redirect_stderr(io.StringIO()):  # its "weights: ..." line, once per run
        return load_backbone(None, str(path), device="cpu")


def train_once(method_name: str, tiny, folder: Path, epochs: int, precision: str, start: dict | None):
    """One run: the method's published lr and Dassl's schedule over ``epochs`` epochs of the testbed's 4
    batches; returns the losses, the learned tensors (initial and final) and the logits before and after."""
    import torch

    from dipclip.engine.trainer import group_learning_rate, make_optimizer
    from dipclip.methods import get_method

    backbone = backbone_and_data(tiny, folder, wide=method_name == "maple")
    method = get_method(method_name)
    model = method.build(backbone, tiny.CLASSNAMES, method.prompt_config(**PROMPTS[method_name]))
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    with torch.no_grad():
        if start is not None:  # both runs start from the same tensors (the fp32 run's, rounded for fp16 below)
            for name, param in named.items():
                param.copy_(start[name])
        if precision != "fp32":  # the authors build their learned tensors in fp16
            for param in named.values():
                param.copy_(param.half())
    init = {n: p.detach().clone().float() for n, p in named.items()}
    images, labels = tiny.inputs()
    generator = torch.Generator().manual_seed(tiny.SEED + 99)
    held_out = torch.randn(HELD_OUT, 3, tiny.IMAGE_SIZE, tiny.IMAGE_SIZE, generator=generator)
    batches = tiny.batches()
    if precision == "half":
        backbone.model.half()
        backbone.text.half()
        model.half()
    mode = fp16_rounding() if precision == "round" else contextlib.nullcontext()
    cast = (lambda x: x.half()) if precision == "half" else (lambda x: x)

    def inputs(x):
        x = cast(x)
        if model.image_prompted:
            return x
        with torch.no_grad():
            return backbone.encode_images(x)

    def logits_of(x):
        model.eval()
        with torch.no_grad(), (fp16_rounding() if precision == "round" else contextlib.nullcontext()):
            out = torch.cat([model.logits(inputs(chunk)).float() for chunk in x.split(64)])
        model.train()
        return out

    before = logits_of(held_out)
    optimizer = make_optimizer(model.param_groups(), method.optim_config())
    optim_cfg = method.optim_config()
    losses = []
    model.train()
    with mode:
        for epoch in range(epochs):
            for group in optimizer.param_groups:
                group["lr"] = group_learning_rate(optim_cfg, epoch, epochs, group.get("lr_scale", 1.0))
            for batch_images, batch_labels in batches:
                loss, _ = method.training_step(model, inputs(batch_images), batch_labels, optimizer)
                losses.append(float(loss))
            end_epoch = getattr(method, "end_epoch", None)
            if end_epoch is not None:
                model.eval()
                end_epoch(model, epoch, epochs)
                model.train()
        end_training = getattr(method, "end_training", None)
        if end_training is not None:
            end_training(model, epochs)
    after = logits_of(held_out)
    train_logits = logits_of(images)
    return {"losses": losses, "init": init, "final": {n: p.detach().float().clone() for n, p in named.items()},
            "before": before, "after": after, "train_acc": float((train_logits.argmax(1) == labels).float().mean()),
            "start": {n: p.clone() for n, p in init.items()}}


def compare(ref: dict, other: dict) -> dict:
    import torch

    steps = [(abs(a - b), abs(a)) for a, b in zip(ref["losses"], other["losses"], strict=True)]
    worst = max(steps)
    drift = sum(float((other["final"][n] - ref["final"][n]).pow(2).sum()) for n in ref["final"]) ** 0.5
    moved = sum(float((ref["final"][n] - ref["init"][n]).pow(2).sum()) for n in ref["final"]) ** 0.5
    logit_diff = float((other["after"] - ref["after"]).abs().max())
    logit_moved = float((ref["after"] - ref["before"]).abs().max())
    agree = float((other["after"].argmax(1) == ref["after"].argmax(1)).float().mean())
    finite = all(torch.isfinite(t).all() for t in other["final"].values())
    return {"loss_diff": worst[0], "loss_ratio": worst[0] / max(worst[1], 1e-12), "logit_diff": logit_diff,
            "logit_ratio": logit_diff / max(logit_moved, 1e-12), "acc32": ref["train_acc"],
            "acc16": other["train_acc"], "agree": agree, "drift": drift / max(moved, 1e-12), "finite": finite,
            "final_loss32": sum(ref["losses"][-4:]) / 4, "final_loss16": sum(other["losses"][-4:]) / 4}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated; also maple (wide testbed, "
                        f"slow). Default {','.join(METHODS)}")
    parser.add_argument("--epochs", type=int, default=50, help="epochs of the testbed's 4 batches (default 50)")
    parser.add_argument("--emulation", choices=("round", "half", "both"), default="round")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    tiny = load_tiny()
    emulations = ("round", "half") if args.emulation == "both" else (args.emulation,)
    print(f"fp16 vs fp32 on the parity testbed: {args.epochs} epochs x {tiny.STEPS_PER_EPOCH * tiny.TRAIN_EPOCHS} "
          f"steps of batch {tiny.BATCH}, each method's published lr and Dassl's schedule; torch {torch.__version__}")
    head = (f"{'method':<10} {'fp16':<6} {'loss |d|':>9} {'ratio':>8} {'logits |d|':>10} {'ratio':>8} "
            f"{'acc32':>6} {'acc16':>6} {'agree':>6} {'drift':>8}  final loss 32 / 16")
    print(head)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.methods.split(","):
            ref = train_once(name, tiny, Path(tmp), args.epochs, "fp32", None)
            for emulation in emulations:
                try:
                    other = train_once(name, tiny, Path(tmp), args.epochs, emulation, ref["start"])
                except (RuntimeError, NotImplementedError) as exc:  # a CPU half kernel, or fp32 features
                    print(f"{name:<10} {emulation:<6} not run ({str(exc).splitlines()[0][:70]}): dipclip casts the "
                          "towers' features to fp32, which a half layer after them refuses")
                    continue
                c = compare(ref, other)
                print(f"{name:<10} {emulation:<6} {c['loss_diff']:9.2e} {c['loss_ratio']:8.1e} {c['logit_diff']:10.2e} "
                      f"{c['logit_ratio']:8.1e} {c['acc32']:6.1%} {c['acc16']:6.1%} {c['agree']:6.1%} "
                      f"{c['drift']:8.1e}  {c['final_loss32']:.4f} / {c['final_loss16']:.4f}"
                      f"{'' if c['finite'] else '  (non-finite!)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
