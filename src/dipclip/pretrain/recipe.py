"""``python -m dipclip.pretrain``: rebuild the shipped ``dipclip-tiny`` model and the ``demo`` dataset.

One command, from public packages to the files under ``src/dipclip/assets``: collect and caption the
images, hold out the demo images, decode everything once, train, export (fp16, pruned vocabulary), check
the export against the fp32 model, measure zero-shot on the demo with the library's own pipeline, and
write the provenance with the exact command that reproduces the run.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from ..argtypes import OneLineErrorParser, int_at_least
from ..errors import DipclipError

EMOJI_PACKAGES = {"emoji-datasource": "16.0.0", "emoji-datasource-twitter": "16.0.0",
                  "emoji-datasource-google": "16.0.0", "openmoji": "17.0.0"}
DEMO_SIZE = 64
FP32_NAME = "model_fp32.pt"


non_negative_int = int_at_least(0)


def positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


FASHION_DEMO = "demo_fashion"
FASHION_TEST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def logit_scale(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 1.0 <= value <= 100.0:
        raise argparse.ArgumentTypeError(f"must be a number from 1 to 100 (CLIP clamps it at 100), got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="dipclip pretrain",
        description="Pretrain dipclip's small CLIP on public-domain clip art, emoji and Fashion-MNIST, and "
                    "write the shipped model (OUT/dipclip-tiny) and demo dataset (OUT/demo).",
        epilog="Needs `apt-get install openclipart-png dataset-fashion-mnist` and the npm packages "
               + ", ".join(f"{k}@{v}" for k, v in EMOJI_PACKAGES.items())
               + " (fetched into --work with --fetch-emoji). To rebuild the shipped assets: "
               "nice -n 10 python -m dipclip.pretrain --out src/dipclip/assets --fetch-emoji "
               "(see src/dipclip/assets/dipclip-tiny/PROVENANCE.md).",
    )
    parser.add_argument("--out", required=True, type=Path,
                        help="folder that receives dipclip-tiny/ and demo/ (src/dipclip/assets to ship them)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/dipclip-pretrain"),
                        help="scratch folder: image cache, emoji packages, logs (default: %(default)s)")
    parser.add_argument("--emoji-dir", type=Path, default=None,
                        help="folder holding emoji-datasource*/package (default: WORK/npm)")
    parser.add_argument("--fetch-emoji", action="store_true", help="`npm pack` the emoji packages if missing")
    parser.add_argument("--openclipart-dir", type=Path, default=Path("/usr/share/openclipart/png"))
    parser.add_argument("--fashion-dir", type=Path, default=Path("/usr/share/datasets/fashion-mnist"),
                        help="Fashion-MNIST idx files; a missing folder just leaves it out")
    parser.add_argument("--fashion-per-class", type=non_negative_int, default=100,
                        help="Fashion-MNIST training images per class in pretraining (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int_at_least(1), default=None,
                        help="train for exactly N steps, the cosine schedule by step (default: train for --minutes "
                             "of wall clock, the schedule following the clock, so a busy machine still finishes)")
    parser.add_argument("--minutes", type=positive_number, default=20.0,
                        help="training time budget when --steps is not given (default: %(default)s)")
    parser.add_argument("--batch-size", type=int_at_least(2), default=128,
                        help="images per contrastive batch, at least 2 (default: %(default)s)")
    parser.add_argument("--evals", type=non_negative_int, default=3,
                        help="zero-shot evaluations on the held-out images during training, evenly spaced, for "
                             "the learning curve in the log (default: %(default)s)")
    parser.add_argument("--lr", type=positive_number, default=1e-3, help="AdamW peak lr (default: %(default)s)")
    parser.add_argument("--threads", type=int_at_least(1), default=2, help="torch CPU threads (default: %(default)s)")
    parser.add_argument("--workers", type=int_at_least(1), default=2, help="processes decoding images")
    parser.add_argument("--name", default="dipclip-tiny", help="model folder name under --out")
    parser.add_argument("--image-size", type=int_at_least(16, 8), default=48,
                        help="model input size in pixels, a multiple of the patch size 8 (default: %(default)s)")
    parser.add_argument("--width", type=int_at_least(64, 64), default=128,
                        help="width of both towers and of the embedding, a multiple of the head width 64")
    parser.add_argument("--layers", type=int_at_least(1), default=4, help="depth of both towers")
    parser.add_argument("--logit-scale", type=logit_scale, default=None,
                        help="initial logit scale, learned from there and clamped at 100 as in CLIP (default: "
                             "open_clip's 1/0.07 = 14.3). Prompt tuning's gradients scale with it: CLIP's "
                             "recipes were tuned at CLIP's 100")
    parser.add_argument("--shipped-logit-scale", type=logit_scale, default=100.0,
                        help="logit scale written into the shipped file in place of the learned one (default: "
                             "CLIP's %(default)s). Zero-shot predictions are the same at any scale; the recipes' "
                             "learning rates were set at CLIP's 100, and the learned one ends near 20 here")
    parser.add_argument("--demo-only", action="store_true",
                        help="no training: rebuild OUT/demo, the export and PROVENANCE.md from the run finished in "
                             "--work (its model_fp32.pt and train_log.jsonl), e.g. after a change to the demo "
                             "split; the other flags must be that run's (checked against its log)")
    parser.add_argument("--no-openmoji", action="store_true",
                        help="leave OpenMoji (CC BY-SA 4.0, SVG, needs rsvg-convert) out of pretraining and demo")
    parser.add_argument("--debug", action="store_true",
                        help="on an error, also print the Python traceback (or set DIPCLIP_DEBUG=1)")
    return parser


def fetch_emoji(target: Path) -> None:
    """Download the emoji packages with npm and unpack them as ``target/<name>/package``."""
    target.mkdir(parents=True, exist_ok=True)
    for name, version in EMOJI_PACKAGES.items():
        if (target / name / "package" / "package.json").is_file():
            continue
        if shutil.which("npm") is None:
            raise DipclipError("--fetch-emoji needs npm, which is not installed: apt-get install npm, or unpack "
                               f"{name}@{version} as {target / name / 'package'} yourself (--emoji-dir)")
        try:
            subprocess.run(["npm", "pack", f"{name}@{version}"], cwd=target, check=True, stdout=subprocess.DEVNULL)
        except subprocess.CalledProcessError as exc:
            raise DipclipError(f"`npm pack {name}@{version}` failed in {target} (exit {exc.returncode}); check the "
                               "network and npm's output above, or unpack the package yourself (--emoji-dir)") from None
        with tarfile.open(target / f"{name}-{version}.tgz") as archive:
            archive.extractall(target / name, filter="data")


def check_sources(args) -> list[str]:
    problems = []
    if not args.openclipart_dir.is_dir():
        problems.append(f"Open Clip Art not found at {args.openclipart_dir}: apt-get install openclipart-png")
    for name in EMOJI_PACKAGES:
        if name == "openmoji" and args.no_openmoji:
            continue
        if not (args.emoji_dir / name / "package").is_dir():
            problems.append(f"{name} not found in {args.emoji_dir}: pass --fetch-emoji (needs npm)")
    if (args.fashion_dir / "train-images-idx3-ubyte.gz").is_file():
        # demo_fashion is drawn from the test files: say so now, not after an hour of training
        missing = [n for n in FASHION_TEST_FILES if not (args.fashion_dir / n).is_file()]
        if missing:
            problems.append(f"Fashion-MNIST's test files {', '.join(missing)} not found in {args.fashion_dir} "
                            "(demo_fashion is drawn from them): apt-get install --reinstall dataset-fashion-mnist")
    if not args.no_openmoji and shutil.which("rsvg-convert") is None:
        problems.append("rsvg-convert not found (it draws the OpenMoji SVGs): apt-get install librsvg2-bin, "
                        "or pass --no-openmoji")
    return problems


def fix_malloc_threshold(threshold: int = 1 << 20) -> bool:
    """Pin glibc's mmap threshold, so large tensors are returned to the system when freed.

    glibc raises the threshold after each large free (up to 32 MB), after which activation buffers live in the
    heap; on a busy 2-core machine its fragmentation grew the process by ~17 MB per training step until the
    kernel killed it (measured twice). A fixed threshold keeps memory flat. Without glibc this does nothing.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name or platform.system() != "Linux":
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(-3, threshold))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    malloc_pinned = fix_malloc_threshold()
    import numpy as np
    import torch

    from ..backbones.build import file_sha256
    from ..engine.reproducibility import atomic_torch_save
    from . import corpus, evaluate, export, train

    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    args.emoji_dir = args.emoji_dir or args.work / "npm"
    if args.fetch_emoji:
        fetch_emoji(args.emoji_dir)
    problems = check_sources(args)
    if problems:
        raise DipclipError(f"pretraining sources missing ({len(problems)}): " + "; ".join(problems))
    fashion_dir = args.fashion_dir if (args.fashion_dir / "train-images-idx3-ubyte.gz").is_file() else None
    started = time.time()
    finished = None
    if args.demo_only:
        finished, problem = finished_run(args.work, argv)
        if finished is None:
            raise DipclipError(f"--demo-only: {problem}; run the command without --demo-only")
    log = train.write_log_line(args.work / "train_log.jsonl")
    # a rebuild is logged under its own key, so the training run stays the log's last run
    log({"demo_only" if args.demo_only else "command": command_line(argv),
         "started": time.strftime("%Y-%m-%d %H:%M:%S"), "malloc_threshold_pinned": malloc_pinned})

    openmoji_dir = None if args.no_openmoji else args.emoji_dir / "openmoji" / "package"
    items = corpus.collect_items(args.emoji_dir, args.openclipart_dir, fashion_dir, args.seed,
                                 args.fashion_per_class, openmoji_dir)
    images, ok = corpus.build_image_cache(items, 72, args.work, args.workers, fashion_dir)
    keep = np.flatnonzero(ok)
    items = [items[i] for i in keep]
    images = images[keep]
    records = corpus.holdout_split(items, args.seed)
    held = {r.key for r in records}
    train_index = [i for i, it in enumerate(items) if it.key not in held]
    train_items = [items[i] for i in train_index]
    if finished is not None:
        if finished["trained_on"] != {it.key for it in train_items}:
            raise DipclipError(f"--demo-only: the images held out now differ from those the run in {args.work} "
                               "trained without; rebuild the demo only after a change to how the held-out images "
                               "are split, or retrain without --demo-only")
    else:
        corpus.save_manifest(items, records, args.work / "manifest.json")
    classnames = sorted({r.classname for r in records})
    position = {it.key: i for i, it in enumerate(items)}

    def eval_set(rows):
        idx = [position[r.key] for r in rows]
        return images[idx], torch.tensor([classnames.index(r.classname) for r in rows]), classnames

    eval_sets = {"heldout": eval_set(records)}
    sources_count = {s: sum(it.source == s for it in train_items) for s in sorted({it.source for it in items})}
    log({"items": len(items), "pretraining_images": len(train_items), "by_source": sources_count,
         "heldout_images": len(records), "demo_classes": len(classnames), "skipped_undecodable": int((~ok).sum()),
         "prep_s": round(time.time() - started, 1)})

    cfg = train.TrainConfig(steps=args.steps, minutes=args.minutes, batch_size=args.batch_size, lr=args.lr,
                            seed=args.seed, evals=args.evals,
                            model_cfg=train.model_config(args.image_size, args.width, args.layers, args.logit_scale))
    if finished is not None:
        import open_clip

        model = train.build_model(cfg.seed, cfg.model_cfg)
        model.load_state_dict(torch.load(args.work / FP32_NAME, map_location="cpu", weights_only=True))
        model.eval()
        tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=cfg.model_cfg["text_cfg"]["context_length"])
        sampler = train.CaptionSampler(train_items, tokenizer, cfg.seed)
        final, cfg.steps, train_s = finished["zero_shot"], finished["step"], finished["elapsed_s"]
        argv = finished["argv"]
    else:
        train_started = time.time()
        model, tokenizer, sampler, final = train.train(train_items, images[train_index], eval_sets, cfg, log)
        train_s = time.time() - train_started
        # the unpruned fp32 weights, for checks and --demo-only; their hash in the log ties them to this run
        atomic_torch_save(args.work / FP32_NAME, model.state_dict())
        log({"fp32_weights": FP32_NAME, "sha256": file_sha256(args.work / FP32_NAME)})

    # export: model, demo dataset, checks, provenance
    model_dir = args.out / args.name
    demo_dir = args.out / "demo"
    texts = sampler.all_texts() + [t.format(c) for t in train.ZERO_SHOT_TEMPLATES for c in classnames]
    token_ids = train.used_token_ids(texts, tokenizer)
    provenance = (f"dipclip.pretrain seed {args.seed}, {cfg.steps} steps of {cfg.batch_size}; Open Clip Art "
                  "(public domain), Twemoji (CC-BY 4.0), Noto Emoji (Apache-2.0), OpenMoji (CC BY-SA 4.0), "
                  "Fashion-MNIST (MIT); "
                  "see PROVENANCE.md")
    if finished is not None and finished.get("export_sha256"):
        # a rebuild must reproduce the run's shipped file byte for byte before anything in OUT is replaced
        with tempfile.TemporaryDirectory(dir=args.work) as staging:
            rebuilt = export.export_model(model, cfg.model_cfg, token_ids, Path(staging), provenance,
                                          logit_scale=args.shipped_logit_scale)["sha256"]
        if rebuilt != finished["export_sha256"]:
            raise DipclipError(f"--demo-only: the weights rebuilt from {args.work / FP32_NAME} export to sha256 "
                               f"{rebuilt[:16]}, not the run's {finished['export_sha256'][:16]}; nothing in "
                               f"{args.out} was changed: retrain without --demo-only (a run exported before the "
                               "recipe shipped CLIP's logit scale, --shipped-logit-scale, cannot be rebuilt by this "
                               "version)")
    if finished is not None:
        corpus.save_manifest(items, records, args.work / "manifest.json")  # the new demo split, same images
    if (demo_dir / "images").is_dir():
        shutil.rmtree(demo_dir / "images")
    demo_counts = corpus.write_demo(items, records, images, demo_dir, DEMO_SIZE)
    export.export_model(model, cfg.model_cfg, token_ids, model_dir, provenance, logit_scale=args.shipped_logit_scale)
    shipped = export.load_exported(model_dir)
    test_rows = [r for r in records if r.split == "test"]
    check = export.verify_roundtrip(model, shipped, tokenizer, [t.format(c) for t in train.ZERO_SHOT_TEMPLATES
                                                                 for c in classnames],
                                    train.eval_images(images[[position[r.key] for r in test_rows]], args.image_size))
    report = evaluate.zero_shot_report(shipped, tokenizer, demo_dir, train.ZERO_SHOT_TEMPLATES, args.image_size)
    fashion_counts = fashion_report = None
    fashion_demo = args.out / FASHION_DEMO
    if fashion_dir is None and fashion_demo.is_dir():
        # never leave a demo_fashion beside a model that was not built or measured with it
        shutil.rmtree(fashion_demo)
        print(f"dipclip pretrain: removed {fashion_demo}: no Fashion-MNIST at {args.fashion_dir}", file=sys.stderr)
    if fashion_dir is not None:
        if (fashion_demo / "images").is_dir():
            shutil.rmtree(fashion_demo / "images")
        fashion_counts = corpus.write_fashion_demo(fashion_dir, fashion_demo, args.seed)
        fashion_report = evaluate.zero_shot_report(shipped, tokenizer, fashion_demo, train.ZERO_SHOT_TEMPLATES,
                                                   args.image_size)
    log({"roundtrip": check, "demo_zero_shot": report, "fashion_demo_zero_shot": fashion_report})
    meta = export.export_model(model, cfg.model_cfg, token_ids, model_dir, provenance, {
        "token_count": int(len(token_ids)), "steps": cfg.steps, "seed": args.seed,
        "learned_logit_scale": round(float(model.logit_scale.detach().exp()), 2),
        "demo_zero_shot_test": {t: report[t] for t in train.ZERO_SHOT_TEMPLATES}}, logit_scale=args.shipped_logit_scale)
    total_s = finished.get("total_s", train_s) if finished is not None else time.time() - started
    write_provenance(model_dir / "PROVENANCE.md", args, argv, cfg, meta, token_ids, sources_count, records,
                     demo_counts, report, check, final, train_s, total_s, fashion_counts, fashion_report)
    log({"done": True, "sha256": meta["sha256"], "total_s": round(time.time() - started, 1),
         "model_bytes": (model_dir / "model.safetensors").stat().st_size})
    return 0


