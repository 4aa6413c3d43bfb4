"""Per-class accuracy and the confusion matrix in every evaluation's result, and ``dipclip eval --per-class``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from cli_run import run

from dipclip import api
from dipclip.data.types import Datum
from dipclip.engine import distributed, evaluate
from dipclip.engine.evaluate import (
    CONFUSION_DENSE_MAX,
    confusion_entry,
    confusion_matrix,
    dense_confusion,
    result_from_confusion,
    worst_classes,
)
from dipclip.methods import get_method


def check_consistent(result: dict) -> torch.Tensor:
    """The per-class counts and the confusion matrix agree with each other and with the top-1 numbers."""
    per_class = result["per_class"]
    matrix = dense_confusion(result)
    assert sum(c["correct"] for c in per_class) == result["correct"]
    assert sum(c["n"] for c in per_class) == result["n"]
    assert matrix.diagonal().tolist() == [c["correct"] for c in per_class]
    assert matrix.sum(dim=1).tolist() == [c["n"] for c in per_class]
    assert result["accuracy"] == round(100.0 * result["correct"] / result["n"], 4)
    for c in per_class:
        assert c["accuracy"] == (round(100.0 * c["correct"] / c["n"], 4) if c["n"] else None)
    return matrix


def straightforward(true: list[int], predicted: list[int], n_classes: int) -> list[list[int]]:
    matrix = [[0] * n_classes for _ in range(n_classes)]
    for t, p in zip(true, predicted, strict=True):
        matrix[t][p] += 1
    return matrix


def test_confusion_dense_and_sparse_forms():
    predictions, labels = torch.tensor([0, 1, 1, 2, 0, 2]), torch.tensor([0, 1, 2, 2, 1, 2])
    matrix = confusion_matrix(predictions, labels, 3)
    assert matrix.tolist() == straightforward(labels.tolist(), predictions.tolist(), 3)
    result = result_from_confusion(matrix, ["a", "b", "c"])
    assert result["confusion_format"] == "dense" and result["confusion"] == matrix.tolist()
    assert [c["name"] for c in result["per_class"]] == ["a", "b", "c"]
    assert (result["n"], result["correct"], result["accuracy"]) == (6, 4, round(100 * 4 / 6, 4))
    check_consistent(result)

    many = CONFUSION_DENSE_MAX + 50  # beyond the dense limit: only the non-zero cells, in row-major order
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, many, (400,), generator=g)
    predictions = torch.where(torch.rand(400, generator=g) < 0.6, labels, torch.randint(0, many, (400,), generator=g))
    big = confusion_matrix(predictions, labels, many)
    entry = confusion_entry(big)
    assert entry["confusion_format"] == "sparse"
    cells = {(t, p): n for t, p, n in entry["confusion"]}
    assert all(n > 0 for n in cells.values()) and sum(cells.values()) == 400
    assert cells == {(t, p): int(big[t, p]) for t in range(many) for p in range(many) if big[t, p]}
    assert [cell[:2] for cell in entry["confusion"]] == sorted(cell[:2] for cell in entry["confusion"])
    result = result_from_confusion(big, [f"c{i}" for i in range(many)])
    assert torch.equal(check_consistent(result), big)
    assert confusion_entry(big[:CONFUSION_DENSE_MAX, :CONFUSION_DENSE_MAX])["confusion_format"] == "dense"

    empty = result_from_confusion(torch.zeros(2, 2, dtype=torch.long), ["a", "b"])
    assert empty["n"] == empty["correct"] == 0 and empty["accuracy"] == 0.0
    assert [c["accuracy"] for c in empty["per_class"]] == [None, None] and worst_classes(empty) == []


def test_worst_classes_order_and_confusion():
    # class 0: 3/4 right, class 1: 1/4 (3 taken for 2), class 2: 2/4 (2 taken for 0), class 3: no images
    matrix = torch.tensor([[3, 1, 0, 0], [0, 1, 3, 0], [2, 0, 2, 0], [0, 0, 0, 0]])
    result = result_from_confusion(matrix, ["w", "x", "y", "z"])
    worst = worst_classes(result, k=10)
    assert [(c["name"], c["confused_with"], c["confused_count"]) for c in worst] == [
        ("x", "y", 3), ("y", "w", 2), ("w", "x", 1)]
    assert [c["name"] for c in worst_classes(result, k=1)] == ["x"]
    perfect = worst_classes(result_from_confusion(torch.tensor([[2, 0], [0, 1]]), ["p", "q"]))
    assert [(c["name"], c["confused_with"], c["confused_count"]) for c in perfect] == [("p", None, 0),
                                                                                     ("q", None, 0)]


def _test_items(image_tree: Path, split: str = "test") -> tuple[list[str], list[Datum]]:
    names = sorted(p.name for p in (image_tree / split).iterdir())
    items = [Datum(str(path), label, name) for label, name in enumerate(names)
             for path in sorted((image_tree / split / name).glob("*.png"))]
    return names, items


@pytest.mark.parametrize("method", ["coop", "cocoop", "maple"])
def test_every_evaluation_path_reports_the_same_per_class_result(method, tiny_backbone, image_tree, tmp_path):
    """Text features (CoOp), per-image logits (CoCoOp) and the prompted image tower (MaPLe): each result equals
    a confusion matrix built from the model's own predictions, image by image."""
    from dipclip.engine.features import FeatureStore, image_batches

    names, items = _test_items(image_tree)
    prompt_method = get_method(method)
    torch.manual_seed(0)
    model = prompt_method.build(tiny_backbone, names, prompt_method.prompt_config()).eval()
    with torch.no_grad():  # perturb the learned tensors so the predictions are not all one class
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn_like(parameter))
    result = evaluate.evaluate_model(model, items, batch_size=5, store=FeatureStore(tmp_path / "store"),
                                     classnames=names)
    assert set(result) == {"accuracy", "n", "correct", "per_class", "confusion_format", "confusion"}
    assert [c["name"] for c in result["per_class"]] == names
    check_consistent(result)
    with torch.no_grad():
        if model.image_prompted:
            batches = [list(range(len(items)))]
            (images, labels), = image_batches(tiny_backbone, items, None, 0, batches, 0, False)
            predicted = model.logits(images, evaluate.classifier_text_features(model)).argmax(-1)
        else:
            features, labels, _ = evaluate.encode_items(tiny_backbone, items, store=FeatureStore(tmp_path / "s2"))
            text = None if model.image_conditioned else evaluate.classifier_text_features(model)
            predicted = model.logits(features, text).argmax(-1)
    assert result["confusion"] == straightforward(labels.tolist(), predicted.tolist(), len(names))


