import json

import pytest
from PIL import Image

from dipclip.analysis import spearman_rho
from dipclip.cli import main
from dipclip.engine.protocols import ProtocolConfig, ProtocolRunner
from dipclip.plots import plot_base_new_bars, plot_fewshot_curves


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
    assert set(series) == {f"{m}/{k}" for m in ("base", "new", "hm") for k in ("zeroshot", "coop", "dip")}
    assert set(series["hm/dip"]) == {"imagefolder", "average"}


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
