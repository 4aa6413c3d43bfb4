"""Recipes: the authors' published values, resolved per protocol, dataset and shots, and overridden by flags."""

import json

import pytest

from dipclip import api
from dipclip.cli import main
from dipclip.errors import DipclipError
from dipclip.methods import METHODS
from dipclip.recipes import RECIPE_PROTOCOLS, recipe_methods, resolve_recipe


def test_every_method_has_a_recipe_for_every_protocol_with_a_source():
    assert set(recipe_methods()) == set(METHODS)
    for method in recipe_methods():
        for protocol in RECIPE_PROTOCOLS:
            recipe = resolve_recipe(method, protocol)
            assert recipe.source["repository"] and len(recipe.source["commit"]) == 7 and recipe.files, method
            assert recipe.get("train.epochs") >= 1 and recipe.get("train.batch_size") >= 1, (method, protocol)
            assert recipe.get("optim.lr") > 0 and recipe.get("optim.warmup_lr") == 1e-5


@pytest.mark.parametrize("method, protocol, dataset, shots, expected", [
    # (values of the official config files named in each recipe)
    ("coop", "base2new", "dtd", 16, {"train.epochs": 200, "train.batch_size": 32, "prompt.n_ctx": 4,
                                     "prompt.init_text": "a photo of a"}),
    ("coop", "base2new", "imagenet", 16, {"train.epochs": 50}),
    ("coop", "fewshot", "dtd", 1, {"train.epochs": 50, "prompt.n_ctx": 16, "prompt.init_text": None}),
    ("coop", "fewshot", "dtd", 4, {"train.epochs": 100}),
    ("coop", "fewshot", "imagenet", 16, {"train.epochs": 50}),
    ("cocoop", "xd", "imagenet", 16, {"train.epochs": 10, "train.batch_size": 1, "optim.lr": 0.002}),
    ("kgcoop", "base2new", "dtd", 16, {"train.epochs": 100, "train.batch_size": 128, "method.kg_weight": 8.0}),
    ("prograd", "fewshot", "dtd", 8, {"train.epochs": 200, "prompt.n_ctx": 16, "method.prograd_lambda": 0.8}),
    ("promptsrc", "fewshot", "caltech101", 4, {"method.gpa_mean": 30.0, "method.gpa_std": 30.0}),
    ("promptsrc", "base2new", "dtd", 16, {"method.gpa_mean": 15.0, "method.gpa_std": 1.0}),
    ("prograd", "fewshot", "caltech101", 2, {"train.epochs": 100}),
    ("maple", "base2new", "dtd", 16, {"train.epochs": 5, "train.batch_size": 4, "optim.lr": 0.0035,
                                      "prompt.n_ctx": 2, "prompt.prompt_depth": 9}),
    ("maple", "xd", "imagenet", 16, {"train.epochs": 2, "optim.lr": 0.0026, "prompt.prompt_depth": 3}),
    ("maple", "dg", "imagenet", 16, {"train.epochs": 2, "prompt.prompt_depth": 3}),
    ("promptsrc", "base2new", "dtd", 16, {"train.epochs": 20, "train.batch_size": 4, "optim.lr": 0.0025,
                                          "prompt.prompt_depth": 9}),
    ("promptsrc", "fewshot", "dtd", 4, {"train.epochs": 50}),
    ("promptsrc", "xd", "imagenet", 16, {"train.epochs": 20, "prompt.prompt_depth": 3}),
    ("dept", "base2new", "dtd", 16, {"train.epochs": 10, "train.batch_size": 4, "optim.lr": 0.0035,
                                     "prompt.n_ctx": 16, "prompt.init_text": None}),
    # ProGrad on ImageNet: rn50_ep50 (README: base-to-new CFG and LOADEP; eval.sh loads epoch 50)
    ("prograd", "base2new", "imagenet", 16, {"train.epochs": 50}),
    ("prograd", "fewshot", "imagenet", 1, {"train.epochs": 50}),
    ("prograd", "fewshot", "imagenet", 16, {"train.epochs": 50, "method.prograd_lambda": 1.0}),
    ("prograd", "xd", "imagenet", 4, {"train.epochs": 50, "train.batch_size": 32, "prompt.n_ctx": 16}),
    ("kgcoop", "xd", "imagenet", 4, {"train.epochs": 100, "train.batch_size": 128, "method.kg_weight": 8.0}),
])
def test_published_values(method, protocol, dataset, shots, expected):
    recipe = resolve_recipe(method, protocol, dataset, shots)
    assert {key: recipe.get(key, "missing") for key in expected} == expected


def test_recipe_shots_are_the_authors_source_shots():
    """ProGrad's and KgCoOp's cross-dataset / domain-generalisation source trains on 4 shots (ProGrad's
    eval.sh and README; KgCoOp's xd_train.sh); every other method's script on 16. Few-shot sweeps its K list
    and base-to-new keeps the protocol's 16: no recipe fixes them."""
    from dipclip.recipes import recipe_shots

    for method in recipe_methods():
        expected = 4 if method in ("prograd", "kgcoop") else 16
        assert recipe_shots(method, "xd") == recipe_shots(method, "dg") == expected, method
        assert resolve_recipe(method, "dg").shots == expected
        assert recipe_shots(method, "fewshot") is None and recipe_shots(method, "base2new") is None
    assert recipe_shots("prograd+dip", "xd") == 4 and recipe_shots("zeroshot", "xd") is None
    with pytest.raises(DipclipError, match="unknown recipe"):
        recipe_shots("coop", "b2n")


