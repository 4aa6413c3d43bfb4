import json
from pathlib import Path

import pytest
from PIL import Image

from dipclip.analysis import spearman_rho
from dipclip.cli import main
from dipclip.plots import plot_base_new_bars, plot_fewshot_curves
from dipclip.protocols import ProtocolConfig, ProtocolRunner


def test_spearman_rho_known_values():
    assert spearman_rho([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman_rho([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks x: 1..5, y = [5, 6, 7, 8, 7] -> ranks [1, 2, 3.5, 5, 3.5]; Pearson of the ranks
    assert spearman_rho([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(0.8207826816681233)
    assert spearman_rho([1, 2], [1, 2]) is None
    assert spearman_rho([1, 1, 1], [1, 2, 3]) is None


def assert_png(path, min_bytes=2000):
    assert path.is_file() and path.stat().st_size > min_bytes
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 200 and image.height > 150


@pytest.fixture(scope="module")
def summaries(tmp_path_factory, image_tree, tiny_backbone):
    out = tmp_path_factory.mktemp("protocols")
    result = {}
    for protocol, shots in (("base2new", [2]), ("fewshot", [1, 2])):
        config = ProtocolConfig(protocol=protocol, data=str(image_tree), datasets=["imagefolder"],
                                methods=["zeroshot", "coop", "dip"], seeds=[1], shots=shots, out=out, epochs=1,
                                progress=False, train_options={"batch_size": 4})
        result[protocol] = ProtocolRunner(config, backbone=tiny_backbone, log=lambda line: None).run()
    return out, result


def test_base_new_bars_from_a_real_sweep(summaries, tmp_path):
    _, result = summaries
    series = plot_base_new_bars(result["base2new"], tmp_path / "bars.png")
    assert_png(tmp_path / "bars.png")
    assert set(series) == {f"{m}/{k}{s}" for m in ("base", "new", "hm") for k in ("zeroshot", "coop", "dip")
                           for s in ("", "/std")}
    assert set(series["hm/dip"]) == {"imagefolder"}  # one dataset: no 'average' group repeating it
    assert series["hm/dip/std"] == {"imagefolder": None}  # one seed: no error bar


def test_fewshot_curves_and_plot_command(summaries, tmp_path, capsys):
    out, result = summaries
    series = plot_fewshot_curves(result["fewshot"], tmp_path / "curves.png")
    assert_png(tmp_path / "curves.png")
    assert [shots for shots, _ in series["imagefolder/dip"]] == [1, 2]
    assert main(["plot", str(out / "fewshot" / "summary.json"), "--out", str(tmp_path / "cli")]) == 0
    assert_png(tmp_path / "cli" / "fewshot_curves.png")
    assert main(["plot", str(out / "base2new" / "summary.json"), "--out", str(tmp_path / "cli")]) == 0
    assert_png(tmp_path / "cli" / "base2new_bars.png")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"rows": []}))
    assert main(["plot", str(bad)]) == 2
    assert "not a protocol summary.json" in capsys.readouterr().err


def test_eval_every_and_analyze_on_a_real_run(tmp_path, tiny_config_path, image_tree, capsys):
    from dipclip import api

    metrics = api.train("dip", model=str(tiny_config_path), pretrained="none", data=str(image_tree), dataset="imagefolder", shots=4,
                        epochs=4, batch_size=4, progress=False, subsample="base", eval_every=1, out=tmp_path / "run",
                        lr=0.05)
    evals = [h["eval"] for h in metrics["history"]]
    assert len(evals) == 4 and all(set(e) == {"base", "new"} for e in evals)
    assert evals[-1] == {k: v["accuracy"] for k, v in metrics["results"].items()}
    plain = api.train("dip", model=str(tiny_config_path), pretrained="none", data=str(image_tree), dataset="imagefolder", shots=4,
                      epochs=4, batch_size=4, progress=False, subsample="base", out=tmp_path / "plain", lr=0.05)
    assert [{k: v for k, v in h.items() if k != "eval"} for h in metrics["history"]] == plain["history"]

    assert main(["analyze", str(tmp_path / "run"), "--out", str(tmp_path / "analysis")]) == 0
    assert "rho(id_prompt~new)" in capsys.readouterr().out
    report = json.loads(next((tmp_path / "analysis").glob("*-analysis.json")).read_text())
    assert report["epochs"] == [1, 2, 3, 4] and len(report["accuracy"]["new"]) == 4
    assert set(report["spearman"]) == {"id_prompt~base", "id_update~base", "id_prompt~new", "id_update~new"}
    assert_png(next((tmp_path / "analysis").glob("*-analysis.png")))
    assert main(["analyze", str(tmp_path / "nothing")]) == 2


def test_demo_quick_on_the_shipped_model(tmp_path, capsys):
    from dipclip.demo import run_demo

    result = run_demo(tmp_path / "demo", quick=True, lr=0.01, device="cpu", progress=False)
    out = capsys.readouterr().out
    assert "| method | trainable params | base | new | HM | ID_1(P) |" in out
    assert "lr 0.01," in result["table"].splitlines()[0]
    for method in ("coop", "dip"):  # --lr reaches every trained run, and its metrics say so
        metrics = json.loads(next((tmp_path / "demo").rglob(f"{method}/seed1/metrics.json")).read_text())
        assert metrics["config"]["optim"]["lr"] == 0.01
    methods = [row["method"] for row in result["rows"]]
    assert methods == ["zeroshot", "coop", "dip"]
    params = {row["method"]: row["trainable_params"] for row in result["rows"]}
    assert params == {"zeroshot": 0, "coop": 4 * 128, "dip": 4 + 128}
    for row in result["rows"]:
        assert 0 <= row["base"]["mean"] <= 100 and 0 <= row["new"]["mean"] <= 100
    assert (tmp_path / "demo" / "demo.md").read_text().strip() == result["table"]
    for plot in result["plots"]:
        assert_png(Path(plot))
