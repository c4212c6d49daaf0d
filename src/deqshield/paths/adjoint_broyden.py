"""Adjoint Broyden, the comparison of Appendix D of closer-look-neurips22 (SHINE, Ramzi et al.
2022): reuse the forward Broyden estimate B_n ~ (J_n - I)^{-1} directly as the inverse of the
adjoint system (J_n - I)^T u = -dL/dz (standard convention J_n = df(z_n; x)/dz), i.e.

    u_n = -B_n^T dL(z_n, y)/dz,        [dL/dx]_n = (df(z_n; x)/dx)^T u_n,

with L(z, y) = sum_b loss(head(z), y)_b. At an exact equilibrium with an exact B this is the
implicit gradient; B_0 = -I gives u_0 = dL(z_0)/dz. ``index`` = n picks [dL/dx]_n (``None``:
the final state z_N), ``ensemble=True`` averages n = 1..N; frozen states after an early stop
are read as in :mod:`deqshield.paths.common`. No iteration of u: one B_n^T product per state.
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional

import torch
from pydantic import Field
from torch import Tensor, nn

from deqshield.paths.base import LossFn
from deqshield.paths.common import (StateMean, broyden_path, check_index_or_ensemble,
                                    loss_gradient)
from deqshield.settings import component
from deqshield.solvers import SolverStep


@component
class AdjointBroyden:
    """Surrogate gradient with the adjoint u_n = -B_n^T dL(z_n)/dz of the forward Broyden B_n.

    Args:
        index: the state n >= 0 whose gradient is used (``None``: the final state).
        ensemble: average the gradients of all states n = 1..N instead (``index`` must be None).
    """

    name: Literal["adjoint-broyden"] = "adjoint-broyden"
    index: Optional[Annotated[int, Field(ge=0)]] = None
    ensemble: bool = False

    def __post_init__(self) -> None:
        check_index_or_ensemble(self.index, self.ensemble)

    def input_gradient(self, model: nn.Module, x: Tensor, y: Tensor, loss: LossFn) -> Tensor:
        deq, chosen, link = broyden_path(model, x, self.index, self.ensemble, self.name)

        def gradient(state: tuple[Tensor, Tensor]) -> Tensor:
            z_n, u_n = state
            with torch.enable_grad():
                (grad_u,) = torch.autograd.grad(link.cell(z_n), link.u, u_n)
            return grad_u

        states: StateMean[tuple[Tensor, Tensor]] = StateMean(
            chosen, gradient)

        def visit(s: SolverStep) -> None:
            if s.n <= states.horizon:
                assert s.inverse_jacobian is not None
                u_n = -s.inverse_jacobian.apply_transpose(loss_gradient(deq, s.state, y, loss))
                states.visit(s.n, (s.state.clone(), u_n))

        deq.deq.solve(link.u.detach(), callback=visit)
        return link.input_gradient(states.mean())
