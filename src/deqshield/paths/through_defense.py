"""Adaptive gradient paths through the entropy-reduction defense (regulating-dynamics-icml23,
Sec. 3.2), so that the defense is attacked with the defense switched on.

* ``ThroughEntropyReduction``: the full white-box gradient. Algorithm 1 is re-run with autograd
  (``EntropyReduction.regulate(differentiable=True)``): the states are unrolled as damped
  fixed-point steps (exact for a Picard solver) and the input updates are differentiated
  exactly (sign steps have zero derivative almost everywhere, so only the projection onto the
  box around x carries x's gradient). The loss is taken on the defense's own base readout
  (final, early or ensemble) of the regulated states. Memory O(N).
* ``EntropyBPDA``: a cheaper BPDA-style approximation (Athalye et al. 2018): run the defense
  without a graph, take the input x' = x + delta it ends with, treat delta as a constant
  (d x'/d x = I) and use an inner path (e.g. an unrolled intermediate) at x'.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from deqshield.paths.base import LossFn
from deqshield.paths.final_state import FinalState
from deqshield.paths.unrolled import UnrolledIntermediate
from deqshield.readouts.entropy import EntropyReduction
from deqshield.settings import component


@component
class ThroughEntropyReduction:
    """Backpropagate through the whole regulated trajectory of ``defense``."""

    name: Literal["through-entropy-reduction"] = "through-entropy-reduction"
    defense: EntropyReduction = EntropyReduction()

    def input_gradient(self, model: nn.Module, x: Tensor, y: Tensor, loss: LossFn) -> Tensor:
        x_var = x.detach().requires_grad_()
        with torch.enable_grad():
            regulated = self.defense.regulate(model, x_var, differentiable=True)
            value = loss(self.defense.read(model, regulated), y).sum()
            (grad,) = torch.autograd.grad(value, x_var)
        return grad


@component
class EntropyBPDA:
    """``inner`` path at the defense's final input, with the input update treated as identity."""

    name: Literal["entropy-bpda"] = "entropy-bpda"
    defense: EntropyReduction = EntropyReduction()
    inner: FinalState | UnrolledIntermediate = FinalState()

    def input_gradient(self, model: nn.Module, x: Tensor, y: Tensor, loss: LossFn) -> Tensor:
        purified = self.defense.regulate(model, x).final_input
        return self.inner.input_gradient(model, purified, y, loss)
