"""The parity testbed: a tiny random CLIP in OpenAI's state-dict format, and the fixed inputs.

Pure torch, so both sides use it: ``make_golden.py`` (with the authors' code) and ``tests/test_parity.py``
(with dipclip only). Every tensor is drawn from one seeded CPU generator and rounded to fp16 precision
(OpenAI's ``build_model`` converts weights to fp16 before the authors' code casts them back to fp32, so only
fp16-exact values survive that round trip unchanged).
"""

from __future__ import annotations

import hashlib
import math

import torch

SEED = 20261201
WIDTH = 64  # text and vision transformer width (one 64-wide head each: OpenAI sets heads = width // 64)
EMBED_DIM = 32
LAYERS = 3  # both towers; deep prompts (MaPLe, PromptSRC) reach layers 1 and 2
PATCH = 16
IMAGE_SIZE = 32
CONTEXT = 77
VOCAB = 49408

CLASSNAMES = ["golden_retriever", "cat", "sunflower", "airbus a320", "pizza"]
BATCH = 4
STEPS_PER_EPOCH = 2
TRAIN_EPOCHS = 2  # epoch 0 at the warm-up lr, epoch 1 at the peak lr: 4 optimiser steps in all


def _block(prefix: str, width: int, layers: int, draw) -> dict[str, torch.Tensor]:
    state = {}
    attn_std, proj_std, fc_std = width ** -0.5, width ** -0.5 * (2 * layers) ** -0.5, (2 * width) ** -0.5
    for i in range(layers):
        p = f"{prefix}.resblocks.{i}"
        state[f"{p}.attn.in_proj_weight"] = draw((3 * width, width), attn_std)
        state[f"{p}.attn.in_proj_bias"] = draw((3 * width,), 0.02)
        state[f"{p}.attn.out_proj.weight"] = draw((width, width), proj_std)
        state[f"{p}.attn.out_proj.bias"] = draw((width,), 0.02)
        state[f"{p}.ln_1.weight"] = 1 + draw((width,), 0.1)
        state[f"{p}.ln_1.bias"] = draw((width,), 0.02)
        state[f"{p}.mlp.c_fc.weight"] = draw((4 * width, width), fc_std)
        state[f"{p}.mlp.c_fc.bias"] = draw((4 * width,), 0.02)
        state[f"{p}.mlp.c_proj.weight"] = draw((width, 4 * width), proj_std)
        state[f"{p}.mlp.c_proj.bias"] = draw((width,), 0.02)
        state[f"{p}.ln_2.weight"] = 1 + draw((width,), 0.1)
        state[f"{p}.ln_2.bias"] = draw((width,), 0.02)
    return state


# MaPLe's trainer hard-codes ViT-B/16's widths (text 512, vision 768) for its prompts and projections, so
# MaPLe runs on a wider variant of the same testbed (text 512 / 8 heads, vision 768 / 12 heads).
WIDE = {"width": 512, "vision_width": 768}


def openai_state_dict(width: int = WIDTH, vision_width: int = WIDTH) -> dict[str, torch.Tensor]:
    """A ViT CLIP state dict with OpenAI's key names (loads in OpenAI's ``clip.build_model`` and in
    open_clip's ``load_openai_model``); identical at every call."""
    generator = torch.Generator().manual_seed(SEED + (0 if (width, vision_width) == (WIDTH, WIDTH) else 7))

    def draw(shape, std):
        return (torch.randn(shape, generator=generator) * std).half().float()

    grid = IMAGE_SIZE // PATCH
    w, v = width, vision_width
    state = {
        "positional_embedding": draw((CONTEXT, w), 0.01),
        "text_projection": draw((w, EMBED_DIM), w ** -0.5),
        "logit_scale": torch.tensor(math.log(1 / 0.07)).half().float(),
        "token_embedding.weight": draw((VOCAB, w), 0.02),
        "ln_final.weight": 1 + draw((w,), 0.1),
        "ln_final.bias": draw((w,), 0.02),
        "visual.class_embedding": draw((v,), v ** -0.5),
        "visual.positional_embedding": draw((grid * grid + 1, v), v ** -0.5),
        "visual.proj": draw((v, EMBED_DIM), v ** -0.5),
        "visual.conv1.weight": draw((v, 3, PATCH, PATCH), 0.02),
        "visual.ln_pre.weight": 1 + draw((v,), 0.1),
        "visual.ln_pre.bias": draw((v,), 0.02),
        "visual.ln_post.weight": 1 + draw((v,), 0.1),
        "visual.ln_post.bias": draw((v,), 0.02),
    }
    state |= _block("transformer", w, LAYERS, draw)
    state |= _block("visual.transformer", v, LAYERS, draw)
    return {k: v.half().float() for k, v in state.items()}


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the sorted names and raw fp32 bytes: what the golden files record as the checkpoint."""
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().float().contiguous().numpy().tobytes())
    return digest.hexdigest()


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed already-normalised images [N, 3, 32, 32] and labels [N], N = BATCH * STEPS_PER_EPOCH * TRAIN_EPOCHS:
    step s uses rows s*BATCH .. (s+1)*BATCH-1; step 0's images are also the ones whose logits are recorded."""
    generator = torch.Generator().manual_seed(SEED + 1)
    n = BATCH * STEPS_PER_EPOCH * TRAIN_EPOCHS
    images = torch.randn(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    labels = torch.arange(n) % len(CLASSNAMES)
    labels = labels[torch.randperm(n, generator=generator)]
    return images, labels


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    images, labels = inputs()
    return [(images[i:i + BATCH], labels[i:i + BATCH]) for i in range(0, len(labels), BATCH)]


def init_draw(key: str, shape: tuple[int, ...], std: float = 0.02) -> torch.Tensor:
    """A fixed N(0, std) tensor named ``key``: where an official random init is too large to ship (MaPLe's
    512 -> 768 projections), both sides start from this instead (the official init's structure, e.g.
    identical copies, is recorded separately)."""
    generator = torch.Generator().manual_seed(SEED + 2 + int(hashlib.sha256(key.encode()).hexdigest()[:8], 16))
    return torch.randn(shape, generator=generator) * std
