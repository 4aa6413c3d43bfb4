"""Feature-space methods end to end through the API and the CLI: train (fit) on a tiny model, the adapter on
disk, eval/predict from it, the protocols each method declares, no test-set search unless asked for."""

from __future__ import annotations

import json

import pytest
from cli_run import assert_refused, run

from dipclip import api
from dipclip.probes import FEATURE_METHODS, get_feature_method

FAST = {"tip-adapter-f": {"epochs": 2}, "zslp": {"epochs": 2}, "clap": {"epochs": 2}, "clip-lora": {"epochs": 1}}
OPTIONS = {"lpp": {"epochs": 5}, "lp": {"search_steps": 2}, "tip-adapter": {"search_step": [5, 4]},
           "tip-adapter-f": {"search_step": [5, 4]}}


@pytest.fixture(scope="module")
def tree_with_val(tmp_path_factory, image_tree_maker):
    return image_tree_maker(tmp_path_factory.mktemp("with-val"), {"train": 6, "val": 4, "test": 4})


def _train(method, tiny_config_path, data, out, **kwargs):
    options = dict(OPTIONS.get(method, {}))
    return api.train(method, model=str(tiny_config_path), pretrained="none", data=str(data), dataset="imagefolder",
                     shots=4, out=out, progress=False, device="cpu", method_options=options or None,
                     **{**FAST.get(method, {}), **kwargs})


@pytest.mark.parametrize("method", sorted(FEATURE_METHODS))
def test_each_feature_method_trains_saves_and_evaluates_again(method, tiny_config_path, tree_with_val, tmp_path):
    metrics = _train(method, tiny_config_path, tree_with_val, tmp_path / "run")
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert written["method"] == method and written["results"]["test"]["n"] == 12
    assert written["search_split"] == "val" and written["config"]["recipe"]["name"].startswith(f"{method}/fewshot")
    assert written["history"] == metrics["history"] and (len(written["history"]) > 0) == FEATURE_METHODS[method].trained
    adapter = tmp_path / "run" / "adapter"
    assert (adapter / "adapter_model.safetensors").stat().st_size < 200_000  # learned/computed tensors only
    again = api.evaluate(adapter, data=str(tree_with_val), dataset="imagefolder", device="cpu")
    assert again["results"]["test"]["accuracy"] == metrics["results"]["test"]["accuracy"]
    assert again["results"]["test"]["confusion"] == metrics["results"]["test"]["confusion"]
    # predict scores each image as the evaluation did (its head, never the zero-shot classifier it starts from)
    test = api.load_data(str(tree_with_val), "imagefolder").test
    predicted = api.predict([item.path for item in test], adapter=adapter, device="cpu", top_k=1)
    names = predicted["classnames"]
    confusion = [[0] * len(names) for _ in names]
    for item, prediction in zip(test, predicted["predictions"], strict=True):
        confusion[item.label][names.index(prediction["top"][0]["class"])] += 1
    assert confusion == metrics["results"]["test"]["confusion"]


def test_a_search_needs_a_validation_split_or_the_authors_test_set_way(tiny_config_path, image_tree, tmp_path):
    from dipclip.errors import DipclipError

    with pytest.raises(DipclipError, match="chooses its hyperparameters on the validation split"):
        _train("tip-adapter", tiny_config_path, image_tree, tmp_path / "a")
    metrics = _train("tip-adapter", tiny_config_path, image_tree, tmp_path / "b", search_split="test")
    assert metrics["search_split"] == "test" and metrics["chosen"]["search_split"] == "test"


def test_protocols_a_method_cannot_do_are_refused_naming_the_reason(tiny_config_path, tree_with_val, tmp_path,
                                                                     capsys):
    code, _, err = run(["train", "--method", "tip-adapter", "--model", tiny_config_path, "--pretrained", "none",
                        "--data", tree_with_val, "--dataset", "imagefolder", "--subsample", "base", "--device", "cpu",
                        "--out", tmp_path / "r"], capsys)
    assert_refused(code, err, "tip-adapter cannot run the base2new protocol")
    assert "base2new" in get_feature_method("gda").protocols
    code, _, err = run(["train", "--method", "lp", "--n-ctx", "4", "--model", tiny_config_path, "--pretrained",
                        "none", "--data", tree_with_val, "--dataset", "imagefolder", "--out", tmp_path / "s"], capsys)
    assert_refused(code, err, "lp learns no prompt")