def shipped_scale_line(shipped: float | None, learned: float | None) -> str:
    if shipped is None:
        return f"the learned {learned}"
    return (f"{shipped:g} in the file (CLIP's), in place of the learned {learned}: the same zero-shot predictions "
            "at any scale; the CoOp family's learning rates were set at CLIP's 100 (`--shipped-logit-scale`)")


def log_records(log_path: Path) -> list[dict]:
    """The JSON lines of a training log; a line cut short by a killed run is skipped."""
    if not log_path.is_file():
        return []
    records = []
    for line in log_path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def finished_run(work: Path, argv: list[str] | None) -> tuple[dict | None, str]:
    """The last training run in ``work``, if it is this command (without ``--demo-only``) and it finished.

    Returns its final zero-shot record plus ``argv`` (the run's own arguments), ``total_s`` and
    ``export_sha256`` (of the file it shipped; absent if it stopped before exporting),
    ``trained_on`` (the keys of the images it trained on, from its manifest), and an empty reason; or None
    and the reason why the run cannot be rebuilt from: the log ends with another command or an unfinished
    run, or its fp32 weights or manifest are missing, damaged or not the ones it wrote.
    """
    from ..backbones.build import file_sha256

    wanted = [a for a in (sys.argv[1:] if argv is None else argv) if a not in ("--demo-only", "--debug")]
    run_argv, last, weights_sha = None, None, None
    for record in log_records(work / "train_log.jsonl"):
        if "command" in record:
            run_argv, last, weights_sha = shlex.split(record["command"])[3:], None, None
        elif {"zero_shot", "elapsed_s", "loss"} <= record.keys():
            last = record
        elif "fp32_weights" in record:
            weights_sha = record["sha256"]
        elif record.get("done") and last is not None and "total_s" not in last:
            # the run's own recipe time and shipped file, not a later rebuild's
            last = dict(last, total_s=record["total_s"], export_sha256=record.get("sha256"))
    if run_argv is None:
        return None, f"{work / 'train_log.jsonl'} records no training run"
    if run_argv != wanted:
        return None, f"the last run in {work} is another command ({' '.join(run_argv)})"
    if last is None:
        return None, f"the last run in {work} did not finish"
    if weights_sha is None:
        return None, (f"the last run in {work} logged no hash of its {FP32_NAME} (it stopped before saving it, "
                      "or it predates that record), so its weights cannot be told apart from another run's")
    weights = work / FP32_NAME
    if not weights.is_file() or file_sha256(weights) != weights_sha:
        return None, f"{weights} is missing or not the file that run wrote"
    try:
        rows = json.loads((work / "manifest.json").read_text())
        trained_on = {row["key"] for row in rows if row["heldout"] is None}
    except (OSError, ValueError, TypeError, KeyError):
        return None, f"{work / 'manifest.json'} is missing or damaged"
    return dict(last, argv=run_argv, trained_on=trained_on), ""


