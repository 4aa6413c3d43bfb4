"""DIP: the context as a frozen full-rank path plus a low-rank learned update, ``P = P0 + Dropout(A @ B)``.

With n_ctx 4, rank 1 and a 512-wide text tower it learns 4 + 512 = 516 numbers. Two initialisations keep
``P = init`` at step 0 (so training starts from exactly the hand-written prompt):

- ``zero-delta``: P0 = init, A random, B = 0;
- ``residual-svd``: A0 @ B0 = the best rank-r approximation of init (A0 = U_r sqrt(S_r), B0 = sqrt(S_r) V_r^T),
  P0 = init - A0 @ B0: training moves the prompt's dominant directions.

Dropout acts on the low-rank branch while training only; :meth:`merged` folds A @ B into one matrix so
inference costs what a plain prompt costs.
"""

from __future__ import annotations

import torch
from torch import nn

DIP_INITS = ("zero-delta", "residual-svd")


class LowRankContext(nn.Module):
    kind = "dip"

    def __init__(self, init: torch.Tensor, rank: int = 1, init_mode: str = "residual-svd", dropout: float = 0.0,
                 a_init_std: float = 1.0):
        super().__init__()
        if init_mode not in DIP_INITS:
            raise ValueError(f"unknown DIP init {init_mode!r}; expected one of {', '.join(DIP_INITS)}")
        init = init.detach()
        n_ctx, width = init.shape[-2:]
        if not 1 <= rank <= min(n_ctx, width):
            raise ValueError(f"DIP rank must be between 1 and min(n_ctx, width) = {min(n_ctx, width)}, got {rank}")
        self.init_mode, self.rank = init_mode, rank  # how P0 derives from init: part of the adapter's digest
        lead = init.shape[:-2]  # () or (n_classes,) for class-specific contexts
        if init_mode == "zero-delta":
            a = torch.randn(*lead, n_ctx, rank) * a_init_std
            b = torch.zeros(*lead, rank, width)
            base = init.clone()
        else:
            u, s, vh = torch.linalg.svd(init.double(), full_matrices=False)
            root = s[..., :rank].sqrt()
            a = (u[..., :, :rank] * root.unsqueeze(-2)).to(init.dtype)
            b = (root.unsqueeze(-1) * vh[..., :rank, :]).to(init.dtype)
            base = init - a @ b
        self.register_buffer("base", base, persistent=False)  # P0, rebuilt from the backbone at load time
        self.register_buffer("initial", init.clone(), persistent=False)
        self.A = nn.Parameter(a)
        self.B = nn.Parameter(b)
        self.dropout = nn.Dropout(dropout)

    def forward(self) -> torch.Tensor:
        return self.base + self.dropout(self.A @ self.B)

    def matrix(self) -> torch.Tensor:
        """P0 + A @ B with gradients but without dropout: what the ID levers act on."""
        return self.base + self.A @ self.B

    @torch.no_grad()
    def merged(self) -> torch.Tensor:
        return self.base + self.A @ self.B
