"""Unrolling-based phantom gradient (Eq. 4-6 of closer-look-neurips22; Geng et al. 2021).

Starting from the solver's state z_N (``trajectory.final``, detached), unroll k damped steps

    z^_{N+t} = (1 - lambda) z^_{N+t-1} + lambda f(z^_{N+t-1}; x),   t = 1..k,   z^_N = z_N,

with autograd. Backpropagating a loss at z^_{N+k} gives Eq. 4. The returned value is z^_{N+k}
(the papers' "final state after unrolling"), and the memory is O(k), independent of N. As
k grows with lambda in (0, 1] on a contractive f, the gradient approaches the exact one.
"""

from __future__ import annotations

from typing import ClassVar, Annotated, Literal

from pydantic import Field
from torch import Tensor

from deqshield.gradients.base import CellFn
from deqshield.settings import component
from deqshield.solvers.trajectory import Trajectory


def unroll(f: CellFn, z: Tensor, steps: int, damping: float) -> Tensor:
    """``steps`` damped iterations z <- (1 - damping) z + damping f(z), differentiable."""
    for _ in range(steps):
        z = f(z) if damping == 1.0 else (1 - damping) * z + damping * f(z)
    return z


@component
class Phantom:
    """Phantom gradient with ``steps`` (k) unrolled steps and damping ``damping`` (lambda)."""

    name: Literal["phantom"] = "phantom"
    replaces_forward: ClassVar[bool] = False
    steps: Annotated[int, Field(ge=1)] = 5
    damping: Annotated[float, Field(gt=0, le=1)] = 0.5

    def at_depth(self, depth: int) -> "Phantom":
        """Unchanged: this mode attaches at whatever state it is given."""
        return self

    def attach(self, f: CellFn, trajectory: Trajectory) -> Tensor:
        return unroll(f, trajectory.final.detach(), self.steps, self.damping)