@pytest.mark.parametrize("shots", [0, -4, 2.5, "4", True])
def test_a_recipe_with_bad_shots_is_refused(shots):
    from dipclip.recipes import _check

    raw = {"protocols": {p: {} for p in RECIPE_PROTOCOLS}}
    raw["protocols"]["xd"]["shots"] = shots
    with pytest.raises(DipclipError, match="shots must be an integer >= 1"):
        _check(raw, "broken")


def test_dip_variants_read_their_base_methods_recipe():
    assert resolve_recipe("kgcoop+dip").get("train.batch_size") == 128
    assert resolve_recipe("maple+dip", "xd").get("optim.lr") == 0.0026


def test_unknown_recipe_is_refused():
    with pytest.raises(DipclipError, match="unknown recipe 'b2n'"):
        resolve_recipe("coop", "b2n")
    with pytest.raises(DipclipError, match="no recipe for method"):
        resolve_recipe("lora")


def test_plan_applies_recipe_then_overrides_and_records_them():
    plan = api.plan_training("maple", recipe="xd", dataset="imagenet", shots=16, lr=0.001,
                             prompt_overrides={"prompt_depth": 2})
    assert plan.optim.lr == 0.001 and plan.train.epochs == 2 and plan.prompt.prompt_depth == 2
    assert plan.train.batch_size == 4 and plan.prompt.n_ctx == 2
    assert plan.overrides == {"optim.lr": 0.001, "prompt.prompt_depth": 2}
    random = api.plan_training("coop", random_init=True, prompt_overrides={"n_ctx": 8})
    assert random.prompt.init_text is None and random.prompt.n_ctx == 8
    assert random.overrides == {"prompt.n_ctx": 8, "prompt.init_text": None}
    follows = api.plan_training("coop", prompt_overrides={"init_text": "a photo of the big"})  # n_ctx follows the init text
    assert follows.prompt.n_ctx == 5
    weighted = api.plan_training("kgcoop", method_options={"kg_weight": 2.0})
    assert weighted.prompt.kg_weight == 2.0 and weighted.overrides == {"method.kg_weight": 2.0}
    with pytest.raises(DipclipError, match="unknown method option"):
        api.plan_training("kgcoop", method_options={"gpa": 2.0})
    with pytest.raises(DipclipError, match="kg_weight must be a finite number"):
        api.plan_training("kgcoop", method_options={"kg_weight": float("nan")})


def test_method_settings_come_from_the_recipe_per_protocol_and_dataset():
    src = api.plan_training("promptsrc", recipe="fewshot", dataset="dtd", shots=4).prompt
    assert (src.gpa_mean, src.gpa_std, src.prompt_depth) == (45.0, 5.0, 9)
    src = api.plan_training("promptsrc", recipe="xd", dataset="imagenet").prompt
    assert (src.gpa_mean, src.gpa_std, src.prompt_depth) == (6.0, 10.0, 3)
    prograd = api.plan_training("prograd", recipe="fewshot", dataset="oxford_flowers", shots=16).prompt
    assert prograd.prograd_lambda == 0.8 and prograd.n_ctx == 16
    assert prograd.template == "a type of flower, a photo of a {}." and prograd.init_text == "a type of flower, a photo of a"
    assert api.plan_training("prograd", recipe="fewshot", dataset="oxford_flowers", shots=4).prompt.prograd_lambda == 1.0
    kg = api.plan_training("kgcoop", dataset="dtd").prompt
    assert kg.kg_weight == 8.0 and kg.template == "a photo of a {}, a type of texture."


def test_dry_run_prints_the_config_that_training_records(tmp_path, tiny_config_path, image_tree, capsys):
    argv = ["train", "--method", "coop", "--model", str(tiny_config_path), "--pretrained", "none",
            "--data", str(image_tree), "--dataset", "imagefolder", "--shots", "2", "--epochs", "1",
            "--batch-size", "4", "--device", "cpu", "--quiet", "--out", str(tmp_path / "run")]
    assert main([*argv, "--dry-run"]) == 0
    planned = json.loads(capsys.readouterr().out)
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written
    assert planned["recipe"]["name"] == "coop/base2new"
    assert planned["recipe"]["overrides"] == {"train.epochs": 1, "train.batch_size": 4}
    assert planned["train"]["epochs"] == 1 and planned["optim"]["lr"] == 0.002 and planned["prompt"]["n_ctx"] == 4
    assert main(argv) == 0
    recorded = json.loads((tmp_path / "run" / "metrics.json").read_text())["config"]
    assert recorded == planned
    adapter = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert adapter["train_config"]["recipe"]["name"] == "coop/base2new"


def test_recipes_command_lists_and_shows(capsys):
    assert main(["recipes"]) == 0
    listing = capsys.readouterr().out
    assert "maple      xd             2     4  0.0026" in listing
    assert main(["recipes", "show", "promptsrc", "--protocol", "fewshot", "--dataset", "dtd"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["name"] == "promptsrc/fewshot" and shown["values"]["train"]["epochs"] == 50
    assert main(["recipes", "show", "prograd", "--protocol", "xd"]) == 0
    assert json.loads(capsys.readouterr().out)["shots"] == 4  # its ImageNet source script: SHOTS=4
    assert main(["recipes", "show", "nope"]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value", [("--lr", "inf"), ("--lr", "-1"), ("--lr", "0"), ("--lr", "nan"),
                                         ("--prograd-lambda", "-0.5"), ("--method-option", "kg_weight"),
                                         ("--recipe", "b2n")])
def test_bad_override_flags_are_one_line_errors(flag, value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--dataset", "demo", flag, value, "--dry-run"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dipclip: error:") and "\n" not in err