def test_prompted_evaluation_sums_the_confusion_matrix_over_ranks(monkeypatch, tiny_backbone, image_tree):
    names, items = _test_items(image_tree)
    maple = get_method("maple")
    model = maple.build(tiny_backbone, names, maple.prompt_config())
    single = evaluate.evaluate_model(model, items, batch_size=5)
    summed = []
    monkeypatch.setattr(distributed, "sum_over_ranks", lambda counts, device: summed.append(counts) or counts)
    parts = []
    for rank in (0, 1):
        monkeypatch.setattr(distributed, "rank_and_world", lambda rank=rank: (rank, 2))
        parts.append(evaluate.evaluate_model(model, items, batch_size=5))
    assert [len(counts) for counts in summed] == [len(names) ** 2] * 2  # the whole matrix goes through the sum
    total = sum(dense_confusion(part) for part in parts)
    assert torch.equal(total, dense_confusion(single))
    assert [part["n"] for part in parts] == [7, 5]


def _predict_matrix(tree: Path, split: str, names: list[str], **classifier) -> list[list[int]]:
    """The confusion matrix from ``api.predict``'s top-1 class of every image file (another code path)."""
    _, items = _test_items(tree, split)
    payload = api.predict([d.path for d in items], classnames=names, top_k=1, device="cpu", **classifier)
    predicted = [names.index(p["top"][0]["class"]) for p in payload["predictions"]]
    return straightforward([d.label for d in items], predicted, len(names))


