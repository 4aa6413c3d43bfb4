"""The four evaluation protocols of the CoOp family, run end to end with per-run ``metrics.json``.

- ``base2new``: train on the base half of each dataset's classes (16 shots), test on base and on new.
- ``fewshot``: K in {1, 2, 4, 8, 16} shots, all classes, test accuracy.
- ``xd`` (cross-dataset): train on ImageNet (all classes, 16 shots), test on the other 10 datasets.
- ``dg`` (domain generalisation): the same ImageNet model on ImageNet-V2, -Sketch, -A and -R.

Runs live in ``OUT/{protocol}/{dataset}/shots_{K}/{method}/seed{S}/``. A run with a ``metrics.json`` is
finished and skipped; one with only a ``checkpoint.pt`` resumes. The aggregate table (mean and std over
seeds, per dataset and the average row) is written as Markdown, CSV and JSON, with HM computed as the
published tables do: per dataset HM(mean base, mean new); the average row HM(average base, average new).
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import api
from .backbones.loading import Backbone, load_backbone
from .data.registry import DG_KEYS, TRAINABLE_KEYS, dataset_info
from .engine.reproducibility import atomic_write_bytes, atomic_write_json
from .errors import DipclipError
from .methods import method_names

PROTOCOLS = ("base2new", "fewshot", "xd", "dg")
DEFAULT_SEEDS = (1, 2, 3)
FEWSHOT_SHOTS = (1, 2, 4, 8, 16)
XD_TARGETS = tuple(k for k in TRAINABLE_KEYS if k != "imagenet")
SOURCE = "imagenet"


def published_epochs(method: str, dataset: str, shots: int) -> int:
    """CoOp's published schedule (also used for DIP, which swaps only the prompt parameterisation):
    200 epochs at 8-16 shots, 100 at 2-4, 50 at 1 shot and on ImageNet."""
    if dataset == "imagenet" or shots <= 1:
        return 50
    return 100 if shots <= 4 else 200


def harmonic_mean(base: float, new: float) -> float:
    return 0.0 if base + new == 0 else 2.0 * base * new / (base + new)


@dataclass
class ProtocolConfig:
    protocol: str
    data: str
    datasets: Sequence[str]
    methods: Sequence[str] = ("zeroshot", "coop", "dip")
    seeds: Sequence[int] = DEFAULT_SEEDS
    shots: Sequence[int] = (16,)
    out: str | Path = "runs"
    model: str | None = None
    pretrained: str | None = None  # required by load_backbone; "none" for random weights
    device: str = "auto"
    epochs: int | None = None  # None: the published schedule
    train_options: dict = field(default_factory=dict)  # passed to api.train (lr, batch_size, rank, ...)
    progress: bool = True

    def validate(self) -> ProtocolConfig:
        if self.protocol not in PROTOCOLS:
            raise DipclipError(f"unknown protocol {self.protocol!r}; use one of {', '.join(PROTOCOLS)}")
        known = method_names()
        unknown = [m for m in self.methods if m != "zeroshot" and m not in known]
        if unknown or not self.methods:
            raise DipclipError(f"unknown method(s) {unknown or 'none given'}; use zeroshot, {', '.join(known)}")
        if not self.seeds:
            raise DipclipError("give at least one seed")
        if any(k < 1 for k in self.shots):
            raise DipclipError(f"shots must be >= 1, got {list(self.shots)}")
        for key in self.datasets:
            dataset_info(key)  # raises with the list of known keys
        if self.protocol in ("base2new", "fewshot"):
            bad = [k for k in self.datasets if dataset_info(k).test_only]
            if bad:
                raise DipclipError(f"{', '.join(bad)} are test-only; use them with the dg protocol")
        return self


def resolve_datasets(protocol: str, names: Sequence[str]) -> list[str]:
    """``all`` means the protocol's published datasets (the 11, the 10 targets, or the 4 variants)."""
    if list(names) != ["all"]:
        return list(names)
    if protocol == "xd":
        return list(XD_TARGETS)
    if protocol == "dg":
        return list(DG_KEYS)
    return list(TRAINABLE_KEYS)


