"""Messages that name the right file and the right fix for the command that raised them (issue 18, classes 5
and 7 and the newcomer findings): hand-edited JSON, unwritable caches, ``pretrain``, ``recipes``, ``predict``,
``density``, ``plot``, warnings printed once, ``--quiet``, and analysis files named after their runs.
"""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import pytest
from cli_run import assert_refused, run


def warnings_in(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("dipclip: warning:")]


# ---- analyze: file names from the runs; hand-edited metrics.json ------------------------------------------

def write_run(folder: Path, method: str = "dip", **changes) -> Path:
    """A finished run's metrics.json with an --eval-every history, as `dipclip train` writes it."""
    history = [{"epoch": e, "loss": 1.0 / e, "train_accuracy": 50.0, "id_prompt": 0.5 + e / 100,
                "id_update": 0.6, "lr": 0.002, "images": 16, "eval": {"base": 40.0 + e, "new": 30.0 + e}}
               for e in (1, 2, 3)]
    metrics = {"method": method, "config": {"dataset": "dtd"}, "density": {"k": 1}, "history": history} | changes
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def test_runs_whose_paths_end_alike_get_one_file_each(tmp_path, capsys):
    tail = Path("base2new/dtd/shots_16/dip/seed1")
    first, second = write_run(tmp_path / "sweep-a" / tail), write_run(tmp_path / "sweep-b" / tail)
    code, out, err = run(["analyze", first, second, "--out", tmp_path / "an"], capsys)
    assert code == 0, err
    reports = sorted(p.name for p in (tmp_path / "an").glob("*-analysis.json"))
    assert len(reports) == 2 and len(list((tmp_path / "an").glob("*-analysis.png"))) == 2, reports
    assert reports == sorted(f"{s}-base2new-dtd-shots_16-dip-seed1-analysis.json" for s in ("sweep-a", "sweep-b"))
    assert {json.loads((tmp_path / "an" / r).read_text())["run"] for r in reports} == {str(first), str(second)}


def test_analysis_names_come_from_the_run_not_the_current_folder(tmp_path, monkeypatch, capsys):
    (tmp_path / "my-project").mkdir()
    monkeypatch.chdir(tmp_path / "my-project")
    write_run(Path("pets-coop"), method="coop")
    write_run(Path("pets-dip"))
    code, out, err = run(["analyze", "pets-coop", "pets-dip", "--out", "an"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in Path("an").iterdir()) == [
        "pets-coop-analysis.json", "pets-coop-analysis.png", "pets-dip-analysis.json", "pets-dip-analysis.png"]


def _history(change):
    def edit(metrics):
        change(metrics["history"])
    return edit


METRICS_EDITS = {
    "history a string": (lambda m: m.update(history="epochs"), "'history' is \"epochs\""),
    "a record a number": (_history(lambda h: h.__setitem__(1, 7)), "history[1] is 7"),
    "no epoch": (_history(lambda h: h[0].pop("epoch")), "history[0]: no 'epoch'"),
    "epoch a string": (_history(lambda h: h[2].update(epoch="3")), "history[2]: 'epoch' is \"3\""),
    "id a string": (_history(lambda h: h[0].update(id_prompt="high")), "history[0]: 'id_prompt' is \"high\""),
    "eval a list": (_history(lambda h: h[1].update(eval=[40, 30])), "history[1]: 'eval' is [40, 30]"),
    "accuracy a string": (_history(lambda h: h[1].update(eval={"base": "40%"})), "'eval' is {\"base\": \"40%\"}"),
    "config a list": (lambda m: m.update(config=["dtd"]), "'config' is [\"dtd\"]"),
}


@pytest.mark.parametrize("case", sorted(METRICS_EDITS))
def test_analyze_of_a_hand_edited_metrics_file_names_it_and_what_is_wrong(case, tmp_path, capsys):
    folder = write_run(tmp_path / "run")
    metrics = json.loads((folder / "metrics.json").read_text())
    edit, expected = METRICS_EDITS[case]
    edit(metrics)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    code, _, err = run(["analyze", folder, "--out", tmp_path / "an"], capsys)
    line = assert_refused(code, err, f"{folder / 'metrics.json'}: ", expected, "(expected ", "train the run again")
    assert "unexpected" not in line
    assert not (tmp_path / "an").exists() or not any((tmp_path / "an").iterdir())


# ---- plot: hand-edited summary.json, a folder ---------------------------------------------------------------

def summary(protocol: str = "base2new") -> dict:
    columns = ["base", "new", "hm"] if protocol == "base2new" else ["test"]
    rows = [{"method": m, "dataset": d, "shots": 16, "seeds": [1]} | {c: {"mean": 50.0, "std": 0.0} for c in columns}
            for m in ("coop", "dip") for d in ("dtd", "average")]
    return {"protocol": protocol, "columns": columns, "rows": rows}


SUMMARY_EDITS = {
    "no rows": ("base2new", lambda s: s.pop("rows"), "no 'rows' (expected a non-empty list"),
    "rows empty": ("base2new", lambda s: s.update(rows=[]), "'rows' is [] (expected a non-empty list"),
    "columns a string": ("base2new", lambda s: s.update(columns="base"), "'columns' is \"base\" (expected a list"),
    "a row a list": ("base2new", lambda s: s["rows"].__setitem__(2, ["dip", "dtd"]), "rows[2] is [\"dip\", \"dtd\"]"),
    "no dataset": ("base2new", lambda s: s["rows"][1].pop("dataset"), "rows[1]: no 'dataset'"),
    "no mean": ("base2new", lambda s: s["rows"][0]["new"].pop("mean"), "rows[0]: 'new' is {\"std\": 0.0}"),
    "mean a string": ("base2new", lambda s: s["rows"][3]["hm"].update(mean="50"), "rows[3]: 'hm' is"),
    "no column": ("xd", lambda s: s["rows"][0].pop("test"), "rows[0]: no 'test'"),
    "shots a string": ("fewshot", lambda s: s["rows"][0].update(shots="16"), "rows[0]: 'shots' is \"16\""),
}


@pytest.mark.parametrize("case", sorted(SUMMARY_EDITS))
def test_plot_of_a_hand_edited_summary_names_it_and_what_is_wrong(case, tmp_path, capsys):
    protocol, edit, expected = SUMMARY_EDITS[case]
    content = summary(protocol)
    edit(content)
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(content))
    code, _, err = run(["plot", path, "--out", tmp_path / "fig"], capsys)
    line = assert_refused(code, err, f"{path}: ", expected, "rerun the protocol command")
    assert "unexpected" not in line and "(expected " in line


