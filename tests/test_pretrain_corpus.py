"""The demo's held-out split and the recipe's --demo-only check, on synthetic items (no image sources needed)."""

import json
import random

import pytest

from dipclip.pretrain import corpus, recipe
from dipclip.pretrain.sources import Item


def emoji_concept(code: str, category: str) -> list[Item]:
    sources = ("twemoji", "noto-emoji", "openmoji", "openmoji-black")
    return [Item(f"{s.replace('-', '_')}_{code}", s, f"/x/{s}/{code}.png", f"thing {code}", [category],
                 f"emoji:{code}", {category}) for s in sources]


def clip_art(stem: str, category: str, copies: int = 1) -> list[Item]:
    return [Item(f"oca_{stem}_{i}", "openclipart", f"/x/oca/{stem}_{i}.png", stem, [category], f"oca:{stem}",
                 {category}) for i in range(copies)]


def corpus_items() -> list[Item]:
    items = []
    for cls in ("bird", "fruit"):
        for n in range(40):
            items += emoji_concept(f"{cls}{n:02d}", cls)
        for n in range(10):
            items += clip_art(f"{cls}_series_{n}", cls, copies=3)
    return items


def test_drawing_units_split_artworks_and_keep_twins():
    units = corpus.drawing_units([emoji_concept("1f34e", "fruit") + clip_art("apple", "fruit", 2)],
                                 random.Random(0))
    families = sorted(tuple(sorted(it.source for it in unit)) for unit in units)
    assert families == [("noto-emoji",), ("openclipart", "openclipart"), ("openmoji", "openmoji-black"),
                        ("twemoji",)]


def test_splitting_by_drawing_holds_out_the_same_images():
    """--demo-only relies on this: the pretraining set does not depend on how the demo splits are filled."""
    items = corpus_items()
    by_group = corpus.holdout_split(items, seed=0, by_drawing=False)
    by_drawing = corpus.holdout_split(items, seed=0, by_drawing=True)
    assert {r.key for r in by_group} == {r.key for r in by_drawing}
    assert [r.key for r in by_group] != [r.key for r in by_drawing]

    def split_of(records):
        return {r.key: r.split for r in records}

    for records in (by_group, by_drawing):
        splits = split_of(records)
        for item in items:  # OpenMoji colour and line twins and clip-art series never straddle splits
            if item.source == "openmoji-black" and item.key in splits:
                assert splits[item.key] == splits[item.key.replace("openmoji_black", "openmoji")]
        series = {}
        for item in items:
            if item.source == "openclipart" and item.key in splits:
                series.setdefault(item.group, set()).add(splits[item.key])
        assert all(len(s) == 1 for s in series.values())
    # by drawing, artworks of one concept do reach both the train and the test split
    splits = split_of(by_drawing)
    straddling = 0
    for item in items:
        if item.source == "twemoji" and item.key in splits:
            other = item.key.replace("twemoji", "noto_emoji")
            straddling += {splits[item.key], splits[other]} == {"train", "test"}
    assert straddling > 0


def test_demo_only_takes_only_a_finished_run_of_the_same_command(tmp_path):
    from dipclip.backbones.build import file_sha256

    log = tmp_path / "train_log.jsonl"
    weights = tmp_path / recipe.FP32_NAME
    weights.write_bytes(b"fp32 weights")
    (tmp_path / "manifest.json").write_text(json.dumps([{"key": "a", "heldout": None},
                                                        {"key": "b", "heldout": {"split": "test"}}]))
    argv = ["--out", "o", "--minutes", "5"]
    final = {"step": 900, "zero_shot": {"heldout": {"a photo of a {}.": 40.0}}, "elapsed_s": 300.0, "loss": 2.1}
    lines = [{"command": "python -m dipclip.pretrain --out o --minutes 5"}, {"step": 10, "loss": 3.0},
             {"step": 450, "zero_shot": {"heldout": {}}}, final]

    def write(records):
        log.write_text("".join(json.dumps(x) + "\n" for x in records))

    write(lines[:3])  # killed before its final evaluation
    assert recipe.finished_run(tmp_path, argv + ["--demo-only"]) == (None, f"the last run in {tmp_path} did not finish")
    write(lines)  # the final evaluation, but no weights saved
    assert "logged no hash of its model_fp32.pt" in recipe.finished_run(tmp_path, argv)[1]
    # the run's end, then a later --demo-only rebuild (logged under its own key, with its own end)
    lines += [{"fp32_weights": recipe.FP32_NAME, "sha256": file_sha256(weights)}, {"done": True, "total_s": 320.0, "sha256": "abc"},
              {"demo_only": "python -m dipclip.pretrain --out o --minutes 5 --demo-only"},
              {"done": True, "total_s": 9.0}]
    write(lines)
    found, problem = recipe.finished_run(tmp_path, argv + ["--demo-only"])
    assert problem == "" and found["step"] == 900 and found["argv"] == argv
    assert found["total_s"] == 320.0  # the provenance's recipe time is the training run's
    assert found["export_sha256"] == "abc"  # the file a rebuild must reproduce
    assert found["trained_on"] == {"a"}
    assert recipe.learning_curve(log) == [(900, 40.0)]  # evaluations without the template are left out
    found, problem = recipe.finished_run(tmp_path, ["--out", "o", "--minutes", "6", "--demo-only"])
    assert found is None and "another command (--out o --minutes 5)" in problem
    weights.write_bytes(b"other weights")  # not the file the run wrote
    found, problem = recipe.finished_run(tmp_path, argv)
    assert found is None and "not the file that run wrote" in problem
    weights.write_bytes(b"fp32 weights")
    (tmp_path / "manifest.json").write_text("[{")
    assert "manifest.json is missing or damaged" in recipe.finished_run(tmp_path, argv)[1]
    # a later run that did not finish hides the earlier one
    write(lines + [{"command": "python -m dipclip.pretrain --out o --minutes 5"}, {"step": 10, "loss": 3.0}])
    assert recipe.finished_run(tmp_path, argv)[0] is None
    assert "records no training run" in recipe.finished_run(tmp_path / "empty", argv)[1]


