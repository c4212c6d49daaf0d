"""Exact gradient by implicit differentiation (Eq. 2-3 of closer-look-neurips22).

At the equilibrium z* = f(z*; x), for a loss L(z*),

    dL/d(.) = (df(z*; x)/d(.))^T u*,        u* = (df(z*; x)/dz)^T u* + dL/dz*,

so the backward pass solves the linear fixed point for the adjoint u* with a fixed-point solver
(``backward_solver``) using vector-Jacobian products, then propagates u* through one application
of f to the parameters and the input. The gradient is exact when z* is an exact fixed point; when
the forward solver stopped early it is the gradient of an approximation (Sec. 6.1: the
"violated fixed-point structure" that obfuscates gradients), so check ``trajectory.converged``.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torch import Tensor

from deqshield.gradients.base import CellFn
from deqshield.settings import component
from deqshield.solvers import Anderson, SolverSpec
from deqshield.solvers.trajectory import Trajectory


@component
class Implicit:
    """Implicit differentiation; the adjoint equation is solved by ``backward_solver``."""

    name: Literal["implicit"] = "implicit"
    replaces_forward: ClassVar[bool] = False
    backward_solver: SolverSpec = Anderson(max_iter=30, tol=1e-6)

    def at_depth(self, depth: int) -> "Implicit":
        """Unchanged: this mode attaches at whatever state it is given."""
        return self

    def attach(self, f: CellFn, trajectory: Trajectory) -> Tensor:
        z = f(trajectory.final.detach())
        if not z.requires_grad:
            return z
        z_in, fz = _linearise(f, z.detach())
        z.register_hook(lambda grad: self._solve_adjoint(z_in, fz, grad))
        return z

    def adjoint(self, f: CellFn, z_star: Tensor, grad: Tensor) -> Tensor:
        """u* of Eq. 3 at ``z_star`` for the loss gradient ``grad`` = dL/dz."""
        z_in, fz = _linearise(f, z_star.detach())
        return self._solve_adjoint(z_in, fz, grad.detach())

    def _solve_adjoint(self, z_in: Tensor, fz: Tensor, grad: Tensor) -> Tensor:
        def adjoint_map(u: Tensor) -> Tensor:
            (vjp,) = torch.autograd.grad(fz, z_in, u, retain_graph=True)
            return vjp + grad

        return self.backward_solver.solve(adjoint_map, grad, record_states=False).final


def _linearise(f: CellFn, z: Tensor) -> tuple[Tensor, Tensor]:
    """(z, f(z)) with the graph of f kept for vector-Jacobian products in z."""
    z_in = z.requires_grad_()
    with torch.enable_grad():
        return z_in, f(z_in)
