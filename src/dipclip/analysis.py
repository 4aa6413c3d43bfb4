"""Does Information Density track new-class accuracy? (the paper's Figure 1), for any run.

A run trained with ``--eval-every E`` records base/new (or test) accuracy in its history every E epochs;
``analyze`` correlates ID_k of the prompt (and of its update) with those accuracies over the checkpoints
with Spearman's rho, and plots both per epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .engine.reproducibility import atomic_write_json
from .errors import DipclipError
from .files import read_json
from .plots import plot_density_and_accuracy


def _ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks with ties sharing their average rank (as Spearman's rho needs)."""
    array = np.asarray(values, dtype=float)
    order = array.argsort(kind="mergesort")
    ranks = np.empty(len(array))
    ranks[order] = np.arange(1, len(array) + 1)
    for value in np.unique(array):
        tied = array == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation; None with fewer than 3 points or a constant series."""
    if len(x) != len(y):
        raise ValueError("series must have the same length")
    if len(x) < 3:
        return None
    rx, ry = _ranks(x), _ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def load_run(path: str | Path) -> dict:
    folder = Path(path)
    metrics_file = folder / "metrics.json" if folder.is_dir() else folder
    if not metrics_file.is_file():
        raise DipclipError(f"{path} is not a run folder (no metrics.json); give the --out folder of `dipclip train`")
    metrics = read_json(metrics_file, "run metrics", "give the --out folder of a finished `dipclip train`")
    if not metrics.get("history"):
        raise DipclipError(f"{metrics_file} has no training history (zero-shot or evaluation runs have none)")
    return metrics


def analyze_run(path: str | Path, out: str | Path | None = None) -> dict:
    """Per-epoch ID and accuracy series of one run, their Spearman rho, and a PNG (when ``out`` is given)."""
    metrics = load_run(path)
    history = metrics["history"]
    epochs = [h["epoch"] for h in history]
    densities = {"ID(P)": [h.get("id_prompt") for h in history], "ID(P - P_init)": [h.get("id_update") for h in history]}
    accuracies: dict[str, list[tuple[int, float]]] = {}
    for record in history:
        for name, value in (record.get("eval") or {}).items():
            accuracies.setdefault(name, []).append((record["epoch"], value))
    correlations: dict[str, dict] = {}
    for acc_name, points in accuracies.items():
        at = {e: a for e, a in points}
        for id_name, key in (("id_prompt", "id_prompt"), ("id_update", "id_update")):
            pairs = [(h[key], at[h["epoch"]]) for h in history if h["epoch"] in at and h.get(key) is not None]
            rho = spearman_rho([p[0] for p in pairs], [p[1] for p in pairs]) if pairs else None
            correlations[f"{id_name}~{acc_name}"] = {"rho": None if rho is None else round(rho, 4), "points": len(pairs)}
    method = metrics.get("method", "?")
    dataset = metrics.get("config", {}).get("dataset") or "?"
    report = {
        "run": str(path),
        "method": method,
        "dataset": dataset,
        "k": metrics.get("density", {}).get("k", 1),
        "epochs": epochs,
        "id_prompt": densities["ID(P)"],
        "id_update": densities["ID(P - P_init)"],
        "accuracy": {name: points for name, points in accuracies.items()},
        "spearman": correlations,
    }
    if out is not None:
        out = Path(out)
        name = "-".join(Path(path).resolve().parts[-3:])
        plot_density_and_accuracy(f"{method} on {dataset}: ID and accuracy per epoch", epochs, densities,
                                  accuracies, out / f"{name}-analysis.png")
        atomic_write_json(out / f"{name}-analysis.json", report)
        report["png"] = str(out / f"{name}-analysis.png")
    return report