def test_pretrain_refuses_bad_evals(capsys):
    with pytest.raises(SystemExit) as stop:
        recipe.build_parser().parse_args(["--out", "o", "--evals", "-1"])
    assert stop.value.code == 2
    assert "--evals: must be >= 0, got -1" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["0", "101", "nan", "x"])
def test_pretrain_refuses_a_logit_scale_clip_would_not_have(capsys, bad):
    with pytest.raises(SystemExit) as stop:
        recipe.build_parser().parse_args(["--out", "o", "--logit-scale", bad])
    assert stop.value.code == 2
    assert f"--logit-scale: must be a number from 1 to 100 (CLIP clamps it at 100), got {bad!r}" in capsys.readouterr().err


def test_logit_scale_starts_where_asked_and_survives_export(tmp_path):
    """A model pretrained from another initial temperature must load back with its own learned one."""
    import math

    import torch

    from dipclip.pretrain import export, train

    assert "init_logit_scale" not in train.model_config(16, 64, 1)  # v3's config, unchanged
    cfg = train.model_config(image_size=16, width=64, layers=1, logit_scale=100.0)
    model = train.build_model(0, cfg)
    assert math.isclose(float(model.logit_scale.detach().exp()), 100.0, rel_tol=1e-5)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(42.0))
    export.export_model(model, cfg, torch.tensor([5, 320, 49406, 49407]), tmp_path / "e", "test")
    assert math.isclose(float(export.load_exported(tmp_path / "e").logit_scale.detach().exp()), 42.0, rel_tol=1e-3)


def test_shipped_logit_scale_replaces_only_the_temperature(tmp_path):
    """The recipe ships CLIP's logit scale (100) in place of the learned one: every other tensor is the bytes of a
    plain export, and zero-shot predictions (argmax over the logits) cannot change."""
    import math

    import torch
    from safetensors.torch import load_file

    from dipclip.pretrain import export, recipe, train

    cfg = train.model_config(image_size=16, width=64, layers=1)
    model = train.build_model(0, cfg)
    token_ids = torch.tensor([5, 320, 49406, 49407])
    export.export_model(model, cfg, token_ids, tmp_path / "learned", "test")
    export.export_model(model, cfg, token_ids, tmp_path / "clip", "test", logit_scale=100.0)
    learned = load_file(str(tmp_path / "learned" / "model.safetensors"))
    shipped = load_file(str(tmp_path / "clip" / "model.safetensors"))
    assert [k for k in learned if not torch.equal(learned[k], shipped[k])] == ["logit_scale"]
    assert math.isclose(float(shipped["logit_scale"].float().exp()), 100.0, rel_tol=1e-3)
    a, b = export.load_exported(tmp_path / "learned"), export.load_exported(tmp_path / "clip")
    images = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    ids = torch.zeros(2, cfg["text_cfg"]["context_length"], dtype=torch.long)
    ids[:, 0], ids[:, 1], ids[:, 2] = 49406, torch.tensor([5, 320]), 49407
    with torch.no_grad():
        (img_a, txt_a, scale_a), (img_b, txt_b, scale_b) = a(images, ids), b(images, ids)
    assert torch.equal(img_a, img_b) and torch.equal(txt_a, txt_b) and float(scale_b) > 4 * float(scale_a)
    assert torch.equal((scale_a * img_a @ txt_a.T).argmax(1), (scale_b * img_b @ txt_b.T).argmax(1))
    assert recipe.build_parser().parse_args(["--out", "o"]).shipped_logit_scale == 100.0


