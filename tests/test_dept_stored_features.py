"""DePT trains from stored features (issue 19, item 5): the store keeps the unnormalised projected features
beside the normalised ones, and DePT's head reads those instead of running the frozen image tower every step.

Exactness: the same run trained from stored features and from the images (the previous path) gives the same
history and learned tensors up to float rounding (the image tower sees batches of 64 instead of the training
batch), and the trained models give the same logits (to 1e-5) and predictions.

``python tests/test_dept_stored_features.py`` times one DePT training epoch both ways on a random ViT-B/32.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from dipclip.backbones.loading import normalize_image_features
from dipclip.data.types import Datum
from dipclip.engine.features import FeatureBatches, FeatureStore, PromptedImageBatches, image_batches
from dipclip.engine.trainer import TrainConfig, Trainer
from dipclip.methods import get_method

LOGIT_TOL = 1e-5
STATE_TOL = 1e-5
EPOCHS, BATCH = 3, 4


def tree_items(root: Path, split: str) -> list[Datum]:
    items = []
    for label, folder in enumerate(sorted((root / split).iterdir())):
        items += [Datum(str(p), label, folder.name) for p in sorted(folder.iterdir())]
    return items


def train(backbone, items, classnames, out: Path, store: FeatureStore, images: bool, epochs: int = EPOCHS,
          views: str | int = "fresh"):
    """(trainer, history) of a DePT run; ``images``: the image path (the tower on every step, as before)."""
    method = get_method("dept")
    model = method.build(backbone, classnames, method.prompt_config())
    trainer = Trainer(method, model, method.optim_config(), TrainConfig(epochs=epochs, batch_size=BATCH, seed=1,
                                                                        views=views),
                      out, progress=False, store=store)
    source = PromptedImageBatches(backbone, items, BATCH, 1) if images else None
    return trainer, trainer.fit(items, source=source)


@pytest.fixture(scope="module")
def runs(tiny_backbone, image_tree, tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    items, test = tree_items(image_tree, "train"), tree_items(image_tree, "test")
    classnames = sorted(p.name.replace("_", " ") for p in (image_tree / "train").iterdir())
    root = tmp_path_factory.mktemp("dept-stored")
    store = FeatureStore(root / "features")
    stored = train(tiny_backbone, items, classnames, root / "stored", store, images=False)
    imaged = train(tiny_backbone, items, classnames, root / "images", store, images=True)
    yield stored, imaged, store, items, test
    torch.set_num_threads(threads)


def test_dept_trains_from_stored_unnormalised_features(runs):
    (trainer, _), _, store, items, _ = runs
    source = trainer.default_source(items)
    assert isinstance(source, FeatureBatches) and source.raw
    assert source.describe()["unnormalised"] is True
    assert store.misses == EPOCHS  # one encoding per fresh view, no image tower in the steps
    encoded = source.encoded_view(0)
    assert torch.equal(encoded.features, normalize_image_features(encoded.raw))  # CPU: the same device and op
    inputs, _ = next(source.batches(0, torch.Generator().manual_seed(0)))
    assert inputs.shape[1] == trainer.model.backbone.text.output_dim
    assert not torch.allclose(inputs.norm(dim=-1), torch.ones(len(inputs)))  # unnormalised


def test_other_methods_keep_normalised_features_and_their_fingerprint(tiny_backbone, image_tree, tmp_path):
    method = get_method("coop")
    model = method.build(tiny_backbone, ["a", "b", "c"], method.prompt_config())
    assert not model.takes_raw_features
    trainer = Trainer(method, model, method.optim_config(), TrainConfig(batch_size=BATCH), tmp_path,
                      progress=False, store=FeatureStore(tmp_path / "features"))
    source = trainer.default_source(tree_items(image_tree, "train"))
    assert not source.raw and source.describe() == {"kind": "features", "views": "fresh", "crop_scale": 0.08}
    inputs, _ = next(source.batches(0, torch.Generator().manual_seed(0)))
    assert torch.allclose(inputs.norm(dim=-1), torch.ones(len(inputs)), atol=1e-6)


def test_stored_features_give_the_image_paths_history_weights_logits_and_predictions(runs, tiny_backbone):
    (stored, stored_history), (imaged, image_history), _, _, test = runs
    assert len(stored_history) == len(image_history) == EPOCHS
    for a, b in zip(stored_history, image_history, strict=True):
        assert a["train_accuracy"] == b["train_accuracy"] and a["images"] == b["images"] and a["lr"] == b["lr"]
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    for name, tensor in stored.model.learnable_state().items():
        other = imaged.model.learnable_state()[name]
        assert (tensor - other).abs().max() <= STATE_TOL, name
    batches = [list(range(len(test)))]
    ((images, labels),) = list(image_batches(tiny_backbone, test, None, 0, batches))
    raw = tiny_backbone.encode_images(images, normalize=False)
    with torch.no_grad():
        a = stored.model.eval().logits(images)
        b = imaged.model.eval().logits(images)
        from_raw = stored.model.logits(raw)  # the stored-feature input gives the image input's logits
    assert (a - b).abs().max() <= LOGIT_TOL and torch.equal(a.argmax(-1), b.argmax(-1))
    assert torch.equal(from_raw, a)


def test_dept_evaluates_from_stored_features_as_from_images(runs):
    """Evaluation reads the stored unnormalised features too: the same accuracy and correct count as the image
    tower run over the test images, and the store encodes the split once."""
    from dipclip.engine.evaluate import _evaluate_prompted_images, evaluate_model

    (stored, _), _, store, _, test = runs
    model = stored.model.eval()
    misses = store.misses
    from_store = evaluate_model(model, test, batch_size=4, store=store)
    again = evaluate_model(model, test, batch_size=4, store=store)
    from_images = _evaluate_prompted_images(model, test, 4, 0, False)
    assert from_store == again == from_images and from_store["n"] == len(test)
    assert store.misses == misses + 1


def _benchmark(rounds: int = 3) -> None:
    """One DePT epoch on a random ViT-B/32, 3 classes x 16 shots, batch 4: the image tower on every step vs
    stored features (fresh view: encoded ahead of the epoch; cached: already stored). Medians of ``rounds``
    alternating rounds, after one warm-up epoch (a shared machine's timings move by 10-20%)."""
    import statistics
    import tempfile

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import make_image_tree

    from dipclip.backbones.loading import load_backbone

    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
    with tempfile.TemporaryDirectory() as folder:
        root = make_image_tree(Path(folder) / "tree", {"train": 16}, size=64)
        items = tree_items(root, "train")
        names = sorted(p.name.replace("_", " ") for p in (root / "train").iterdir())
        backbone = load_backbone("ViT-B-32", "none", device="cpu")
        train(backbone, items, names, Path(folder) / "warm-up", FeatureStore(enabled=False), True, epochs=1)
        seconds: dict[str, list[float]] = {}
        for round_ in range(rounds):
            store = FeatureStore(Path(folder) / f"features{round_}")  # a new store: the fresh view is encoded
            for label, images in (("image tower every step", True), ("stored, fresh view encoded ahead", False),
                                  ("stored, view already encoded", False)):
                out = Path(tempfile.mkdtemp(dir=folder))
                trainer, _ = train(backbone, items, names, out, store, images, epochs=1)
                seconds.setdefault(label, []).append(trainer.epoch_seconds[0])
        base = statistics.median(seconds["image tower every step"])
        for label, values in seconds.items():
            value = statistics.median(values)
            print(f"DePT epoch, {len(items)} images, batch {BATCH}, {torch.get_num_threads()} thread(s), {label}: "
                  f"{value:.2f} s ({base / value:.1f}x; runs {', '.join(f'{v:.2f}' for v in values)})")


if __name__ == "__main__":
    _benchmark()
