"""One run of a plan, executed into its folder: train, zero-shot, or a target's evaluation.

A folder with a ``metrics.json`` is a finished run, reused only when what it records (recipe, every
hyperparameter, backbone identity, the data's content identity, a target's source adapter by SHA-256) is what
this command asks for; otherwise the command refuses and names what differs. A damaged ``metrics.json`` is set
aside and its run redone; one with only a ``checkpoint.pt`` resumes (the trainer checks it is the same run).
A run that fails leaves ``failed.json`` (its one-line error, host, pid, when) and does not stop the others.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .. import api
from ..backbones.loading import Backbone, file_sha256, load_backbone
from ..engine.reproducibility import atomic_write_json
from ..engine.trainer import run_log
from ..errors import DipclipError
from ..recipes import PROTOCOL_OF
from .config import SOURCE, ProtocolConfig
from .plan import Run
from .summary import run_settings, settings_differences

FAILED_NAME = "failed.json"


class RunExecutor:
    """Executes runs of one protocol command; loads the backbone once, when a run first needs it."""

    def __init__(self, config: ProtocolConfig, backbone: Backbone | None = None,
                 log: Callable[[str], None] | None = None):
        self.config = config
        self.root = config.root
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self._backbone = backbone
        self._verified: dict[str, str] = {}  # folder -> its metrics, checked to be this command's run
        # quiet: failures only; normal: the sweep's progress, not each run's lines; verbose: also those
        self.output = "normal"  # config.progress only turns bars off (none off a terminal anyway); --quiet is output

    @property
    def backbone(self) -> Backbone:
        if self._backbone is None:
            self._backbone = load_backbone(self.config.model, self.config.pretrained, device=self.config.device,
                                           announce=self.output != "quiet")
        return self._backbone

    def folder(self, run: Run) -> Path:
        return self.root / run.folder

    def finished(self, run: Run) -> dict | None:
        return self._finished(self.folder(run))

    def verified(self, run: Run) -> dict | None:
        """The run's metrics when it has finished, after refusing (one line) a run whose recorded settings or data
        are not this command's; every number a worker skips on or a summary aggregates passes here (checked once
        per process and file)."""
        metrics = self.finished(run)
        if metrics is None:
            return None
        key = hashlib.sha256(json.dumps(metrics, sort_keys=True, default=str).encode()).hexdigest()
        if self._verified.get(run.folder) != key:
            self._check_settings(run.kind, run.dataset, run.shots, run.method, run.seed, self.folder(run), metrics)
            self._verified[run.folder] = key
        return metrics

    def execute(self, run: Run) -> None:
        """Run ``run`` into its folder (the caller holds the folder's claim)."""
        folder = self.folder(run)
        (folder / FAILED_NAME).unlink(missing_ok=True)
        kind, dataset, shots, method, seed = run.kind, run.dataset, run.shots, run.method, run.seed
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
        elif method == "zeroshot":
            self._zeroshot(dataset, ("all",), folder)
        else:  # a target of xd/dg: the source run's prompt on another dataset's test split
            self._evaluate(self.folder(run.source) / "adapter", dataset, folder)

    def record_failure(self, run: Run, error: str) -> None:
        atomic_write_json(self.folder(run) / FAILED_NAME, {
            "error": error, "host": socket.gethostname(), "pid": os.getpid(), "job": os.environ.get("SLURM_JOB_ID"),
            "at": time.time()})

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
        verbose = self.output == "verbose"  # a run's own lines (epochs, accuracies) only with --verbose
        with run_log(None if verbose else _drop):
            return api.train(method, out=folder, resume=(folder / "checkpoint.pt").exists(), progress=verbose,
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
        weights = self.root / Run("source", SOURCE, shots, method, seed).folder / "adapter" / "adapter_model.safetensors"
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


def _drop(line: str) -> None:
    """A run's log lines, outside --verbose: its metrics.json keeps the epochs and the results."""


def combined_identity(identities: Sequence[str]) -> str:
    """One identity for a run that evaluated several splits (zero-shot on base and new)."""
    if len(identities) == 1:
        return identities[0]
    return hashlib.sha256("\n".join(identities).encode()).hexdigest()[:24]


def read_failure(folder: Path) -> dict | None:
    """A run's failure record, or ``None`` (an unreadable one counts as a failure with no message)."""
    path = folder / FAILED_NAME
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        return record if isinstance(record, dict) else {"error": "unreadable failure record"}
    except (OSError, ValueError):
        return {"error": "unreadable failure record"}
