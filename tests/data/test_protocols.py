import json

import pytest

from dipclip.cli import main
from dipclip.protocols import ProtocolConfig, ProtocolRunner, harmonic_mean

PETS = ("abyssinian", "american bulldog", "beagle", "bengal")


def runner(protocol, root, out, backbone, **kwargs):
    config = ProtocolConfig(protocol=protocol, data=str(root), out=out, epochs=1, progress=False,
                            train_options={"batch_size": 4}, **kwargs)
    return ProtocolRunner(config, backbone=backbone, log=lambda line: None)


def test_base2new_end_to_end_with_hm_and_skip_and_resume(fx, tmp_path, tiny_backbone):
    fx.json_dataset(classes=PETS, sizes=(3, 2, 2))
    run = runner("base2new", fx.root, tmp_path / "runs", tiny_backbone, datasets=["oxford_pets"],
                 methods=["zeroshot", "coop", "dip"], seeds=[1, 2], shots=[2])
    summary = run.run()
    folder = tmp_path / "runs" / "base2new" / "oxford_pets" / "shots_2" / "dip" / "seed2"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert set(metrics["results"]) == {"base", "new"} and metrics["trainable_params"] == 4 + 64
    assert metrics["results"]["base"]["n"] == 4 and metrics["results"]["new"]["n"] == 4  # 2 classes x 2 test
    rows = {(r["method"], r["dataset"]): r for r in summary["rows"]}
    dip = rows[("dip", "oxford_pets")]
    per_seed = [json.loads((folder.parent / f"seed{s}" / "metrics.json").read_text())["results"] for s in (1, 2)]
    mean_base = sum(r["base"]["accuracy"] for r in per_seed) / 2
    mean_new = sum(r["new"]["accuracy"] for r in per_seed) / 2
    assert dip["base"]["mean"] == pytest.approx(mean_base) and dip["new"]["mean"] == pytest.approx(mean_new)
    assert dip["hm"]["mean"] == pytest.approx(harmonic_mean(mean_base, mean_new), abs=1e-3)
    average = rows[("dip", "average")]
    assert average["hm"]["mean"] == pytest.approx(harmonic_mean(average["base"]["mean"], average["new"]["mean"]),
                                                  abs=1e-3)
    assert rows[("zeroshot", "oxford_pets")]["trainable_params"] == 0
    for name in ("summary.md", "summary.csv", "summary.json"):
        assert (tmp_path / "runs" / "base2new" / name).stat().st_size > 0
    assert "| dip | oxford_pets | 2 |" in (tmp_path / "runs" / "base2new" / "summary.md").read_text()

    # finished runs are skipped; an interrupted one (checkpoint, no metrics) resumes to the same numbers
    before = json.loads((folder / "metrics.json").read_text())
    (folder / "metrics.json").unlink()
    logged = []
    run.log = logged.append
    run.run()
    assert sum("done already" in line for line in logged) == 5 and sum("running" in line for line in logged) == 1
    after = json.loads((folder / "metrics.json").read_text())
    assert after["results"] == before["results"] and after["history"] == before["history"]


def test_fewshot_cross_dataset_and_domain_generalisation(fx, tmp_path, tiny_backbone, wnids):
    fx.imagenet(wnids, per_class=(3, 2))
    fx.json_dataset(classes=PETS, sizes=(3, 2, 2))
    fx.wnid_folders("imagenet-adversarial", "imagenet-a", wnids, present=list(wnids)[:3])
    fx.imagenetv2(wnids)

    few = runner("fewshot", fx.root, tmp_path / "runs", tiny_backbone, datasets=["oxford_pets"],
                 methods=["coop"], seeds=[1], shots=[1, 2]).run()
    shots = {r["shots"]: r for r in few["rows"] if r["dataset"] == "oxford_pets"}
    assert set(shots) == {1, 2} and shots[2]["test"]["n"] == 1
    one_shot = json.loads((tmp_path / "runs/fewshot/oxford_pets/shots_1/coop/seed1/metrics.json").read_text())
    assert one_shot["num_train_images"] == 4  # 1 per class, all 4 classes

    xd = runner("xd", fx.root, tmp_path / "runs", tiny_backbone, datasets=["oxford_pets"], methods=["dip"],
                seeds=[1], shots=[2]).run()
    datasets = [r["dataset"] for r in xd["rows"]]
    assert datasets == ["imagenet", "oxford_pets", "average"]
    target = json.loads((tmp_path / "runs/xd/oxford_pets/shots_2/dip/seed1/metrics.json").read_text())
    assert target["results"]["test"]["n"] == 8 and target["num_classes"] == 4

    dg = runner("dg", fx.root, tmp_path / "runs", tiny_backbone, datasets=["imagenet_a", "imagenetv2"],
                methods=["dip"], seeds=[1], shots=[2]).run()
    a = json.loads((tmp_path / "runs/dg/imagenet_a/shots_2/dip/seed1/metrics.json").read_text())
    assert a["num_classes"] == 3  # ImageNet-A: a classifier over its present classes only
    assert {r["dataset"] for r in dg["rows"]} == {"imagenet", "imagenet_a", "imagenetv2", "average"}


