"""The training-gradient interface of a DEQ layer.

The forward solve runs without autograd (memory O(1) in the number of steps) and yields a
trajectory. A gradient mode then returns a tensor ``z`` with the value of the equilibrium
(or its unrolled refinement) whose backward pass implements one way of differentiating through
the fixed point. ``f`` is the cell with the input injection bound in, ``f(z) = f_theta(z; x)``,
built so that autograd reaches the parameters theta and the input x.

Nothing here looks at ``module.training``: gradients exist in eval mode, where attacks run.
"""

from __future__ import annotations

from typing import Callable, ClassVar, Protocol, runtime_checkable

from torch import Tensor

from deqshield.solvers.trajectory import Trajectory

CellFn = Callable[[Tensor], Tensor]


@runtime_checkable
class GradientMode(Protocol):
    """Attach a differentiable equilibrium to a solved trajectory.

    ``replaces_forward`` says whether the mode's state is also the layer's forward value
    (plain backprop through an unrolled network) or only shapes the backward pass of the
    solver's state (implicit and phantom gradients).
    """

    replaces_forward: ClassVar[bool]

    def attach(self, f: CellFn, trajectory: Trajectory) -> Tensor:
        """Return z (shape of ``trajectory.final``) carrying this mode's gradient."""
        ...

    def at_depth(self, depth: int) -> "GradientMode":
        """This mode for the state after ``depth`` solver iterations (the random-intermediate
        loss, regulating-dynamics-icml23 Eq. 10): a mode that attaches at the given state is
        unchanged; a mode that replaces the forward solve unrolls ``depth`` iterations."""
        ...
