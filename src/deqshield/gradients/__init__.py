"""Training-gradient modes of a DEQ layer: implicit (exact), phantom, plain backprop, plus the
Jacobian regulariser."""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from deqshield.gradients.backprop import Backprop
from deqshield.gradients.base import CellFn, GradientMode
from deqshield.gradients.implicit import Implicit
from deqshield.gradients.jacobian import jacobian_frobenius
from deqshield.gradients.phantom import Phantom, unroll

GradientSpec = Annotated[Union[Implicit, Phantom, Backprop], Field(discriminator="name")]
"""A gradient section of a config: ``{name: implicit|phantom|backprop, ...settings}``."""

__all__ = ["Backprop", "CellFn", "GradientMode", "GradientSpec", "Implicit", "Phantom",
           "jacobian_frobenius", "unroll"]
