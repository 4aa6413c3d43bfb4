"""Run-time precision: weights stay fp32; on CUDA the towers run under bf16 autocast."""

from __future__ import annotations

import contextlib
import functools

import torch


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA, plain fp32 elsewhere (CPU and MPS stay exact)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def cuda_autocast(method):
    """Decorate a tower method: bf16 autocast on CUDA, tensor results returned in fp32."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with autocast_for(self.positional_embedding.device):
            out = method(self, *args, **kwargs)
        return out.float() if isinstance(out, torch.Tensor) else out

    return wrapper
