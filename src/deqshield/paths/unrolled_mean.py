"""The exact gradient of the ensemble readout (closer-look-neurips22 Sec. 5.2) for a plain
fixed-point iteration: backpropagation through N iterations from z_0 of

    L( head( (1 / (N - first + 1)) sum_{n=first}^{N} z_n ), y ),   z_{n+1} = f(z_n; x),

z_0 the cell's initial state (which does not depend on x). Where the model's solver is the plain
iteration (``Picard``, damping 1), this is autograd through the very states the ``Ensemble``
readout averages; for any other solver it is the plain-iteration surrogate of that readout,
as :class:`~deqshield.paths.unrolled.UnrolledIntermediate` with ``index=0`` is of the final
one. Memory O(N): every unrolled state is kept for the backward pass.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from deqshield.errors import InputError
from deqshield.paths.base import LossFn
from deqshield.paths.common import InputLink, as_deq
from deqshield.settings import component


@component
class UnrolledMean:
    """Backpropagation through ``steps`` (N) plain iterations from z_0 to the loss on
    head(mean of z_first..z_N)."""

    name: Literal["unrolled-mean"] = "unrolled-mean"
    first: Annotated[int, Field(ge=0)] = 1
    steps: Annotated[int, Field(ge=1)] = 1

    @property
    def label(self) -> str:
        return f"full unroll, mean of z_{self.first}..z_{self.steps}"

    def input_gradient(self, model: nn.Module, x: Tensor, y: Tensor, loss: LossFn) -> Tensor:
        deq = as_deq(model, self.name)
        if self.first > self.steps:
            raise InputError(f"UnrolledMean(first={self.first}) averages no state of "
                             f"{self.steps} iterations")
        link = InputLink(deq, x)
        with torch.enable_grad():
            z = deq.deq.cell.initial_state(link.u)
            total = z if self.first == 0 else torch.zeros_like(z)
            for _ in range(1, self.first):
                z = link.cell(z)
            for _ in range(max(self.first, 1), self.steps + 1):
                z = link.cell(z)
                total = total + z
            mean = total / (self.steps - self.first + 1)
            value = loss(deq.head(mean), y).sum()
            (grad_u,) = torch.autograd.grad(value, link.u)
        return link.input_gradient(grad_u)