def learning_curve(log_path: Path, template: str = "a photo of a {}.") -> list[tuple[int, float]]:
    """(step, held-out zero-shot %) of the last run in the log, in order."""
    points: list[tuple[int, float]] = []
    for record in log_records(log_path):
        if "command" in record:
            points = []
        elif "zero_shot" in record and template in record["zero_shot"].get("heldout", {}):
            points.append((int(record["step"]), float(record["zero_shot"]["heldout"][template])))
    return points


def command_line(argv: list[str] | None) -> str:
    args = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--debug"]  # not part of the recipe
    return "python -m dipclip.pretrain " + " ".join(shlex.quote(a) for a in args)


# What was measured (2026-12-01, 2 CPU cores shared with five other processes) to choose this recipe; kept
# in the provenance so a rebuild carries the reasons with it.
RECIPE_NOTES = """## How the recipe was chosen (measured 2026-12-01)
- Sources. Adding OpenMoji (colour and black line drawings of the same concepts as Twemoji and Noto)
  doubles the drawings per emoji concept (2 -> 4) and raises the candidate images from 8,026 to 11,458.
  Demo classes with at least 100 images: 15 -> 22 of 23; classes whose demo train split reaches 32 images
  (so that seeds draw different 16-shot subsets): 12 -> 19 of 23; every class keeps at least 30 test
  images. Not used: npm `emoji-datasource-apple` and `emoji-datasource-facebook` (the packages are MIT,
  but the artwork in them is the vendors' and is not freely licensed).
- Demo classes. 23 classes with at least ~100 images each (arrow ... weather symbol); the earlier 30
  included 7 with under 60 images (aircraft, boat, money, telephone, toy, weapon, ...), where no split
  could hold both 32 train and 30 test images.
- Throughput is what limits quality here. Next to five other processes (nice 19) a run gets a quarter of
  a core or less: at 64 px, patch 8, width 128, batch 128 it trained ~11 images/s (about 330 steps in an
  hour). The vision tower's cost follows its token count (64 px: 65 tokens, 48 px: 37, 40 px: 26), so
  40 px with batch 64 was chosen for about twice the steps per hour; it ran at 7-45 images/s under load
  and at 258 images/s on the idle machine. This choice follows throughput alone: there was no time for
  accuracy comparisons of 40/48/64 px at equal wall clock. Width 192 or 6 layers cost 1.5-2x per step for
  a model that is far from converged (short timings, noisy under the shared load).
- Zero-shot on all held-out images ("a photo of a {}.", 23 classes, chance 4.3%) in a 62-minute run
  under load at 40 px: 10.1% after 229 steps, 20.0% after 685 steps; that run died at step 1,850 of a
  memory growth of ~8 MB per step (text batches cut to a new length at nearly every step; now rounded up
  to a multiple of 8; see below for the rest of that story). v2 was the rerun on the idle machine.
- Captions contain every prompt the library uses (the demo's "a photo of a {}.", CoOp's "a photo of a",
  "clip art of a {}", "a drawing of a {}."); without that, zero-shot measures random embeddings.

## What was measured for v3 (2026-12-02)
- Steps. v2 trained 24 min (4,587 steps of batch 64) and its held-out zero-shot was still rising; v3 is the
  same recipe trained for 70 min (curve below). Width, depth and resolution were not changed: with one long
  run affordable per session, steps were the measured lever (v2's loss was still falling).
- Memory. The first 95-minute v3 run was killed by the kernel at step ~2,000: the process grew ~17 MB per
  step once other work ran on the machine (flat at 1.5 GB before). The growth was in glibc's heap (`pmap`),
  not in tensors; pinning glibc's mmap threshold at 1 MB (`mallopt`, done by the recipe) keeps the process
  flat at 1.5 GB at 70% of the unpinned throughput (a 64 KB threshold: flat, but half the throughput).
  Tensor shapes are also fixed per step (greyscale by `torch.where`, two text lengths).
- Templates. On v2, zero-shot on the demo test split with 10 caption templates ("a photo of a {}.",
  "a {}.", "{}", "an emoji of a {}.", "a line drawing of a {}.", ...) ranged 39.5-45.1 on base and
  34.6-37.0 on new: the model treats its templates alike, so a learned context finds no better template.
- Headroom for few-shot learning. A 16-shot linear probe on the image features (cosine classifier started
  at the zero-shot text features, Adam, 3 seeds) does not reach zero-shot on the base classes. On v2: 43.9 /
  42.0 / 40.2 against zero-shot's 44.4 when the demo's train and test splits held different emoji concepts
  (whole groups), 45.6 / 44.4 / 48.3 against 45.6 when split by drawing (the three independent artworks of
  one concept, Twemoji / Noto / OpenMoji, may sit in train and test, as photos of one kind of object do in
  a real dataset; twins stay together). On v3, 50 Adam steps: 41.5 / 43.4 / 39.0 against 51.5 (groups),
  48.4 / 50.9 / 48.2 against 57.6 (by drawing). The classes are broad (mammal, tool, vehicle, ...) and 16
  shots of a 3.8 MB model's features teach less than its text side already knows, which caps what prompt
  tuning can gain on base here. The demo is split by drawing since v3 (closer to a real dataset; the
  held-out images, never pretrained on, are the same either way).
- Reproducible file. safetensors writes its metadata map in a random order per process, so with two
  metadata keys the same weights exported to one of two files (SHA-256s) on alternate runs; the export now
  writes one key (`format`). The v3 file was re-saved that way after its run (same tensors, bit for bit;
  SHA-256 96f9ccec... -> f1694e48...).
- More sources looked at on npm (not used yet: each changes the held-out set, so it needs a new run):
  `fluentui-emoji@1.3.0` holds Microsoft's Fluent Emoji as SVG (3,145 concepts, each in a flat and a
  "modern" colour style, 1,595 in high contrast), named by emoji name; the package is MIT (c) Mohammad Abu
  Mattar and the artwork comes from Microsoft's MIT-licensed fluentui-emoji. One more independent artwork
  per concept (its styles are twins of one drawing). `@svgmoji/blob@3.2.0` (MIT) holds no images (7.7 kB of
  code), so Blobmoji is not available from the registry this way.

## What was measured for v4 (2026-12-02)
v4 = the v3 recipe with `--fashion-per-class 10` (was 100), run with `--threads 1` beside a second run
(11,654 steps in 70 min; one thread each gave ~180 img/s per run against ~200 for one 2-thread run). Why:
`benchmarks/headroom.py` showed that on v3 nothing can beat zero-shot on the base classes, neither a 16-shot
probe nor a prompt, because the demo's class names were caption categories in pretraining (the text side
already holds the class centres), and the same for Fashion-MNIST at 100 pretraining images per class.
- Fashion-MNIST exposure, measured on `demo_fashion` (its test images), base half, 16 shots, 3 seeds:
  100 per class (v3): zero-shot 84.7, probe 84.7 (no headroom); 10 per class (v4): zero-shot 40.6 (fp16;
  40.4 fp32), probe 53.1 / 57.9 / 59.6 after 50 / 200 / 1000 Adam steps (+19 points of headroom). The
  drawing demo is unchanged by it (v4: 42.7 / 56.7 / 42.5 against v3's 41.3 / 57.6 / 41.4).
- Reach: with that headroom CoOp's recipe (SGD 0.002, 200 epochs) moves its context by 0.08 (a token's
  norm is 0.80) and ends at 40.5 on base. The gradient on the context scales with the logit scale: v4
  learned 20.5, CLIP sits at 100. Starting the temperature at 100 (`--logit-scale 100`, a second 70-min run
  beside v4, same data) costs the model most of its quality: held-out drawing zero-shot 24.5 (against 42.7),
  `demo_fashion` base 22.4 / new 36.8; CoOp's recipe then moves the context twice as far (0.16) and gains
  +4.9 on base (20.8 -> 25.7 fp32) with a probe at 50.8. Not shipped; the logit scale ended at 67.6.

## What was measured for v5 (2026-12-02)
v5 = v4's weights, every tensor byte for byte, with one change: the file's logit scale is CLIP's 100
(fp16 ln 100) in place of the learned 20.48. The recipe now does this at export (`--shipped-logit-scale`,
default 100), so a replay of v4's run ships the same logit scale; v5's file was made from v4's folder with
`export.export_model(export.load_exported(DIR), ..., logit_scale=100)`. Zero-shot predictions cannot change
(a positive factor on every logit): every zero-shot number above is v4's and v5's. What changes is the
gradient of prompt tuning, which the CoOp family's learning rates were set for on CLIP at 100.
Measured with `benchmarks/headroom.py --dataset demo_fashion --coop-epochs 20 50 200 [--crop-scale 0.5]`
(base half, 16 shots, 3 seeds, population std, `--views 4`;
CoOp's recipe: SGD 0.002, 4 tokens "a photo of a"; zero-shot 40.60; in brackets how far the context moved,
a token's norm being 0.80):

| logit scale | training crops | CoOp 20 epochs | CoOp 50 epochs | CoOp 200 epochs |
|---|---|---|---|---|
| 20.5 (learned, v4) | 0.5-1 | 40.73 ± 0.09 (0.01) | 40.53 ± 0.09 (0.02) | 40.67 ± 0.19 (0.07) |
| 100 (v5) | 0.08-1 (recipes) | 40.60 ± 0.00 (0.05) | 39.13 ± 2.08 (0.14) | 42.07 ± 1.25 (0.52) |
| 100 (v5) | 0.5-1 (the demo's) | 40.53 ± 0.09 (0.05) | 40.53 ± 0.09 (0.12) | 46.07 ± 0.82 (0.46) |

- Both are needed: at the learned 20.5 the context barely moves; at 100 with the recipes' crops (down to 8%
  of a 28-px image, about 8 x 8 pixels) it moves as far but ends 4 points lower: it fits views further from
  the test images (zero-shot on the 16-shot training images, 3 seeds x 4 views: 38.3 on the images
  themselves, 32.4 on the recipes' crops, 35.5 on crops of 0.5-1). `dipclip demo` therefore trains on crops
  of at least half of each `demo_fashion` image (`--crop-scale 0.5`, printed in its table); every other
  setting is the recipe's.
- Also tried, not shipped: rescaling the text tower's residual stream so token embeddings have CLIP's
  per-element size (RMS 0.056 -> 0.02; token, positional and every block's output projections x 0.357,
  which leaves the text features unchanged up to LayerNorm's epsilon: zero-shot 40.60 again). It multiplies
  the SGD step on the context by 7.8 relative to the tokens: with logit scale 100 and crops 0.5-1 CoOp reaches
  42.80 / 44.73 / 46.20 at 20 / 50 / 200 epochs, the same end point at the recipe's 200; with the recipes'
  crops it ends lower (39.33 at 200 epochs, the context moving 0.49 against a token norm of 0.29).
- The probe's headroom at scale 100: 55.6 / 60.9 / 63.1 after 50 / 200 / 1000 steps (+22; 53.3 / 57.8 / 59.4
  at 20.5).
"""


