"""The CerDEQ layer: z = ReLU(W z + E(x)), with forward, phantom gradient and interval bounds.

E is the extractor (U followed by batch norm, Sec. 3.5) and W the parametrised fusion weight
(:class:`~deqshield.certify.fusion.FusionWeight`, which includes the channel scales gamma).

Forward: the equilibrium is found by ``solver`` (Anderson in the paper) without autograd; then
the k damped steps z <- (1 - lambda) z + lambda f(z) of the phantom ``gradient`` (Geng et al.
2021) are recorded by autograd. Unlike :class:`deqshield.deq.DEQLayer`, the steps also run
without autograd, so the returned state is the same in training, evaluation, certification and
attacks (and input gradients exist in eval mode).

Certification contract: the layer reports the infinity-norm residual
rho = ||f(z) - z||_inf of the state it returns. Where rho <= ``residual_tolerance`` (delta),
that state lies in the layer's certified box (:func:`~deqshield.certify.adjoint.
equilibrium_interval` widened by delta / (1 - L)); where it does not, the model must abstain.
"""

from __future__ import annotations

from typing import Annotated, Optional

import torch
from pydantic import Field
from torch import Tensor, nn

from deqshield.certify.adjoint import AdjointSolve, equilibrium_interval
from deqshield.certify.fusion import FusionWeight
from deqshield.certify.intervals import Interval, propagate
from deqshield.gradients import Phantom
from deqshield.settings import component
from deqshield.solvers import Anderson, SolverSpec


@component
class EquilibriumSettings:
    """Forward and bound settings of a CerDEQ layer.

    Args:
        solver: forward solver from z_0 = 0 (an l2 tolerance <= delta, stop_mode "abs", makes
            every converged sample answer, since ||.||_inf <= ||.||_2).
        gradient: k steps and damping lambda of the phantom gradient.
        residual_tolerance: delta, the largest infinity-norm residual of a returned state for
            which the model still answers (and which the certificate allows for).
        bounds: how the adjoint DEQ is solved.
    """

    solver: SolverSpec = Anderson(memory=5, max_iter=50, tol=5e-5, stop_mode="abs")
    gradient: Phantom = Phantom()
    residual_tolerance: Annotated[float, Field(gt=0)] = 1e-4
    bounds: AdjointSolve = AdjointSolve()


class CerDEQLayer(nn.Module):
    """z = ReLU(W z + extractor(x)) for one input.

    Args:
        extractor: the explicit map x -> h (affine layers and batch norm only: no activation).
        fusion: the parametrised fusion weight W.
        settings: forward and bound settings.
    """

    def __init__(self, extractor: nn.Module, fusion: FusionWeight,
                 settings: EquilibriumSettings = EquilibriumSettings()):
        super().__init__()
        self.extractor = extractor
        self.fusion = fusion
        self.settings = settings

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Returns the state z (B, ...) and its residual ||ReLU(W z + h) - z||_inf (B,)."""
        h = self.extractor(x)
        op = self.fusion.operator()

        def cell(z: Tensor) -> Tensor:
            return torch.relu(op(z) + h)

        trajectory = self.settings.solver.solve(cell, torch.zeros_like(h), record_states=False)
        z = self.settings.gradient.attach(cell, trajectory)
        with torch.no_grad():
            residual = (cell(z) - z).abs().flatten(1).amax(dim=1)
        return z, residual

    def interval(self, box: Interval, trace: Optional[list[Interval]] = None) -> Interval:
        """Certified bounds on every state this layer returns with residual <= delta, for
        inputs x in ``box``; appends the fixed point's pre-activation bounds to ``trace``."""
        injection = propagate(self.extractor, box)
        bound = equilibrium_interval(self.fusion.operator(), injection, self.settings.bounds,
                                     delta=self.settings.residual_tolerance)
        if trace is not None:
            trace.append(bound.preactivation)
        return bound.box

    def contraction(self) -> float:
        """L = ||W||_inf of the current weight (< 1 by construction)."""
        return self.fusion.operator().contraction()
