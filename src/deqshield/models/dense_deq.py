"""A fully-connected DEQ: f(z, u) = ReLU(W z + u), u = A flatten(x) + a, logits = C z + c.

Small enough to train on two CPU cores in a minute on MNIST-sized inputs. W starts with a
small spectral norm (``init_scale``), so f starts as a contraction in z.
"""

from __future__ import annotations

from typing import Annotated, Literal, Sequence

from pydantic import Field
from torch import Tensor, nn

from deqshield.deq import DEQCell
from deqshield.gradients import GradientSpec, Phantom
from deqshield.models.base import DEQClassifier
from deqshield.settings import component
from deqshield.solvers import Anderson, SolverSpec


class DenseCell(DEQCell):
    """f(z, u) = ReLU(W z + u) on vectors z of size ``width``."""

    def __init__(self, width: int, init_scale: float):
        super().__init__()
        self.linear = nn.Linear(width, width, bias=False)
        nn.init.orthogonal_(self.linear.weight, gain=init_scale)

    def forward(self, z: Tensor, u: Tensor) -> Tensor:
        return (self.linear(z) + u).relu()


@component
class DenseDEQSettings:
    """Settings of the fully-connected DEQ classifier."""

    name: Literal["dense-deq"] = "dense-deq"
    width: Annotated[int, Field(ge=1)] = 128
    init_scale: Annotated[float, Field(gt=0)] = 0.5
    solver: SolverSpec = Anderson(max_iter=20, tol=1e-4)
    gradient: GradientSpec = Phantom(steps=5, damping=0.5)

    def build(self, input_shape: Sequence[int], num_classes: int) -> DEQClassifier:
        features = 1
        for size in input_shape:
            features *= int(size)
        injection = nn.Sequential(nn.Flatten(), nn.Linear(features, self.width))
        return DEQClassifier(injection, DenseCell(self.width, self.init_scale),
                             nn.Linear(self.width, num_classes), input_shape, num_classes,
                             self.solver, self.gradient)
