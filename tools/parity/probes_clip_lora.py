#!/usr/bin/env python
"""Golden numbers for CLIP-LoRA from the authors' own ``lora.run_lora`` (MaxZanella/CLIP-LoRA).

    python tools/parity/probes_clip_lora.py --official ROOT --out tests/golden/probes

ROOT/CLIP-LoRA is a work tree of MaxZanella/CLIP-LoRA (commit in tests/golden/probes/README.md). Their own
``clip.model.build_model`` builds the tiny OpenAI-format CLIP of :mod:`tiny_clip`; their ``run_lora`` applies
their ``PlainMultiheadAttentionLoRA`` to every attention block of both towers (their defaults: q, k, v, r 2,
alpha 1, dropout 0.25), trains ``n_iters * shots`` = 4 iterations on the fixed batches of :mod:`tiny_clip` with
their AdamW and per-step cosine, and evaluates the final model. Nothing of theirs is edited; at run time:
``.cuda()``/``.half()`` are no-ops and ``convert_weights`` is skipped (fp32 on CPU; their fp16 autocast and
GradScaler disable themselves without CUDA), ``cls_acc`` ends in ``.item()`` (numpy 2 refuses their
``float(<1-element array>)``), and each LoRA dropout is a :class:`ReplayDropout`: the same Bernoulli(0.75)
masks, drawn from (projection, step), that the dipclip test puts into its own LoRA branches, so both sides
drop the same inputs. Recorders wrap ``apply_lora`` (the initial A), ``F.cross_entropy`` (the training logits
and losses), ``AdamW.step`` (lr and every LoRA tensor after each step) and ``cls_acc`` (zero-shot and final
test logits).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import types
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import tiny_clip  # noqa: E402

SHOTS, N_ITERS = 2, 2  # total_iters = n_iters * shots = 4 = the 4 fixed batches of tiny_clip
TEMPLATE = "a photo of a {}."
P = 0.25


def mask_for(key: str, step: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The keep-mask (float 0/1, batch-first [B, L, E]) of LoRA branch ``key`` at training step ``step``."""
    seed = int(hashlib.sha256(f"{key}/{step}".encode()).hexdigest()[:12], 16)
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=generator) >= P).float()


class ReplayDropout(nn.Module):
    """Dropout with the masks of :func:`mask_for`: ``x * mask / (1 - p)`` in training, identity in eval.

    ``full_length``: the sequence length the mask is drawn for (77 for text, where dipclip stops the causal
    sequences after the last end-of-text token and takes the mask's leading positions); ``batch_first``:
    False for OpenAI's sequence-first blocks."""

    def __init__(self, key: str, full_length: int | None, batch_first: bool):
        super().__init__()
        self.p, self.key, self.full_length, self.batch_first, self.calls = P, key, full_length, batch_first, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        b, length = (x.shape[0], x.shape[1]) if self.batch_first else (x.shape[1], x.shape[0])
        full = self.full_length or length
        mask = mask_for(self.key, self.calls, (b, full, x.shape[-1]))[:, :length]
        self.calls += 1
        if not self.batch_first:
            mask = mask.transpose(0, 1)
        return x * mask / (1 - self.p)


def tensor(t: torch.Tensor) -> dict:
    return {"shape": list(t.shape), "values": t.detach().cpu().float().flatten().tolist()}


def install_shims() -> None:
    nn.Module.cuda = lambda self, *a, **k: self
    nn.Module.half = lambda self: self
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.Tensor.half = lambda self, *a, **k: self
    import clip.model as clip_model

    clip_model.convert_weights = lambda model: None
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


