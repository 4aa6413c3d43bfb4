"""Contrastive pretraining of a small open_clip CLIP on the corpus, sized for 2 CPU cores.

Facts that decided the recipe (measured on 2 shared cores without AVX-512: no bf16 speed-up, so fp32):
64 px images with 8 px patches and 4-layer towers of width 128 train at ~130 images/s alone and half that
while other work runs, so the schedule follows a wall-clock budget by default; the vocabulary, not the
width, dominates the parameter count, so the shipped file keeps only the token rows the captions use. Captions are drawn afresh at every step from several
templates and names (specific name, folder or emoji-group category, both), and identical captions in a
batch count as positives, since "a photo of a bird." legitimately matches every bird.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.transforms import CLIP_MEAN, CLIP_STD
from .sources import Item

MODEL_CFG: dict = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 48, "patch_size": 8, "width": 128, "layers": 4, "head_width": 64,
                   "mlp_ratio": 4.0},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 4},
}


def model_config(image_size: int = 48, width: int = 128, layers: int = 4, logit_scale: float | None = None) -> dict:
    """MODEL_CFG with another image size, tower width (both towers and the embedding), depth or initial
    logit scale (open_clip's default 1/0.07 when None; learned from there, clamped at 100 as in CLIP)."""
    cfg = {
        "embed_dim": width,
        "vision_cfg": dict(MODEL_CFG["vision_cfg"], image_size=image_size, width=width, layers=layers),
        "text_cfg": dict(MODEL_CFG["text_cfg"], width=width, heads=max(2, width // 64), layers=layers),
    }
    if logit_scale is not None:
        cfg["init_logit_scale"] = math.log(logit_scale)
    return cfg

# Every prompt the library uses must appear in the captions, or its words keep random embeddings:
# the default zero-shot template, CoOp's init "a photo of a", and the demo's templates.
LIBRARY_PROMPTS = ("a photo of a {}.", "a photo of a", "clip art of a {}", "a drawing of a {}.")
GENERIC_TEMPLATES = (
    "a photo of a {}.", "a photo of the {}.", "a photo of a {}", "a {}.", "{}", "a picture of a {}.",
    "an image of a {}.", "a drawing of a {}.", "clip art of a {}", "clip art of a {}.",
    "an illustration of a {}.", "a cartoon {}.", "a sketch of a {}.", "an icon of a {}.", "a good photo of a {}.",
    "a close-up photo of a {}.", "a small {}.", "a photo of my {}.", "there is a {} in the picture.",
    "this is a {}.",
)
SOURCE_TEMPLATES = {
    "openclipart": ("clip art of a {}", "a drawing of a {}.", "a clip art {}.", "a vector drawing of a {}."),
    "twemoji": ("an emoji of a {}.", "a {} emoji.", "a flat drawing of a {}."),
    "noto-emoji": ("an emoji of a {}.", "a {} emoji.", "a glossy drawing of a {}."),
    "openmoji": ("an emoji of a {}.", "a {} emoji.", "a flat drawing of a {}.", "an outlined drawing of a {}."),
    "openmoji-black": ("a black and white emoji of a {}.", "a line drawing of a {}.", "an outline of a {}."),
    "fashion-mnist": ("a black and white photo of a {}.", "a photo of a {}.", "a low resolution photo of a {}."),
}
PAIR_TEMPLATES = ("a photo of a {}, a type of {}.", "a drawing of a {}, a kind of {}.", "{}, a {}.")
GREY_SOURCES = ("fashion-mnist", "openmoji-black")  # never turned grey by augmentation: they are already
ZERO_SHOT_TEMPLATES = ("a photo of a {}.", "clip art of a {}", "a drawing of a {}.")


@dataclass
class TrainConfig:
    steps: int | None = None       # None: train for ``minutes`` of wall clock, the schedule following the clock
    minutes: float = 20.0
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 20
    seed: int = 0
    evals: int = 3                 # zero-shot evaluations during training (plus the final one)
    bf16: bool = False             # bf16 autocast only pays on CPUs with native bf16 (AVX512-BF16/AMX)
    log_every: int = 10
    model_cfg: dict = field(default_factory=lambda: dict(MODEL_CFG))


class CaptionSampler:
    """Draws one caption per image per step from its names and the template sets."""

    def __init__(self, items: list[Item], tokenizer, seed: int):
        self.items = items
        self.tokenizer = tokenizer
        self.rng = random.Random(seed)
        self._token_cache: dict[str, torch.Tensor] = {}

    def caption(self, item: Item) -> str:
        rng = self.rng
        names = [item.name] if item.name else []
        cats = item.categories
        r = rng.random()
        if names and cats and r < 0.15:
            return rng.choice(PAIR_TEMPLATES).format(names[0], rng.choice(cats[:2]))
        if cats and (not names or r < 0.6):
            noun = cats[0] if rng.random() < 0.75 else rng.choice(cats)
        else:
            noun = names[0]
        if rng.random() < 0.25:
            template = rng.choice(SOURCE_TEMPLATES[item.source])
        else:
            template = rng.choice(GENERIC_TEMPLATES)
        return template.format(noun)

    def tokens(self, captions: list[str]) -> torch.Tensor:
        missing = [c for c in dict.fromkeys(captions) if c not in self._token_cache]
        if missing:
            for caption, ids in zip(missing, self.tokenizer(missing), strict=True):
                self._token_cache[caption] = ids
        return torch.stack([self._token_cache[c] for c in captions])

    def all_texts(self) -> list[str]:
        """Every word a caption can contain (BPE splits words independently, so their union is exact)."""
        texts = set(GENERIC_TEMPLATES) | set(PAIR_TEMPLATES) | set(LIBRARY_PROMPTS)
        for templates in SOURCE_TEMPLATES.values():
            texts |= set(templates)
        for item in self.items:
            if item.name:
                texts.add(item.name)
            texts.update(item.categories)
        return sorted(texts)


def used_token_ids(texts: list[str], tokenizer) -> torch.Tensor:
    """Sorted token ids of all words in ``texts`` plus start/end of text."""
    ids = {tokenizer.sot_token_id, tokenizer.eot_token_id}
    for text in texts:
        ids.update(tokenizer.encode(text.replace("{}", " ")))
    return torch.tensor(sorted(ids), dtype=torch.long)


def augment(batch: torch.Tensor, out_size: int, generator: torch.Generator, grey: torch.Tensor) -> torch.Tensor:
    """Random resized crop (area 0.55-1, aspect 3/4-4/3), flip and greyscale in one batched resample.

    Clip art is centred and small, so crops stay large; ``grey`` marks images that are grey already.
    """
    n = batch.shape[0]
    x = batch.permute(0, 3, 1, 2).float().div_(255.0)
    area = torch.empty(n).uniform_(0.55, 1.0, generator=generator)
    log_ratio = torch.empty(n).uniform_(math.log(3 / 4), math.log(4 / 3), generator=generator)
    ratio = log_ratio.exp()
    sx = (area * ratio).sqrt().clamp(max=1.0)
    sy = (area / ratio).sqrt().clamp(max=1.0)
    tx = (torch.rand(n, generator=generator) * 2 - 1) * (1 - sx)
    ty = (torch.rand(n, generator=generator) * 2 - 1) * (1 - sy)
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = sx * flip
    theta[:, 0, 2] = tx
    theta[:, 1, 1] = sy
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta, (n, 3, out_size, out_size), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    to_grey = (torch.rand(n, generator=generator) < 0.1) & ~grey
    # the same shapes at every step (no boolean-mask indexing with a varying count): see encode_text
    lum = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    x = torch.where(to_grey.view(n, 1, 1, 1), lum.expand(-1, 3, -1, -1), x)
    return normalise(x)


def normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def eval_images(batch: np.ndarray, out_size: int) -> torch.Tensor:
    """Test-time view: the whole (already square) image resized to the model's size, bicubic."""
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255.0)
    x = F.interpolate(x, size=(out_size, out_size), mode="bicubic", align_corners=False, antialias=True)
    return normalise(x.clamp_(0, 1))


def encode_text(model, ids: torch.Tensor) -> torch.Tensor:
    """``model.encode_text`` on ids cut after the longest caption's end-of-text token.

    The text transformer is causal and pools at the EOT token, so the padding after it never changes the
    result; with captions of ~10 tokens in a 32-token context this halves the text tower's cost.
    Padding up to the rounded length is exact for the same reason.
    """
    # two lengths only (16 or the full context): a new tensor shape at nearly every step grew the process by
    # ~8 MB per step (a run died of it after 1,850 steps). Fixed shapes alone did not stop a later ~17 MB per
    # step growth on a busy machine; that was glibc's heap, fixed by pinning its mmap threshold (recipe.py)
    length = 16 if int(ids.argmax(dim=1).max()) < 16 else ids.shape[1]
    ids = ids[:, :length]
    x = model.token_embedding(ids) + model.positional_embedding[:length]
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0]), ids.argmax(dim=1)]
    return x @ model.text_projection


