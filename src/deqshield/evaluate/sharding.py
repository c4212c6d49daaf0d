"""Evaluation across processes: each process attacks its shard of the samples, and the
per-sample outcomes are merged after every column, so every process holds the whole table.

Launched by ``torchrun`` (a process group is initialised), sample i belongs to the process of
rank i mod world_size. Attacks act per sample and draw their randomness per sample from the
protocol's seed (PGD's random starts), so the merged verdicts equal a single process's verdicts
with the same seed; only AutoAttack, which draws per batch, agrees in distribution only.
"""

from __future__ import annotations

from dataclasses import dataclass

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

    def merge_lists(self, items: list[str]) -> list[str]:
        """The union of every process's ``items``, in rank order without repeats."""
        if self.world_size == 1:
            return items
        gathered: list[list[str]] = [[] for _ in range(self.world_size)]
        dist.all_gather_object(gathered, items)
        return list(dict.fromkeys(item for part in gathered for item in part))


def current_shard() -> Shard:
    """The shard of this process: the whole evaluation unless a process group is initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        return Shard()
    return Shard(dist.get_rank(), dist.get_world_size())
