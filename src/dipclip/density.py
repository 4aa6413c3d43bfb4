"""Information Density (ID) of a matrix, the quantity the DIP paper links to new-class accuracy.

``ID_k(M) = (s_1 + ... + s_k) / (s_1 + ... + s_m)``, with ``s`` the singular values of ``M`` in decreasing
order and ``m = min(rows, cols)``. ID_k is 1 when M has rank <= k and ``k/m`` when all directions carry the
same weight. The ``energy`` form uses squared singular values (the share of the Frobenius norm).
A stack of class-specific contexts ``[C, n, d]`` is measured as one ``[C*n, d]`` matrix.

A reported ID is refused, never rounded to ``None``, when the singular values overflow float32 (a prompt
with huge learned values): ``None`` means only "undefined" (an all-zero matrix).
"""

from __future__ import annotations

import torch

from .errors import DipclipError
from .tensor_checks import OVERFLOW_FIX, require_finite


def information_density(matrix: torch.Tensor, k: int = 1, energy: bool = False) -> torch.Tensor:
    """Differentiable ID_k (``torch.linalg.svdvals`` has gradients), so it can also be a loss term.

    Returns NaN for an all-zero matrix, whose density is undefined (e.g. the update at step 0).
    """
    if matrix.dim() > 2:
        matrix = matrix.reshape(-1, matrix.shape[-1])
    if matrix.dim() != 2:
        raise DipclipError(f"information density needs a matrix, got a tensor of shape {tuple(matrix.shape)}")
    m = min(matrix.shape)
    if not 1 <= k <= m:
        raise DipclipError(f"ID_k needs 1 <= k <= min(rows, cols) = {m}, got k = {k}")
    values = singular_values(matrix, energy)
    total = values.sum()
    if float(total.detach()) <= 0.0:
        return torch.tensor(float("nan"))
    return values[:k].sum() / total


def singular_values(matrix: torch.Tensor, energy: bool = False) -> torch.Tensor:
    """Singular values of ``matrix`` (a class-specific stack flattened to ``[C*n, d]``), squared for ``energy``."""
    values = torch.linalg.svdvals(matrix.reshape(-1, matrix.shape[-1]).float())
    return values.square() if energy else values


def density_report(prompt: torch.Tensor, initial: torch.Tensor, k: int = 1, energy: bool = False,
                   source: str = "the prompt") -> dict:
    """ID of the prompt and of its learned update ``P - P_init`` (None where undefined), as plain floats.

    Singular values (and their sum) that overflow are refused with ``source`` named: the ID would be NaN or 0."""

    def as_float(value: torch.Tensor) -> float | None:
        value = float(value)
        return None if value != value else round(value, 6)

    with torch.no_grad():
        for name, matrix in (("prompt", prompt), ("update", prompt - initial)):
            require_finite(matrix, f"{source}: its merged {name}", OVERFLOW_FIX)  # the SVD fails on inf
            values = singular_values(matrix, energy)
            require_finite(torch.cat([values, values.sum().reshape(1)]),
                           f"{source}: its {name}'s {'squared ' if energy else ''}singular values", OVERFLOW_FIX)
        return {
            "k": k,
            "energy": energy,
            "id_prompt": as_float(information_density(prompt, k, energy)),
            "id_update": as_float(information_density(prompt - initial, k, energy)),
        }