@torch.no_grad()
def zero_shot(model, tokenizer, images: torch.Tensor, labels: torch.Tensor, classnames: list[str],
              templates: tuple[str, ...]) -> dict[str, float]:
    """Top-1 accuracy (%) of "template.format(class)" prompts, for each template."""
    model.eval()
    feats = []
    for start in range(0, len(images), 256):
        feats.append(F.normalize(model.encode_image(images[start:start + 256]).float(), dim=-1))
    feats = torch.cat(feats)
    results = {}
    for template in templates:
        text = F.normalize(model.encode_text(tokenizer([template.format(c) for c in classnames])).float(), dim=-1)
        pred = (feats @ text.T).argmax(1)
        results[template] = round(float((pred == labels).float().mean() * 100), 2)
    return results


def build_model(seed: int, model_cfg: dict | None = None):
    import open_clip

    torch.manual_seed(seed)
    return open_clip.CLIP(**(model_cfg or MODEL_CFG))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices only: gains, biases, embeddings and the temperature keep their scale."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.ndim < 2 or "embedding" in name or "logit_scale" in name or name.endswith(("class_embedding",)):
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train(
    items: list[Item],
    images: np.ndarray,
    eval_sets: dict[str, tuple[np.ndarray, torch.Tensor, list[str]]],
    cfg: TrainConfig,
    log: Callable[[dict], None],
):
    """Train from scratch and return the fp32 model (eval mode) and the final zero-shot numbers."""
    import open_clip

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.seed, cfg.model_cfg)
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=cfg.model_cfg["text_cfg"]["context_length"])
    sampler = CaptionSampler(items, tokenizer, cfg.seed)
    size = cfg.model_cfg["vision_cfg"]["image_size"]
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)

    budget_s = cfg.minutes * 60

    def progress(step: int, elapsed: float) -> float:
        """Fraction of training done: by step with ``steps``, else by wall clock against ``minutes``."""
        return step / cfg.steps if cfg.steps else elapsed / budget_s

    def lr_at(step: int, done: float) -> float:
        warm = min(1.0, (step + 1) / cfg.warmup_steps)
        return cfg.lr * warm * 0.5 * (1 + math.cos(math.pi * min(done, 1.0)))

    eval_tensors = {name: (eval_images(arr, size), labels, names) for name, (arr, labels, names) in eval_sets.items()}
    generator = torch.Generator().manual_seed(cfg.seed)
    order_rng = np.random.default_rng(cfg.seed)
    grey = torch.tensor([it.source in GREY_SOURCES for it in items])
    n = len(items)
    perm = order_rng.permutation(n)
    cursor = 0
    start = time.time()
    running = 0.0

    def evaluate() -> dict:
        results = {name: zero_shot(model, tokenizer, x, labels, names, ZERO_SHOT_TEMPLATES)
                   for name, (x, labels, names) in eval_tensors.items()}
        model.train()
        return results

    model.train()
    step = 0
    eval_time = 0.0
    evals_done = 0
    while True:
        done = progress(step, time.time() - start)
        if done >= 1.0:
            break
        if cursor + cfg.batch_size > n:
            perm = order_rng.permutation(n)
            cursor = 0
        idx = perm[cursor:cursor + cfg.batch_size]
        cursor += cfg.batch_size
        captions = [sampler.caption(items[i]) for i in idx]
        ids = sampler.tokens(captions)
        _, caption_index = np.unique(np.array(captions), return_inverse=True)
        caption_index = torch.from_numpy(caption_index.reshape(-1))
        x = augment(torch.from_numpy(images[idx]), size, generator, grey[idx])
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, done)
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if cfg.bf16 else torch.autocast("cpu", enabled=False)
        with ctx:
            img_f = F.normalize(model.encode_image(x).float(), dim=-1)
            txt_f = F.normalize(encode_text(model, ids).float(), dim=-1)
        logits = model.logit_scale.exp() * img_f @ txt_f.T
        same = (caption_index[:, None] == caption_index[None, :]).float()
        target = same / same.sum(1, keepdim=True)
        loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        running = loss.item() if step == 0 else 0.9 * running + 0.1 * loss.item()
        if step % cfg.log_every == 0:
            elapsed = time.time() - start
            log({"step": step, "loss": round(running, 4), "lr": round(lr_at(step, done), 6),
                 "logit_scale": round(float(model.logit_scale.detach().exp()), 2), "elapsed_s": round(elapsed, 1),
                 "images_per_s": round((step + 1) * cfg.batch_size / max(elapsed - eval_time, 1e-6), 1),
                 "epoch": round((step + 1) * cfg.batch_size / n, 2), "max_rss_mb": max_rss_mb()})
        step += 1
        if evals_done < cfg.evals and progress(step, time.time() - start) >= (evals_done + 1) / (cfg.evals + 1):
            t0 = time.time()
            log({"step": step, "zero_shot": evaluate()})
            eval_time += time.time() - t0
            evals_done += 1
    cfg.steps = step
    final = evaluate()
    log({"step": step, "zero_shot": final, "elapsed_s": round(time.time() - start, 1), "loss": round(running, 4)})
    model.eval()
    return model, tokenizer, sampler, final


def max_rss_mb() -> int:
    """Peak resident memory of this process (MB), logged so a memory problem shows before it kills the run."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def write_log_line(path: Path) -> Callable[[dict], None]:
    path.parent.mkdir(parents=True, exist_ok=True)

    def log(record: dict) -> None:
        line = json.dumps(record)
        print(line, flush=True)
        with open(path, "a") as handle:
            handle.write(line + "\n")

    return log