def test_a_fewshot_sweep_tabulates_feature_methods_and_marks_test_set_searches(tmp_path, capsys):
    """The shipped demo data (it has a val split) through `dipclip fewshot`: prompt and feature methods in one
    table; a run whose hyperparameters the test set chose is marked in every table."""
    common = ["--pretrained", "dipclip-tiny", "--datasets", "demo_fashion", "--shots", "2", "--seeds", "1",
              "--epochs", "2", "--device", "cpu"]
    code, out, err = run(["fewshot", *common, "--methods", "zeroshot", "lp", "tip-adapter", "gda",
                          "--out", tmp_path / "a"], capsys)
    assert code == 0, err
    table = (tmp_path / "a" / "fewshot" / "summary.md").read_text()
    assert all(f"| {m} | demo_fashion | 2 |" in table for m in ("zeroshot", "lp", "tip-adapter", "gda"))
    assert "test-set search" not in table
    code, out, err = run(["fewshot", *common, "--methods", "tip-adapter", "--search-split", "test",
                          "--out", tmp_path / "b"], capsys)
    assert code == 0, err
    table = (tmp_path / "b" / "fewshot" / "summary.md").read_text()
    assert "| tip-adapter (test-set search) | demo_fashion | 2 |" in table and "chosen on the test set" in table
    code, _, err = run(["base2new", *common[:-6], "--seeds", "1", "--device", "cpu", "--methods", "coop", "lp",
                        "--out", tmp_path / "c"], capsys)
    assert_refused(code, err, "lp cannot run the base2new protocol", "the feature methods that can: clip-adapter, clip-lora, gda")


def test_a_linear_head_exports_what_reproduces_predict_and_a_cache_is_refused(tiny_config_path, tree_with_val,
                                                                             tmp_path, capsys):
    """LP's export: normalize(encode_image(x)) @ weight.T + bias, softmaxed, is predict's probabilities; a
    Tip-Adapter cache is not one linear map, so its export is refused pointing to predict and Classifier."""
    import torch
    from safetensors.torch import load_file

    from dipclip.backbones.loading import load_backbone
    from dipclip.data.images import load_rgb
    from dipclip.data.transforms import test_transform

    _train("lp", tiny_config_path, tree_with_val, tmp_path / "lp")
    info = api.export(tmp_path / "lp" / "adapter", device="cpu", out=tmp_path / "x")
    exported = load_file(tmp_path / "x" / "classifier.safetensors")
    assert set(exported) == {"weight", "bias"} and info["logits"]["formula"].startswith("normalize(image_features)")
    images = sorted(str(p) for p in (tree_with_val / "test").rglob("*.png"))[:5]
    predicted = api.predict(images, adapter=tmp_path / "lp" / "adapter", device="cpu", top_k=3)
    backbone = load_backbone(str(tiny_config_path), "none", device="cpu", announce=False)
    transform = test_transform(backbone.image_size, backbone.mean, backbone.std)
    with torch.no_grad():
        pixels = torch.stack([transform(load_rgb(path)) for path in images])
        features = torch.nn.functional.normalize(backbone.model.encode_image(pixels).float(), dim=-1)
        probabilities = (features @ exported["weight"].T + exported["bias"]).softmax(-1)
    for row, prediction in zip(probabilities, predicted["predictions"], strict=True):
        for entry in prediction["top"]:
            assert abs(float(row[info["classnames"].index(entry["class"])]) - entry["probability"]) < 1e-5
    _train("tip-adapter", tiny_config_path, tree_with_val, tmp_path / "tip")
    code, _, err = run(["export", tmp_path / "tip" / "adapter", "--device", "cpu", "--out", tmp_path / "y"], capsys)
    assert_refused(code, err, "tip-adapter's classifier is not one linear map", "dipclip.Classifier")


