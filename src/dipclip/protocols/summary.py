"""The tables of a protocol, built from the finished runs alone.

Mean and population std over seeds (numpy's default, as the peers' result parsers use) per dataset, and the
average row; HM as published tables compute it: per dataset HM(mean base, mean new), the average row
HM(average base, average new). A row shows the seeds it has; the runs that are missing, failed or still running
are named in the summary (``incomplete``) and under the Markdown table, so no row pretends to be complete.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..engine.reproducibility import atomic_write_bytes, atomic_write_json


def harmonic_mean(base: float, new: float) -> float:
    return 0.0 if base + new == 0 else 2.0 * base * new / (base + new)


def collect(runs: Sequence, metrics_of: Callable) -> list[dict]:
    """Every finished run's headline numbers, from its stored metrics (``metrics_of(run)``, ``None``: not
    finished)."""
    rows = []
    for run in runs:
        metrics = metrics_of(run)
        if metrics is None:
            continue
        row = {"kind": run.kind, "dataset": run.dataset, "shots": run.shots, "method": run.method, "seed": run.seed,
               "trainable_params": metrics.get("trainable_params", 0)}
        for name, value in metrics["results"].items():
            row[name] = value["accuracy"]
        if metrics.get("search_split") == "test":  # hyperparameters chosen on the test set (the authors' way)
            row["test_set_search"] = True
        rows.append(row)
    return rows


def build_summary(config, runs: Sequence, metrics_of: Callable, incomplete: dict[str, list[str]]) -> dict:
    """The protocol's table from its finished runs; ``incomplete``: folders missing, failed or running."""
    from .config import SOURCE, shots_of

    rows = collect(runs, metrics_of)
    protocol = config.protocol
    columns = ("base", "new") if protocol == "base2new" else ("test",)
    table = []
    for method in config.methods:
        counts = shots_of(config, method)
        if protocol in ("base2new", "fewshot"):
            groups = [(d, k) for d in config.datasets for k in counts]
        else:
            groups = [(SOURCE, counts[0])] + [(d, counts[0]) for d in config.datasets]
        per_group = []
        for dataset, shots in groups:
            mine = [r for r in rows if r["method"] == method and r["dataset"] == dataset and r["shots"] == shots]
            entry = {"method": method, "dataset": dataset, "shots": shots, "seeds": [r["seed"] for r in mine],
                     "planned_seeds": len(config.seeds)}
            for column in columns:
                entry[column] = _mean_std([r[column] for r in mine if column in r])
            if protocol == "base2new":
                entry["hm"] = _hm_entry(entry)
            entry["trainable_params"] = mine[0]["trainable_params"] if mine else None
            if any(r.get("test_set_search") for r in mine):
                entry["test_set_search"] = True
            per_group.append(entry)
        table.extend(per_group)
        table.extend(_average_rows(protocol, method, per_group, columns))
    return {"protocol": protocol, "columns": list(columns) + (["hm"] if protocol == "base2new" else []),
            "rows": table, "runs": rows, "settings": settings_of_runs(runs, metrics_of),
            "incomplete": {k: v for k, v in incomplete.items() if v}}


def write_summary(root: Path, summary: dict) -> None:
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(root / "summary.json", summary)
    atomic_write_bytes(root / "summary.csv", _to_csv(summary).encode())
    atomic_write_bytes(root / "summary.md", _to_markdown(summary).encode())


def settings_of_runs(runs: Sequence, metrics_of: Callable) -> dict:
    """Per method, the recipe, overrides and backbone of the runs this summary aggregates."""
    settings: dict = {}
    for run in runs:
        if run.kind == "target":
            continue
        metrics = metrics_of(run)
        if metrics is None:
            continue
        config = metrics.get("config", {})
        entry = settings.setdefault(run.method, {"backbone": metrics.get("backbone", {}).get("identity"),
                                                 "recipes": {}})
        recipe = config.get("recipe")
        if recipe:
            entry["recipes"][recipe["name"]] = {"overrides": recipe.get("overrides", {}),
                                                "epochs": config.get("train", {}).get("epochs"),
                                                "batch_size": config.get("train", {}).get("batch_size"),
                                                "lr": config.get("optim", {}).get("lr")}
    return settings


def _average_rows(protocol: str, method: str, per_group: list[dict], columns: Sequence[str]) -> list[dict]:
    """The 'Average' row: mean over datasets of the per-dataset means (targets only for xd/dg); none of a
    dataset missing (it would not be the average of the same datasets as another method's)."""
    from .config import SOURCE

    if protocol in ("xd", "dg"):
        per_group = [e for e in per_group if e["dataset"] != SOURCE]
    by_shots: dict[int, list[dict]] = {}
    for entry in per_group:
        by_shots.setdefault(entry["shots"], []).append(entry)
    averages = []
    for shots, entries in by_shots.items():
        average = {"method": method, "dataset": "average", "shots": shots, "seeds": []}
        complete = all(e[c]["mean"] is not None for e in entries for c in columns)
        for column in columns:
            means = [e[column]["mean"] for e in entries if e[column]["mean"] is not None]
            average[column] = {"mean": round(float(np.mean(means)), 4) if complete and means else None,
                               "std": None, "n": len(means)}
        if protocol == "base2new":
            average["hm"] = _hm_entry(average)
        average["trainable_params"] = entries[0]["trainable_params"] if entries else None
        if any(e.get("test_set_search") for e in entries):
            average["test_set_search"] = True
        averages.append(average)
    return averages


