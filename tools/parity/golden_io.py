"""What the feature methods' golden generators (``probes_*.py``) share: float32-exact JSON numbers and the run-time
shims that let Dassl-based official code run on CPU with torch 2.14 (their files stay untouched)."""

from __future__ import annotations

import sys
import types

import numpy as np
import torch


def f32(values) -> list[float]:
    """float32 values as the shortest decimals that read back to the same float32 (compact JSON)."""
    return [float(np.format_float_scientific(np.float32(v), unique=True)) for v in values]


def tensor(t: torch.Tensor) -> dict:
    return {"shape": list(t.shape), "values": f32(t.detach().float().flatten().tolist())}


def install_dassl_shims() -> None:
    """``.cuda()`` a no-op, LR schedulers without the ``verbose`` argument torch 2.7 removed, an empty
    ``pkg_resources``; one deterministic thread."""
    from torch import nn
    from torch.optim import lr_scheduler

    original_init = lr_scheduler.LRScheduler.__init__

    def scheduler_init(self, optimizer, last_epoch=-1, verbose=None):  # torch >= 2.7 removed `verbose`
        original_init(self, optimizer, last_epoch)

    lr_scheduler.LRScheduler.__init__ = scheduler_init
    nn.Module.cuda = lambda self, *a, **k: self
    torch.Tensor.cuda = lambda self, *a, **k: self
    sys.modules.setdefault("pkg_resources", types.ModuleType("pkg_resources"))
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
