"""The classifier around a DEQ layer: input injection -> DEQ trajectory -> classification head.

``DEQClassifier`` exposes every piece an attack or defense needs: ``inject(x)`` (u), the cell
``f(z, u)`` through ``deq.cell`` / ``cell_map(x)``, ``head(z)`` for any state (intermediate
states have the equilibrium's shape, so every z_n can be classified), and ``trajectory(x)``.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from deqshield.deq import DEQCell, DEQLayer
from deqshield.gradients import CellFn, GradientMode
from deqshield.solvers import FixedPointSolver, Trajectory
from deqshield.solvers.base import StateCallback
from deqshield.validation import check_input


class Classifier(nn.Module):
    """Base of every deqshield classifier: knows its input shape and number of classes."""

    def __init__(self, input_shape: Sequence[int], num_classes: int):
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)
        self.num_classes = int(num_classes)

    def check_input(self, x: Tensor) -> None:
        """Raise :class:`~deqshield.errors.InputError` unless x is a non-empty finite batch of
        ``input_shape`` with the dtype of the model's weights."""
        weight = next(self.parameters(), None)
        check_input(x, self.input_shape, None if weight is None else weight.dtype)


class SequentialClassifier(Classifier):
    """An explicit classifier: ``layers`` applied in order to a checked input batch."""

    def __init__(self, input_shape: Sequence[int], num_classes: int,
                 layers: Sequence[nn.Module]):
        super().__init__(input_shape, num_classes)
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return self.layers(x)


class DEQClassifier(Classifier):
    """logits = head(z*), z* = f(z*, inject(x)).

    Args:
        injection: x -> u, computed once per input.
        cell: the DEQ cell f(z, u).
        head: any state z_n -> logits.
        solver, gradient: the DEQ layer's forward solver and training-gradient mode.
    """

    def __init__(self, injection: nn.Module, cell: DEQCell, head: nn.Module,
                 input_shape: Sequence[int], num_classes: int,
                 solver: Optional[FixedPointSolver] = None,
                 gradient: Optional[GradientMode] = None):
        super().__init__(input_shape, num_classes)
        self.injection = injection
        self.deq = DEQLayer(cell, solver, gradient)
        self.head = head

    @property
    def cell(self) -> DEQCell:
        return self.deq.cell

    def inject(self, x: Tensor) -> Tensor:
        """u = injection(x), validated input."""
        self.check_input(x)
        return self.injection(x)

    def cell_map(self, x: Tensor) -> CellFn:
        """z -> f_theta(z; x), differentiable in z, x and the parameters."""
        return self.deq.bind(self.inject(x))

    def trajectory(self, x: Tensor, *, solver: Optional[FixedPointSolver] = None,
                   record_states: bool = True,
                   callback: Optional[StateCallback] = None) -> Trajectory:
        """The forward trajectory z_0..z_T for input x (no autograd)."""
        with torch.no_grad():
            return self.deq.solve(self.inject(x), solver=solver, record_states=record_states,
                                  callback=callback)

    def forward_with_trajectory(self, x: Tensor) -> tuple[Tensor, Trajectory]:
        """Logits of the (gradient-attached) equilibrium and the forward trajectory."""
        z, trajectory = self.deq(self.inject(x))
        return self.head(z), trajectory

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_trajectory(x)[0]