def test_plot_takes_the_protocol_folder_and_names_a_folder_without_a_summary(tmp_path, capsys):
    (tmp_path / "base2new").mkdir()
    (tmp_path / "base2new" / "summary.json").write_text(json.dumps(summary()))
    code, out, err = run(["plot", tmp_path / "base2new"], capsys)
    assert code == 0, err
    assert (tmp_path / "base2new" / "base2new_bars.png").is_file()
    code, _, err = run(["plot", tmp_path], capsys)
    line = assert_refused(code, err, f"{tmp_path} is a folder without a summary.json", "runs/PROTOCOL/summary.json")
    assert "not found" not in line


# ---- recipes show: unknown or miscased dataset keys -----------------------------------------------------

@pytest.mark.parametrize("given,meant", [("ImageNet", "imagenet"), ("pets", "oxford_pets"),
                                         ("imagenett", "imagenet"), ("EuroSAT", "eurosat")])
def test_recipes_show_refuses_a_dataset_key_it_does_not_know(given, meant, capsys):
    code, out, err = run(["recipes", "show", "coop", "--protocol", "base2new", "--dataset", given], capsys)
    line = assert_refused(code, err, f"unknown dataset key {given!r}", f"did you mean {meant!r}?", "oxford_pets, ")
    assert out == "" and "--dataset" in line
    code, out, err = run(["recipes", "show", "coop", "--protocol", "base2new", "--dataset", meant], capsys)
    assert code == 0 and json.loads(out)["name"] == "coop/base2new", err


# ---- predict, density: the fix of the command that raised it --------------------------------------------

def test_predict_on_a_non_image_names_a_fix_predict_has(tmp_path, capsys):
    path = tmp_path / "notes.png"
    path.write_text("not an image")
    code, _, err = run(["predict", path, "--classes", "a,b", "--pretrained", "dipclip-tiny"], capsys)
    line = assert_refused(code, err, str(path), "not an image format Pillow knows", "give image files")
    assert "--skip-bad-images" not in line and "split file" not in line
    assert "weights:" not in err  # checked before the model was loaded


def test_predict_on_a_pattern_that_matched_nothing_says_so(tmp_path, capsys):
    pattern = str(tmp_path / "*.jpg")
    code, _, err = run(["predict", pattern, "--classes", "a,b", "--pretrained", "dipclip-tiny"], capsys)
    line = assert_refused(code, err, f"no file matches {pattern}", "check the pattern")
    assert "split file" not in line and "doctor" not in line


def test_density_of_a_run_folder_points_at_its_adapter(tmp_path, capsys):
    (tmp_path / "run" / "adapter").mkdir(parents=True)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (tmp_path / "run" / "adapter" / name).write_text("{}")
    for command in (["density", tmp_path / "run"], ["export", tmp_path / "run", "--out", tmp_path / "x"]):
        code, _, err = run(command, capsys)
        assert_refused(code, err, "is a run folder", f"give its adapter: {tmp_path / 'run' / 'adapter'}")


# ---- warnings once; --quiet -------------------------------------------------------------------------------

def fresh_tiny():
    from dipclip.backbones.loading import load_backbone

    return load_backbone(None, "dipclip-tiny", device="cpu", announce=False)


def test_promptsrc_warns_once_about_the_template_words_the_model_lacks(capsys):
    from dipclip.methods.promptsrc import frozen_text_features

    frozen_text_features(fresh_tiny(), ["bird", "cat"])
    found = warnings_in(capsys.readouterr().err)
    assert len(found) == 1 and "'sculpture'" in found[0] and " more (in class names" in found[0], found


