"""Issue 18, classes 5 and 6: no command writes over another command's results, and inputs that would give a
wrong number or a late raw error (a float epoch count, a str for a list, a 70-bit seed, a template with two
slots, class names equal to the tokenizer) are refused in one line before anything is loaded.

API cases pass a model path that does not exist: reaching the backbone would give another error, so each
refusal is shown to come first.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from cli_run import assert_refused, run

from dipclip import api
from dipclip.errors import DipclipError


def digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (lock files aside) with the SHA-256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".dipclip.lock"}


# ----------------------------------------------------------------------------------------------------
# Class 5: results destroyed


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_config_path, image_tree):
    """A finished training run (CoOp, 1 epoch, tiny random CLIP): metrics.json with a history, adapter/,
    checkpoint.pt."""
    root = tmp_path_factory.mktemp("refusals")
    api.train("coop", model=str(tiny_config_path), pretrained="none", data=str(image_tree), dataset="imagefolder",
              shots=1, epochs=1, batch_size=3, progress=False, device="cpu", out=root / "run", feature_cache=False)
    return root / "run"


@pytest.fixture
def run_copy(trained, tmp_path) -> Path:
    """A copy of the training run, so that a test that is wrongly allowed to write cannot spoil the others."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


def _data(image_tree) -> list:
    return ["--data", image_tree, "--dataset", "imagefolder"]


def _backbone(tiny_config_path) -> list:
    return ["--model", tiny_config_path, "--pretrained", "none"]


def test_eval_into_a_training_runs_folder_is_refused_and_its_history_kept(run_copy, image_tree, capsys):
    before = digest(run_copy)
    assert "history" in json.loads((run_copy / "metrics.json").read_text())
    code, _, err = run(["eval", "--adapter", run_copy / "adapter", *_data(image_tree), "--out", run_copy], capsys)
    assert_refused(code, err, f"{run_copy} is a training run's folder", "give another --out")
    assert "weights:" not in err  # refused before the backbone was built
    assert digest(run_copy) == before


def test_zeroshot_into_a_training_runs_folder_is_refused(run_copy, image_tree, tiny_config_path, capsys):
    before = digest(run_copy)
    code, _, err = run(["zeroshot", *_backbone(tiny_config_path), *_data(image_tree), "--out", run_copy], capsys)
    assert_refused(code, err, "is a training run's folder", "`dipclip zeroshot` would write over")
    assert "weights:" not in err
    assert digest(run_copy) == before


def test_a_folder_with_only_a_checkpoint_is_a_training_run_too(run_copy, image_tree, tiny_config_path, capsys):
    (run_copy / "metrics.json").unlink()
    shutil.rmtree(run_copy / "adapter")  # killed in epoch 2: only the checkpoint; --resume would finish it
    code, _, err = run(["zeroshot", *_backbone(tiny_config_path), *_data(image_tree), "--out", run_copy], capsys)
    assert_refused(code, err, "(checkpoint.pt)")
    assert not (run_copy / "metrics.json").exists()


def test_an_evaluation_replaces_its_own_metrics_but_not_another_evaluations(trained, image_tree, tmp_path, capsys):
    out = tmp_path / "ev"
    adapter = ["--adapter", trained / "adapter"]
    assert run(["eval", *adapter, *_data(image_tree), "--out", out], capsys)[0] == 0
    first = json.loads((out / "metrics.json").read_text())
    (out / "metrics.json").write_text(json.dumps(first | {"results": {"test": "stale"}}))
    assert run(["eval", *adapter, *_data(image_tree), "--out", out], capsys)[0] == 0  # the same evaluation
    assert json.loads((out / "metrics.json").read_text())["results"] == first["results"]
    before = digest(out)
    code, _, err = run(["eval", *adapter, *_data(image_tree), "--split", "train", "--out", out], capsys)
    assert_refused(code, err, f"{out / 'metrics.json'} holds the results of another `dipclip eval`",
                   "give another --out, or delete")
    assert digest(out) == before


def test_zeroshot_and_eval_do_not_write_over_each_other(trained, image_tree, tiny_config_path, tmp_path, capsys):
    zs, ev = tmp_path / "zs", tmp_path / "ev"
    assert run(["zeroshot", *_backbone(tiny_config_path), *_data(image_tree), "--out", zs], capsys)[0] == 0
    assert run(["eval", "--adapter", trained / "adapter", *_data(image_tree), "--out", ev], capsys)[0] == 0
    kept = digest(zs), digest(ev)
    code, _, err = run(["eval", "--adapter", trained / "adapter", *_data(image_tree), "--out", zs], capsys)
    assert_refused(code, err, "holds the results of another `dipclip zeroshot`")
    code, _, err = run(["zeroshot", *_backbone(tiny_config_path), *_data(image_tree), "--out", ev], capsys)
    assert_refused(code, err, "holds the results of another `dipclip eval`")
    code, _, err = run(["zeroshot", *_backbone(tiny_config_path), *_data(image_tree), "--template",
                        "art of a {}.", "--out", zs], capsys)  # another question, same command
    assert_refused(code, err, "another `dipclip zeroshot`")
    assert (digest(zs), digest(ev)) == kept
    assert run(["zeroshot", *_backbone(tiny_config_path), *_data(image_tree), "--out", zs], capsys)[0] == 0


