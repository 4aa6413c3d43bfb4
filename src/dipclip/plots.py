"""Figures from stored JSON (never from logs): ID and accuracy per epoch, base/new/HM bars, shots curves.

Each ``figure_*`` function draws a matplotlib Figure (Agg backend, constrained layout) and returns it with the
plotted series; each ``plot_*`` function draws the same figure, writes it as a PNG and returns the series, so
tests and scripts can check what was drawn. Error bars are the seeds' population std (as summary.json gives
it; for HM and the average row, the std over seeds of the per-seed value, from the summary's ``runs``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from .engine.reproducibility import atomic_write_bytes
from .errors import DipclipError
from .files import read_json

PROTOCOLS = ("base2new", "fewshot", "xd", "dg")
SUMMARY_GIVE = "give the summary.json a protocol command wrote (runs/PROTOCOL/summary.json)"
SUMMARY_FIX = ("restore it, or rerun the protocol command with the same --out (finished runs are kept and "
               "summary.json is written again from them)")


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def shown(value) -> str:
    """A value as the JSON file spells it, cut short: what an error says it found."""
    import json

    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def described(key: str, holder: dict) -> str:
    """``'rows' is []`` or ``no 'rows'``: what an error line says it found under ``key``."""
    return f"{key!r} is {shown(holder[key])}" if key in holder else f"no {key!r}"


def summary_problem(summary: dict) -> str | None:
    """What a hand-edited summary.json lacks for its plot (keys, types, rows of the wrong shape), or None."""
    columns, rows = summary.get("columns"), summary.get("rows")
    if not (isinstance(columns, list) and columns and all(isinstance(c, str) and c for c in columns)):
        return (f"{described('columns', summary)} (expected a list of column names, e.g. "
                "[\"base\", \"new\", \"hm\"])")
    if not isinstance(rows, list) or not rows:
        return f"{described('rows', summary)} (expected a non-empty list of rows, one per method and dataset)"
    needed = list(columns) + (["test"] if summary["protocol"] == "fewshot" and "test" not in columns else [])
    shape = ("an object with dataset, method" + (", shots" if summary["protocol"] == "fewshot" else "")
             + " and " + ", ".join(needed) + " as {\"mean\": number or null, ...}")
    for index, row in enumerate(rows):
        where = f"rows[{index}]"
        if not isinstance(row, dict):
            return f"{where} is {shown(row)} (expected {shape})"
        for key in ("dataset", "method"):
            if not isinstance(row.get(key), str):
                return f"{where}: {described(key, row)} (expected {shape})"
        if summary["protocol"] == "fewshot" and not (_is_number(row.get("shots")) and row["shots"] > 0):
            return f"{where}: {described('shots', row)} (expected {shape})"
        for column in needed:
            cell = row.get(column)
            if not isinstance(cell, dict) or "mean" not in cell or not (cell["mean"] is None
                                                                          or _is_number(cell["mean"])):
                return f"{where}: {described(column, row)} (expected {shape})"
    return None


def load_summary(path: str | Path) -> dict:
    """A protocol's summary.json, checked for what the plots read: one line naming the file otherwise."""
    path = Path(path)
    if not os.path.lexists(path):
        raise DipclipError(f"{path} not found; {SUMMARY_GIVE}")
    summary = read_json(path, "protocol summary", SUMMARY_GIVE)
    if summary.get("protocol") not in PROTOCOLS:
        raise DipclipError(f"{path} is not a protocol summary.json (protocol {summary.get('protocol')!r}, expected "
                           f"one of {', '.join(PROTOCOLS)}); {SUMMARY_GIVE}")
    problem = summary_problem(summary)
    if problem is not None:
        raise DipclipError(f"{path}: {problem}; {SUMMARY_FIX}")
    return summary


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=150, bbox_inches="tight")
    _pyplot().close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