def test_a_template_ensemble_warns_once(capsys):
    from dipclip.methods.zeroshot import zeroshot_text_features

    zeroshot_text_features(fresh_tiny(), ["bird"], ["a quokka photo of a {}.", "a narwhal photo of a {}."])
    found = warnings_in(capsys.readouterr().err)
    assert len(found) == 1 and "'quokka', 'narwhal'" in found[0], found


def test_quiet_silences_the_epoch_lines_and_the_default_keeps_them(tiny_config_path, image_tree, tmp_path, capsys):
    base = ["train", "--method", "coop", "--model", tiny_config_path, "--pretrained", "none", "--data", image_tree,
            "--dataset", "imagefolder", "--epochs", "2", "--batch-size", "4", "--shots", "2"]
    code, out, err = run([*base, "--out", tmp_path / "loud"], capsys)
    assert code == 0 and "epoch 1/2" in err and "epoch 2/2" in err, err
    code, out, err = run([*base, "--out", tmp_path / "quiet", "--quiet"], capsys)
    assert code == 0 and "epoch " not in err.replace("per epoch", ""), err
    assert "test: accuracy" in err  # the result is still printed
    history = json.loads((tmp_path / "quiet" / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]


# ---- an unwritable cache: one warning naming DIPCLIP_CACHE_DIR, and the run goes on -------------------------

def _train_argv(tiny_config_path, image_tree, out):
    return ["train", "--method", "coop", "--model", tiny_config_path, "--pretrained", "none", "--data", image_tree,
            "--dataset", "imagefolder", "--epochs", "1", "--batch-size", "4", "--shots", "2", "--views", "2",
            "--out", out]


def _feature_cache_warnings(err: str) -> list[str]:
    return [w for w in warnings_in(err) if "feature cache" in w]


def test_a_cache_folder_that_cannot_be_created_runs_uncached_with_one_warning(tiny_config_path, image_tree, tmp_path,
                                                                               monkeypatch, capsys):
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("DIPCLIP_CACHE_DIR", str(tmp_path / "a-file" / "cache"))
    code, out, err = run(_train_argv(tiny_config_path, image_tree, tmp_path / "run"), capsys)
    assert code == 0, err
    found = _feature_cache_warnings(err)
    assert len(found) == 1, err  # the test split and two views: one warning
    assert "DIPCLIP_CACHE_DIR" in found[0] and "--no-feature-cache" in found[0] and "--out" not in found[0]
    monkeypatch.setenv("DIPCLIP_CACHE_DIR", str(tmp_path / "writable"))
    code, again, err = run([*_train_argv(tiny_config_path, image_tree, tmp_path / "cached")], capsys)
    assert code == 0 and not _feature_cache_warnings(err)
    results = [json.loads((tmp_path / name / "metrics.json").read_text())["results"] for name in ("run", "cached")]
    assert results[0] == results[1]  # uncached changes no number


def test_a_read_only_cache_runs_uncached_with_one_warning(tiny_config_path, image_tree, tmp_path, monkeypatch,
                                                          capsys):
    def read_only(path, data):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr("dipclip.engine.features.atomic_write_bytes", read_only)
    code, out, err = run(_train_argv(tiny_config_path, image_tree, tmp_path / "run"), capsys)
    assert code == 0, err
    found = _feature_cache_warnings(err)
    assert len(found) == 1 and "Read-only file system" in found[0] and "DIPCLIP_CACHE_DIR" in found[0], err
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()


# ---- pretrain: one line ---------------------------------------------------------------------------------------

def test_pretrain_flag_errors_are_one_line(capsys):
    code, out, err = run(["pretrain", "--out", "o", "--minutes", "0"], capsys)
    assert_refused(code, err, "argument --minutes: must be a number > 0", "dipclip pretrain --help")
    assert err.count("\n") == 1 and "usage:" not in err


def test_pretrain_missing_sources_are_one_line(tmp_path):
    """Through ``python -m dipclip.pretrain`` (its own boundary): exit 2, one line, every source named."""
    missing = tmp_path / "nothing"
    done = subprocess.run([sys.executable, "-m", "dipclip.pretrain", "--out", str(tmp_path / "o"), "--work",
                           str(tmp_path / "w"), "--openclipart-dir", str(missing), "--emoji-dir", str(missing),
                           "--fashion-dir", str(missing), "--no-openmoji"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    line = done.stderr.strip()
    assert line.startswith("dipclip: error: pretraining sources missing (4): Open Clip Art not found at "), line
    assert "apt-get install openclipart-png" in line and "pass --fetch-emoji" in line


# ---- the boundary names the command of an unexpected error ------------------------------------------------------

def test_an_unexpected_error_names_its_command(monkeypatch, capsys):
    def boom(args):
        raise KeyError("rows")

    monkeypatch.setattr("dipclip.cli.analysis.cmd_plot", boom)
    monkeypatch.delenv("DIPCLIP_DEBUG", raising=False)
    code, _, err = run(["plot", "summary.json"], capsys)
    assert_refused(code, err, "`dipclip plot` stopped on an unexpected KeyError: 'rows'; rerun with --debug")
