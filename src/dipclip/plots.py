"""Figures from stored JSON (never from logs): ID and accuracy per epoch, base/new/HM bars, shots curves.

Each function writes a PNG and returns the plotted series, so tests and scripts can check what was drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .engine.reproducibility import atomic_write_bytes


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
