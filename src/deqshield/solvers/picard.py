"""Damped fixed-point (Picard / Krasnosel'skii-Mann) iteration.

    z_{n+1} = (1 - lambda) z_n + lambda f(z_n),      z_0 given,

which is the forward pass of a weight-tied, input-injected network (Eq. 1 of
closer-look-neurips22) for lambda = 1, and the damped unrolling of its Eq. 6 / Eq. 16 otherwise.
It converges for any lambda in (0, 1] when f is a contraction.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import Tensor

from deqshield.settings import component
from deqshield.solvers.base import FixedPointSolver, FlatProblem, SolveRecorder


@component
class Picard(FixedPointSolver):
    """Damped fixed-point iteration with damping ``damping`` (lambda in (0, 1])."""

    name: Literal["picard"] = "picard"
    damping: Annotated[float, Field(gt=0, le=1)] = 1.0

    def _iterate(self, f: FlatProblem, z: Tensor, rec: SolveRecorder) -> Tensor:
        lam = self.damping
        rec.emit(z)
        fz = f(z)
        for n in range(self.max_iter):
            g = fz - z  # the residual, also the damped step's direction
            if not rec.observe(z, fz, g):
                return z
            z = rec.advance(z, fz if lam == 1.0 else torch.add(z, g, alpha=lam))
            rec.emit(z)
            if self._evaluates_after(n):
                fz = f(z)
        return self._close(rec, z, fz)
