"""Defenses are readouts of the trajectory: which state(s) the prediction is made from.

A readout maps (model, x) to logits using the model's deterministic forward solver. It must be
deterministic (no randomness at evaluation; see pitfalls.md) and, because attacks score the very
prediction they attack, the protocol always scores a defense with the readout's own ``logits``.
Readouts here stream the trajectory through the solver's callback, so they use O(1) memory.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor

from deqshield.models import DEQClassifier


@runtime_checkable
class Readout(Protocol):
    """A defense: logits of a DEQ for input x, read from its trajectory."""

    name: str

    def logits(self, model: DEQClassifier, x: Tensor) -> Tensor:
        """Logits (B, classes), no autograd graph."""
        ...