class ProtocolRunner:
    def __init__(self, config: ProtocolConfig, backbone: Backbone | None = None,
                 log: Callable[[str], None] | None = None):
        self.config = config.validate()
        self.root = Path(config.out) / config.protocol
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self._backbone = backbone

    @property
    def backbone(self) -> Backbone:
        if self._backbone is None:
            self._backbone = load_backbone(self.config.model, self.config.pretrained, device=self.config.device)
        return self._backbone

    def run_dir(self, dataset: str, shots: int, method: str, seed: int) -> Path:
        return self.root / dataset / f"shots_{shots}" / method / f"seed{seed}"

    # -- one run ---------------------------------------------------------------------------------------------
    def _finished(self, folder: Path) -> dict | None:
        path = folder / api.METRICS_NAME
        return json.loads(path.read_text()) if path.is_file() else None

    def _train(self, method: str, dataset: str, shots: int, seed: int, subsample: str, folder: Path) -> dict:
        cfg = self.config
        epochs = cfg.epochs or published_epochs(method, dataset, shots)
        return api.train(
            method, data=cfg.data, dataset=dataset, shots=shots, seed=seed, subsample=subsample, epochs=epochs,
            out=folder, resume=(folder / "checkpoint.pt").exists(), progress=cfg.progress,
            backbone=self.backbone, model=cfg.model, pretrained=cfg.pretrained, **cfg.train_options,
        )

    def _zeroshot(self, dataset: str, subsamples: Sequence[str], folder: Path) -> dict:
        merged: dict = {}
        for subsample in subsamples:
            metrics = api.zeroshot(data=self.config.data, dataset=dataset, subsample=subsample,
                                   backbone=self.backbone, model=self.config.model, pretrained=self.config.pretrained)
            merged = metrics | {"results": merged.get("results", {}) | metrics["results"]}
        atomic_write_json(folder / api.METRICS_NAME, merged)
        return merged

    def _evaluate(self, adapter: Path, dataset: str, folder: Path) -> dict:
        return api.evaluate(adapter, data=self.config.data, dataset=dataset, backbone=self.backbone, out=folder)

    # -- protocols -------------------------------------------------------------------------------------------
    def jobs(self) -> list[tuple[str, str, int, str, int]]:
        """(kind, dataset, shots, method, seed) for every run, in execution order."""
        cfg = self.config
        out = []
        if cfg.protocol in ("base2new", "fewshot"):
            shots_list = cfg.shots if cfg.protocol == "fewshot" else (cfg.shots[0],)
            for dataset in cfg.datasets:
                for shots in shots_list:
                    for method in cfg.methods:
                        for seed in cfg.seeds:
                            out.append(("run", dataset, shots, method, seed))
        else:
            shots = cfg.shots[0]
            for method in cfg.methods:
                for seed in cfg.seeds:
                    out.append(("source", SOURCE, shots, method, seed))
                    for dataset in cfg.datasets:
                        out.append(("target", dataset, shots, method, seed))
        return out

    def run(self) -> dict:
        from tqdm.auto import tqdm

        jobs = self.jobs()
        done = 0
        for index, (kind, dataset, shots, method, seed) in enumerate(tqdm(jobs, desc=self.config.protocol,
                                                                           disable=None if self.config.progress else True)):
            folder = self.run_dir(dataset, shots, method, seed)
            label = f"[{index + 1}/{len(jobs)}] {self.config.protocol} {dataset} {shots}-shot {method} seed {seed}"
            if self._finished(folder) is not None:
                self.log(f"{label}: done already, skipped")
                continue
            self.log(f"{label}: running")
            self._run_one(kind, dataset, shots, method, seed, folder)
            done += 1
        summary = self.summarise()
        self.log(f"{self.config.protocol}: {done} run(s) executed, {len(jobs) - done} skipped; "
                 f"table in {self.root / 'summary.md'}")
        return summary

    def _run_one(self, kind: str, dataset: str, shots: int, method: str, seed: int, folder: Path) -> None:
        protocol = self.config.protocol
        if kind == "run":
            subsample = "base" if protocol == "base2new" else "all"
            if method == "zeroshot":
                self._zeroshot(dataset, ("base", "new") if protocol == "base2new" else ("all",), folder)
            else:
                self._train(method, dataset, shots, seed, subsample, folder)
        elif kind == "source":
            if method == "zeroshot":
                self._zeroshot(SOURCE, ("all",), folder)
            else:
                self._train(method, SOURCE, shots, seed, "all", folder)
        else:  # a target of xd/dg: the source run's prompt on another dataset's test split
            if method == "zeroshot":
                self._zeroshot(dataset, ("all",), folder)
            else:
                source = self.run_dir(SOURCE, shots, method, seed)
                self._evaluate(source / "adapter", dataset, folder)

    # -- aggregation -----------------------------------------------------------------------------------------
    def collect(self) -> list[dict]:
        """Every finished run's headline numbers, from the stored metrics files."""
        rows = []
        for kind, dataset, shots, method, seed in self.jobs():
            metrics = self._finished(self.run_dir(dataset, shots, method, seed))
            if metrics is None:
                continue
            results = metrics["results"]
            row = {"kind": kind, "dataset": dataset, "shots": shots, "method": method, "seed": seed,
                   "trainable_params": metrics.get("trainable_params", 0)}
            for name, value in results.items():
                row[name] = value["accuracy"]
            rows.append(row)
        return rows

    def summarise(self) -> dict:
        rows = self.collect()
        protocol = self.config.protocol
        if protocol == "base2new":
            columns = ("base", "new")
            groups = [(d, self.config.shots[0]) for d in self.config.datasets]
        elif protocol == "fewshot":
            columns = ("test",)
            groups = [(d, k) for d in self.config.datasets for k in self.config.shots]
        else:
            columns = ("test",)
            groups = [(SOURCE, self.config.shots[0])] + [(d, self.config.shots[0]) for d in self.config.datasets]
        table = []
        for method in self.config.methods:
            per_group = []
            for dataset, shots in groups:
                mine = [r for r in rows if r["method"] == method and r["dataset"] == dataset and r["shots"] == shots]
                entry = {"method": method, "dataset": dataset, "shots": shots, "seeds": [r["seed"] for r in mine]}
                for column in columns:
                    values = [r[column] for r in mine if column in r]
                    entry[column] = _mean_std(values)
                if protocol == "base2new":
                    entry["hm"] = _hm_entry(entry)
                entry["trainable_params"] = mine[0]["trainable_params"] if mine else None
                per_group.append(entry)
            table.extend(per_group)
            table.extend(self._average_rows(method, per_group, columns))
        summary = {"protocol": protocol, "columns": list(columns) + (["hm"] if protocol == "base2new" else []),
                   "rows": table, "runs": rows}
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.root / "summary.json", summary)
        atomic_write_bytes(self.root / "summary.csv", _to_csv(summary).encode())
        atomic_write_bytes(self.root / "summary.md", _to_markdown(summary).encode())
        return summary

    def _average_rows(self, method: str, per_group: list[dict], columns: Sequence[str]) -> list[dict]:
        """The 'Average' row: mean over datasets of the per-dataset means (targets only for xd/dg)."""
        protocol = self.config.protocol
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