def test_export_is_byte_for_byte_reproducible(tmp_path):
    """The shipped file's SHA-256 is its identity (PROVENANCE, caches): the same weights must give the same bytes.
    safetensors orders the metadata map at random per process, so the header holds one key."""
    import torch

    from dipclip.pretrain import export, train

    cfg = train.model_config(image_size=16, width=64, layers=1)
    model = train.build_model(0, cfg)
    token_ids = torch.tensor([5, 320, 49406, 49407])
    shas = {export.export_model(model, cfg, token_ids, tmp_path / f"e{i}", "test")["sha256"] for i in range(4)}
    assert len(shas) == 1
    raw = (tmp_path / "e0" / "model.safetensors").read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    assert header["__metadata__"] == {"format": "pt"}


def write_idx(path, array):
    import gzip

    import numpy as np

    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.tobytes())


def test_fashion_demo_takes_only_test_images_disjoint_and_balanced(tmp_path):
    import numpy as np
    from PIL import Image

    from dipclip.pretrain.sources import FASHION_CLASSES

    labels = np.repeat(np.arange(10), 12)
    images = np.stack([np.full((28, 28), i % 256) for i in range(len(labels))])
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels)
    counts = {"train": 5, "val": 2, "test": 4}
    stats = corpus.write_fashion_demo(tmp_path, tmp_path / "demo", seed=1, counts=counts)
    assert stats == {"train": 50, "val": 20, "test": 40, "classes": 10}
    split = json.loads((tmp_path / "demo" / corpus.FASHION_DEMO_SPLIT_FILE).read_text())
    seen = set()
    for part, rows in split.items():
        for rel, label, name in rows:
            index = int(rel.split("t10k_")[1][:5])
            assert labels[index] == label and FASHION_CLASSES[label] == name
            assert index not in seen
            seen.add(index)
            pixel = Image.open(tmp_path / "demo" / "images" / rel)
            assert pixel.size == (28, 28) and pixel.getpixel((0, 0)) == index % 256
        assert [sum(1 for r in rows if r[1] == c) for c in range(10)] == [counts[part]] * 10
    again = corpus.write_fashion_demo(tmp_path, tmp_path / "again", seed=1, counts=counts)
    assert again == stats
    assert (tmp_path / "again" / corpus.FASHION_DEMO_SPLIT_FILE).read_text() == json.dumps(split, indent=0) + "\n"
    with pytest.raises(ValueError, match="12 test images of 't-shirt', 13 needed"):
        corpus.write_fashion_demo(tmp_path, tmp_path / "x", seed=1, counts={"train": 13})


def test_pretrain_refuses_before_training_when_fashion_test_files_are_missing(tmp_path):
    """demo_fashion is written after training; a missing t10k file must stop the recipe at the start."""
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"")
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"")
    args = recipe.build_parser().parse_args(["--out", str(tmp_path / "o"), "--fashion-dir", str(tmp_path),
                                             "--emoji-dir", str(tmp_path / "npm")])
    problems = recipe.check_sources(args)
    assert any(p.startswith("Fashion-MNIST's test files t10k-images-idx3-ubyte.gz not found in ") for p in problems)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"")
    assert not any("Fashion-MNIST" in p for p in recipe.check_sources(args))


@pytest.mark.parametrize("flag, bad, message", [
    ("--minutes", "0", "must be a number > 0"), ("--minutes", "inf", "must be a number > 0"),
    ("--lr", "0", "must be a number > 0"), ("--batch-size", "1", "must be >= 2"),
    ("--steps", "0", "must be >= 1"), ("--threads", "0", "must be >= 1"), ("--workers", "0", "must be >= 1"),
    ("--image-size", "44", "must be a multiple of 8"), ("--width", "96", "must be a multiple of 64"),
    ("--layers", "two", "expected a whole number >= 1"), ("--fashion-per-class", "-5", "must be >= 0"),
])
def test_pretrain_refuses_settings_that_would_fail_or_mislead_later(capsys, flag, bad, message):
    """Checked before an hour of pretraining starts, not when the first batch or the export fails."""
    with pytest.raises(SystemExit) as stop:
        recipe.build_parser().parse_args(["--out", "o", flag, bad])
    assert stop.value.code == 2
    assert f"{flag}: {message}" in capsys.readouterr().err
