"""Attacks take a gradient path: how the gradient of a loss w.r.t. the input is estimated.

A DEQ's solver hides the dependence of its states on x, so "the" input gradient is a choice:
the exact implicit gradient at the final state, the phantom gradient, the simultaneous adjoint
at an intermediate state, an unrolled intermediate state, or an ensemble of these (Sec. 4-5 of
closer-look-neurips22). A gradient path returns d(sum_b loss_b)/dx for a per-sample loss on the
logits the path differentiates. Paths are deterministic; they never change the model.
"""

from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

from torch import Tensor, nn

LossFn = Callable[[Tensor, Tensor], Tensor]
"""(logits, labels) -> per-sample loss (B,)."""


@runtime_checkable
class GradientPath(Protocol):
    """A surrogate input gradient for attacks."""

    name: str

    def input_gradient(self, model: nn.Module, x: Tensor, y: Tensor, loss: LossFn) -> Tensor:
        """d(sum of loss)/dx, shape of x."""
        ...
