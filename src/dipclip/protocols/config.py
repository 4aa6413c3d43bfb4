"""What a protocol command asks for: the protocol, datasets, methods, seeds, shots and the overrides of every run.

Validated before anything runs: unknown names, repeated values (a table row would count one run twice), several
shot counts outside ``fewshot``, a missing ``--data`` (only the shipped demo datasets need none).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..data.registry import DG_KEYS, EMBEDDED_DATASETS, TRAINABLE_KEYS, dataset_info
from ..errors import DipclipError
from ..probes import all_method_names, feature_method_names, is_feature_method
from ..recipes import recipe_shots
from ..recipes.probes import probe_protocols

PROTOCOLS = ("base2new", "fewshot", "xd", "dg")
DEFAULT_SEEDS = (1, 2, 3)
FEWSHOT_SHOTS = (1, 2, 4, 8, 16)
DEFAULT_SHOTS = 16
XD_TARGETS = tuple(k for k in TRAINABLE_KEYS if k != "imagenet")
SOURCE = "imagenet"


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

    @property
    def root(self) -> Path:
        """``OUT/{protocol}``: the run folders, the plan, the summary."""
        return Path(self.out) / self.protocol

    def validate(self) -> ProtocolConfig:
        if self.protocol not in PROTOCOLS:
            raise DipclipError(f"unknown protocol {self.protocol!r}; use one of {', '.join(PROTOCOLS)}")
        known = all_method_names()
        unknown = [m for m in self.methods if m != "zeroshot" and m not in known]
        if unknown or not self.methods:
            raise DipclipError(f"unknown method(s) {unknown or 'none given'}; use zeroshot, {', '.join(known)}")
        unable = [m for m in self.methods if is_feature_method(m) and self.protocol not in probe_protocols(m)]
        if unable:
            able = [m for m in feature_method_names() if self.protocol in probe_protocols(m)]
            raise DipclipError(f"{', '.join(unable)} cannot run the {self.protocol} protocol (their authors' recipes "
                               f"cover other protocols: new classes or other datasets cannot be scored by what they "
                               f"learn); the feature methods that can: {', '.join(able) or 'none'}, and every prompt "
                               "method")
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


def shots_of(config: ProtocolConfig, method: str) -> list[int]:
    """The shot counts ``method`` runs at: ``--shots`` when given, else the protocol's (xd/dg: the source shots of
    the method's recipe, e.g. ProGrad's and KgCoOp's 4, :func:`dipclip.recipes.recipe_shots`)."""
    if config.shots is not None:
        return list(config.shots)
    if config.protocol == "fewshot":
        return list(FEWSHOT_SHOTS)
    if config.protocol == "base2new" or method == "zeroshot":
        return [DEFAULT_SHOTS]
    return [recipe_shots(method, config.protocol) or DEFAULT_SHOTS]
