"""Unrolled intermediates (Sec. 4.2, Eq. 13-16 of closer-look-neurips22).

Take the state z_n of the forward solve (no graph) and unroll k damped steps with autograd,

    z^_{n+t} = (1 - lambda) z^_{n+t-1} + lambda f(z^_{n+t-1}; x),   t = 1..k,   z^_n = z_n, (Eq. 16)

then backpropagate L(z^_{n+k}, y) = sum_b loss(head(z^_{n+k}), y)_b to x. Autograd evaluates
exactly Eq. 13-15: lambda sum_t (df(z^_{n+t}; x)/dx)^T P^(t) dL/dz with the products
P^(t) of (lambda df/dz + (1 - lambda) I)^T; z_n itself is treated as a constant. With
lambda = 1 this is backpropagation through k plain iterations from z_n (the regulating-dynamics
paper's intermediate unrolling, its Eq. 11). Memory O(k), independent of the solver's steps.

Full unrolling: ``index=0, steps=N, damping=1`` differentiates N plain iterations from z_0
(backpropagation through the whole solve, BPTT), the strongest simple surrogate for many small
DEQs. It equals autograd through the Picard iteration z_{t+1} = f(z_t; x) from z_0 (which does
not depend on x), whatever solver the model's forward pass uses.
"""

from __future__ import annotations

from typing import Annotated, Literal, Sequence

import torch
from pydantic import Field
from torch import Tensor, nn

from deqshield.gradients import unroll
from deqshield.paths.base import LossFn
from deqshield.paths.common import InputLink, StateMean, as_deq, resolve_indices
from deqshield.settings import component
from deqshield.solvers import SolverStep


def unrolled_gradient(model: nn.Module, x: Tensor, y: Tensor, loss: LossFn, path: str,
                      indices: Sequence[int] | None, steps: int, damping: float) -> Tensor:
    """Mean over the states z_i (i in ``indices``; ``None``: z_1..z_N) of the gradient of
    Eq. 13 from z_i, all from one forward solve with the model's solver."""
    deq = as_deq(model, path)
    link = InputLink(deq, x)

    def gradient(z_n: Tensor) -> Tensor:
        with torch.enable_grad():
            value = loss(deq.head(unroll(link.cell, z_n, steps, damping)), y).sum()
            (grad_u,) = torch.autograd.grad(value, link.u)
        return grad_u

    states = StateMean(resolve_indices(indices, deq.deq.solver.max_iter, path), gradient)

    def visit(s: SolverStep) -> None:
        if s.n <= states.horizon:
            states.visit(s.n, s.state.clone())

    deq.deq.solve(link.u.detach(), callback=visit)
    return link.input_gradient(states.mean())


@component
class UnrolledIntermediate:
    """Gradient of Eq. 13 at the state z_index, unrolled ``steps`` (k) times with damping
    ``damping`` (lambda; the paper's strongest attack on an 8-step DEQ: index 1, k 1, lambda 1).
    """

    name: Literal["unrolled"] = "unrolled"
    index: Annotated[int, Field(ge=0)] = 1
    steps: Annotated[int, Field(ge=1)] = 1
    damping: Annotated[float, Field(gt=0, le=1)] = 1.0

    @property
    def label(self) -> str:
        """``unrolled (i=.., K=.., lambda=..)``: the one label grammar of this path."""
        return f"unrolled (i={self.index}, K={self.steps}, lambda={self.damping:g})"

    def input_gradient(self, model: nn.Module, x: Tensor, y: Tensor, loss: LossFn) -> Tensor:
        return unrolled_gradient(model, x, y, loss, self.name, (self.index,), self.steps,
                                 self.damping)
