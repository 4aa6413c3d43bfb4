"""CoOp's context: a full-rank learnable matrix of n_ctx token vectors (or one per class)."""

from __future__ import annotations

import torch
from torch import nn


class FullRankContext(nn.Module):
    """P, learned directly: ``n_ctx * width`` numbers (times the class count when class-specific)."""

    kind = "full"

    def __init__(self, init: torch.Tensor):
        super().__init__()
        self.ctx = nn.Parameter(init.detach().clone())
        self.register_buffer("initial", init.detach().clone(), persistent=False)

    def forward(self) -> torch.Tensor:
        return self.ctx

    def matrix(self) -> torch.Tensor:
        """P with gradients (no dropout here): what the ID levers act on."""
        return self.ctx

    @torch.no_grad()
    def merged(self) -> torch.Tensor:
        """The prompt used at inference (here simply P)."""
        return self.ctx.detach().clone()