ZEROSHOT = "zeroshot"
LABELS = {"base": "base accuracy (%)", "new": "new accuracy (%)", "hm": "HM (%)", "test": "test accuracy (%)"}
TITLES = {"base": "Base classes", "new": "New classes", "hm": "Harmonic mean", "test": "Test accuracy"}


def _number(value) -> float | None:
    return float(value) if _is_number(value) and math.isfinite(value) else None


def _run_value(run: dict, column: str) -> float | None:
    """One seed's value of ``column`` (HM from its own base and new)."""
    if column == "hm":
        base, new = _number(run.get("base")), _number(run.get("new"))
        if base is None or new is None:
            return None
        return 0.0 if base + new == 0 else 2.0 * base * new / (base + new)
    return _number(run.get(column))


def _averaged_datasets(summary: dict) -> list[str]:
    """The datasets an 'average' row averages over (xd/dg: the targets, not the source)."""
    from .protocols.config import SOURCE

    datasets = [r["dataset"] for r in summary["rows"] if r["dataset"] != "average"]
    if summary["protocol"] in ("xd", "dg"):
        datasets = [d for d in datasets if d != SOURCE]
    return list(dict.fromkeys(datasets))


def _seed_values(summary: dict, row: dict, column: str) -> list[float]:
    """The per-seed values behind one cell, from the summary's ``runs`` (the average row: per seed, the mean
    over the datasets, for the seeds that have all of them; HM: per seed, HM of that seed's base and new)."""
    runs = [r for r in summary.get("runs") or [] if isinstance(r, dict) and r.get("method") == row["method"]
            and (row.get("shots") is None or r.get("shots") == row.get("shots"))]
    if row["dataset"] != "average":
        values = [_run_value(r, column) for r in runs if r.get("dataset") == row["dataset"]]
        return [v for v in values if v is not None]
    datasets = _averaged_datasets(summary)
    by_seed: dict = {}
    for run in runs:
        if run.get("dataset") in datasets:
            by_seed.setdefault(repr(run.get("seed")), {})[run["dataset"]] = run  # repr: any JSON value
    values = []
    for per_dataset in by_seed.values():
        if set(per_dataset) != set(datasets):
            continue
        if column == "hm":
            base = [_number(r.get("base")) for r in per_dataset.values()]
            new = [_number(r.get("new")) for r in per_dataset.values()]
            if None not in base and None not in new:
                values.append(_run_value({"base": sum(base) / len(base), "new": sum(new) / len(new)}, "hm"))
        else:
            cells = [_run_value(r, column) for r in per_dataset.values()]
            if None not in cells:
                values.append(sum(cells) / len(cells))
    return values


def cell_std(summary: dict, row: dict, column: str) -> float | None:
    """The error bar of one cell: its std in summary.json when it has one (2 seeds or more), else the
    population std over seeds of the per-seed values (HM, average rows); None with fewer than 2 seeds."""
    cell = row[column]
    std, count = cell.get("std"), cell.get("n")
    if _number(std) is not None and _is_number(count) and count >= 2:
        return float(std)
    values = _seed_values(summary, row, column)
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    return round(math.sqrt(sum((v - mean) ** 2 for v in values) / len(values)), 4)


def _seed_note(summary: dict, has_error_bars: bool) -> str:
    seeds = {repr(r.get("seed")) for r in summary.get("runs") or [] if isinstance(r, dict) and "seed" in r}
    if has_error_bars:
        return f"mean ± std over {len(seeds)} seeds" if seeds else "mean ± std over seeds"
    return "one seed: no error bars" if len(seeds) <= 1 else "no per-seed values stored: no error bars"