def fashion_section(counts: dict | None, report: dict | None, per_class: int) -> str:
    if counts is None or report is None:
        return ""
    from . import corpus, train

    zs = "\n".join(f"| `{t}` | {report[t]['all']:.1f} | {report[t]['base']:.1f} | {report[t]['new']:.1f} |"
                   for t in train.ZERO_SHOT_TEMPLATES)
    return f"""## The Fashion-MNIST demo (`../{FASHION_DEMO}`, `--dataset {FASHION_DEMO}`)
Fashion-MNIST's test set, of which pretraining used nothing (it drew {per_class} images per class from the
training set): per class {corpus.FASHION_DEMO_COUNTS['train']} train, {corpus.FASHION_DEMO_COUNTS['val']} val,
{corpus.FASHION_DEMO_COUNTS['test']} test images, 28 px greyscale as published, labels in Fashion-MNIST's order
(base = t-shirt, trousers, pullover, dress, coat). Zero-shot top-1, {report['images']} test images:

| template | all | base | new |
|---|---|---|---|
{zs}
"""


def write_provenance(path: Path, args, argv, cfg, meta, token_ids, sources_count, records, demo_counts,
                     report, check, final, train_s, total_s, fashion_counts=None, fashion_report=None) -> None:
    import numpy as np
    import open_clip
    import torch

    from . import train

    per_class = {}
    for r in records:
        per_class.setdefault(r.classname, {"train": 0, "val": 0, "test": 0})[r.split] += 1
    rows = "\n".join(f"| {c} | {v['train']} | {v['val']} | {v['test']} |" for c, v in sorted(per_class.items()))
    zs = "\n".join(
        f"| `{t}` | {report[t]['all']:.1f} | {report[t]['base']:.1f} | {report[t]['new']:.1f} |"
        for t in train.ZERO_SHOT_TEMPLATES)
    points = learning_curve(args.work / "train_log.jsonl")
    curve = ", ".join(f"step {step:,}: {acc:.1f}%" for step, acc in points) or "(not logged)"
    reproduce = command_line(argv)
    if "--steps" not in reproduce:
        reproduce += f" --steps {cfg.steps}"
    schedule = ("by step" if "--steps" in command_line(argv) else
                f"by wall clock over {args.minutes:g} min, which gave {cfg.steps} steps; `--steps {cfg.steps}` "
                "replays the same data order, captions and augmentations with the cosine by step, which is the "
                "same schedule up to the clock's jitter")
    text = f"""# dipclip-tiny: provenance

A small CLIP (open_clip architecture, custom config below) trained from scratch by `dipclip.pretrain` on
public-domain and permissively licensed drawings and photos. It is a demo model: it makes the library's
commands run offline in minutes; it is not a substitute for real CLIP weights.

- weights: `model.safetensors`, sha256 `{meta['sha256']}`, {(path.parent / 'model.safetensors').stat().st_size / 1e6:.2f} MB
  (fp16; token embedding pruned to the {len(token_ids)} token ids the captions use, ids in `token_ids`)
- command: `nice -n 19 {command_line(argv)}`
- to replay the same run step for step: `nice -n 19 {reproduce}` (seed {args.seed}, {cfg.steps} steps of
  batch {cfg.batch_size}, AdamW lr {cfg.lr} weight decay {cfg.weight_decay}, {cfg.warmup_steps} warm-up steps, cosine
  {schedule})
- training: {train_s / 60:.1f} min on {args.threads} CPU threads (whole recipe {total_s / 60:.1f} min), shared machine,
  torch {torch.__version__}, open_clip {open_clip.__version__}, numpy {np.__version__}, Python
  {platform.python_version()}
- model config: `{json.dumps(cfg.model_cfg)}`
- logit scale: {shipped_scale_line(args.shipped_logit_scale, meta.get('learned_logit_scale'))}
- tokenizer: the real CLIP BPE tokenizer (`open_clip.tokenizer.SimpleTokenizer`), context length
  {cfg.model_cfg['text_cfg']['context_length']}

## Data and licences
| source | package | licence | images used in pretraining |
|---|---|---|---|
| Open Clip Art | Debian `openclipart-png` | public domain (Creative Commons PD dedication) | {sources_count.get('openclipart', 0)} |
| Twemoji | npm `emoji-datasource-twitter@16.0.0` | CC-BY 4.0, (c) Twitter, Inc and other contributors | {sources_count.get('twemoji', 0)} |
| Noto Emoji | npm `emoji-datasource-google@16.0.0` | Apache-2.0, (c) Google | {sources_count.get('noto-emoji', 0)} |
| OpenMoji colour and black line drawings (SVG, drawn by `rsvg-convert`) | npm `openmoji@17.0.0` | CC BY-SA 4.0, (c) OpenMoji contributors (HfG Schwäbisch Gmünd); the demo images drawn from it are shared under the same licence | {sources_count.get('openmoji', 0)} + {sources_count.get('openmoji-black', 0)} |
| Fashion-MNIST | Debian `dataset-fashion-mnist` | MIT, (c) Zalando SE | {sources_count.get('fashion-mnist', 0)} |
| emoji names and groups | npm `emoji-datasource@16.0.0` | MIT | (captions only) |

Captions: names from clip-art folders and cleaned file names (only English object words kept, a few
Italian/French words translated), emoji names and groups, Fashion-MNIST class names, put into
{len(train.GENERIC_TEMPLATES)} generic templates (including every prompt the library uses: "a photo of a {{}}.",
"a photo of a", "clip art of a {{}}", "a drawing of a {{}}."), per-source templates and "a {{}}, a type of {{}}."
pairs, drawn afresh at every step. Identical captions in a batch count as positives.

## Held-out images and the demo dataset
Before training, for each of the {demo_counts['classes']} demo classes about 60% of the images (at most 80) were
held out as whole file-name groups (colour/black-and-white twins and numbered series stay together; all
four drawings of an emoji stay together). Pretraining never saw them. The demo dataset (`../demo`, CoOp
format, {DEMO_SIZE} px PNG) is made of these images only: {demo_counts['train']} train, {demo_counts['val']} val,
{demo_counts['test']} test. Within the demo the splits are filled drawing by drawing: the three independent
artworks of one emoji (Twemoji, Noto, OpenMoji) may sit in different splits, a drawing's twins (OpenMoji's
colour and line versions, clip-art colour/black-and-white files and series) never do.

| class | train | val | test |
|---|---|---|---|
{rows}

## Zero-shot top-1 on the demo test split (shipped fp16 model, library pipeline)
{report['images']} images, {report['classes']} classes (chance {report['chance_all']}%); base = first
{report['base_classes']} classes in label order, new = the rest (each half classified among its own classes).

| template | all | base | new |
|---|---|---|---|
{zs}

{fashion_section(fashion_counts, fashion_report, args.fashion_per_class)}
{RECIPE_NOTES}
Held-out zero-shot during training (fp32, all held-out images, 23 classes, "a photo of a {{}}."):
{curve}

Export check against the fp32 model: max |diff| of normalised text features {check['text_max_abs_diff']:.2e},
image features {check['image_max_abs_diff']:.2e}, same prediction on {check['prediction_agreement'] * 100:.1f}%
of demo test images. Final in-training zero-shot (fp32, all held-out images): {json.dumps(final.get('heldout', {}))}.
"""
    path.write_text(text)
