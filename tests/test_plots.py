"""The figures a researcher puts in a slide, drawn from stored JSON like the real ones (summary.json written by
the protocols' own ``build_summary``, metrics.json of a run): error bars from the seeds, values on the bars,
y-ranges that show the differences, one legend outside the data, integer ticks, rho and the run's name on the
analysis figure, no empty axes, no 'average' group for one dataset, file names from the runs."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
from matplotlib.container import BarContainer, ErrorbarContainer
from PIL import Image

from dipclip.analysis import analyze_run
from dipclip.cli import main
from dipclip.plots import (
    figure_base_new_bars,
    figure_density_and_accuracy,
    figure_fewshot_curves,
    plot_base_new_bars,
    plot_fewshot_curves,
)
from dipclip.protocols.config import SOURCE
from dipclip.protocols.summary import build_summary

METHODS = ("zeroshot", "coop", "dip")
# per method and dataset: base, new (or test) means; seeds add +-spread
ACCURACY = {"zeroshot": (72.4, 68.1), "coop": (80.2, 44.01), "dip": (79.6, 44.43)}


def make_summary(protocol: str, datasets, seeds=(1, 2, 3), shots=(16,), spread=0.6) -> dict:
    """A summary.json as the protocols write it, from per-seed metrics (``build_summary`` on fake runs)."""
    config = SimpleNamespace(protocol=protocol, methods=list(METHODS), datasets=list(datasets), seeds=list(seeds),
                             shots=list(shots))
    runs, metrics = [], {}
    sources = [SOURCE] if protocol in ("xd", "dg") else []
    for method in METHODS:
        for d_index, dataset in enumerate(sources + list(datasets)):
            for shot in shots:
                for s_index, seed in enumerate(seeds):
                    run = SimpleNamespace(kind="target", dataset=dataset, shots=shot, method=method, seed=seed)
                    base, new = ACCURACY[method]
                    offset = spread * (s_index - (len(seeds) - 1) / 2) + 3 * d_index
                    if protocol == "base2new":
                        results = {"base": base + offset, "new": new - offset / 2}
                    else:
                        gain = 0 if method == "zeroshot" else 4 * math.log2(shot)
                        results = {"test": new + gain + offset}
                    metrics[id(run)] = {"results": {k: {"accuracy": round(v, 4)} for k, v in results.items()},
                                        "trainable_params": 0 if method == "zeroshot" else 2048}
                    runs.append(run)
    summary = build_summary(config, runs, lambda run: metrics[id(run)], {})
    return json.loads(json.dumps(summary))  # as read back from summary.json


def error_bars(axis):
    return [c for c in axis.containers if isinstance(c, ErrorbarContainer)]


def bar_containers(axis):
    return [c for c in axis.containers if isinstance(c, BarContainer)]


def assert_png(path):
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 400 and image.height > 300


def test_base_new_bars_one_dataset_three_seeds(tmp_path):
    summary = make_summary("base2new", ["oxford_pets"])
    fig, series = figure_base_new_bars(summary)
    axes = fig.axes
    assert [a.get_ylabel() for a in axes] == ["base accuracy (%)", "new accuracy (%)", "HM (%)"]
    # one dataset: no 'average' group beside it
    for axis in axes:
        assert [t.get_text() for t in axis.get_xticklabels()] == ["oxford_pets"]
    assert set(series["hm/dip"]) == {"oxford_pets"}
    # error bars on every bar: the std of summary.json for base/new, the per-seed HM's std for HM
    row = next(r for r in summary["rows"] if r["method"] == "coop" and r["dataset"] == "oxford_pets")
    assert series["base/coop/std"]["oxford_pets"] == pytest.approx(row["base"]["std"])
    seeds = [r for r in summary["runs"] if r["method"] == "coop"]
    hms = [2 * r["base"] * r["new"] / (r["base"] + r["new"]) for r in seeds]
    assert series["hm/coop/std"]["oxford_pets"] == pytest.approx(float(np.std(hms)), abs=1e-4)
    for axis in axes:
        assert len(bar_containers(axis)) == 3
        for container in bar_containers(axis):
            assert container.errorbar is not None
            segments = container.errorbar.lines[2][0].get_segments()
            assert len(segments) == 1 and segments[0][1][1] - segments[0][0][1] > 0
        # the value printed on every bar
        texts = sorted(t.get_text() for t in axis.texts)
        assert len(texts) == 3 and all(len(t.split(".")[1]) == 2 for t in texts)
    hm_axis = axes[2]
    assert sorted(t.get_text() for t in hm_axis.texts) == sorted(
        f"{series['hm/' + m]['oxford_pets']:.2f}" for m in METHODS)
    # the HM axis does not start at 0: 44.x and 44.y can be told apart
    low, high = hm_axis.get_ylim()
    values = [series[f"hm/{m}"]["oxford_pets"] for m in METHODS]
    assert 0 < low < min(values) and high > max(values)
    # one legend, outside the panels
    assert len(fig.legends) == 1 and all(a.get_legend() is None for a in axes)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == list(METHODS)
    assert "3 seeds" in fig.get_suptitle()
    plot_base_new_bars(summary, tmp_path / "bars.png")
    assert_png(tmp_path / "bars.png")


def test_base_new_bars_several_datasets_average_has_error_bars():
    summary = make_summary("base2new", ["oxford_pets", "dtd", "eurosat"])
    fig, series = figure_base_new_bars(summary)
    assert len(fig.axes) == 3
    ticks = [t.get_text() for t in fig.axes[2].get_xticklabels()]
    assert ticks == ["oxford_pets", "dtd", "eurosat", "average"]
    # the average row stores no std: its error bar is the std over seeds of the per-seed average
    per_seed = {}
    for run in summary["runs"]:
        if run["method"] == "dip":
            per_seed.setdefault(run["seed"], []).append(run["base"])
    expected = float(np.std([np.mean(v) for v in per_seed.values()]))
    assert series["base/dip/std"]["average"] == pytest.approx(expected, abs=1e-4)
    assert len(fig.legends) == 1


def test_one_seed_has_no_error_bars_and_says_so():
    summary = make_summary("base2new", ["dtd"], seeds=(1,))
    fig, series = figure_base_new_bars(summary)
    assert all(c.errorbar is None for a in fig.axes for c in bar_containers(a))
    assert series["base/dip/std"] == {"dtd": None}
    assert "one seed: no error bars" in fig.get_suptitle()


def test_xd_test_bars_have_one_panel_and_no_empty_group(tmp_path, capsys):
    summary = make_summary("xd", ["dtd", "eurosat"], shots=(16,))
    fig, series = figure_base_new_bars(summary)
    assert [a.get_ylabel() for a in fig.axes] == ["test accuracy (%)"]
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert ticks == [SOURCE, "dtd", "eurosat", "average"]
    # the average is the targets' (dtd, eurosat), as summary.json's row
    row = next(r for r in summary["rows"] if r["method"] == "coop" and r["dataset"] == "average")
    assert series["test/coop"]["average"] == pytest.approx(row["test"]["mean"])
    # a dataset without any result is left out and named, not drawn as an empty group
    for row in summary["rows"]:
        if row["dataset"] == SOURCE:
            row["test"] = {"mean": None, "std": None, "n": 0}
    fig, series = figure_base_new_bars(summary)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["dtd", "eurosat", "average"]
    assert f"no results for {SOURCE}" in fig.get_suptitle()
    # nothing at all to draw: one line naming the file
    for row in summary["rows"]:
        row["test"] = {"mean": None, "std": None, "n": 0}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    assert main(["plot", str(tmp_path / "summary.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dipclip: error: {tmp_path / 'summary.json'}: nothing to plot") and err.count("\n") == 1
    assert not (tmp_path / "xd_bars.png").exists()


def test_fewshot_curves_integer_shots_error_bars_and_zero_shot_on_top(tmp_path):
    summary = make_summary("fewshot", ["oxford_pets", "dtd"], shots=(1, 2, 4, 8, 16))
    fig, series = figure_fewshot_curves(summary)
    assert [a.get_title() for a in fig.axes] == ["oxford_pets", "dtd", "average"]
    for axis in fig.axes:
        assert [t.get_text() for t in axis.get_xticklabels()] == ["1", "2", "4", "8", "16"]
        assert axis.get_xticklabels(minor=True) == []
        assert axis.get_xlabel() == "shots per class"
        bars = error_bars(axis)
        assert len(bars) == 2  # coop and dip, each with error bars
        assert all(b.has_yerr for b in bars)
        zero = [line for line in axis.get_lines() if line.get_label() == "zeroshot"]
        assert len(zero) == 1 and zero[0].get_zorder() > max(b.lines[0].get_zorder() for b in bars)
    # only the leftmost panel carries the y-label (none overlaps the panel beside it)
    assert [a.get_ylabel() for a in fig.axes] == ["test accuracy (%)", "", ""]
    row = next(r for r in summary["rows"] if r["method"] == "dip" and r["dataset"] == "dtd" and r["shots"] == 4)
    assert series["dtd/dip/std"][2] == pytest.approx(row["test"]["std"])
    error_segments = error_bars(fig.axes[1])[1].lines[2][0].get_segments()
    assert error_segments[2][1][1] - error_segments[2][0][1] == pytest.approx(2 * row["test"]["std"])
    assert len(fig.legends) == 1 and all(a.get_legend() is None for a in fig.axes)
    plot_fewshot_curves(summary, tmp_path / "curves.png")
    assert_png(tmp_path / "curves.png")


def write_run(folder, evals=True, epochs=10):
    folder.mkdir(parents=True)
    history = []
    for epoch in range(1, epochs + 1):
        record = {"epoch": epoch, "id_prompt": 0.3 + 0.02 * epoch, "id_update": 0.9 - 0.03 * epoch}
        if evals and epoch % 2 == 0:
            record["eval"] = {"base": 70 + epoch, "new": 60 + 0.5 * epoch - 0.05 * epoch ** 2}
        history.append(record)
    metrics = {"method": "dip", "config": {"dataset": "dtd"}, "density": {"k": 1}, "history": history}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def test_analysis_figure_has_rho_the_run_name_and_integer_epochs(tmp_path):
    run = write_run(tmp_path / "sweep" / "dtd-dip-seed1")
    report = analyze_run(run, out=tmp_path / "an", name="dtd-dip-seed1")
    assert report["png"] == str(tmp_path / "an" / "dtd-dip-seed1-analysis.png")
    assert_png(tmp_path / "an" / "dtd-dip-seed1-analysis.png")
    densities = {"ID(P)": report["id_prompt"], "ID(P - P_init)": report["id_update"]}
    from dipclip.analysis import rho_notes

    notes = rho_notes(report["spearman"])
    fig, series = figure_density_and_accuracy("dtd-dip-seed1: dip on dtd", report["epochs"], densities,
                                              report["accuracy"], notes)
    assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == "accuracy (%)"
    title = fig.axes[0].get_title(loc="left")
    rho = report["spearman"]["id_prompt~new"]["rho"]
    assert f"rho(ID(P)) = {rho:+.2f}" in title and "over 5 epochs" in title
    fig.canvas.draw()
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels() if t.get_text()]
    assert ticks and all(t.lstrip("−-").isdigit() for t in ticks)
    assert len(fig.legends) == 1 and all(a.get_legend() is None for a in fig.axes)
    assert set(series) == {"ID(P)", "ID(P - P_init)", "base accuracy", "new accuracy"}


def test_analysis_without_accuracies_has_no_empty_axis(tmp_path, capsys):
    run = write_run(tmp_path / "runs" / "pets-coop", evals=False)
    fig, series = figure_density_and_accuracy("x", list(range(1, 11)),
                                              {"ID(P)": [0.1 * e for e in range(1, 11)]}, {}, [])
    assert len(fig.axes) == 1 and fig.axes[0].get_ylabel() == "information density ID$_k$"
    assert "no accuracies recorded" in fig.axes[0].get_title(loc="left")
    # through the CLI, from another folder: the files are named after the run
    assert main(["analyze", str(run), "--out", str(tmp_path / "an")]) == 0
    assert "no evaluations recorded" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "an").iterdir()) == ["pets-coop-analysis.json",
                                                                   "pets-coop-analysis.png"]


def test_plot_command_writes_named_pngs(tmp_path, capsys):
    for protocol, shots in (("base2new", (16,)), ("fewshot", (1, 2, 4))):
        folder = tmp_path / "runs" / protocol
        folder.mkdir(parents=True)
        (folder / "summary.json").write_text(json.dumps(make_summary(protocol, ["dtd", "eurosat"], shots=shots)))
        assert main(["plot", str(folder / "summary.json")]) == 0
    assert_png(tmp_path / "runs" / "base2new" / "base2new_bars.png")
    assert_png(tmp_path / "runs" / "fewshot" / "fewshot_curves.png")
