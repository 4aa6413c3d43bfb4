"""The four evaluation protocols of the CoOp family, as plans of independent runs.

- ``base2new``: train on the base half of each dataset's classes (16 shots), test on base and on new.
- ``fewshot``: K in {1, 2, 4, 8, 16} shots, all classes, test accuracy.
- ``xd`` (cross-dataset): train on ImageNet (all classes, the recipe's shots: 16, or 4 for ProGrad and
  KgCoOp as their scripts train), test on the other 10 datasets.
- ``dg`` (domain generalisation): the same ImageNet model on ImageNet-V2, -Sketch, -A and -R.

Rooms: :mod:`.config` (what a command asks for), :mod:`.plan` (the runs, pure), :mod:`.run` (one run into its
folder), :mod:`.workers` (take the next free run; ``--jobs``), :mod:`.summary` (tables from finished runs),
:mod:`.status` (``dipclip status``), :mod:`.runner` (a command end to end). Runs live in
``OUT/{protocol}/{dataset}/shots_{K}/{method}/seed{S}/``; each method trains with its own recipe for the
protocol (:mod:`dipclip.recipes`; ``dg`` uses ``xd``'s).
"""

from .config import (
           DEFAULT_SEEDS,
           FEWSHOT_SHOTS,
           PROTOCOLS,
           SOURCE,
           XD_TARGETS,
           ProtocolConfig,
           resolve_datasets,
)
from .plan import Run, expand
from .runner import ProtocolRunner, run_protocol
from .summary import harmonic_mean, run_settings, settings_differences

__all__ = ["DEFAULT_SEEDS", "FEWSHOT_SHOTS", "PROTOCOLS", "SOURCE", "XD_TARGETS", "ProtocolConfig", "ProtocolRunner",
           "Run", "expand", "harmonic_mean", "resolve_datasets", "run_protocol", "run_settings",
           "settings_differences"]