def _mean_std(values: Sequence[float]) -> dict:
    """Mean and population std (numpy's default, as the peers' result parsers use) over seeds."""
    if not values:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": round(float(np.mean(values)), 4), "std": round(float(np.std(values)), 4), "n": len(values)}


def _hm_entry(entry: dict) -> dict:
    base, new = entry["base"]["mean"], entry["new"]["mean"]
    if base is None or new is None:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": round(harmonic_mean(base, new), 4), "std": None, "n": min(entry["base"]["n"], entry["new"]["n"])}


def _cell(value: dict, planned: int | None = None) -> str:
    """``mean ± std``; with fewer seeds than planned, how many it has (``(2/3 seeds)``)."""
    if value["mean"] is None:
        return "-"
    text = f"{value['mean']:.2f}"
    if value.get("std") is not None and value.get("n", 0) >= 2:
        text += f" ± {value['std']:.2f}"
    if planned is not None and value.get("n", 0) < planned:
        text += f" ({value['n']}/{planned} seeds)"
    return text


def _to_markdown(summary: dict) -> str:
    columns = summary["columns"]
    head = ["method", "dataset", "shots", *columns, "params"]
    lines = [f"# {summary['protocol']}", "", "| " + " | ".join(head) + " |",
             "|" + "|".join("---" for _ in head) + "|"]
    for row in summary["rows"]:
        params = "-" if row["trainable_params"] is None else f"{row['trainable_params']:,}"
        cells = [_method_label(row), f"**{row['dataset']}**" if row["dataset"] == "average" else row["dataset"],
                 str(row["shots"]), *(_cell(row[c], row.get("planned_seeds") if c != "hm" else None)
                                       for c in columns), params]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Accuracy in percent, mean ± population std over seeds. HM = 2·B·N/(B+N) of the mean base and new "
              "accuracies; the average row's HM uses the averaged base and new."]
    if any(row.get("test_set_search") for row in summary["rows"]):
        lines.append(f"\n{TEST_SEARCH_MARK}: hyperparameters chosen on the test set (--search-split test, the "
                     "authors' way for that method); not comparable with validation-chosen numbers.")
    for state, folders in summary.get("incomplete", {}).items():
        shown = ", ".join(folders[:8]) + (f" and {len(folders) - 8} more" if len(folders) > 8 else "")
        lines.append(f"\nNot in the table, {state} ({len(folders)}): {shown}")
    return "\n".join(lines) + "\n"


TEST_SEARCH_MARK = "(test-set search)"


def _method_label(row: dict) -> str:
    """The method's name, marked when a run of the row chose its hyperparameters on the test set."""
    return f"{row['method']} {TEST_SEARCH_MARK}" if row.get("test_set_search") else row["method"]


def _to_csv(summary: dict) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    columns = summary["columns"]
    writer.writerow(["method", "dataset", "shots", *(f"{c}_{s}" for c in columns for s in ("mean", "std", "n")),
                     "trainable_params"])
    for row in summary["rows"]:
        values = []
        for c in columns:
            values += ["" if row[c][k] is None else row[c][k] for k in ("mean", "std", "n")]
        writer.writerow([_method_label(row), row["dataset"], row["shots"], *values, row["trainable_params"]])
    return buffer.getvalue()


SETTING_SECTIONS = ("prompt", "optim", "method_options", "head")  # head: a feature method's settings
IGNORED_TRAIN_KEYS = ("workers", "feature_cache", "density_k", "eval_every")  # never change a result


def run_settings(config: dict) -> dict:
    """The parts of a run's ``config`` that decide its numbers, flattened to dotted keys."""
    flat = {key: config.get(key) for key in ("method", "dataset", "shots", "seed", "subsample", "model",
                                             "pretrained")}
    if "search_split" in config:  # feature methods: which split chose their hyperparameters
        flat["search_split"] = config["search_split"]
    recipe = config.get("recipe") or {}
    flat["recipe"] = recipe.get("name")
    for section in SETTING_SECTIONS:
        for key, value in (config.get(section) or {}).items():
            flat[f"{section}.{key}"] = value
    for key, value in (config.get("train") or {}).items():
        if key not in IGNORED_TRAIN_KEYS:
            flat[f"train.{key}"] = value
    return flat


def settings_differences(held: dict, expected: dict) -> list[str]:
    """``key held -> expected`` for every setting that differs."""
    keys = sorted(set(held) | set(expected))
    return [f"{k} {held.get(k)!r} -> {expected.get(k)!r}" for k in keys if held.get(k) != expected.get(k)]


