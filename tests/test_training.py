import json

import pytest

from dipclip import api
from dipclip.engine.trainer import OptimConfig, learning_rate
from dipclip.errors import DipclipError

COMMON = dict(dataset="imagefolder", shots=4, epochs=3, batch_size=4, progress=False)


def reproducible_part(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "timing"}


def test_train_writes_metrics_and_adapter(tmp_path, tiny_config_path, image_tree):
    metrics = api.train("dip", model=str(tiny_config_path), data=str(image_tree), out=tmp_path / "run", **COMMON)
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert written == json.loads(json.dumps(metrics))
    assert written["method"] == "dip" and written["trainable_params"] == 4 + 64
    assert written["results"]["test"]["n"] == 12 and 0 <= written["results"]["test"]["accuracy"] <= 100
    assert [h["epoch"] for h in written["history"]] == [1, 2, 3]
    assert written["history"][0]["lr"] == pytest.approx(1e-5)  # constant warm-up epoch
    assert all(h["images"] == 12 for h in written["history"])  # 4 shots x 3 classes
    assert written["config"]["prompt"]["parameterization"] == "dip"
    assert written["num_classes"] == 3 and written["num_train_images"] == 12
    assert 0 < written["density"]["id_prompt"] <= 1
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()


def test_same_seed_gives_identical_metrics_and_other_seed_differs(tmp_path, tiny_config_path, image_tree):
    runs = [api.train("coop", model=str(tiny_config_path), data=str(image_tree), out=tmp_path / f"r{i}", seed=seed,
                      **COMMON) for i, seed in enumerate((7, 7, 8))]
    assert reproducible_part(runs[0]) == reproducible_part(runs[1]) | {"config": runs[0]["config"]}
    assert runs[0]["history"] == runs[1]["history"] and runs[0]["results"] == runs[1]["results"]
    assert runs[0]["history"] != runs[2]["history"]


def test_killed_run_resumes_to_the_same_metrics(tmp_path, tiny_config_path, image_tree, kill_after_first_epoch):
    kwargs = dict(model=str(tiny_config_path), data=str(image_tree), **COMMON)
    uninterrupted = api.train("dip", out=tmp_path / "full", **kwargs)
    kill_after_first_epoch("dip", tmp_path / "killed", **kwargs)
    assert not (tmp_path / "killed" / "metrics.json").exists()
    with pytest.raises(DipclipError, match="already holds a run.*--resume"):
        api.train("dip", out=tmp_path / "killed", **kwargs)
    resumed = api.train("dip", out=tmp_path / "killed", resume=True, **kwargs)
    assert resumed["history"] == uninterrupted["history"]
    assert resumed["results"] == uninterrupted["results"]
    with pytest.raises(DipclipError, match=r"other settings \(.*train.seed 1 -> 5"):
        api.train("dip", out=tmp_path / "killed", resume=True, **(kwargs | {"seed": 5}))


def test_adamw_and_schedule(tmp_path, tiny_config_path, image_tree):
    metrics = api.train("coop", model=str(tiny_config_path), data=str(image_tree), out=tmp_path / "adamw",
                        optimizer="adamw", lr=1e-3, **COMMON)
    assert metrics["config"]["optim"]["optimizer"] == "adamw"


# The lr of epochs 0..9 that Dassl's own build_lr_scheduler (cosine, constant warm-up 1 epoch at 1e-5,
# WARMUP_RECOUNT=True, MAX_EPOCH 10, LR 0.002) sets, stepped once per epoch (fidelity audit).
DASSL_LR_E10 = [1e-5, 2.0e-3, 1.95106e-3, 1.80902e-3, 1.58779e-3, 1.30902e-3, 1.0e-3, 6.9098e-4, 4.1221e-4,
                1.9098e-4]


def test_schedule_is_dassls():
    optim = OptimConfig(lr=0.002, warmup_epochs=1, warmup_lr=1e-5)
    assert [learning_rate(optim, e, 10) for e in range(10)] == pytest.approx(DASSL_LR_E10, rel=5e-5)  # the audit printed 5-6 digits


def test_warmup_sets_every_group_then_scales(tmp_path):
    from dipclip.engine.trainer import group_learning_rate

    optim = OptimConfig(lr=0.0035, warmup_epochs=1, warmup_lr=1e-5)
    assert group_learning_rate(optim, 0, 10, 6.5) == 1e-5  # DePT's new layers warm up at 1e-5 too
    assert group_learning_rate(optim, 1, 10, 6.5) == pytest.approx(0.0035 * 6.5)


def test_base_to_new_reports_both_halves(tmp_path, tiny_config_path, image_tree):
    metrics = api.train("dip", model=str(tiny_config_path), data=str(image_tree), out=tmp_path / "b2n",
                        subsample="base", **COMMON)
    assert set(metrics["results"]) == {"base", "new"}
    assert metrics["results"]["base"]["n"] == 8 and metrics["results"]["new"]["n"] == 4  # 2 base, 1 new class
    assert metrics["num_classes"] == 2


def test_zeroshot_ensemble(tmp_path, tiny_config_path, image_tree):
    single = api.zeroshot(model=str(tiny_config_path), data=str(image_tree), dataset="imagefolder",
                          out=tmp_path / "zs")
    ensemble = api.zeroshot(model=str(tiny_config_path), data=str(image_tree), dataset="imagefolder", ensemble=True)
    assert single["trainable_params"] == 0 and single["results"]["test"]["n"] == 12
    assert len(ensemble["config"]["templates"]) == 8
    assert (tmp_path / "zs" / "metrics.json").is_file()
