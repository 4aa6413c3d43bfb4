"""Figures from stored JSON (never from logs): ID and accuracy per epoch, base/new/HM bars, shots curves.

Each function writes a PNG and returns the plotted series, so tests and scripts can check what was drawn.
"""

from __future__ import annotations

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
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def plot_density_and_accuracy(title: str, epochs: Sequence[int], densities: dict[str, Sequence[float | None]],
                              accuracies: dict[str, Sequence[tuple[int, float]]], path: str | Path) -> dict:
    """ID_k per epoch (left axis) and evaluation accuracies at the epochs they were measured (right axis)."""
    plt = _pyplot()
    fig, left = plt.subplots(figsize=(7, 4))
    series = {}
    for name, values in densities.items():
        points = [(e, v) for e, v in zip(epochs, values, strict=True) if v is not None]
        if points:
            left.plot(*zip(*points, strict=True), marker=".", label=name)
            series[name] = points
    left.set_xlabel("epoch")
    left.set_ylabel("information density")
    right = left.twinx()
    for index, (name, points) in enumerate(accuracies.items()):
        if points:
            right.plot(*zip(*points, strict=True), linestyle="--", marker="o", color=f"C{index + 3}",
                       label=f"{name} accuracy")
            series[f"{name} accuracy"] = list(points)
    right.set_ylabel("accuracy (%)")
    handles = left.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    labels = left.get_legend_handles_labels()[1] + right.get_legend_handles_labels()[1]
    if handles:
        left.legend(handles, labels, loc="lower right", fontsize=8)
    left.set_title(title)
    _save(fig, path)
    return series


def plot_base_new_bars(summary: dict, path: str | Path) -> dict:
    """Grouped bars per dataset (and the average), one bar per method, one panel per column (base/new/HM, test)."""
    import numpy as np

    plt = _pyplot()
    rows = [r for r in summary["rows"]]
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    metrics = list(summary["columns"])
    fig, axes = plt.subplots(len(metrics), 1, figsize=(max(6, 1.2 * len(datasets) * len(methods) / 2), 3 * len(metrics)),
                             squeeze=False)
    width = 0.8 / max(len(methods), 1)
    series: dict = {}
    for axis, metric in zip(axes[:, 0], metrics, strict=True):
        for index, method in enumerate(methods):
            values = []
            for dataset in datasets:
                match = [r for r in rows if r["method"] == method and r["dataset"] == dataset]
                mean = match[0][metric]["mean"] if match else None
                values.append(float("nan") if mean is None else mean)
            positions = np.arange(len(datasets)) + index * width
            axis.bar(positions, values, width=width, label=method)
            series[f"{metric}/{method}"] = dict(zip(datasets, values, strict=True))
        axis.set_xticks(np.arange(len(datasets)) + width * (len(methods) - 1) / 2)
        axis.set_xticklabels(datasets, rotation=30, ha="right", fontsize=8)
        axis.set_ylabel(f"{metric} (%)" if metric != "hm" else "HM (%)")
        axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axes[0, 0].set_title(f"{summary['protocol']}: {' / '.join(metrics)}")
    _save(fig, path)
    return series


def plot_fewshot_curves(summary: dict, path: str | Path) -> dict:
    """Accuracy vs shots, one panel per dataset (and the average), one line per method."""
    plt = _pyplot()
    rows = summary["rows"]
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(1, len(datasets), figsize=(3.2 * len(datasets), 3), squeeze=False)
    series: dict = {}
    for axis, dataset in zip(axes[0], datasets, strict=True):
        for method in methods:
            points = sorted((r["shots"], r["test"]["mean"]) for r in rows
                            if r["dataset"] == dataset and r["method"] == method and r["test"]["mean"] is not None)
            if points:
                axis.plot(*zip(*points, strict=True), marker="o", label=method)
                series[f"{dataset}/{method}"] = points
        axis.set_xscale("log", base=2)
        axis.set_title(dataset, fontsize=9)
        axis.set_xlabel("shots per class")
        axis.set_ylabel("accuracy (%)")
    axes[0, 0].legend(fontsize=8)
    _save(fig, path)
    return series