@pytest.mark.parametrize("method", ["lp", "tip-adapter", "zslp"])
def test_a_head_scores_a_subset_of_its_classes_by_name(method, tiny_config_path, tree_with_val, tmp_path):
    """ImageNet-A/R style: the head on a subset of its training classes (any order) gives exactly those columns
    of its full scores; a class it never saw is refused."""
    import torch

    from dipclip.adapters import load_adapter, model_from_adapter
    from dipclip.backbones.loading import load_backbone
    from dipclip.errors import DipclipError

    _train(method, tiny_config_path, tree_with_val, tmp_path / "run")
    adapter = load_adapter(tmp_path / "run" / "adapter")
    backbone = load_backbone(str(tiny_config_path), "none", device="cpu", announce=False)
    full = model_from_adapter(adapter, backbone)
    names = full.classnames
    subset = model_from_adapter(adapter, backbone, [names[2], names[0]])
    features = torch.nn.functional.normalize(torch.randn(5, backbone.text.output_dim), dim=-1)
    with torch.no_grad():
        torch.testing.assert_close(subset.logits(features), full.logits(features)[:, [2, 0]], rtol=0, atol=0)
    with pytest.raises(DipclipError, match="can only score the 3 classes it was trained on"):
        model_from_adapter(adapter, backbone, [names[0], "unseen class"])


def test_every_recipe_sets_only_settings_its_method_has_of_their_kind():
    """Each recipe's head values (defaults, protocols, dataset rules) are settings the method knows, of the kind
    its defaults have; the optimiser and training sections build their configs."""
    from dipclip.recipes.probes import load_probe_recipe_file, probe_recipe_methods, resolve_probe_recipe

    assert probe_recipe_methods() == sorted(FEATURE_METHODS)
    for name in probe_recipe_methods():
        method, raw = get_feature_method(name), load_probe_recipe_file(name)
        for protocol, body in raw["protocols"].items():
            for rule in [{"when": {}}] + body.get("rules", []):
                dataset = (rule["when"].get("dataset") or [None])[0]
                shots = (rule["when"].get("shots") or [None])[0]
                values = resolve_probe_recipe(name, protocol, dataset, shots).values
                method.settings(**values.get("head", {}))
                method.optim_config(**values.get("optim", {}))


@pytest.mark.parametrize(("option", "expected"), [
    ("search_step=abc", "tip-adapter setting search_step must be a list like its default [200, 20]"),
    ("search=1", "tip-adapter setting search must be true or false"),
    ("init_alpha=[1]", "tip-adapter setting init_alpha must be a number"),
    ("cache_size=3", "tip-adapter has no setting(s) cache_size"),
])
def test_a_mistyped_method_option_is_refused_in_one_line(option, expected, tiny_config_path, tree_with_val,
                                                         tmp_path, capsys):
    code, _, err = run(["train", "--method", "tip-adapter", "--method-option", option, "--model", tiny_config_path,
                        "--pretrained", "none", "--data", tree_with_val, "--dataset", "imagefolder",
                        "--device", "cpu", "--out", tmp_path / "r"], capsys)
    assert_refused(code, err, expected)
    assert not (tmp_path / "r").exists()  # refused before anything was written


def test_clip_lora_counts_iterations_per_shot_and_needs_a_shot_count(tiny_config_path, tree_with_val, tmp_path):
    """Its authors' 500 x shots iterations become epochs from the training set's size; without --shots there is
    no such count, so it is refused instead of running the recipe's placeholder epochs."""
    from dipclip.errors import DipclipError

    plan = api.train_config("clip-lora", recipe="fewshot", data=str(tree_with_val), dataset="imagefolder", shots=4,
                            method_options={"iterations_per_shot": 3})
    assert plan["train"]["epochs"] == 12  # 12 images, batch 32: one step an epoch, 3 x 4 iterations
    with pytest.raises(DipclipError, match="needs --shots K, or give --epochs"):
        api.train("clip-lora", model=str(tiny_config_path), pretrained="none", data=str(tree_with_val),
                  dataset="imagefolder", shots=None, out=tmp_path / "r", device="cpu", progress=False)
