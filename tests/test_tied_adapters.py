"""An adapter's parts stay tied together (issue 18, class 4): class-specific tensors are matched to classes by
name, the frozen tensors rebuilt from adapter_config.json are the ones it was trained with, and a mistyped
config field is one line naming the file and the field."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from cli_run import assert_refused, run

from dipclip import api
from dipclip.adapters import CONFIG_NAME, load_adapter, model_from_adapter, save_adapter
from dipclip.data.types import DatasetSplits, Datum
from dipclip.errors import DipclipError
from dipclip.methods import get_method

CLASSES = ["blue sky", "green leaf", "red apple"]  # the image tree's classes, in its label order






def _edit_config(folder: Path, change) -> None:
    path = folder / CONFIG_NAME
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))


@pytest.fixture
def csc_adapter(tmp_path, tiny_backbone) -> Path:
    """A class-specific CoOp adapter whose three class contexts are far apart, so a row given to the wrong
    class changes the numbers."""
    method = get_method("coop")
    model = method.build(tiny_backbone, CLASSES, method.prompt_config(class_specific=True))
    with torch.no_grad():
        model.context.ctx.copy_(torch.randn(model.context.ctx.shape, generator=torch.Generator().manual_seed(7)))
    return save_adapter(tmp_path / "csc", "coop", model)


def _permuted(splits: DatasetSplits, order: list[str]) -> DatasetSplits:
    """The same images with the classes listed (and labelled) in ``order``."""
    label = {name: i for i, name in enumerate(order)}
    test = [Datum(d.path, label[d.classname], d.classname) for d in splits.test]
    return DatasetSplits(name=splits.name, classnames=list(order), test=test, image_root=splits.image_root)


def test_class_specific_eval_is_the_same_in_another_class_order(csc_adapter, tiny_config_path, image_tree):
    splits = api.load_data(str(image_tree), "imagefolder")
    assert splits.classnames == CLASSES
    options = dict(model=str(tiny_config_path), pretrained="none", device="cpu", feature_cache=False)
    plain = api.evaluate(csc_adapter, splits=splits, **options)["results"]["test"]
    for order in (["red apple", "blue sky", "green leaf"], ["green leaf", "red apple", "blue sky"]):
        other = api.evaluate(csc_adapter, splits=_permuted(splits, order), **options)["results"]["test"]
        assert {k: other[k] for k in ("accuracy", "n", "correct")} == {k: plain[k] for k in ("accuracy", "n", "correct")}
        # per-class numbers follow the asked class order: the same per class name
        assert sorted(other["per_class"], key=lambda c: c["name"]) == sorted(plain["per_class"], key=lambda c: c["name"])


def test_class_specific_text_features_follow_the_class_names(csc_adapter, tiny_backbone):
    adapter = load_adapter(csc_adapter)
    full = model_from_adapter(adapter, tiny_backbone, CLASSES).text_features(merged=True)
    for order in (["red apple", "blue sky", "green leaf"], ["red_apple", "green_leaf"], ["green leaf"]):
        rows = [CLASSES.index(name.replace("_", " ")) for name in order]
        features = model_from_adapter(adapter, tiny_backbone, order).text_features(merged=True)
        assert torch.allclose(features, full[rows], atol=1e-6)


def test_class_specific_predict_is_the_same_in_another_class_order(csc_adapter, image_tree, tmp_path, capsys):
    images = sorted((image_tree / "test").glob("*/*.png"))[::2]

    def predictions(classes: str) -> dict:
        out = tmp_path / classes.replace(",", "-").replace(" ", "_")
        code, _, err = run(["predict", *images, "--adapter", csc_adapter, "--classes", classes, "--top-k", "3",
                            "--device", "cpu", "--out", out], capsys)
        assert code == 0, err
        payload = json.loads((out / "predictions.json").read_text())
        return {p["image"]: {t["class"]: t["probability"] for t in p["top"]} for p in payload["predictions"]}

    plain = predictions(",".join(CLASSES))
    for other in (predictions("red apple,blue sky,green leaf"), predictions("green leaf,red apple,blue sky")):
        assert other.keys() == plain.keys()
        for image, probabilities in plain.items():
            assert other[image] == pytest.approx(probabilities, abs=2e-6)


def test_a_class_the_class_specific_adapter_never_saw_is_refused(csc_adapter, image_tree, capsys):
    image = next((image_tree / "test" / "red_apple").iterdir())
    code, out, err = run(["predict", image, "--adapter", csc_adapter, "--classes", "red apple,green leaf,cat",
                          "--device", "cpu"], capsys)
    assert_refused(code, err, str(csc_adapter), "no prompt for the class(es) 'cat'", "--class-specific")
    assert out == ""


def test_a_class_specific_dept_adapter_matches_context_and_head_by_name(tmp_path, tiny_backbone, image_tree):
    """DePT's head rows were matched by name, its class-specific context by position: now both by name."""
    method = get_method("dept")
    model = method.build(tiny_backbone, CLASSES, method.prompt_config(class_specific=True))
    with torch.no_grad():
        model.context.ctx.copy_(torch.randn(model.context.ctx.shape, generator=torch.Generator().manual_seed(5)))
    adapter = save_adapter(tmp_path / "dept", "dept", model)
    images = [str(next((image_tree / "test" / name.replace(" ", "_")).iterdir())) for name in CLASSES]

    def probabilities(order: list[str]) -> list[dict]:
        payload = api.predict(images, classnames=order, adapter=adapter, top_k=3, backbone=tiny_backbone)
        return [{t["class"]: t["probability"] for t in p["top"]} for p in payload["predictions"]]

    plain = probabilities(CLASSES)
    other = probabilities(["red apple", "blue sky", "green leaf"])
    assert all(a == pytest.approx(b, abs=2e-6) for a, b in zip(other, plain, strict=True))


