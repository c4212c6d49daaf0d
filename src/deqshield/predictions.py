"""Quantities computed from a prediction (logits)."""

from __future__ import annotations

import torch
from torch import Tensor


def prediction_entropy(logits: Tensor) -> Tensor:
    """H = -sum_c p_c log p_c per sample, p = softmax(logits)."""
    log_p = torch.log_softmax(logits, dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)
