"""Checks on tensors that every floor uses: finite values, content digests.

A NaN row's argmax is class 0 and a NaN softmax prints ``nan%``, so a non-finite tensor that reaches a
number the user reads would be a silent wrong number: what produces those numbers (text features, logits,
exported matrices, singular values) passes through :func:`require_finite` first.
"""

from __future__ import annotations

import hashlib

import torch

from .errors import DipclipError

# why a trained prompt's numbers overflow and what to do, for the refusals of adapters and trained models
OVERFLOW_FIX = "its learned values are too large (trained with too high an --lr?); train it again with a lower --lr"


def require_finite(tensor: torch.Tensor, what: str, fix: str) -> torch.Tensor:
    """``tensor`` unchanged, or a one-line :class:`DipclipError` ``"{what} hold NaN/inf; {fix}"``."""
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise DipclipError(f"{what} hold NaN/inf; {fix}")
    return tensor


def tensor_digest(*tensors: torch.Tensor) -> str:
    """sha256 over the dtypes, shapes and bytes of ``tensors`` (as the feature store's checksum)."""
    digest = hashlib.sha256()
    for tensor in tensors:
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
        if tensor.numel():
            digest.update(tensor.view(torch.uint8).numpy())
    return digest.hexdigest()