def test_train_into_an_evaluations_folder_is_refused_before_the_model_loads(trained, image_tree, tmp_path):
    out = tmp_path / "ev"
    api.evaluate(trained / "adapter", data=str(image_tree), dataset="imagefolder", out=out)
    before = digest(out)
    with pytest.raises(DipclipError, match=r"metrics.json holds the results of `dipclip eval`, which `dipclip "
                                           r"train` would write over; give another --out"):
        api.train("coop", model=str(tmp_path / "no-such-model.json"), data=str(image_tree), dataset="imagefolder",
                  shots=1, epochs=1, out=out, progress=False)
    assert digest(out) == before


def test_train_into_a_finished_run_without_resume_is_refused_before_the_model_loads(run_copy, image_tree, tmp_path):
    before = digest(run_copy)
    with pytest.raises(DipclipError, match=r"already holds a run \(checkpoint.pt\); pass --resume"):
        api.train("coop", model=str(tmp_path / "no-such-model.json"), data=str(image_tree), dataset="imagefolder",
                  shots=1, epochs=1, out=run_copy, progress=False)
    (run_copy / "checkpoint.pt").unlink()  # a finished run without its checkpoint: --resume cannot continue it
    with pytest.raises(DipclipError, match="holds the results of `dipclip train`"):
        api.train("coop", model=str(tmp_path / "no-such-model.json"), data=str(image_tree), dataset="imagefolder",
                  shots=1, epochs=1, out=run_copy, resume=True, progress=False)
    assert digest(run_copy) == {k: v for k, v in before.items() if k != "checkpoint.pt"}


def test_predict_density_and_export_replace_only_their_own_output(trained, image_tree, tmp_path, capsys):
    images = sorted((image_tree / "test" / "red_apple").iterdir())[:2]
    adapter = trained / "adapter"
    out = tmp_path / "out"
    assert run(["predict", images[0], "--adapter", adapter, "--out", out], capsys)[0] == 0
    assert run(["predict", images[0], "--adapter", adapter, "--out", out], capsys)[0] == 0  # the same images
    before = digest(out)
    code, _, err = run(["predict", images[1], "--adapter", adapter, "--out", out], capsys)
    assert_refused(code, err, "predictions.json holds `dipclip predict`'s output for other images")
    assert digest(out) == before

    other = Path(shutil.copytree(adapter, tmp_path / "other-adapter"))
    for command in ("density", "export"):
        assert run([command, adapter, "--out", out], capsys)[0] == 0
        assert run([command, adapter, "--out", out], capsys)[0] == 0
        before = digest(out)
        code, _, err = run([command, other, "--out", out], capsys)
        assert_refused(code, err, f"`dipclip {command}`'s output for other adapter", "give another --out")
        assert digest(out) == before

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "classifier.safetensors").write_bytes(b"someone else's")
    code, _, err = run(["export", adapter, "--out", foreign], capsys)
    assert_refused(code, err, "classifier.safetensors holds a file dipclip did not write or cannot read")
    assert (foreign / "classifier.safetensors").read_bytes() == b"someone else's"


def test_an_unreadable_metrics_file_is_not_written_over(image_tree, tiny_config_path, tmp_path, capsys):
    out = tmp_path / "zs"
    out.mkdir()
    (out / "metrics.json").write_text("my notes, not JSON")
    code, _, err = run(["zeroshot", *_backbone(tiny_config_path), *_data(image_tree), "--out", out], capsys)
    assert_refused(code, err, "holds a metrics.json dipclip cannot read")
    assert (out / "metrics.json").read_text() == "my notes, not JSON"


# ----------------------------------------------------------------------------------------------------
# Class 6: the API checks its arguments before loading anything

NO_MODEL = "/no/such/model.json"
TRAIN = dict(model=NO_MODEL, pretrained="none", data="/no/such/data", dataset="imagefolder", progress=False)

