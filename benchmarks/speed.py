"""Side-by-side speed and memory of the peers' training/evaluation loop and of dipclip's paths.

One process, one model (a random ``ViT-B-32``: image width 768, text width 512, 12 layers), one synthetic
base-to-new dataset (100 Caltech-101 class names, 50 base + 50 new, JPEG images generated here) and one
seed. The reference loop is written the way CoOp-style code works: the frozen image tower runs at every
step, every class prompt is encoded at the full 77-token length with gradients, and the class prompts are
encoded again for every evaluation batch (of 100 images). dipclip's side uses the library itself:
:class:`~dipclip.engine.trainer.Trainer` with ``views="fresh"`` and with cached views, the feature store
and :func:`~dipclip.engine.evaluate.evaluate_items`.

    python benchmarks/speed.py --quick        # a few minutes on 2 CPU cores
    python benchmarks/speed.py                # 16 shots; the reference epoch is extrapolated from --ref-steps

Printed: text side of one training step at 50 classes, one training epoch (protocol-exact and cached
views), evaluation (first and with stored features; the first also over all 100 classes), text-side peak
memory for 1,000 classes at width 512, and a base-to-new sweep estimate (3 seeds x CoOp + DIP, 10 epochs, train + base + new evaluation), each
with its ratio. Not a test: timings depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

CALTECH_NAMES = (
    "face leopard motorbike accordion airplane anchor ant barrel bass beaver binocular bonsai brain "
    "brontosaurus buddha butterfly camera cannon car_side ceiling_fan cellphone chair chandelier cougar_body "
    "cougar_face crab crayfish crocodile crocodile_head cup dalmatian dollar_bill dolphin dragonfly "
    "electric_guitar elephant emu euphonium ewer ferry flamingo flamingo_head garfield gerenuk gramophone "
    "grand_piano hawksbill headphone hedgehog helicopter ibis inline_skate joshua_tree kangaroo ketch lamp "
    "laptop llama lobster lotus mandolin mayfly menorah metronome minaret nautilus octopus okapi pagoda panda "
    "pigeon pizza platypus pyramid revolver rhino rooster saxophone schooner scissors scorpion sea_horse snoopy "
    "soccer_ball stapler starfish stegosaurus stop_sign strawberry sunflower tick trilobite umbrella watch "
    "water_lilly wheelchair wild_cat windsor_chair wrench yin_yang"
).split()
REFERENCE_EVAL_BATCH = 100  # CoOp's test batch size
SWEEP_SEEDS, SWEEP_METHODS, SWEEP_EPOCHS = 3, 2, 10


def log(line: str = "") -> None:
    print(line, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable, device: torch.device) -> tuple[float, object]:
    sync(device)
    began = time.perf_counter()
    result = fn()
    sync(device)
    return time.perf_counter() - began, result


def peak_memory(fn: Callable, device: torch.device) -> int:
    """Peak bytes allocated while ``fn`` runs, above what was allocated before (CPU: the profiler's
    allocation records; CUDA: the allocator's own peak counter)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    stack, records = list(prof.profiler.kineto_results.experimental_event_tree()), []
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.tag == _EventType.Allocation:
            records.append((node.start_time_ns, node.extra_fields.alloc_size, node.extra_fields.total_allocated))
    if not records:
        return 0
    records.sort()
    baseline = records[0][2] - records[0][1]
    return max(total for _, _, total in records) - baseline


def make_dataset(root: Path, classes: int, train_per_class: int, test_per_class: int, size: tuple[int, int],
                 seed: int):
    """JPEG images (colour blobs + noise, one colour per class) and the Datum lists of both halves."""
    from PIL import Image

    from dipclip.data.types import Datum

    rng = np.random.default_rng(seed)
    names = CALTECH_NAMES[:classes]
    splits = {"train": [], "test": []}
    yy, xx = np.mgrid[0:size[1], 0:size[0]]
    for label, name in enumerate(names):
        colour = rng.integers(30, 225, 3)
        for split, count in (("train", train_per_class), ("test", test_per_class)):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                cx, cy, r = rng.integers(0, size[0]), rng.integers(0, size[1]), rng.integers(20, 90)
                blob = ((xx - cx) ** 2 + (yy - cy) ** 2 < r * r)[..., None]
                pixels = rng.normal(128, 50, (size[1], size[0], 3)) * (1 - blob) + colour * blob
                path = folder / f"{i}.jpg"
                Image.fromarray(np.clip(pixels, 0, 255).astype("uint8")).save(path, quality=90)
                splits[split].append(Datum(str(path), label, name))
    half = classes // 2

    def part(items, new):
        chosen = [d for d in items if (d.label >= half) == new]
        return [Datum(d.path, d.label - half * new, d.classname) for d in chosen]

    return names[:half], names[half:], {
        "train_base": part(splits["train"], False),
        "test_base": part(splits["test"], False),
        "test_new": part(splits["test"], True),
        "test_all": splits["test"],  # every class at once, as the few-shot protocol evaluates
    }


# --------------------------------------------------------------------------------------------------------
# The reference: how CoOp-style code trains and evaluates (image tower every step, 77 tokens, re-encoding)
# --------------------------------------------------------------------------------------------------------

@torch.no_grad()
def reference_image_features(backbone, images: torch.Tensor) -> torch.Tensor:
    """open_clip's own full image tower, as the peers run it (every token through every block)."""
    return torch.nn.functional.normalize(backbone.model.encode_image(images.to(backbone.device)).float(), dim=-1)


def reference_text_features(model) -> torch.Tensor:
    return torch.nn.functional.normalize(model.class_prompts.full_length_forward(model.context()).float(), dim=-1)


def reference_train_steps(model, items, batch_size: int, max_steps: int, seed: int,
                          epochs: int = 1) -> tuple[float, int, int]:
    """(seconds, steps run, steps in the epoch): DataLoader with global-RNG augmentation, image tower in the
    loop, full-length prompts with gradients, SGD; up to ``epochs`` epochs and ``max_steps`` steps in all."""
    from torch.utils.data import DataLoader

    from dipclip.data.images import ImageDataset, collate_skipping_bad
    from dipclip.data.transforms import train_transform

    backbone = model.backbone
    torch.manual_seed(seed)
    transform = train_transform(backbone.image_size, backbone.mean, backbone.std)
    loader = DataLoader(ImageDataset(items, transform), batch_size=batch_size, shuffle=True, drop_last=True,
                        collate_fn=collate_skipping_bad, generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=0.002, momentum=0.9, weight_decay=5e-4)
    steps, began = 0, time.perf_counter()
    for _ in range(epochs):
        for images, labels, _ in loader:
            image_features = reference_image_features(backbone, images)
            logits = backbone.logit_scale * image_features @ reference_text_features(model).t()
            loss = torch.nn.functional.cross_entropy(logits, labels.to(backbone.device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
            if steps >= max_steps:
                break
        if steps >= max_steps:
            break
    sync(backbone.device)
    return time.perf_counter() - began, steps, len(loader)


@torch.no_grad()
def reference_evaluate(model, items) -> tuple[float, float, torch.Tensor]:
    """(seconds, accuracy, predictions): batches of 100 test images; the class prompts are encoded again for
    each batch."""
    from torch.utils.data import DataLoader

    from dipclip.data.images import ImageDataset, collate_skipping_bad
    from dipclip.data.transforms import test_transform

    backbone = model.backbone
    transform = test_transform(backbone.image_size, backbone.mean, backbone.std)
    loader = DataLoader(ImageDataset(items, transform), batch_size=REFERENCE_EVAL_BATCH,
                        collate_fn=collate_skipping_bad)
    began, correct, predictions = time.perf_counter(), 0, []
    for images, labels, _ in loader:
        image_features = reference_image_features(backbone, images)
        logits = image_features @ reference_text_features(model).t()
        predictions.append(logits.argmax(-1).cpu())
        correct += int((predictions[-1] == labels).sum())
    sync(backbone.device)
    return time.perf_counter() - began, 100.0 * correct / len(items), torch.cat(predictions)


# --------------------------------------------------------------------------------------------------------
# The measurements
# --------------------------------------------------------------------------------------------------------

def text_step_times(model, repeats: int) -> tuple[float, float, float]:
    """Median seconds of one text-side forward + backward (reference, dipclip) and their max logit gap."""
    device = model.backbone.device
    prompts = model.class_prompts
    images = torch.nn.functional.normalize(torch.randn(32, model.backbone.text.output_dim, device=device), dim=-1)

    def step(forward):
        features = torch.nn.functional.normalize(forward(model.context()).float(), dim=-1)
        logits = model.backbone.logit_scale * images @ features.t()
        logits.logsumexp(-1).sum().backward()
        return logits.detach()

    times = {"reference": [], "dipclip": []}
    outputs = {}
    for _ in range(repeats):
        for name, forward in (("reference", prompts.full_length_forward), ("dipclip", prompts.forward)):
            seconds, outputs[name] = timed(lambda forward=forward: step(forward), device)
            times[name].append(seconds)
    gap = float((outputs["reference"] - outputs["dipclip"]).abs().max())
    return statistics.median(times["reference"]), statistics.median(times["dipclip"]), gap


def memory_backbone(layers: int, device: torch.device):
    """A text tower at ViT-B/16 width (512, 8 heads) with ``layers`` layers and a minimal image tower."""
    from dipclip.backbones.loading import load_backbone

    config = {"embed_dim": 512,
              "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16, "head_width": 32},
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": layers}}
    path = Path(tempfile.mkdtemp(prefix="dipclip-bench-")) / f"text512-{layers}l.json"
    path.write_text(json.dumps(config))
    return load_backbone(str(path), "none", device=device)


def text_memory(layers: int, classes: int, device: torch.device) -> tuple[int, int]:
    from dipclip.methods import get_method

    backbone = memory_backbone(layers, device)
    names = [CALTECH_NAMES[i % len(CALTECH_NAMES)] + f" {i}" for i in range(classes)]
    coop = get_method("coop")
    model = coop.build(backbone, names, coop.prompt_config())

    def run(forward):
        def go():
            forward(model.context()).float().square().sum().backward()
        return go

    reference = peak_memory(run(model.class_prompts.full_length_forward), device)
    ours = peak_memory(run(model.class_prompts.forward), device)
    return reference, ours


TOWER_FAMILIES = {  # text towers at their published sizes (random weights, CLIP's BPE so no download is needed)
    "CLIP ViT-B/32 text (causal, EOT)": {"context_length": 77, "width": 512, "heads": 8, "layers": 12},
    "SigLIP B/16 text (bidirectional, last, 64 tokens)": {
        "context_length": 64, "width": 768, "heads": 12, "layers": 12, "no_causal_mask": True, "proj_bias": True,
        "pool_type": "last", "norm_kwargs": {"eps": 1e-6}, "act_kwargs": {"approximate": "tanh"}},
    "CoCa ViT-B/32 text (causal + class token, 76 tokens)": {
        "context_length": 76, "width": 512, "heads": 8, "layers": 12, "embed_cls": True, "output_tokens": True},
}


def tower_times(classes: int, repeats: int, device: torch.device) -> dict:
    """Per text-tower family: open_clip's own ``encode_text`` of the class prompts' token ids (no gradients: it
    cannot take a learned context) against dipclip's prompt path with the same hard prompt, and their max
    feature gap. The causal CLIP row shows its shortcuts; the others run the general full-length path."""
    from dipclip.backbones.loading import load_backbone
    from dipclip.prompts.class_prompts import ClassPrompts

    vision = {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16, "head_width": 32}
    rows = {}
    names = [name.replace("_", " ") for name in CALTECH_NAMES[:classes]]
    for family, text in TOWER_FAMILIES.items():
        config = {"embed_dim": 512, "vision_cfg": vision, "text_cfg": {"vocab_size": 49408, **text},
                  "custom_text": True}
        if text.get("embed_cls"):
            config["vision_cfg"] = {**vision, "attentional_pool": True, "attn_pooler_heads": 2, "output_tokens": True}
            config["multimodal_cfg"] = {"context_length": 76, "width": 64, "heads": 2, "layers": 1}
        path = Path(tempfile.mkdtemp(prefix="dipclip-bench-")) / "tower.json"
        path.write_text(json.dumps(config))
        backbone = load_backbone(str(path), "none", device=device, announce=False)
        prompts = ClassPrompts(backbone, names, 4)
        start = backbone.content_start
        ctx = backbone.text.embed_tokens(backbone.tokenize(["a photo of a"]))[0, start:start + 4]
        ids = backbone.tokenize([f"a photo of a {name}." for name in names])

        def theirs(backbone=backbone, ids=ids):
            out = backbone.model.encode_text(ids, normalize=False)
            return out[0] if isinstance(out, tuple) else out

        def ours(prompts=prompts, ctx=ctx):
            return prompts(ctx)

        times: dict[str, list[float]] = {"open_clip": [], "dipclip": []}
        outputs = {}
        with torch.no_grad():
            for _ in range(repeats):
                for name, fn in (("open_clip", theirs), ("dipclip", ours)):
                    seconds, outputs[name] = timed(fn, device)
                    times[name].append(seconds)
        rows[family] = {"open_clip_s": statistics.median(times["open_clip"]),
                        "dipclip_s": statistics.median(times["dipclip"]),
                        "max_feature_gap": float((outputs["open_clip"] - outputs["dipclip"]).abs().max()),
                        "truncated": backbone.text.causal, "prefix_cache": backbone.text.supports_prefix_cache}
    return rows


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({cpu}), torch {torch.__version__}, {torch.get_num_threads()} threads"


def fmt_ratio(reference: float, ours: float) -> str:
    if ours <= 0:
        return "   inf"
    ratio = reference / ours
    return f"{ratio:6.2f}x" if ratio < 10 else f"{ratio:6.1f}x"  # two decimals near the 1.5x and 2.5x targets


def towers_section(args, device: torch.device, figures: dict) -> int:
    classes, repeats = 50, 3
    log(f"\n[text towers, {classes} classes, hard prompt, no gradients]  (median of {repeats})")
    figures["towers"] = tower_times(classes, repeats, device)
    for family, row in figures["towers"].items():
        log(f"  {family:52s} open_clip {row['open_clip_s']:7.3f}s   dipclip {row['dipclip_s']:7.3f}s   "
            f"{fmt_ratio(row['open_clip_s'], row['dipclip_s'])}   max |feature difference| "
            f"{row['max_feature_gap']:.1e}   truncated {row['truncated']}, prefix cache {row['prefix_cache']}")
    if args.json and args.towers_only:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="reduced run: 2 shots, 2 test images per class, 1-layer memory probe")
    parser.add_argument("--model", default="ViT-B-32", help="open_clip model, random weights (default ViT-B-32)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--shots", type=int, default=None, help="training images per class (default 16)")
    parser.add_argument("--test-per-class", type=int, default=None, help="test images per class (default 10)")
    parser.add_argument("--ref-steps", type=int, default=None,
                        help="reference training steps actually run; the epoch is extrapolated (default 5)")
    parser.add_argument("--text-repeats", type=int, default=None, help="repeats of the text-step timing (3)")
    parser.add_argument("--eval-repeats", type=int, default=None,
                        help="alternating repeats of the 50-class evaluation pair, medians reported (3)")
    parser.add_argument("--memory-classes", type=int, default=1000)
    parser.add_argument("--memory-layers", type=int, default=None,
                        help="text layers of the memory probe (default 2; activations grow linearly in "
                             "layers on both sides, and dipclip's last block is the smaller one, so few layers "
                             "flatter dipclip's ratio a little)")
    parser.add_argument("--sweep-views", default="1,4", help="cached view counts in the sweep estimate (1,4)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    parser.add_argument("--towers-only", action="store_true",
                        help="only the text-tower families: open_clip's encode_text against dipclip's prompt path")
    args = parser.parse_args(argv)
    quick = args.quick
    shots = args.shots or (2 if quick else 16)
    test_per_class = args.test_per_class or (2 if quick else 10)
    ref_steps = args.ref_steps or (3 if quick else 5)
    text_repeats = args.text_repeats or (1 if quick else 3)
    eval_repeats = args.eval_repeats or (1 if quick else 3)
    if eval_repeats < 1 or (args.text_repeats is not None and args.text_repeats < 1):
        parser.error("--eval-repeats and --text-repeats need a whole number >= 1")
    memory_layers = args.memory_layers or (1 if quick else 2)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.towers_only:
        return towers_section(args, torch.device(args.device), {"machine": machine()})

    work = Path(tempfile.mkdtemp(prefix="dipclip-speed-"))
    os.environ["DIPCLIP_CACHE_DIR"] = str(work / "cache")  # an empty store: the first evaluation is a first
    from dipclip.backbones.loading import load_backbone
    from dipclip.engine.evaluate import encode_items, evaluate_items
    from dipclip.engine.features import FeatureStore
    from dipclip.engine.trainer import TrainConfig, Trainer
    from dipclip.methods import get_method

    device = torch.device(args.device)
    log(f"machine: {machine()}; device {device}")
    log(f"model {args.model} (random weights), seed {args.seed}, {shots} shots, {test_per_class} test images per "
        f"class, batch {args.batch_size}{'  [--quick]' if quick else ''}")
    began_all = time.perf_counter()
    base_names, new_names, data = make_dataset(work / "images", 100, shots, test_per_class, (320, 240), args.seed)
    backbone = load_backbone(args.model, "none", device=device)
    coop = get_method("coop")
    store = FeatureStore(work / "cache" / "features")
    figures: dict = {"machine": machine(), "device": str(device), "quick": quick, "shots": shots,
                     "test_per_class": test_per_class, "model": args.model}

    def fresh_model(names):
        torch.manual_seed(args.seed)
        return coop.build(backbone, list(names), coop.prompt_config())

    model = fresh_model(base_names)
    eot = model.class_prompts.eot_index
    log(f"50 base classes: EOT position mean {eot.float().mean():.1f}, max {int(eot.max())} "
        "(the reference runs all 77 positions)")

    # 1. text side of one training step
    ref_text, our_text, gap = text_step_times(model, text_repeats)
    figures["text_step"] = {"reference_s": ref_text, "dipclip_s": our_text, "max_logit_gap": gap}
    log(f"\n[text side of one training step, 50 classes, forward + backward]  (median of {text_repeats})")
    log(f"  reference {ref_text:8.3f}s   dipclip {our_text:8.3f}s   {fmt_ratio(ref_text, our_text)}   "
        f"max |logit difference| {gap:.2e}")

    # 2. one training epoch
    ref_seconds, ran, epoch_steps = reference_train_steps(fresh_model(base_names), data["train_base"],
                                                          args.batch_size, ref_steps, args.seed)
    ref_epoch = ref_seconds / ran * epoch_steps
    out = work / "runs"

    def our_epoch(views, name):
        m = fresh_model(base_names)
        config = TrainConfig(epochs=1, batch_size=args.batch_size, seed=args.seed, views=views)
        trainer = Trainer(coop, m, coop.optim_config(), config, out / name, progress=False, log=lambda _: None,
                          store=store)
        trainer.fit(data["train_base"])
        return trainer.epoch_seconds[0]

    fresh_epoch = our_epoch("fresh", "fresh")  # encodes view 0 and stores it
    cached_epoch = our_epoch(1, "cached")  # view 0 again, now from the store
    view_encode = max(fresh_epoch - cached_epoch, 0.0)
    figures["train_epoch"] = {"steps": epoch_steps, "reference_steps_run": ran, "reference_s": ref_epoch,
                              "fresh_s": fresh_epoch, "cached_s": cached_epoch, "view_encode_s": view_encode}
    log(f"\n[one training epoch, 50 classes, {len(data['train_base'])} images, {epoch_steps} steps]")
    log(f"  reference          {ref_epoch:8.2f}s   (image tower every step; measured over {ran} steps)")
    log(f"  dipclip fresh      {fresh_epoch:8.2f}s   {fmt_ratio(ref_epoch, fresh_epoch)}   "
        "(protocol-exact: the epoch's new view encoded ahead, then the steps)")
    log(f"  dipclip cached     {cached_epoch:8.2f}s   {fmt_ratio(ref_epoch, cached_epoch)}   "
        f"(views in the store; the one-time encoding of a view: {view_encode:.2f}s)")

    # 3. evaluation of the base test split
    trained = fresh_model(base_names)

    def our_eval(into: FeatureStore):
        text = trained.text_features(merged=True).detach()
        return evaluate_items(backbone, text, data["test_base"], store=into, desc="eval")

    # alternate the two sides, each first evaluation into an empty store, and keep the medians: on a shared
    # machine one pair of runs can be 10-20% apart for the same work
    ref_times, first_times = [], []
    for repeat in range(eval_repeats):
        ref_seconds_run, ref_acc, ref_predictions = reference_evaluate(trained, data["test_base"])
        ref_times.append(ref_seconds_run)
        eval_store = FeatureStore(work / "cache" / f"evaluation-{repeat}")
        first_seconds_run, first = timed(lambda into=eval_store: our_eval(into), device)
        first_times.append(first_seconds_run)
    ref_eval, first_eval = statistics.median(ref_times), statistics.median(first_times)
    stored_eval, stored = timed(lambda: our_eval(eval_store), device)
    assert first == stored, (first, stored)
    with torch.no_grad():  # the same predictions as the reference? (features are read back from the store)
        stored_features, _, _ = encode_items(backbone, data["test_base"], store=eval_store)
        ours = (stored_features @ trained.text_features(merged=True).t()).argmax(-1).cpu()
    agreement = 100.0 * float((ours == ref_predictions).float().mean())
    figures["evaluation"] = {"images": len(data["test_base"]), "reference_s": ref_eval, "first_s": first_eval,
                             "stored_s": stored_eval, "reference_accuracy": ref_acc,
                             "dipclip_accuracy": first["accuracy"], "prediction_agreement": agreement}
    figures["evaluation"] |= {"repeats": eval_repeats, "reference_runs_s": ref_times, "first_runs_s": first_times}
    log(f"\n[evaluation, 50 classes, {len(data['test_base'])} test images]  (first: median of {eval_repeats}, "
        f"alternating; runs reference {', '.join(f'{t:.1f}' for t in ref_times)} s, "
        f"dipclip {', '.join(f'{t:.1f}' for t in first_times)} s)")
    log(f"  reference          {ref_eval:8.2f}s   (prompts re-encoded for each batch of {REFERENCE_EVAL_BATCH})")
    log(f"  dipclip first      {first_eval:8.2f}s   {fmt_ratio(ref_eval, first_eval)}   (encodes and stores the split)")
    log(f"  dipclip stored     {stored_eval:8.3f}s   {fmt_ratio(ref_eval, stored_eval)}   "
        "(another seed or method: features read back)")
    log(f"  accuracy: reference {ref_acc:.2f}%, dipclip {first['accuracy']:.2f}% (same prompt, random model); "
        f"identical predictions on {agreement:.1f}% of the images")

    # 3b. first evaluation over all 100 classes (the few-shot protocol on Caltech-101): the reference's
    # per-batch text work grows with the class count, the image work does not
    every_class = fresh_model(base_names + new_names)
    all_ref_eval, all_ref_acc, _ = reference_evaluate(every_class, data["test_all"])

    def our_all_eval():
        text = every_class.text_features(merged=True).detach()
        return evaluate_items(backbone, text, data["test_all"], store=store, desc="eval")

    all_first_eval, all_first = timed(our_all_eval, device)
    figures["evaluation_all_classes"] = {"classes": len(every_class.class_prompts.classnames), "images": len(data["test_all"]),
                                         "reference_s": all_ref_eval, "first_s": all_first_eval,
                                         "reference_accuracy": all_ref_acc,
                                         "dipclip_accuracy": all_first["accuracy"]}
    log(f"\n[first evaluation, all {len(every_class.class_prompts.classnames)} classes, {len(data['test_all'])} test images]")
    log(f"  reference          {all_ref_eval:8.2f}s")
    log(f"  dipclip first      {all_first_eval:8.2f}s   {fmt_ratio(all_ref_eval, all_first_eval)}   "
        f"accuracy: reference {all_ref_acc:.2f}%, dipclip {all_first['accuracy']:.2f}%")

    # 4. text-side peak memory
    del model
    ref_mem, our_mem = text_memory(memory_layers, args.memory_classes, device)
    figures["text_memory"] = {"classes": args.memory_classes, "layers": memory_layers, "reference_bytes": ref_mem,
                              "dipclip_bytes": our_mem}
    log(f"\n[text-side peak memory, {args.memory_classes} classes, width 512, {memory_layers} layer(s), "
        "forward + backward]")
    log(f"  reference {ref_mem / 2**20:9.1f} MiB   dipclip {our_mem / 2**20:9.1f} MiB   "
        f"dipclip/reference {our_mem / max(ref_mem, 1):.3f}")

    # 5. base-to-new sweep estimate: 3 seeds x (CoOp, DIP), 10 epochs, train + base + new evaluation
    runs = SWEEP_SEEDS * SWEEP_METHODS
    ref_run = SWEEP_EPOCHS * ref_epoch + 2 * ref_eval  # new half: same class and image counts as base
    ref_sweep = runs * ref_run
    test_encode = 2 * max(first_eval - stored_eval, 0.0)  # base + new, once for all six runs

    def our_sweep(views: int) -> float:
        """A seed's views are encoded once and shared by CoOp and DIP; the test splits once for all runs."""
        return (SWEEP_SEEDS * min(views, SWEEP_EPOCHS) * view_encode + test_encode
                + runs * (SWEEP_EPOCHS * cached_epoch + 2 * stored_eval))

    view_counts = sorted({int(v) for v in args.sweep_views.split(",") if v.strip()})
    sweeps = {str(v): our_sweep(v) for v in view_counts}
    fresh_sweep = our_sweep(SWEEP_EPOCHS)  # fresh = one new view per epoch
    figures["sweep"] = {"reference_s": ref_sweep, "views_s": sweeps, "fresh_s": fresh_sweep}
    log(f"\n[base-to-new sweep estimate: {SWEEP_SEEDS} seeds x (CoOp, DIP), 50 + 50 classes, {SWEEP_EPOCHS} "
        "epochs, train + base + new evaluation]")
    log(f"  reference          {ref_sweep / 60:8.1f} min")
    for views, seconds in sweeps.items():
        log(f"  dipclip {int(views):2d} view(s) {seconds / 60:8.1f} min   {fmt_ratio(ref_sweep, seconds)}")
    log(f"  dipclip fresh      {fresh_sweep / 60:8.1f} min   {fmt_ratio(ref_sweep, fresh_sweep)}   "
        f"(protocol-exact = {SWEEP_EPOCHS} views: each epoch's view is shared by CoOp and DIP of a seed)")

    figures["ratios"] = {
        "text_step": ref_text / our_text,
        "epoch_fresh": ref_epoch / fresh_epoch,
        "epoch_cached": ref_epoch / cached_epoch,
        "eval_first": ref_eval / first_eval,
        "eval_stored": ref_eval / stored_eval if stored_eval else math.inf,
        "eval_first_all_classes": all_ref_eval / all_first_eval,
        "memory": our_mem / max(ref_mem, 1),
        "sweep_views": {views: ref_sweep / seconds for views, seconds in sweeps.items()},
        "sweep_fresh": ref_sweep / fresh_sweep,
    }
    targets = [("text step >= 5x", figures["ratios"]["text_step"] >= 5),
               ("epoch, protocol-exact >= 2.5x", figures["ratios"]["epoch_fresh"] >= 2.5),
               ("epoch, cached views >= 15x", figures["ratios"]["epoch_cached"] >= 15),
               ("evaluation, stored features >= 20x", figures["ratios"]["eval_stored"] >= 20),
               ("evaluation, first >= 1.5x (50 classes)", figures["ratios"]["eval_first"] >= 1.5),
               ("evaluation, first >= 1.5x (100 classes)", figures["ratios"]["eval_first_all_classes"] >= 1.5),
               ("sweep >= 5x with cached views (every count in --sweep-views)",
                min(figures["ratios"]["sweep_views"].values()) >= 5),
               ("text memory <= 1/4", figures["ratios"]["memory"] <= 0.25)]
    log("\n[targets]")
    for name, met in targets:
        log(f"  {'met    ' if met else 'NOT met'}  {name}")
    figures["wall_seconds"] = time.perf_counter() - began_all
    log(f"\nbenchmark wall time {figures['wall_seconds'] / 60:.1f} min")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)  # generated images and the store of this run
    return 0


if __name__ == "__main__":
    sys.exit(main())