# ---- (b) frozen tensors rebuilt from the config -------------------------------------------------------------

@pytest.fixture
def dip_adapter(tmp_path, tiny_backbone) -> Path:
    method = get_method("dip")
    model = method.build(tiny_backbone, CLASSES, method.prompt_config())
    with torch.no_grad():
        model.context.B.add_(0.5)  # a learned update, so P0 matters to the classifier
    return save_adapter(tmp_path / "dip", "dip", model)


@pytest.mark.parametrize("field, value", [("init_text", "a photo of the"), ("dip_init", "zero-delta"),
                                          ("init_text", "an image of a")])
def test_an_edited_field_that_rebuilds_p0_is_refused(field, value, dip_adapter, image_tree, capsys):
    _edit_config(dip_adapter, lambda c: c["prompt"].update({field: value}))
    code, out, err = run(["eval", "--adapter", dip_adapter, "--data", image_tree, "--dataset", "imagefolder",
                          "--device", "cpu"], capsys)
    assert_refused(code, err, f"adapter {dip_adapter}: its frozen P0 of context rebuilt from adapter_config.json "
                              "differs from the one it was trained with", "use the adapter as saved")
    assert out == ""


def test_maple_fixed_words_are_part_of_the_digest(tmp_path, tiny_backbone):
    """MaPLe learns "a photo" and keeps "of a" fixed: editing only the fixed words changes no initial tensor."""
    method = get_method("maple")
    model = method.build(tiny_backbone, CLASSES, method.prompt_config())
    adapter = save_adapter(tmp_path / "maple", "maple", model)
    assert model_from_adapter(load_adapter(adapter), tiny_backbone).classnames == CLASSES
    _edit_config(adapter, lambda c: c["prompt"].update(init_text="a photo by the"))
    with pytest.raises(DipclipError, match="its frozen fixed words before the class name rebuilt from"):
        model_from_adapter(load_adapter(adapter), tiny_backbone)


def test_an_adapter_saved_before_the_digests_loads_unchecked(dip_adapter, tiny_config_path, image_tree):
    options = dict(model=str(tiny_config_path), pretrained="none", data=str(image_tree), dataset="imagefolder",
                   device="cpu", feature_cache=False)
    before = api.evaluate(dip_adapter, **options)["results"]
    _edit_config(dip_adapter, lambda c: c.pop("frozen_sha256"))
    assert api.evaluate(dip_adapter, **options)["results"] == before