def test_protocol_cli_and_bad_input(fx, tmp_path, tiny_config_path, capsys):
    fx.json_dataset(classes=PETS, sizes=(2, 1, 1))
    code = main(["base2new", "--data", str(fx.root), "--datasets", "oxford_pets", "--methods", "dip",
                 "--seeds", "1", "--epochs", "1", "--shots", "1", "--model", str(tiny_config_path), "--pretrained", "none",
                 "--out", str(tmp_path / "runs"), "--quiet"])
    assert code == 0 and "| dip | oxford_pets | 1 |" in capsys.readouterr().out
    assert main(["base2new", "--data", str(fx.root), "--datasets", "imagenet_r", "--methods", "dip"]) == 2
    assert "test-only" in capsys.readouterr().err
    assert main(["fewshot", "--data", str(fx.root), "--datasets", "oxford_pets", "--methods", "no-such-method"]) == 2
    assert "unknown method" in capsys.readouterr().err


def test_rerun_with_other_settings_is_refused_and_names_them(fx, tmp_path, tiny_backbone):
    from dipclip.errors import DipclipError

    fx.json_dataset(classes=PETS, sizes=(3, 2, 2))
    common = dict(datasets=["oxford_pets"], methods=["coop"], seeds=[1], shots=[2])
    runner("base2new", fx.root, tmp_path / "runs", tiny_backbone, **common).run()
    again = runner("base2new", fx.root, tmp_path / "runs", tiny_backbone, **common)
    assert again.run()["rows"]  # same settings: skipped, same table
    for change, named in ((dict(epochs=2), "train.epochs 1 -> 2"),):
        config = ProtocolConfig(protocol="base2new", data=str(fx.root), out=tmp_path / "runs", progress=False,
                                train_options={"batch_size": 4}, **(dict(epochs=1) | change), **common)
        with pytest.raises(DipclipError, match=named):
            ProtocolRunner(config, backbone=tiny_backbone, log=lambda line: None).run()
    changed_lr = ProtocolConfig(protocol="base2new", data=str(fx.root), out=tmp_path / "runs", progress=False,
                                epochs=1, train_options={"batch_size": 4, "lr": 0.01}, **common)
    with pytest.raises(DipclipError, match=r"optim.lr 0.002 -> 0.01.*another --out"):
        ProtocolRunner(changed_lr, backbone=tiny_backbone, log=lambda line: None).run()
    summary = json.loads((tmp_path / "runs" / "base2new" / "summary.json").read_text())
    assert summary["settings"]["coop"]["recipes"]["coop/base2new"]["overrides"] == {
        "train.epochs": 1, "train.batch_size": 4}


def test_damaged_metrics_file_is_named_and_rerun(fx, tmp_path, tiny_backbone):
    fx.json_dataset(classes=PETS, sizes=(3, 2, 2))
    common = dict(datasets=["oxford_pets"], methods=["coop"], seeds=[1], shots=[2])
    runner("base2new", fx.root, tmp_path / "runs", tiny_backbone, **common).run()
    folder = tmp_path / "runs" / "base2new" / "oxford_pets" / "shots_2" / "coop" / "seed1"
    good = json.loads((folder / "metrics.json").read_text())["results"]
    (folder / "metrics.json").write_text('{"results": ')
    (folder / "checkpoint.pt").unlink()
    lines = []
    config = ProtocolConfig(protocol="base2new", data=str(fx.root), out=tmp_path / "runs", epochs=1,
                            progress=False, train_options={"batch_size": 4}, **common)
    ProtocolRunner(config, backbone=tiny_backbone, log=lines.append).run()
    assert any("metrics.json is damaged" in line for line in lines)
    assert json.loads((folder / "metrics.json").read_text())["results"] == good
    assert (folder / "metrics.json.damaged").is_file()


def test_cli_refuses_a_changed_rerun_in_one_line(fx, tmp_path, tiny_config_path, capsys):
    fx.json_dataset(classes=PETS, sizes=(3, 2, 2))
    argv = ["base2new", "--data", str(fx.root), "--datasets", "oxford_pets", "--methods", "dip", "--seeds", "1",
            "--shots", "2", "--model", str(tiny_config_path), "--pretrained", "none", "--device", "cpu",
            "--batch-size", "4", "--out", str(tmp_path / "runs"), "--quiet"]
    assert main([*argv, "--epochs", "1"]) == 0
    capsys.readouterr()
    assert main([*argv, "--epochs", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("dipclip: error:") and "train.epochs 1 -> 2" in err[-1]


def test_cross_dataset_sources_train_at_each_recipes_shots_unless_told():
    """ProGrad's and KgCoOp's ImageNet sources train on 4 shots (their scripts' SHOTS=4), the others on 16;
    an explicit --shots applies to every method."""
    def source_shots(**kwargs):
        config = ProtocolConfig(protocol="xd", data="unused", datasets=["dtd"], seeds=[1],
                                methods=["zeroshot", "coop", "prograd", "kgcoop", "maple"], **kwargs)
        return {m: k for kind, _, k, m, _ in ProtocolRunner(config).jobs() if kind == "source"}

    assert source_shots() == {"zeroshot": 16, "coop": 16, "prograd": 4, "kgcoop": 4, "maple": 16}
    assert set(source_shots(shots=[2]).values()) == {2}
    few = ProtocolRunner(ProtocolConfig(protocol="fewshot", data="unused", datasets=["dtd"], seeds=[1],
                                        methods=["prograd"]))
    assert [k for _, _, k, _, _ in few.jobs()] == [1, 2, 4, 8, 16]
