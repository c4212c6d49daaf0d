"""The DEQ layer: z* = f_theta(z*; u), solved as a trajectory, differentiated by a gradient mode.

A *cell* is an ``nn.Module`` computing f_theta(z, u) for a state z of shape (B, *state_shape) and
an input injection u (whatever the cell's injection module produced). ``DEQLayer`` runs the
forward solver without autograd (so memory does not grow with the number of steps), then hands
the trajectory to a gradient mode (``Implicit``, ``Phantom`` or ``Backprop``) that attaches the
backward pass. The trajectory of raw iterates z_0..z_T is returned with the state so that
readouts (defenses) and gradient paths (attacks) can use the intermediate states.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from deqshield.gradients import GradientMode, Phantom
from deqshield.solvers import FixedPointSolver, Picard, Trajectory
from deqshield.solvers.base import StateCallback
from deqshield.solvers.warm import active_warm_starts


class DEQCell(nn.Module):
    """Base class of cells f_theta(z, u). Subclasses implement ``forward`` and may override
    ``initial_state`` (zeros of the state shape by default)."""

    def forward(self, z: Tensor, u: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def state_shape(self, u: Tensor) -> tuple[int, ...]:
        """Shape of one sample's state for injection u (default: the injection's shape)."""
        return tuple(u.shape[1:])

    def initial_state(self, u: Tensor) -> Tensor:
        """z_0 = 0, as in the papers."""
        return u.new_zeros((u.shape[0], *self.state_shape(u)))


class DEQLayer(nn.Module):
    """Equilibrium layer with a forward ``solver`` and a training-gradient ``gradient`` mode.

    Both are settings objects and may be swapped at any time (e.g. more solver steps at test
    time, or the exact gradient for an attack): ``layer.solver = Anderson(max_iter=50)``.
    """

    def __init__(self, cell: DEQCell, solver: Optional[FixedPointSolver] = None,
                 gradient: Optional[GradientMode] = None):
        super().__init__()
        self.cell = cell
        self.solver: FixedPointSolver = solver or Picard(max_iter=30)
        self.gradient: GradientMode = gradient or Phantom()

    def bind(self, u: Tensor):
        """The map z -> f_theta(z, u) with the injection bound in."""
        return lambda z: self.cell(z, u)

    def solve(self, u: Tensor, *, solver: Optional[FixedPointSolver] = None,
              record_states: bool = False, callback: Optional[StateCallback] = None,
              z0: Optional[Tensor] = None) -> Trajectory:
        """Run the forward solver (no autograd) and return its trajectory."""
        start = self.cell.initial_state(u) if z0 is None else z0
        return (solver or self.solver).solve(self.bind(u.detach()), start,
                                             record_states=record_states, callback=callback)

    def forward(self, u: Tensor, *, gradient: Optional[GradientMode] = None,
                record_states: bool = False,
                callback: Optional[StateCallback] = None) -> tuple[Tensor, Trajectory]:
        """The equilibrium with the gradient mode's backward attached, and the trajectory.

        For the implicit and phantom modes the value is the solver's state z_T, with or without
        autograd, so training, attacks, readouts and evaluation score the same function; the
        mode only decides the backward pass: z_T + (z_mode - stop_gradient(z_mode)), with
        z_mode = f(z_T) (``Implicit``) or the unrolled state (``Phantom``). ``Backprop``
        replaces the forward pass: the value is its unrolled network's state, in every mode.
        ``gradient`` overrides the layer's mode for this call (e.g. an attack's choice).
        Inside an attack's ``WarmStarts.active`` block the solve starts from the attack's
        previous state (:mod:`deqshield.solvers.warm`); :meth:`solve` never does. A warm-started
        ``Backprop`` unrolls as many steps as the warm solve takes (its unroll is the forward
        pass, so a warm start that shortened only the solve would save nothing).
        """
        mode = gradient or self.gradient
        warm = active_warm_starts()
        if warm is None:
            trajectory = self.solve(u, record_states=record_states, callback=callback)
        else:
            memory, rows = warm
            z0, solver = memory.start(self.solver, self.cell.initial_state(u), rows)
            trajectory = self.solve(u, solver=solver, record_states=record_states,
                                    callback=callback, z0=z0)
            memory.remember(trajectory.final, rows)
            if mode.replaces_forward and solver is not self.solver:  # a warm-started solve
                mode = mode.at_depth(solver.max_iter)
        if mode.replaces_forward:
            return mode.attach(self.bind(u), trajectory), trajectory
        if not torch.is_grad_enabled():
            return trajectory.final, trajectory
        z_mode = mode.attach(self.bind(u), trajectory)
        return trajectory.final + (z_mode - z_mode.detach()), trajectory