@pytest.mark.parametrize("name, options", [
    ("coop", {}), ("dip", {"class_specific": True, "init_text": ""}), ("cocoop", {}), ("prograd", {}),
    ("maple", {}), ("promptsrc+dip", {"vision_dip": True}), ("dept", {}), ("kgcoop+dip", {}),
])
def test_every_method_records_digests_that_its_reload_matches(name, options, tmp_path, tiny_backbone):
    method = get_method(name)
    model = method.build(tiny_backbone, CLASSES, method.prompt_config(**options))
    if name == "promptsrc+dip":  # after GPA the DIP prompts are whole matrices: the reload folds them too
        model.load_aggregate(model.gpa_snapshot())
    adapter = save_adapter(tmp_path / "adapter", name, model)
    recorded = json.loads((adapter / CONFIG_NAME).read_text())["frozen_sha256"]
    assert "context" in recorded and "fixed_words" in recorded
    assert model_from_adapter(load_adapter(adapter), tiny_backbone, CLASSES).frozen_digests() == recorded


# ---- mistyped fields ---------------------------------------------------------------------------------------

MISTYPED = {
    "prompt.rank": (lambda c: c["prompt"].update(rank="one"), 'prompt.rank is "one", not a whole number'),
    "prompt.init_text": (lambda c: c["prompt"].update(init_text=5), "prompt.init_text is 5, not a string or null"),
    "prompt.class_specific": (lambda c: c["prompt"].update(class_specific="yes"),
                              'prompt.class_specific is "yes", not true or false'),
    "prompt.n_ctx": (lambda c: c["prompt"].update(n_ctx=4.5), "prompt.n_ctx is 4.5, not a whole number"),
    "method": (lambda c: c.update(method={}), "method is {}, not a string"),
    "backbone.text_width": (lambda c: c["backbone"].update(text_width="64"),
                            'backbone.text_width is "64", not a whole number'),
    "backbone.identity": (lambda c: c["backbone"].pop("identity"), "lacks backbone.identity"),
    "backbone.weights_file": (lambda c: c["backbone"].update(weights_file=3),
                              "backbone.weights_file is 3, not a string or null"),
    "classnames": (lambda c: c.update(classnames="abc"), 'classnames is "abc", not a list of strings'),
    "train_classnames": (lambda c: c.update(train_classnames=[1, 2]), "train_classnames is [1, 2], not a list"),
    "frozen_sha256": (lambda c: c.update(frozen_sha256=3), "frozen_sha256 is 3, not an object"),
}


@pytest.mark.parametrize("command", ["eval", "predict"])
@pytest.mark.parametrize("field", sorted(MISTYPED))
def test_a_mistyped_field_is_one_line_naming_the_file_and_the_field(field, command, dip_adapter, image_tree,
                                                                      tmp_path, capsys):
    adapter = tmp_path / "edited"
    shutil.copytree(dip_adapter, adapter)
    change, expected = MISTYPED[field]
    _edit_config(adapter, change)
    image = next((image_tree / "test" / "red_apple").iterdir())
    argv = (["eval", "--adapter", adapter, "--data", image_tree, "--dataset", "imagefolder", "--device", "cpu"]
            if command == "eval" else ["predict", image, "--adapter", adapter, "--device", "cpu"])
    code, out, err = run(argv, capsys)
    assert_refused(code, err, f"adapter config {adapter / CONFIG_NAME}", expected, "train it again")
    assert out == ""


def test_a_prompt_value_out_of_range_names_the_file(dip_adapter, tiny_backbone):
    _edit_config(dip_adapter, lambda c: c["prompt"].update(n_ctx=0))
    with pytest.raises(DipclipError, match=rf"adapter config {dip_adapter / CONFIG_NAME}: n_ctx must be >= 1"):
        model_from_adapter(load_adapter(dip_adapter), tiny_backbone, CLASSES)


def test_an_edited_class_position_is_refused(dip_adapter, image_tree, capsys):
    """The class position is no tensor, but it decides where the learned context sits in every prompt."""
    _edit_config(dip_adapter, lambda c: c["prompt"].update(class_position="front"))
    code, out, err = run(["eval", "--adapter", dip_adapter, "--data", image_tree, "--dataset", "imagefolder",
                          "--device", "cpu"], capsys)
    assert_refused(code, err, "its frozen token layout (class_position) rebuilt from adapter_config.json differs")