API_CASES = {
    "epochs=2.5": (lambda out: api.train("coop", epochs=2.5, out=out, **TRAIN),
                   "epochs must be a whole number (an int), got 2.5 (float)"),
    "epochs=2.0": (lambda out: api.train("coop", epochs=2.0, out=out, **TRAIN), "pass e.g. epochs=2"),
    "epochs=True": (lambda out: api.train("coop", epochs=True, out=out, **TRAIN), "got True (bool)"),
    "shots as str": (lambda out: api.train("coop", shots="16", out=out, **TRAIN), "shots must be a whole number"),
    "batch_size=0": (lambda out: api.train("coop", batch_size=0, out=out, **TRAIN), "batch_size must be >= 1"),
    "seed 2**70": (lambda out: api.train("coop", seed=2**70, out=out, **TRAIN), "seed must be a whole number from 0"),
    "seed -1": (lambda out: api.train("coop", seed=-1, out=out, **TRAIN), "got -1; pass e.g. seed=1"),
    "seed None": (lambda out: api.train("coop", seed=None, out=out, **TRAIN), "seed cannot be None"),
    "lr as str": (lambda out: api.train("coop", lr="0.01", out=out, **TRAIN), "lr must be a number, got '0.01'"),
    "lambda_do nan": (lambda out: api.train("dip", lambda_do=float("nan"), out=out, **TRAIN),
                      "lambda_do must be a finite number"),
    "random_init='no'": (lambda out: api.train("coop", random_init="no", out=out, **TRAIN),
                         "random_init must be True or False, got 'no'"),
    "resume=1": (lambda out: api.train("coop", resume=1, out=out, **TRAIN), "resume must be True or False"),
    "subsample": (lambda out: api.train("coop", subsample="half", out=out, **TRAIN),
                  "subsample must be one of all, base, new"),
    "method_options as str": (lambda out: api.train("kgcoop", method_options={"kg_weight": "8"}, out=out, **TRAIN),
                              "method_options['kg_weight'] must be a number"),
    "classnames='bag'": (lambda out: api.predict(["a.png"], classnames="bag", model=NO_MODEL, pretrained="none",
                                                 out=out),
                         "classnames must be a list of strings, got the str 'bag'"),
    "classnames Cat, cat": (lambda out: api.predict(["a.png"], classnames=["Cat", "cat"], model=NO_MODEL,
                                                    pretrained="none", out=out),
                            "classnames names classes 'Cat' and 'cat' that CLIP's tokenizer reads as the same"),
    "classnames with an empty name": (lambda out: api.export("/no/adapter", classnames=["a", " "], out=out),
                                      "classnames names class 1 ' ', which is empty to CLIP's tokenizer"),
    "images='a.png'": (lambda out: api.predict("a.png", classnames=["a", "b"], model=NO_MODEL, pretrained="none",
                                               out=out),
                       "images must be a list of paths, got the single path 'a.png'"),
    "template without a slot": (lambda out: api.predict(["a.png"], classnames=["a", "b"], template="a photo",
                                                        model=NO_MODEL, pretrained="none", out=out),
                                "template 'a photo' has no {}"),
    "templates as str": (lambda out: api.zeroshot(templates="a photo of a {}.", model=NO_MODEL, out=out),
                         "templates must be a list of strings"),
    "a template with two slots": (lambda out: api.zeroshot(templates=["a {} of a {}"], model=NO_MODEL, out=out),
                                  "templates[0] 'a {} of a {}' has 2 slots"),
    "a template with a named slot": (lambda out: api.zeroshot(templates=["a {name}"], model=NO_MODEL, out=out),
                                     "uses a named or formatted slot"),
    "a template with a lone brace": (lambda out: api.zeroshot(templates=["a {} }"], model=NO_MODEL, out=out),
                                     "has an unmatched brace"),
    "split='dev'": (lambda out: api.zeroshot(split="dev", model=NO_MODEL, out=out),
                    "split must be one of train, val, test, got 'dev'"),
    "adapter=None": (lambda out: api.evaluate(None, out=out), "adapter cannot be None"),
    "k=1.5": (lambda out: api.density("/no/adapter", k=1.5, out=out), "k must be a whole number"),
    "top_k=0": (lambda out: api.predict(["a.png"], classnames=["a", "b"], top_k=0, out=out), "top_k must be >= 1"),
    "dry run epochs=2.5": (lambda out: api.train_config("coop", epochs=2.5), "epochs must be a whole number"),
    "plan n_ctx=2.0": (lambda out: api.plan_training("coop", prompt_overrides={"n_ctx": 2.0}),
                       "n_ctx must be a whole number (an int), got 2.0"),
    "plan workers=1.0": (lambda out: api.plan_training("coop", train_options={"workers": 1.0}),
                         "workers must be a whole number"),
}


