"""Single-process or ``torchrun`` training: the process group, the device, the data order.

Launched by ``torchrun`` (``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` set, world size > 1),
each process joins a process group (``nccl`` on CUDA, ``gloo`` on CPU), trains on its shard of
every epoch's permutation and averages gradients with DistributedDataParallel; only rank 0
writes checkpoints, metrics and logs. Otherwise there is one process and no process group.

The data order of epoch e is a permutation seeded by (seed, e) (as ``DistributedSampler``
does), so a resumed run recomputes it and skips the batches it already consumed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from deqshield.data import ArrayDataset
from deqshield.sharding import launched_by_torchrun
from deqshield.validation import check_device


@dataclass(frozen=True)
class Context:
    """This process's place in the run: rank, world size and device."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum of ``values`` over all processes (``values`` itself in a single process)."""
        if self.distributed:
            values = values.to(self.device)
            dist.all_reduce(values)
        return values.cpu()

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def setup(device: Optional[str] = None) -> Context:
    """Join the process group if launched by torchrun; pick the device (``device`` or auto:
    CUDA when available, else the CPU). A CUDA device without an index is this process's GPU,
    ``cuda:LOCAL_RANK`` (``torch.cuda.set_device`` refuses a plain ``cuda``)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    chosen = check_device(device)
    if chosen.type == "cuda":
        if chosen.index is None:
            chosen = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(chosen)
    if not launched_by_torchrun():
        return Context(0, 1, chosen)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo")
    return Context(dist.get_rank(), dist.get_world_size(), chosen)


def teardown(context: Context) -> None:
    """Leave the process group (if this process joined one)."""
    if context.distributed and dist.is_initialized():
        dist.destroy_process_group()


def epoch_indices(data: ArrayDataset, context: Context, seed: int, epoch: int) -> list[int]:
    """This process's example order in ``epoch`` (the whole permutation in one process)."""
    sampler = DistributedSampler(data, num_replicas=context.world_size, rank=context.rank,
                                 shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    return list(sampler)
