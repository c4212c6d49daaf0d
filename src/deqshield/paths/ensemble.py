"""A generic gradient ensemble: the mean of several paths' input gradients,

    g(x) = (1 / M) sum_m g_m(x),

e.g. the final-state exact gradient with a simultaneous-adjoint one. Each member runs its own
forward solve; the state ensembles of one path (``SimultaneousAdjoint(ensemble=True)``,
``AdjointBroyden(ensemble=True)``, ``UnrolledEnsemble``) share one solve instead and are the
cheaper way to average over states. Members cannot be ensembles themselves.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field
from torch import Tensor, nn

from deqshield.paths.adjoint_broyden import AdjointBroyden
from deqshield.paths.base import LossFn
from deqshield.paths.final_state import FinalState
from deqshield.paths.simultaneous_adjoint import SimultaneousAdjoint
from deqshield.paths.unrolled import UnrolledIntermediate
from deqshield.paths.unrolled_ensemble import UnrolledEnsemble
from deqshield.settings import component

MemberSpec = Annotated[
    Union[FinalState, SimultaneousAdjoint, AdjointBroyden, UnrolledIntermediate,
          UnrolledEnsemble],
    Field(discriminator="name"),
]


@component
class EnsemblePath:
    """Mean of the gradients of ``paths`` (at least one)."""

    paths: Annotated[tuple[MemberSpec, ...], Field(min_length=1)]
    name: Literal["ensemble"] = "ensemble"

    def input_gradient(self, model: nn.Module, x: Tensor, y: Tensor, loss: LossFn) -> Tensor:
        total = self.paths[0].input_gradient(model, x, y, loss)
        for path in self.paths[1:]:
            total = total + path.input_gradient(model, x, y, loss)
        return total / len(self.paths)
