"""A protocol command end to end: write the plan, let workers execute it, build the tables."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from ..backbones.loading import Backbone
from ..engine.reproducibility import atomic_write_bytes
from ..errors import DipclipError
from .config import ProtocolConfig
from .plan import Run, expand
from .run import RunExecutor, read_failure
from .status import PLAN_NAME
from .summary import build_summary, write_summary
from .workers import OUTPUTS, _running, run_workers, work


class ProtocolRunner:
    def __init__(self, config: ProtocolConfig, backbone: Backbone | None = None,
                 log: Callable[[str], None] | None = None):
        self.config = config.validate()
        self.root = config.root
        self.executor = RunExecutor(self.config, backbone=backbone, log=log)
        self.counts: dict = {}

    @property
    def log(self) -> Callable[[str], None]:
        return self.executor.log

    @log.setter
    def log(self, value: Callable[[str], None]) -> None:
        self.executor.log = value

    @property
    def backbone(self) -> Backbone:
        return self.executor.backbone

    def plan(self) -> list[Run]:
        return expand(self.config)

    def jobs(self) -> list[tuple[str, str, int, str, int]]:
        """(kind, dataset, shots, method, seed) for every run, in execution order."""
        return [(r.kind, r.dataset, r.shots, r.method, r.seed) for r in self.plan()]

    def run_dir(self, dataset: str, shots: int, method: str, seed: int) -> Path:
        return self.root / f"{dataset}/shots_{shots}/{method}/seed{seed}"

    def expected_settings(self, kind: str, dataset: str, shots: int, method: str, seed: int) -> dict:
        return self.executor.expected_settings(kind, dataset, shots, method, seed)

    def plan_lines(self, settings: bool = True) -> list[dict]:
        """The plan as ``--plan`` prints it: each run with its folder and, for trained runs, the resolved
        settings its ``metrics.json`` will record."""
        lines = []
        for run in self.plan():
            entry = run.describe()
            if settings and run.method != "zeroshot" and run.kind != "target":
                entry["settings"] = self.expected_settings(run.kind, run.dataset, run.shots, run.method, run.seed)
            elif run.source is not None:
                entry["source"] = run.source.folder
            lines.append(entry)
        return lines

    def write_plan(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps(line, sort_keys=True) + "\n" for line in self.plan_lines(settings=False))
        atomic_write_bytes(self.root / PLAN_NAME, text.encode())

    def run(self, jobs: int = 1, devices: Sequence[str] | None = None, threads: int | None = None,
            output: str | None = None) -> dict:
        """Every run not finished yet (by this process, or ``jobs`` worker processes), then the summary.

        ``threads``: torch CPU threads of this process, or of each worker (default: torch's choice; workers
        ``cores // jobs``). ``output``: ``quiet`` (failures only), ``normal`` (one progress line on a terminal,
        a line per run elsewhere) or ``verbose`` (also each run's epoch lines); default normal."""
        if output is not None:
            if output not in OUTPUTS:
                raise DipclipError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
            self.executor.output = output
        output = self.executor.output
        if threads is not None and jobs <= 1:
            import torch

            torch.set_num_threads(threads)
        self.executor.backbone  # noqa: B018 - weights that cannot load are refused before anything is written
        self.write_plan()
        if jobs > 1:
            self.counts = run_workers(self.config, jobs, devices, threads=threads, output=output, log=self.log)
        else:
            self.counts = work(self.config, log=self.log, backbone=self.executor._backbone, output=output)
        summary = self.summarise()
        counts = self.counts
        if output != "quiet":
            self.log(f"{self.config.protocol}: {counts['done']} run(s) executed, {counts['skipped']} skipped, "
                     f"{counts['failed']} failed, {counts['elsewhere']} left to other workers; table in "
                     f"{self.root / 'summary.md'}")
        return summary

    def summarise(self) -> dict:
        """The tables from the finished runs; the rest named as missing, failed or running."""
        runs = self.plan()
        finished = {run: self.executor.verified(run) for run in runs}  # no row from another command's run
        incomplete: dict[str, list[str]] = {"failed": [], "running": [], "missing": []}
        for run in runs:
            if finished[run] is not None:
                continue
            folder = self.executor.folder(run)
            state = "running" if _running(self.executor, run) else (
                "failed" if read_failure(folder) is not None else "missing")
            incomplete[state].append(run.folder)
        summary = build_summary(self.config, runs, finished.get, incomplete)
        write_summary(self.root, summary)
        return summary


def run_protocol(config: ProtocolConfig, backbone: Backbone | None = None) -> dict:
    return ProtocolRunner(config, backbone).run()