def test_zeroshot_and_trained_adapter_match_predictions_and_val_split(tmp_path, tiny_config_path, image_tree,
                                                                       capsys):
    tree = tmp_path / "tree"
    shutil.copytree(image_tree, tree)
    shutil.copytree(tree / "test", tree / "val")
    model = ["--model", tiny_config_path, "--pretrained", "none", "--device", "cpu"]
    data = ["--data", tree, "--dataset", "imagefolder"]
    names = sorted(p.name.replace("_", " ") for p in (tree / "test").iterdir())

    zs = api.zeroshot(model=str(tiny_config_path), pretrained="none", data=str(tree), dataset="imagefolder",
                      templates=["a photo of a {}."], device="cpu", out=tmp_path / "zs")
    result = zs["results"]["test"]
    check_consistent(result)
    assert result == json.loads((tmp_path / "zs" / "metrics.json").read_text())["results"]["test"]
    assert result["confusion"] == _predict_matrix(tree, "test", names, model=str(tiny_config_path),
                                                  pretrained="none", template="a photo of a {}.")

    code, _, _ = run(["train", "--method", "coop", *model, *data, "--shots", "2", "--epochs", "1",
                      "--batch-size", "3", "--quiet", "--out", tmp_path / "run"], capsys)
    assert code == 0
    trained = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert list(trained["results"]) == ["test"]  # training evaluates the test split only, never val
    check_consistent(trained["results"]["test"])
    adapter = tmp_path / "run" / "adapter"
    for split in ("test", "val"):
        code, out, _ = run(["eval", "--adapter", adapter, *data, "--split", split, "--out", tmp_path / split],
                           capsys)
        assert code == 0
        result = json.loads((tmp_path / split / "metrics.json").read_text())["results"][split]
        check_consistent(result)
        assert [c["name"] for c in result["per_class"]] == names and result["n"] == 12
        assert result["confusion"] == _predict_matrix(tree, split, names, adapter=str(adapter))
        assert out == f"{split}: {result['accuracy']:.2f}% (12 images)\n"  # no flag: the output as before
    assert result == trained["results"]["test"]  # val holds the test images: the same numbers



def test_eval_per_class_prints_the_worst_classes_first(tmp_path, tiny_config_path, image_tree, capsys):
    """Every test image is the same picture, so whatever the adapter predicts, one class scores 100% and the
    others 0%: the listing starts with the first 0% class and ends with the one never mistaken."""
    tree = tmp_path / "tree"
    shutil.copytree(image_tree / "train", tree / "train")
    picture = next(iter(sorted((image_tree / "test" / "red_apple").glob("*.png"))))
    folders = sorted(p.name for p in (image_tree / "test").iterdir())
    for count, folder in enumerate(folders, start=2):
        (tree / "test" / folder).mkdir(parents=True)
        for i in range(count):
            shutil.copy(picture, tree / "test" / folder / f"{i}.png")
    model = ["--model", tiny_config_path, "--pretrained", "none", "--device", "cpu"]
    data = ["--data", tree, "--dataset", "imagefolder"]
    code, _, _ = run(["train", "--method", "coop", *model, *data, "--shots", "2", "--epochs", "1",
                      "--batch-size", "3", "--quiet", "--out", tmp_path / "run"], capsys)
    assert code == 0
    code, out, _ = run(["eval", "--adapter", tmp_path / "run" / "adapter", *data, "--per-class", "--out",
                        tmp_path / "ev"], capsys)
    assert code == 0
    result = json.loads((tmp_path / "ev" / "metrics.json").read_text())["results"]["test"]
    check_consistent(result)
    names = [c["name"] for c in result["per_class"]]
    matrix = dense_confusion(result)
    (taken,) = matrix.sum(dim=0).nonzero().flatten().tolist()  # the one class every image is predicted as
    others = [i for i in range(len(names)) if i != taken]
    lines = out.splitlines()
    assert lines == [
        f"test: {result['accuracy']:.2f}% (9 images)",
        "test: worst classes (lowest accuracy first):",
        *[f"  {names[i]}: 0.00% of {i + 2} images, most often taken for {names[taken]} ({i + 2})" for i in others],
        f"  {names[taken]}: 100.00% of {taken + 2} images, never mistaken",
    ]
