"""The four evaluation protocols of the CoOp family, run end to end with per-run ``metrics.json``.

- ``base2new``: train on the base half of each dataset's classes (16 shots), test on base and on new.
- ``fewshot``: K in {1, 2, 4, 8, 16} shots, all classes, test accuracy.
- ``xd`` (cross-dataset): train on ImageNet (all classes, the recipe's shots: 16, or 4 for ProGrad and
  KgCoOp as their scripts train), test on the other 10 datasets.
- ``dg`` (domain generalisation): the same ImageNet model on ImageNet-V2, -Sketch, -A and -R.

Runs live in ``OUT/{protocol}/{dataset}/shots_{K}/{method}/seed{S}/``. Each method trains with its own
recipe for the protocol (:mod:`dipclip.recipes`; ``dg`` uses ``xd``'s). A run with a ``metrics.json`` is
finished and skipped only when its recorded settings (recipe, every hyperparameter, backbone identity, data
split identity) are the ones this command asks for; otherwise the command refuses and names the settings
that differ. A damaged ``metrics.json`` is set aside and its run redone; one with only a ``checkpoint.pt``
resumes (the trainer checks the checkpoint is the same run). The aggregate table (mean and std over
seeds, per dataset and the average row) is written as Markdown, CSV and JSON, with HM computed as the
published tables do: per dataset HM(mean base, mean new); the average row HM(average base, average new).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import api
from .backbones.loading import Backbone, file_sha256, load_backbone
from .data.registry import DG_KEYS, EMBEDDED_DATASETS, TRAINABLE_KEYS, dataset_info
from .engine.locking import output_lock
from .engine.reproducibility import atomic_write_bytes, atomic_write_json
from .errors import DipclipError
from .methods import method_names
from .recipes import PROTOCOL_OF, recipe_shots

PROTOCOLS = ("base2new", "fewshot", "xd", "dg")
DEFAULT_SEEDS = (1, 2, 3)
FEWSHOT_SHOTS = (1, 2, 4, 8, 16)
DEFAULT_SHOTS = 16
XD_TARGETS = tuple(k for k in TRAINABLE_KEYS if k != "imagenet")
SOURCE = "imagenet"


def harmonic_mean(base: float, new: float) -> float:
    return 0.0 if base + new == 0 else 2.0 * base * new / (base + new)


@dataclass
class ProtocolConfig:
    protocol: str
    data: str | None  # None: dipclip's shipped demo datasets
    datasets: Sequence[str]
    methods: Sequence[str] = ("zeroshot", "coop", "dip")
    seeds: Sequence[int] = DEFAULT_SEEDS
    shots: Sequence[int] | None = None  # None: fewshot 1 2 4 8 16, base2new 16, xd/dg each recipe's source shots
    out: str | Path = "runs"
    model: str | None = None
    pretrained: str | None = None  # required by load_backbone; "none" for random weights
    device: str = "auto"
    epochs: int | None = None  # None: each method's recipe for the protocol
    train_options: dict = field(default_factory=dict)  # overrides passed to api.train (lr, batch_size, rank, ...)
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
        if not self.datasets:
            raise DipclipError("give at least one dataset (--datasets KEY ... or all)")
        if self.shots is not None and not self.shots:
            raise DipclipError("give at least one shot count (--shots K ...)")
        for flag, values in (("--datasets", self.datasets), ("--methods", self.methods), ("--seeds", self.seeds),
                             ("--shots", self.shots or ())):
            repeated = sorted({str(v) for v in values if list(values).count(v) > 1})
            if repeated:
                raise DipclipError(f"{flag} lists {', '.join(repeated)} more than once: a table row would count the "
                                   f"same run twice; give each value once")
        if any(k < 1 for k in self.shots or ()):
            raise DipclipError(f"shots must be >= 1, got {list(self.shots)}")
        if self.protocol != "fewshot" and len(self.shots or ()) > 1:
            raise DipclipError(f"{self.protocol} trains at one shot count, got --shots {' '.join(map(str, self.shots))}; "
                               f"run one {self.protocol} command per shot count (each with its own --out), or use "
                               "fewshot for accuracy against shots")
        for key in self.datasets:
            dataset_info(key)  # raises with the list of known keys
        needs_root = [k for k in self.datasets if k not in EMBEDDED_DATASETS]
        if self.protocol in ("xd", "dg"):
            needs_root = [SOURCE, *needs_root]
        if self.data is None and needs_root:
            raise DipclipError(f"give --data ROOT, the folder holding the dataset folders of {', '.join(needs_root)} "
                               "(only dipclip's shipped demo datasets need none)")
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

    def shots_of(self, method: str) -> list[int]:
        """The shot counts ``method`` runs at: ``--shots`` when given, else the protocol's (xd/dg: the source
        shots of the method's recipe, e.g. ProGrad's and KgCoOp's 4, :func:`dipclip.recipes.recipe_shots`)."""
        cfg = self.config
        if cfg.shots is not None:
            return list(cfg.shots)
        if cfg.protocol == "fewshot":
            return list(FEWSHOT_SHOTS)
        if cfg.protocol == "base2new" or method == "zeroshot":
            return [DEFAULT_SHOTS]
        return [recipe_shots(method, cfg.protocol) or DEFAULT_SHOTS]

    def run_dir(self, dataset: str, shots: int, method: str, seed: int) -> Path:
        return self.root / dataset / f"shots_{shots}" / method / f"seed{seed}"

    # -- one run ---------------------------------------------------------------------------------------------
    def _finished(self, folder: Path) -> dict | None:
        """The run's metrics, or None when it has not finished; a damaged file is named and set aside."""
        path = folder / api.METRICS_NAME
        if not path.is_file():
            return None
        try:
            metrics = json.loads(path.read_text())
            if not isinstance(metrics, dict) or not isinstance(metrics.get("results"), dict):
                raise ValueError("no results")
        except (ValueError, RecursionError, UnicodeDecodeError) as exc:
            damaged = path.with_name(path.name + ".damaged")
            path.replace(damaged)
            self.log(f"{path} is damaged ({type(exc).__name__}); moved to {damaged.name}, rerunning that run")
            return None
        return metrics

    def _train_arguments(self, method: str, dataset: str, shots: int, seed: int, subsample: str) -> dict:
        cfg = self.config
        return dict(recipe=PROTOCOL_OF[cfg.protocol], data=cfg.data, dataset=dataset, shots=shots, seed=seed,
                    subsample=subsample, epochs=cfg.epochs, model=cfg.model, pretrained=cfg.pretrained,
                    **cfg.train_options)

    def _train(self, method: str, dataset: str, shots: int, seed: int, subsample: str, folder: Path) -> dict:
        return api.train(method, out=folder, resume=(folder / "checkpoint.pt").exists(), progress=self.config.progress,
                         backbone=self.backbone, **self._train_arguments(method, dataset, shots, seed, subsample))

    def expected_settings(self, kind: str, dataset: str, shots: int, method: str, seed: int) -> dict:
        """What a run's metrics.json must say for it to be this protocol's run (compared with what a folder
        holds before a finished run is skipped)."""
        cfg = self.config
        if method == "zeroshot":
            return {"method": "zeroshot", "pretrained": cfg.pretrained, "model": cfg.model}
        if kind == "target":
            return {"source": self._source_adapter_digest(shots, method, seed)}
        subsample = "base" if cfg.protocol == "base2new" and kind == "run" else "all"
        train_dataset = SOURCE if kind == "source" else dataset
        config = api.train_config(method, device=cfg.device,
                                  **self._train_arguments(method, train_dataset, shots, seed, subsample))
        return run_settings(config)

    def _zeroshot_subsamples(self, kind: str) -> tuple[str, ...]:
        return ("base", "new") if self.config.protocol == "base2new" and kind == "run" else ("all",)

    def _data_identity(self, kind: str, dataset: str, shots: int, method: str, seed: int) -> str:
        """The content identity (:mod:`dipclip.data.identity`) of the data this run reads, computed as the run
        computes it: a finished run is reused only when its ``metrics.json`` holds the same."""
        data = self.config.data
        if kind == "target" and method != "zeroshot":
            return api.evaluation_identity(api.load_data(data, dataset), "test", "test")
        if method == "zeroshot":
            target = SOURCE if kind == "source" else dataset
            return combined_identity([api.evaluation_identity(api.load_data(data, target, None, 1, subsample), "test",
                                                              "test" if subsample == "all" else subsample)
                                      for subsample in self._zeroshot_subsamples(kind)])
        subsample = "base" if self.config.protocol == "base2new" and kind == "run" else "all"
        splits, new_splits = api.training_splits(data, SOURCE if kind == "source" else dataset, shots, seed,
                                                 subsample)
        return api.training_identity(splits, new_splits, subsample)

    def _source_adapter_digest(self, shots: int, method: str, seed: int) -> str | None:
        weights = self.run_dir(SOURCE, shots, method, seed) / "adapter" / "adapter_model.safetensors"
        return file_sha256(weights) if weights.is_file() else None

    def _check_settings(self, kind: str, dataset: str, shots: int, method: str, seed: int, folder: Path,
                        metrics: dict) -> None:
        expected = self.expected_settings(kind, dataset, shots, method, seed)
        if method == "zeroshot":
            held = {"method": metrics.get("method"), "pretrained": metrics.get("config", {}).get("pretrained"),
                    "model": metrics.get("config", {}).get("model")}
        elif kind == "target":
            held = {"source": metrics.get("source_adapter_sha256")}
        else:
            held = run_settings(metrics.get("config", {}))
        if kind != "target":
            held["backbone"] = metrics.get("backbone", {}).get("identity")
            expected["backbone"] = self.backbone.identity
        held["data"] = metrics.get("data_identity")
        expected["data"] = self._data_identity(kind, dataset, shots, method, seed)
        differences = settings_differences(held, expected)
        if differences:
            raise DipclipError(
                f"{folder} holds a finished run with other settings ({'; '.join(differences[:4])}"
                f"{'; ...' if len(differences) > 4 else ''}); use another --out, or delete that folder to rerun it"
            )

    def _zeroshot(self, dataset: str, subsamples: Sequence[str], folder: Path) -> dict:
        merged: dict = {}
        identities = []
        for subsample in subsamples:
            metrics = api.zeroshot(data=self.config.data, dataset=dataset, subsample=subsample,
                                   backbone=self.backbone, model=self.config.model, pretrained=self.config.pretrained)
            merged = metrics | {"results": merged.get("results", {}) | metrics["results"]}
            identities.append(metrics["data_identity"])
        merged["data_identity"] = combined_identity(identities)
        atomic_write_json(folder / api.METRICS_NAME, merged)
        return merged

    def _evaluate(self, adapter: Path, dataset: str, folder: Path) -> dict:
        metrics = api.evaluate(adapter, data=self.config.data, dataset=dataset, backbone=self.backbone)
        metrics["source_adapter_sha256"] = file_sha256(adapter / "adapter_model.safetensors")
        atomic_write_json(folder / api.METRICS_NAME, metrics)
        return metrics

    # -- protocols -------------------------------------------------------------------------------------------
    def jobs(self) -> list[tuple[str, str, int, str, int]]:
        """(kind, dataset, shots, method, seed) for every run, in execution order."""
        cfg = self.config
        out = []
        if cfg.protocol in ("base2new", "fewshot"):
            shot_counts = sorted({k for method in cfg.methods for k in self.shots_of(method)})
            for dataset in cfg.datasets:
                for shots in shot_counts:
                    for method in cfg.methods:
                        if shots not in self.shots_of(method):
                            continue
                        for seed in cfg.seeds:
                            out.append(("run", dataset, shots, method, seed))
        else:
            for method in cfg.methods:
                shots = self.shots_of(method)[0]
                for seed in cfg.seeds:
                    out.append(("source", SOURCE, shots, method, seed))
                    for dataset in cfg.datasets:
                        out.append(("target", dataset, shots, method, seed))
        return out

    def run(self) -> dict:
        """Every job not finished yet, then the summary; the protocol folder is held for the whole run."""
        with output_lock(self.root):
            return self._run_jobs()

    def _run_jobs(self) -> dict:
        from tqdm.auto import tqdm

        jobs = self.jobs()
        done = 0
        for index, (kind, dataset, shots, method, seed) in enumerate(tqdm(jobs, desc=self.config.protocol,
                                                                           disable=None if self.config.progress else True)):
            folder = self.run_dir(dataset, shots, method, seed)
            label = f"[{index + 1}/{len(jobs)}] {self.config.protocol} {dataset} {shots}-shot {method} seed {seed}"
            finished = self._finished(folder)
            if finished is not None:
                self._check_settings(kind, dataset, shots, method, seed, folder, finished)
                self.log(f"{label}: done already (same settings), skipped")
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
        columns = ("base", "new") if protocol == "base2new" else ("test",)
        table = []
        for method in self.config.methods:
            counts = self.shots_of(method)
            if protocol in ("base2new", "fewshot"):
                groups = [(d, k) for d in self.config.datasets for k in counts]
            else:
                groups = [(SOURCE, counts[0])] + [(d, counts[0]) for d in self.config.datasets]
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
                   "rows": table, "runs": rows, "settings": self.settings_of_runs()}
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.root / "summary.json", summary)
        atomic_write_bytes(self.root / "summary.csv", _to_csv(summary).encode())
        atomic_write_bytes(self.root / "summary.md", _to_markdown(summary).encode())
        return summary

    def settings_of_runs(self) -> dict:
        """Per method, the recipe, overrides and backbone of the runs this summary aggregates."""
        settings: dict = {}
        for kind, dataset, shots, method, seed in self.jobs():
            if kind == "target":
                continue
            metrics = self._finished(self.run_dir(dataset, shots, method, seed))
            if metrics is None:
                continue
            config = metrics.get("config", {})
            entry = settings.setdefault(method, {"backbone": metrics.get("backbone", {}).get("identity"),
                                                 "recipes": {}})
            recipe = config.get("recipe")
            if recipe:
                entry["recipes"][recipe["name"]] = {"overrides": recipe.get("overrides", {}),
                                                    "epochs": config.get("train", {}).get("epochs"),
                                                    "batch_size": config.get("train", {}).get("batch_size"),
                                                    "lr": config.get("optim", {}).get("lr")}
        return settings

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


SETTING_SECTIONS = ("prompt", "optim", "method_options")
IGNORED_TRAIN_KEYS = ("workers", "feature_cache", "density_k", "eval_every")  # never change a result


def run_settings(config: dict) -> dict:
    """The parts of a run's ``config`` that decide its numbers, flattened to dotted keys."""
    flat = {key: config.get(key) for key in ("method", "dataset", "shots", "seed", "subsample", "model",
                                             "pretrained")}
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


def combined_identity(identities: Sequence[str]) -> str:
    """One identity for a run that evaluated several splits (zero-shot on base and new)."""
    if len(identities) == 1:
        return identities[0]
    return hashlib.sha256("\n".join(identities).encode()).hexdigest()[:24]


def run_protocol(config: ProtocolConfig, backbone: Backbone | None = None) -> dict:
    return ProtocolRunner(config, backbone).run()


