"""Work on test samples across processes: launched by ``torchrun`` (a process group is
initialised), sample i belongs to the process of rank i mod world_size, and the per-sample
results are merged so that every process holds them all.

The evaluation merges its outcomes after every column: attacks act per sample and draw their
randomness per sample from the protocol's seed (PGD's random starts), so the merged verdicts
equal a single process's verdicts with the same seed; only AutoAttack, which draws per batch,
agrees in distribution only. Randomized smoothing seeds each image's noise by its index
(:mod:`deqshield.smoothing.records`), so its merged records equal one process's exactly.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class Shard:
    """This process's share of an evaluation: the samples i with i mod ``world_size`` ==
    ``rank``."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def owns(self, count: int) -> Tensor:
        """(count,) bool: which of ``count`` samples this process evaluates."""
        return torch.arange(count) % self.world_size == self.rank

    def merge(self, values: Tensor) -> Tensor:
        """Per-sample results that are zero / False outside this shard, summed over processes
        (bool tensors become their OR)."""
        if self.world_size == 1:
            return values
        merged = values.to(torch.int64)
        dist.all_reduce(merged)
        return merged.bool() if values.dtype == torch.bool else merged.to(values.dtype)

    def gather(self, items: list[Any]) -> list[Any]:
        """Every process's ``items`` (picklable), concatenated in rank order."""
        if self.world_size == 1:
            return items
        gathered: list[list[Any]] = [[] for _ in range(self.world_size)]
        dist.all_gather_object(gathered, items)
        return [item for part in gathered for item in part]

    def merge_lists(self, items: list[str]) -> list[str]:
        """The union of every process's ``items``, in rank order without repeats."""
        return list(dict.fromkeys(self.gather(items)))


def current_shard() -> Shard:
    """The shard of this process: the whole evaluation unless a process group is initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        return Shard()
    return Shard(dist.get_rank(), dist.get_world_size())


def launched_by_torchrun() -> bool:
    """True when the environment describes a multi-process ``torchrun`` launch."""
    return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


@contextlib.contextmanager
def sample_shards(prepare: Callable[[], None]) -> Iterator[Shard]:
    """Run ``prepare`` (e.g. check and create the output folder) on rank 0 only, then, when
    launched by ``torchrun``, join a gloo process group (its rendezvous waits for every
    process, so the others start after ``prepare``) and leave it at exit; yields this
    process's shard."""
    distributed = launched_by_torchrun()
    if not distributed or os.environ["RANK"] == "0":
        prepare()
    if not distributed:
        yield Shard()
        return
    dist.init_process_group("gloo")
    try:
        yield current_shard()
    finally:
        dist.destroy_process_group()
