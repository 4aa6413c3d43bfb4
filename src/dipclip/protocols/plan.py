"""A protocol as a plan: the independent runs it is made of, each a value that names its folder.

Pure: nothing is loaded or written here. Whatever executes runs (a worker in this process, ``--jobs N``
processes, a SLURM array task) takes these values; nothing re-derives them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .config import SOURCE, ProtocolConfig, shots_of

KINDS = ("run", "source", "target")  # a protocol run; an xd/dg source (ImageNet) run; a target evaluation


@dataclass(frozen=True)
class Run:
    kind: str
    dataset: str
    shots: int
    method: str
    seed: int

    @property
    def folder(self) -> str:
        """Relative to ``OUT/{protocol}``."""
        return f"{self.dataset}/shots_{self.shots}/{self.method}/seed{self.seed}"

    @property
    def source(self) -> Run | None:
        """The run whose adapter a target evaluates (``None`` when it needs none)."""
        if self.kind != "target" or self.method == "zeroshot":
            return None
        return Run("source", SOURCE, self.shots, self.method, self.seed)

    @property
    def label(self) -> str:
        return f"{self.dataset} {self.shots}-shot {self.method} seed {self.seed}"

    def describe(self) -> dict:
        return asdict(self) | {"folder": self.folder}


def expand(config: ProtocolConfig) -> list[Run]:
    """Every run of the protocol, in execution order (an xd/dg source before its targets)."""
    out = []
    if config.protocol in ("base2new", "fewshot"):
        shot_counts = sorted({k for method in config.methods for k in shots_of(config, method)})
        for dataset in config.datasets:
            for shots in shot_counts:
                for method in config.methods:
                    if shots not in shots_of(config, method):
                        continue
                    for seed in config.seeds:
                        out.append(Run("run", dataset, shots, method, seed))
    else:
        for method in config.methods:
            shots = shots_of(config, method)[0]
            for seed in config.seeds:
                out.append(Run("source", SOURCE, shots, method, seed))
                for dataset in config.datasets:
                    out.append(Run("target", dataset, shots, method, seed))
    return out