@pytest.mark.parametrize("case", list(API_CASES), ids=list(API_CASES))
def test_the_api_refuses_a_wrong_argument_before_loading_anything(case, tmp_path):
    call, expected = API_CASES[case]
    with pytest.raises(DipclipError) as refused:
        call(tmp_path / "out")
    message = str(refused.value)
    assert expected in message and "\n" not in message, message
    assert not (tmp_path / "out").exists()


def test_a_path_object_is_accepted_and_recorded_as_text(tiny_config_path, image_tree, tmp_path):
    metrics = api.zeroshot(model=tiny_config_path, pretrained="none", data=image_tree, dataset="imagefolder",
                           out=tmp_path / "zs", feature_cache=False)
    written = json.loads((tmp_path / "zs" / "metrics.json").read_text())
    assert written["config"]["data"] == str(image_tree) == metrics["config"]["data"]
    assert written["config"]["model"] == str(tiny_config_path)


# ----------------------------------------------------------------------------------------------------
# Class 6 at the command line


@pytest.mark.parametrize("argv,expected", [
    (["train", "--seed", str(2**70)], "--seed: must be from 0 to 4294967295"),
    (["train", "--seed", "-1"], "--seed: must be from 0 to 4294967295"),
    (["data", "split", "--dataset", "demo", "--shots", "1", "--seed", "-3"], "--seed: must be from 0"),
    (["data", "make-split", "--data", "x", "--seed", str(2**64)], "--seed: must be from 0"),
    (["demo", "--seeds", "1", "-2"], "--seeds: must be from 0"),
    (["fewshot", "--data", "x", "--seeds", str(2**33)], "--seeds: must be from 0"),
    (["zeroshot", "--template", "a {} of a {}", "--dataset", "demo"], "--template: the template 'a {} of a {}' has 2"),
    (["zeroshot", "--template", "a photo", "--dataset", "demo"], "has no {} where the class name goes"),
    (["predict", "a.png", "--classes", "a,b", "--template", "{}{}"], "--template: the template '{}{}' has 2 slots"),
    (["predict", "a.png", "--classes", "a,a,b"], "--classes: the list names several classes 'a'"),
    (["predict", "a.png", "--classes", "a,,b"], "--classes: the list names class 1 '', which is empty"),
    (["predict", "a.png", "--classes", "Dog,dog"], "names classes 'Dog' and 'dog' that CLIP's tokenizer reads as"),
    (["export", "x", "--classes", "ice cream,ICE  CREAM"], "CLIP's tokenizer reads as the same text 'ice cream'"),
    (["export", "x", "--classes", "café,cafe\u0301"], "reads as the same text"),
])
def test_cli_refuses_before_anything_runs(argv, expected, capsys):
    code, _, err = run(argv, capsys)
    assert_refused(code, err, expected)


def test_eval_refuses_a_dataset_whose_class_names_the_tokenizer_reads_alike(trained, image_tree, tmp_path, capsys):
    root = Path(shutil.copytree(image_tree, tmp_path / "images"))
    for split in ("train", "test"):  # 'Blue Sky' and 'blue sky': one text to CLIP's tokenizer
        (root / split / "red_apple").rename(root / split / "Blue_Sky")
    code, _, err = run(["eval", "--adapter", trained / "adapter", "--data", root, "--dataset", "imagefolder"], capsys)
    assert_refused(code, err, "names classes 'Blue Sky' and 'blue sky' that CLIP's tokenizer reads as the same")


# ----------------------------------------------------------------------------------------------------
# What "the same to the tokenizer" means


TRICKY = ["cat", "Cat", " CAT ", "c a t", "ｃａｔ", "café", "cafe\u0301", "a-b", "a - b", "cat.", "cat .", "&amp;", "&",
          "ﬁsh", "fish", "٣", "3", "x\u00a0y", "x y", "red_apple", "red apple", "it's", "it ' s", "&lt;b&gt;", "<b>",
          "Straße", "strasse", "İstanbul", "istanbul", "\u200bcat", "naïve", "naive"]


def test_tokenizer_text_is_equal_exactly_when_clips_token_ids_are():
    from open_clip.tokenizer import SimpleTokenizer

    from dipclip.argcheck import tokenizer_text

    tokenizer = SimpleTokenizer()
    ids = {name: tuple(tokenizer.encode(name.replace("_", " ").strip())) for name in TRICKY}
    for a in TRICKY:
        for b in TRICKY:
            assert (tokenizer_text(a) == tokenizer_text(b)) == (ids[a] == ids[b]), (a, b)
    assert tokenizer_text("Cat") == tokenizer_text("ｃａｔ") and tokenizer_text("a-b") == tokenizer_text("a - b")
