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
from .plots import described, plot_density_and_accuracy, shown


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


RUN_FIX = "restore it, or train the run again (`dipclip train ... --eval-every E`)"
RECORD_KEYS = "an object with epoch (a whole number), id_prompt and id_update (numbers or null), eval (optional)"


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _history_problem(history) -> str | None:
    """What is wrong with a hand-edited ``history`` (a list of epoch records), or None."""
    if not isinstance(history, list):
        return f"'history' is {shown(history)} (expected a list of {RECORD_KEYS})"
    for index, record in enumerate(history):
        where = f"history[{index}]"
        if not isinstance(record, dict):
            return f"{where} is {shown(record)} (expected {RECORD_KEYS})"
        epoch = record.get("epoch")
        if not isinstance(epoch, int) or isinstance(epoch, bool):
            return f"{where}: {described('epoch', record)} (expected {RECORD_KEYS})"
        for key in ("id_prompt", "id_update"):
            if record.get(key) is not None and not _is_number(record[key]):
                return f"{where}: {described(key, record)} (expected a number or null)"
        evaluation = record.get("eval")
        if evaluation is not None and not (isinstance(evaluation, dict)
                                           and all(_is_number(v) for v in evaluation.values())):
            return f"{where}: {described('eval', record)} (expected accuracies by name, e.g. {{\"base\": 71.2}})"
    return None


def load_run(path: str | Path) -> dict:
    """The metrics of a finished run, checked so that a hand-edited file is named with what is wrong."""
    folder = Path(path)
    metrics_file = folder / "metrics.json" if folder.is_dir() else folder
    if not metrics_file.is_file():
        raise DipclipError(f"{path} is not a run folder (no metrics.json); give the --out folder of `dipclip train`")
    metrics = read_json(metrics_file, "run metrics", "give the --out folder of a finished `dipclip train`")
    if not metrics.get("history"):
        raise DipclipError(f"{metrics_file} has no training history (zero-shot or evaluation runs have none)")
    problem = _history_problem(metrics["history"])
    for key, kind in (("config", dict), ("density", dict), ("method", str)):
        if problem is None and key in metrics and not isinstance(metrics[key], kind):
            problem = f"{key!r} is {shown(metrics[key])} (expected a JSON {'object' if kind is dict else 'string'})"
    if problem is not None:
        raise DipclipError(f"{metrics_file}: {problem}; {RUN_FIX}")
    return metrics


def run_folder(path: str | Path) -> Path:
    """The run folder of ``path`` (a run folder, or its metrics.json), absolute."""
    path = Path(path).resolve()
    return path.parent if path.is_file() else path


def analysis_names(paths: Sequence[str | Path]) -> list[str]:
    """A distinct file name per run, from the end of its own path: the folder's name, with as many parent
    folders as it takes to tell the runs apart (a/seed1 and b/seed1 give a-seed1 and b-seed1). Never from the
    current folder, and never one name for two runs."""
    folders = [run_folder(p) for p in paths]
    parts = [folder.parts[1:] or ("run",) for folder in folders]  # no root ("/"): it is no part of a name
    for depth in range(1, max(len(p) for p in parts) + 1):
        names = ["-".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(set(folders)):
            break
    seen: dict[str, int] = {}  # the same run given twice (or names that join alike): numbered
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return unique


def _plain(text: str) -> str:
    """``text`` as matplotlib draws it literally (a ``$`` in a folder's name starts no formula)."""
    return text.replace("$", r"\$")


def rho_notes(correlations: dict[str, dict]) -> list[str]:
    """Spearman's rho for the figure, one line per accuracy: ``new: rho(ID(P)) = +0.83, rho(ID(P - P_init)) =
    -0.10 over 10 epochs``."""
    labels = {"id_prompt": "ID(P)", "id_update": "ID(P - P_init)"}
    by_accuracy: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    for pair, value in correlations.items():
        id_name, accuracy = pair.split("~", 1)
        rho = "n/a" if value["rho"] is None else f"{value['rho']:+.2f}"
        by_accuracy.setdefault(accuracy, []).append(f"rho({labels.get(id_name, id_name)}) = {rho}")
        counts[accuracy] = max(counts.get(accuracy, 0), value["points"])
    return [f"Spearman, {accuracy} accuracy: {', '.join(parts)} over {counts[accuracy]} epochs"
            for accuracy, parts in by_accuracy.items()]


def analyze_run(path: str | Path, out: str | Path | None = None, name: str | None = None) -> dict:
    """Per-epoch ID and accuracy series of one run, their Spearman rho, and a PNG (when ``out`` is given) named
    ``name`` (default: the run folder's name; see :func:`analysis_names` for several runs)."""
    metrics = load_run(path)
    history = metrics["history"]
    epochs = [h["epoch"] for h in history]
    densities = {"ID(P)": [h.get("id_prompt") for h in history], "ID(P - P_init)": [h.get("id_update") for h in history]}
    accuracies: dict[str, list[tuple[int, float]]] = {}
    for record in history:
        for evaluation, value in (record.get("eval") or {}).items():
            accuracies.setdefault(evaluation, []).append((record["epoch"], value))
    correlations: dict[str, dict] = {}
    for acc_name, points in accuracies.items():
        at = {e: a for e, a in points}
        for id_name, key in (("id_prompt", "id_prompt"), ("id_update", "id_update")):
            pairs = [(h[key], at[h["epoch"]]) for h in history if h["epoch"] in at and h.get(key) is not None]
            rho = spearman_rho([p[0] for p in pairs], [p[1] for p in pairs]) if pairs else None
            correlations[f"{id_name}~{acc_name}"] = {"rho": None if rho is None else round(rho, 4), "points": len(pairs)}
    method = metrics.get("method", "?")
    dataset = str(metrics.get("config", {}).get("dataset") or "?")
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
        name = name or analysis_names([path])[0]
        plot_density_and_accuracy(_plain(f"{name}: {method} on {dataset}, ID_{report['k']} and accuracy per epoch"),
                                  epochs, densities, accuracies, out / f"{name}-analysis.png",
                                  notes=[_plain(n) for n in rho_notes(correlations)])
        atomic_write_json(out / f"{name}-analysis.json", report)
        report["png"] = str(out / f"{name}-analysis.png")
    return report