def _groups(summary: dict) -> tuple[list[str], list[str]]:
    """The datasets to draw, in table order ('average' only when it averages more than one dataset), and those
    left out because no method has a result for them (the figure names them instead of an empty group)."""
    datasets = list(dict.fromkeys(r["dataset"] for r in summary["rows"]))
    if "average" in datasets and len(_averaged_datasets(summary)) <= 1:
        datasets.remove("average")
    columns = summary["columns"] + (["test"] if summary["protocol"] == "fewshot" else [])
    empty = [d for d in datasets if not any(r["dataset"] == d and _number(r[c]["mean"]) is not None
                                            for r in summary["rows"] for c in columns if c in r)]
    return [d for d in datasets if d not in empty], empty


def _caption(summary: dict, has_error_bars: bool, empty: list[str]) -> str:
    note = _seed_note(summary, has_error_bars)
    return note + (f"; no results for {', '.join(empty)}" if empty else "")


def _y_range(lows: list[float], highs: list[float], headroom: float) -> tuple[float, float]:
    """A y-range that shows the differences: from a little below the lowest bar or error bar (not from 0
    unless the data is near it) to above the highest, with ``headroom`` (a fraction) for value labels."""
    low, high = min(lows), max(highs)
    span = max(high - low, 1.0, 0.02 * abs(high))
    bottom = low - 0.25 * span
    if bottom < 0.1 * span:  # data near zero: start at zero
        bottom = min(0.0, low)
    return bottom, high + headroom * span


def figure_base_new_bars(summary: dict):
    """The Figure and series of :func:`plot_base_new_bars`."""
    import numpy as np

    plt = _pyplot()
    rows = summary["rows"]
    datasets, empty = _groups(summary)
    if not datasets:
        raise DipclipError(f"nothing to plot: every mean in it is null; {SUMMARY_FIX}")
    methods = list(dict.fromkeys(r["method"] for r in rows))
    metrics = list(summary["columns"])
    side_by_side = len(datasets) <= 2
    bars = len(datasets) * len(methods)
    vertical_labels = bars > 8
    if side_by_side:
        fig, axes = plt.subplots(1, len(metrics), figsize=(max(3.0, 0.55 * bars + 1.2) * len(metrics), 3.6),
                                 squeeze=False, layout="constrained")
        axes = list(axes[0])
    else:
        fig, axes = plt.subplots(len(metrics), 1, figsize=(max(6.5, 0.42 * bars + 1.5), 3.0 * len(metrics)),
                                 squeeze=False, sharex=True, layout="constrained")
        axes = list(axes[:, 0])
    width = 0.8 / max(len(methods), 1)
    centres = np.arange(len(datasets))
    series: dict = {}
    any_error = False
    for axis, metric in zip(axes, metrics, strict=True):
        lows, highs = [], []
        for index, method in enumerate(methods):
            means, stds = [], []
            for dataset in datasets:
                match = [r for r in rows if r["method"] == method and r["dataset"] == dataset]
                mean = _number(match[0][metric]["mean"]) if match else None
                std = cell_std(summary, match[0], metric) if match and mean is not None else None
                means.append(float("nan") if mean is None else mean)
                stds.append(float("nan") if std is None else std)
                if mean is not None:
                    lows.append(mean - (std or 0.0))
                    highs.append(mean + (std or 0.0))
            has_error = any(math.isfinite(s) for s in stds)
            any_error = any_error or has_error
            container = axis.bar(centres + (index - (len(methods) - 1) / 2) * width, means, width=width,
                                 yerr=stds if has_error else None, capsize=3, label=method, color=f"C{index}",
                                 error_kw={"elinewidth": 1, "ecolor": "0.2"})
            axis.bar_label(container, labels=[f"{m:.2f}" if math.isfinite(m) else "" for m in means],
                           padding=3, fontsize=7, rotation=90 if vertical_labels else 0)
            series[f"{metric}/{method}"] = {d: m for d, m in zip(datasets, means, strict=True)}
            series[f"{metric}/{method}/std"] = {d: (s if math.isfinite(s) else None)
                                                for d, s in zip(datasets, stds, strict=True)}
        if lows:
            axis.set_ylim(*_y_range(lows, highs, 0.45 if vertical_labels else 0.25))
        axis.set_xticks(centres)
        axis.set_xticklabels(datasets, rotation=0 if len(datasets) <= 4 else 30, rotation_mode="anchor",
                             ha="center" if len(datasets) <= 4 else "right", fontsize=9)
        if datasets[-1] == "average" and len(datasets) > 1:  # the average set apart from the datasets
            axis.axvline(len(datasets) - 1.5, color="0.5", linestyle=":", linewidth=1)
        axis.set_ylabel(LABELS.get(metric, f"{metric} (%)"))
        axis.set_title(TITLES.get(metric, metric), fontsize=10)
        axis.grid(axis="y", alpha=0.3)
        axis.set_axisbelow(True)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(methods), 6), frameon=False)
    fig.suptitle(f"{summary['protocol']}: {' / '.join(TITLES.get(m, m).lower() for m in metrics)} "
                 f"({_caption(summary, any_error, empty)})", fontsize=11)
    return fig, series


