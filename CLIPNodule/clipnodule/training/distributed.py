"""Multi-process training with torch.distributed: process group, model wrapping and sharded sampling.

When `torchrun --nproc_per_node N` starts `clipnodule train`, WORLD_SIZE is above 1 and the
run trains with DistributedDataParallel (gloo on the CPU, nccl on CUDA). Rank 0 alone writes files.
With one process nothing here changes the training. Depends on torch (no Qt or Slicer).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn
from torch.utils.data import Sampler

from ..errors import InputError

logger = logging.getLogger(__name__)

# Rank 0 crops every nodule before the others continue, which can take long on a big data set.
PROCESS_GROUP_TIMEOUT = dt.timedelta(hours=2)


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in the run: rank, number of processes and torch device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str) -> DistributedContext:
    """Join the process group when torchrun set WORLD_SIZE > 1; return the context of this process.

    `device` is the resolved device of a single-process run ("cpu", "cuda" or "cuda:N").
    With several processes on CUDA, each process uses GPU LOCAL_RANK and the nccl
    backend; on the CPU the gloo backend. Raises InputError when torchrun's environment
    variables are invalid.
    """
    try:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as error:
        raise InputError(f"Invalid torchrun environment (WORLD_SIZE, RANK, LOCAL_RANK): {error}.") from None
    if world_size <= 1:
        return DistributedContext(device=device)

    import torch.distributed as dist

    use_cuda = device.startswith("cuda")
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=PROCESS_GROUP_TIMEOUT)
    logger.info("Process %d of %d joined the %s process group on %s.", rank, world_size, backend, device)
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def wrap_model(model: nn.Module, context: DistributedContext) -> nn.Module:
    """Return `model` wrapped in DistributedDataParallel when several processes train, else `model`."""
    if not context.is_distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [context.local_rank] if context.device.startswith("cuda") else None
    return DistributedDataParallel(model, device_ids=device_ids)


def barrier(context: DistributedContext) -> None:
    """Wait until every process gets here (no-op with one process)."""
    if context.is_distributed:
        import torch.distributed as dist

        dist.barrier()


def shutdown(context: DistributedContext) -> None:
    """Leave the process group (no-op with one process)."""
    if context.is_distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


class ShardedWeightedSampler(Sampler[int]):
    """Weighted draws with replacement, split between processes like DistributedSampler splits indices.

    Every process draws the same `num_samples` indices from the same seeded generator and
    keeps every world_size-th one starting at its rank, so together the processes see one
    epoch of weighted sampling without overlap. Each process gets ceil(num_samples / world_size)
    indices (the draws are padded by repeating the first ones).
    """

    def __init__(self, weights: torch.Tensor, num_samples: int, generator: torch.Generator, rank: int, world_size: int) -> None:
        if not 0 <= rank < world_size:
            raise InputError(f"Rank {rank} is outside [0, {world_size}).")
        self.weights = weights.double()
        self.num_samples = int(num_samples)
        self.generator = generator
        self.rank = rank
        self.world_size = world_size
        self.per_rank = -(-self.num_samples // world_size)

    def __iter__(self) -> Iterator[int]:
        draws = torch.multinomial(self.weights, self.num_samples, replacement=True, generator=self.generator).tolist()
        padded = (draws * (1 + self.per_rank * self.world_size // max(len(draws), 1)))[: self.per_rank * self.world_size]
        return iter(padded[self.rank :: self.world_size])

    def __len__(self) -> int:
        return self.per_rank
