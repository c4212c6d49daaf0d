"""Per-sample attack losses on logits."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from deqshield.paths.base import LossFn


def cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    """CE per sample."""
    return nn.functional.cross_entropy(logits, y, reduction="none")


def margin(logits: Tensor, y: Tensor) -> Tensor:
    """max_{j != y} logit_j - logit_y per sample (positive = misclassified; Carlini-Wagner)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.masked_fill(nn.functional.one_hot(y, logits.shape[1]).bool(), -torch.inf)
    return others.max(dim=1).values - true


LOSSES: dict[str, LossFn] = {"ce": cross_entropy, "margin": margin}
LossName = Literal["ce", "margin"]