def plot_base_new_bars(summary: dict, path: str | Path) -> dict:
    """Grouped bars per dataset (and the average, for more than one dataset), one bar per method, one panel per
    column (base/new/HM, or test): values printed on the bars, the seeds' std as error bars, y-ranges that show
    the differences, one legend below the panels."""
    fig, series = figure_base_new_bars(summary)
    _save(fig, path)
    return series


def figure_fewshot_curves(summary: dict):
    """The Figure and series of :func:`plot_fewshot_curves`."""
    plt = _pyplot()
    rows = summary["rows"]
    datasets, empty = _groups(summary)
    if not datasets:
        raise DipclipError(f"nothing to plot: every mean in it is null; {SUMMARY_FIX}")
    methods = list(dict.fromkeys(r["method"] for r in rows))
    shots = sorted({r["shots"] for r in rows})
    ncols = min(len(datasets), 4)
    nrows = math.ceil(len(datasets) / ncols)
    fig, grid = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 3.0 * nrows + 0.6), squeeze=False,
                             layout="constrained")
    series: dict = {}
    any_error = False
    for position, axis in enumerate(grid.flat):
        if position >= len(datasets):
            axis.remove()
            continue
        dataset = datasets[position]
        for index, method in enumerate(methods):
            mine = sorted((r for r in rows if r["dataset"] == dataset and r["method"] == method
                           and _number(r["test"]["mean"]) is not None), key=lambda r: r["shots"])
            if not mine:
                continue
            xs = [r["shots"] for r in mine]
            ys = [float(r["test"]["mean"]) for r in mine]
            stds = [cell_std(summary, r, "test") for r in mine]
            errors = [float("nan") if s is None else s for s in stds]
            any_error = any_error or any(s is not None for s in stds)
            series[f"{dataset}/{method}"] = list(zip(xs, ys, strict=True))
            series[f"{dataset}/{method}/std"] = stds
            if method == ZEROSHOT and max(ys) - min(ys) < 1e-9:
                # zero-shot does not depend on the shots: one line across the panel, drawn over the others
                axis.axhline(ys[0], color="black", linestyle="--", linewidth=1.3, zorder=5, label=method)
                if stds[0] is not None:
                    axis.axhspan(ys[0] - stds[0], ys[0] + stds[0], color="black", alpha=0.08, zorder=1)
                continue
            colour = "black" if method == ZEROSHOT else f"C{index}"
            axis.errorbar(xs, ys, yerr=errors if any(s is not None for s in stds) else None, marker="o",
                          markersize=4, capsize=3, color=colour, label=method,
                          linestyle="--" if method == ZEROSHOT else "-", zorder=5 if method == ZEROSHOT else 3)
        axis.set_xscale("log", base=2)
        axis.set_xticks(shots, [str(s) for s in shots])
        axis.xaxis.set_minor_locator(_null_locator())
        axis.set_xlim(shots[0] / 1.4, shots[-1] * 1.4)
        axis.set_title(dataset, fontsize=10)
        axis.set_xlabel("shots per class")
        if position % ncols == 0:
            axis.set_ylabel("test accuracy (%)")
        axis.grid(alpha=0.3)
    handles, labels = grid.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(methods), 6), frameon=False)
    fig.suptitle(f"few-shot: test accuracy vs shots per class ({_caption(summary, any_error, empty)})",
                 fontsize=11)
    return fig, series


