"""Several GPUs with ``torchrun`` (torch.distributed), for the methods that run the image tower in the loop.

Every rank draws the same global batches (they are seeded from (seed, epoch) and (seed, view, image), never
from the rank), takes its contiguous slice of each batch, and the gradients are averaged weighted by slice
size before the optimizer steps, so the update equals the single-process one up to float summation order.
Their evaluation is sharded too: each rank runs every world-th test batch through its prompted image tower
and the counts are summed. Only rank 0 writes checkpoints, adapters and metrics. Methods that train on
stored features need no parallelism (a step costs milliseconds); feature extraction shards through
``python -m dipclip.cli.encode``.

    torchrun --nproc_per_node 4 -m dipclip train --method maple --model ViT-B-16 --pretrained openai ...
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    return rank_and_world()[0] == 0


def init_from_environment() -> str | None:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1); returns the device to use, if any."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return None
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl")
        return f"cuda:{local_rank}"
    dist.init_process_group("gloo")
    return "cpu"


def sum_over_ranks(counts: list[int], device: torch.device) -> list[int]:
    """Whole-number counts summed over all ranks (unchanged in one process)."""
    if rank_and_world()[1] == 1:
        return counts
    total = torch.tensor(counts, dtype=torch.long, device=device)
    dist.all_reduce(total)
    return [int(c) for c in total.tolist()]


def local_slice(inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """This rank's contiguous part of a global batch, and the global batch size."""
    rank, world = rank_and_world()
    total = len(labels)
    if world == 1:
        return inputs, labels, total
    bounds = [total * r // world for r in range(world + 1)]
    return inputs[bounds[rank]: bounds[rank + 1]], labels[bounds[rank]: bounds[rank + 1]], total


class GradientAveraging:
    """Wraps an optimizer: before each step, gradients become the global-batch mean over all ranks.

    Each rank's loss is a mean over its ``local`` samples; scaling by ``local / total`` and summing over ranks
    gives the gradient of the mean over the ``total`` samples of the global batch.
    """

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer
        self.local, self.total = 1, 1

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    def state_dict(self):
        return self.optimizer.state_dict()

    def load_state_dict(self, state):
        self.optimizer.load_state_dict(state)

    def zero_grad(self, set_to_none: bool = True):
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure=None):
        scale = self.local / max(self.total, 1)
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                p.grad.mul_(scale)
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        return self.optimizer.step(closure)


def all_reduce_sums(*values: float) -> list[float]:
    """Sum per-rank counters (loss totals, correct, seen) so every rank logs the global numbers."""
    rank, world = rank_and_world()
    if world == 1:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.cpu().tolist()
