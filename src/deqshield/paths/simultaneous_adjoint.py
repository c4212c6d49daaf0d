"""Simultaneous adjoint (Sec. 4.1, Eq. 9-11 and 17 of closer-look-neurips22).

Notation: J_n = df(z_n; x)/dz in the *standard* convention (J_ij = df_i/dz_j); the paper writes
Jacobians transposed, so its (df/dz) u is J_n^T u here. Broyden's B_n estimates
(dg/dz)^{-1} = (J_n - I)^{-1} in the standard convention (Eq. 7: z_{n+1} = z_n - alpha B_n g_n).

Along the forward Broyden solve, starting from u_0 = 0, with L(z, y) = sum_b loss(head(z), y)_b:

    v_n     = J_n^T u_n + dL(z_n, y)/dz - u_n                          (Eq. 9)
    u_{n+1} = u_n - beta B_n^T v_n                                     (Eq. 10)
    [dL/dx]_n = (df(z_n; x)/dx)^T u_n                                  (Eq. 11)

Why B_n^T: the adjoint u* = J*^T u* + dL/dz* (Eq. 3) solves (J* - I)^T u* = -dL/dz*, whose
inverse Jacobian is ((J - I)^{-1})^T ~ B_n^T. Appendix B's matrix B-bar_n with
B-bar_n (dg/dz)_paper = I - eps_n is exactly this: (dg/dz)_paper = (J_n - I)^T, so B-bar_n
approximates (J_n - I)^{-T} = B_n^T. Then u_{n+1} - u* = ((1 - beta) I + beta eps_n)(u_n - u*)
+ (terms vanishing as z_n -> z*), so u_n -> u* for 0 < beta < 1 when ||eps_n|| < 1; the fixed
point of Eq. 10 is u* whatever the accuracy of B_n (only the rate depends on it).

``index`` = n uses [dL/dx]_n (``None``: the final state z_N, N = max_iter); ``ensemble=True``
uses the mean of [dL/dx]_n over n = 1..N (Eq. 17 writes the sum; the mean differs by the
positive factor 1/N, which changes neither sign-PGD nor normalised-l2 steps). The adjoint runs
along the states the solver streams; when the solve stops at T < N (every sample converged),
the frozen states z_n = z_T (n > T) are read with the last adjoint state u_T.
Cost per state: one extra evaluation of f with its backward, and one of the head.
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
class SimultaneousAdjoint:
    """Surrogate gradient from the adjoint states u_n iterated alongside a Broyden solve.

    Args:
        index: the state n >= 1 whose gradient [dL/dx]_n is used (``None``: the final state).
        step: beta of Eq. 10 (the paper uses 0.5 for 8-step and 0.05 for 50-step solvers).
        ensemble: average [dL/dx]_n over all states n = 1..N instead (``index`` must be None).
    """

    name: Literal["simultaneous-adjoint"] = "simultaneous-adjoint"
    index: Optional[Annotated[int, Field(ge=1)]] = None
    step: Annotated[float, Field(gt=0, le=1)] = 0.5
    ensemble: bool = False

    def __post_init__(self) -> None:
        check_index_or_ensemble(self.index, self.ensemble)

    def input_gradient(self, model: nn.Module, x: Tensor, y: Tensor, loss: LossFn) -> Tensor:
        deq, chosen, link = broyden_path(model, x, self.index, self.ensemble, self.name)
        states: StateMean[Tensor] = StateMean(chosen,
                                              lambda grad_u: grad_u)
        adjoint: dict[str, Tensor] = {}

        def advance(s: SolverStep) -> None:
            if s.n > states.horizon:
                return
            u_n = adjoint.get("u", torch.zeros_like(s.state))
            z = s.state.detach().requires_grad_()
            with torch.enable_grad():
                jz, ju = torch.autograd.grad(link.cell(z), (z, link.u), u_n)
            states.visit(s.n, ju)  # (df(z_n, u)/du)^T u_n, Eq. 11 before du/dx
            if s.n < states.horizon:
                assert s.inverse_jacobian is not None
                v_n = jz + loss_gradient(deq, s.state, y, loss) - u_n
                adjoint["u"] = u_n - self.step * s.inverse_jacobian.apply_transpose(v_n)

        deq.deq.solve(link.u.detach(), callback=advance)
        return link.input_gradient(states.mean())