def _null_locator():
    from matplotlib.ticker import NullLocator

    return NullLocator()


def plot_fewshot_curves(summary: dict, path: str | Path) -> dict:
    """Accuracy vs shots (1 2 4 8 16 on a log axis), one panel per dataset (and the average, for more than one
    dataset), one line per method with the seeds' std as error bars; zero-shot as a dashed line on top."""
    fig, series = figure_fewshot_curves(summary)
    _save(fig, path)
    return series


def figure_density_and_accuracy(title: str, epochs: Sequence[int], densities: dict[str, Sequence[float | None]],
                                accuracies: dict[str, Sequence[tuple[int, float]]], notes: Sequence[str] = ()):
    """The Figure and series of :func:`plot_density_and_accuracy`."""
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    fig, left = plt.subplots(figsize=(7, 4.2), layout="constrained")
    series: dict = {}
    for name, values in densities.items():
        points = [(e, v) for e, v in zip(epochs, values, strict=True) if v is not None]
        if points:
            series[name] = points
    accuracy_series = {f"{name} accuracy": list(points) for name, points in accuracies.items() if points}
    missing = []
    density_axis = accuracy_axis = None
    if series:
        density_axis = left
        accuracy_axis = left.twinx() if accuracy_series else None
    elif accuracy_series:
        accuracy_axis = left
        missing.append("no ID recorded")
    if not accuracy_series:
        missing.append("no accuracies recorded (train with --eval-every E)")
    if density_axis is not None:
        for index, (name, points) in enumerate(series.items()):
            density_axis.plot(*zip(*points, strict=True), marker=".", color=f"C{index}", label=name)
        density_axis.set_ylabel("information density ID$_k$")
    if accuracy_axis is not None:
        for index, (name, points) in enumerate(accuracy_series.items()):
            accuracy_axis.plot(*zip(*points, strict=True), linestyle="--", marker="o", markersize=4,
                               color=f"C{index + 3}", label=name)
        accuracy_axis.set_ylabel("accuracy (%)")
    if density_axis is None and accuracy_axis is None:
        left.set_axis_off()
        left.text(0.5, 0.5, "nothing recorded per epoch", ha="center", va="center", transform=left.transAxes)
    else:
        left.set_xlabel("epoch")
        left.xaxis.set_major_locator(MaxNLocator(integer=True))
        left.grid(alpha=0.3)
        handles, labels = [], []
        for axis in fig.axes:
            more = axis.get_legend_handles_labels()
            handles, labels = handles + more[0], labels + more[1]
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4), frameon=False)
    series.update(accuracy_series)
    fig.suptitle(title, fontsize=11)
    lines = [line for line in (*notes, *missing) if line]
    if lines:
        left.set_title("\n".join(lines), fontsize=8, loc="left")
    return fig, series


def plot_density_and_accuracy(title: str, epochs: Sequence[int], densities: dict[str, Sequence[float | None]],
                              accuracies: dict[str, Sequence[tuple[int, float]]], path: str | Path,
                              notes: Sequence[str] = ()) -> dict:
    """ID_k per epoch (left axis) and evaluation accuracies at the epochs they were measured (right axis; left
    alone when no ID was recorded), integer epoch ticks, one legend below the axes, ``notes`` (Spearman's rho)
    over the axes; an axis with no data is left out and the figure says so."""
    fig, series = figure_density_and_accuracy(title, epochs, densities, accuracies, notes)
    _save(fig, path)
    return series
