"""Plain backpropagation through an unrolled solve (the reference gradient).

The forward solve is replaced by ``steps`` damped fixed-point iterations from z_0 recorded by
autograd, i.e. the weight-tied network of Eq. 1 (closer-look-neurips22) with memory O(steps).
``steps=None`` uses as many steps as the forward solver took. The returned value is the
unrolled state, not the solver's.
"""

from __future__ import annotations

import dataclasses

from typing import ClassVar, Annotated, Literal, Optional

from pydantic import Field
from torch import Tensor

from deqshield.gradients.base import CellFn
from deqshield.gradients.phantom import unroll
from deqshield.settings import component
from deqshield.solvers.trajectory import Trajectory


@component
class Backprop:
    """Backpropagation through ``steps`` unrolled iterations with damping ``damping``."""

    name: Literal["backprop"] = "backprop"
    replaces_forward: ClassVar[bool] = True
    steps: Optional[Annotated[int, Field(ge=1)]] = None
    damping: Annotated[float, Field(gt=0, le=1)] = 1.0

    def at_depth(self, depth: int) -> "Backprop":
        """Backpropagation through the first ``depth`` iterations (the value is z_depth)."""
        return dataclasses.replace(self, steps=depth)

    def attach(self, f: CellFn, trajectory: Trajectory) -> Tensor:
        steps = self.steps or max(trajectory.num_steps, 1)
        return unroll(f, trajectory.initial.detach(), steps, self.damping)