def _cell(value: dict) -> str:
    if value["mean"] is None:
        return "-"
    if value.get("std") is None or value.get("n", 0) < 2:
        return f"{value['mean']:.2f}"
    return f"{value['mean']:.2f} ± {value['std']:.2f}"


def _to_markdown(summary: dict) -> str:
    columns = summary["columns"]
    head = ["method", "dataset", "shots", *columns, "params"]
    lines = [f"# {summary['protocol']}", "", "| " + " | ".join(head) + " |",
             "|" + "|".join("---" for _ in head) + "|"]
    for row in summary["rows"]:
        params = "-" if row["trainable_params"] is None else f"{row['trainable_params']:,}"
        cells = [row["method"], f"**{row['dataset']}**" if row["dataset"] == "average" else row["dataset"],
                 str(row["shots"]), *(_cell(row[c]) for c in columns), params]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Accuracy in percent, mean ± population std over seeds. HM = 2·B·N/(B+N) of the mean base and new "
              "accuracies; the average row's HM uses the averaged base and new."]
    return "\n".join(lines) + "\n"


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
        writer.writerow([row["method"], row["dataset"], row["shots"], *values, row["trainable_params"]])
    return buffer.getvalue()


def run_protocol(config: ProtocolConfig, backbone: Backbone | None = None) -> dict:
    return ProtocolRunner(config, backbone).run()