def cls_acc_item(output, target, topk=1):
    pred = output.topk(topk, 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return 100 * correct[:topk].reshape(-1).float().sum().item() / target.shape[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", required=True, help="folder holding the CLIP-LoRA work tree")
    parser.add_argument("--out", default="tests/golden/probes")
    args = parser.parse_args()
    repo = Path(args.official) / "CLIP-LoRA"
    sys.path.insert(0, str(repo))
    state = tiny_clip.openai_state_dict()  # before the shims: it rounds to fp16 with Tensor.half()
    install_shims()
    import clip.model as clip_model  # their clip/model.py
    import lora  # their lora.py

    model = clip_model.build_model({k: v.clone() for k, v in state.items()})
    images, labels = tiny_clip.inputs()
    train_loader = tiny_clip.batches()  # 4 batches of 4: one pass = the 4 iterations
    test_loader = [(images[:8], labels[:8]), (images[8:], labels[8:])]
    dataset = types.SimpleNamespace(classnames=list(tiny_clip.CLASSNAMES), template=[TEMPLATE])
    run_args = types.SimpleNamespace(encoder="both", position="all", params=["q", "k", "v"], r=2, alpha=1,
                                     dropout_rate=P, backbone="ViT-B/16", shots=SHOTS, n_iters=N_ITERS, lr=2e-4,
                                     eval_only=False, save_path=None, filename="lora_weights", dataset="tiny",
                                     seed=1)

    branches: dict[str, nn.Module] = {}
    original_apply = lora.apply_lora

    def recording_apply(a, m):
        layers = original_apply(a, m)
        for tower, blocks in (("text", m.transformer.resblocks), ("vision", m.visual.transformer.resblocks)):
            for i, block in enumerate(blocks):
                for name in ("q", "k", "v"):
                    linear = getattr(block.attn, f"{name}_proj")
                    key = f"{tower}_{i}_{name}"
                    linear.dropout = ReplayDropout(key, tiny_clip.CONTEXT if tower == "text" else None, False)
                    branches[key] = linear
        return layers

    def snapshot() -> dict:
        out = {}
        for key, linear in branches.items():
            out[f"{key}.A"] = linear.w_lora_A.detach().clone()
            out[f"{key}.B"] = linear.w_lora_B.detach().clone()
        return out

    init: dict = {}
    steps: list[dict] = []
    trained: list[dict] = []
    original_adamw, original_ce = torch.optim.AdamW, torch.nn.functional.cross_entropy

    class RecordingAdamW(original_adamw):
        def step(self, closure=None):
            if not steps:
                init.update(snapshot_before)
            lr = self.param_groups[0]["lr"]
            out = super().step(closure)
            steps.append({"lr": lr})
            trained.append(snapshot())
            return out

    snapshot_before: dict = {}

    def recording_ce(logits, target, *a, **k):
        if not snapshot_before:
            snapshot_before.update(snapshot())
        loss = original_ce(logits, target, *a, **k)
        steps_logits.append((logits.detach().clone(), target.clone(), loss.item()))
        return loss

    steps_logits: list = []
    seen: list[torch.Tensor] = []

    def recording_acc(output, target, topk=1):
        seen.append(output.detach().clone())
        return cls_acc_item(output, target, topk)

    lora.apply_lora, lora.cls_acc = recording_apply, recording_acc
    torch.optim.AdamW, torch.nn.functional.cross_entropy = RecordingAdamW, recording_ce
    try:
        torch.manual_seed(1)
        lora.run_lora(run_args, model, 100, dataset, train_loader, test_loader, test_loader)
    finally:
        torch.optim.AdamW, torch.nn.functional.cross_entropy = original_adamw, original_ce
    total = SHOTS * N_ITERS
    assert len(steps) == total and len(steps_logits) == total
    # cls_acc calls: zero-shot test logits, one per training step, then the final test evaluation per batch
    zero_shot, final = seen[0], torch.cat(seen[1 + total:])
    golden = {
        "source": "MaxZanella/CLIP-LoRA lora.run_lora with loralib.layers.PlainMultiheadAttentionLoRA "
                  "(apply_lora, AdamW(lr, betas (0.9, 0.999), weight_decay 1e-2), CosineAnnealingLR(total_iters, "
                  "eta_min=1e-6) per step)",
        "config": {"shots": SHOTS, "n_iters": N_ITERS, "r": 2, "alpha": 1, "dropout_rate": P, "lr": 2e-4,
                   "params": ["q", "k", "v"], "encoder": "both", "position": "all", "template": TEMPLATE,
                   "logit_scale": 100, "test_split": [8, 8]},
        "checkpoint_digest": tiny_clip.state_digest(state),
        "init": {k: tensor(v) for k, v in init.items()},
        "lrs": [s["lr"] for s in steps],
        "losses": [loss for _, _, loss in steps_logits],
        "train_logits": [tensor(logits) for logits, _, _ in steps_logits],
        "after_step_1": {k: tensor(v) for k, v in trained[0].items()},
        "final": {k: tensor(v) for k, v in trained[-1].items()},
        "zero_shot_test_logits": tensor(zero_shot),
        "final_test_cosine": tensor(final),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "clip_lora.json").write_text(json.dumps(golden) + "\n")
    print("wrote", out / "clip_lora.json", "losses", golden["losses"], "lrs", golden["lrs"])


if __name__ == "__main__":
    main()
