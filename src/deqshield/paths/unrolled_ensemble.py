"""The ensemble of unrolled intermediates (Sec. 5.1 and the "ensemble" attacks of Tables 2-3 of
closer-look-neurips22): the mean over states z_i of the unrolled-intermediate gradients,

    (1 / |I|) sum_{i in I} [dL/dx]_i^(k)        (Eq. 13 from each z_i),

with I = {1..N} (N the solver's ``max_iter``) by default. One forward solve serves every state;
each selected state costs k differentiable cell evaluations and their backward pass, done while
the solver streams it, so the memory stays O(k).
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional

from pydantic import Field
from torch import Tensor, nn

from deqshield.paths.base import LossFn
from deqshield.paths.unrolled import unrolled_gradient
from deqshield.settings import component


@component
class UnrolledEnsemble:
    """Mean of :class:`UnrolledIntermediate` gradients over ``indices`` (``None``: z_1..z_N)."""

    name: Literal["unrolled-ensemble"] = "unrolled-ensemble"
    steps: Annotated[int, Field(ge=1)] = 1
    damping: Annotated[float, Field(gt=0, le=1)] = 1.0
    indices: Optional[Annotated[tuple[Annotated[int, Field(ge=0)], ...], Field(min_length=1)]] \
        = None

    def input_gradient(self, model: nn.Module, x: Tensor, y: Tensor, loss: LossFn) -> Tensor:
        return unrolled_gradient(model, x, y, loss, self.name, self.indices, self.steps,
                                 self.damping)
