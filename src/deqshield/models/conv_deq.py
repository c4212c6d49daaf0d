"""A single-scale convolutional DEQ for small images.

    u = GN(Conv_s(x))                       (stride s = ``downsample``)
    f(z, u) = GN(ReLU(Conv(z) + u))         (3x3, ``channels`` channels)
    logits = Linear(flatten(AvgPool_p(ReLU(z))))

One convolution per evaluation keeps a solve cheap on CPU; the group norm bounds the state,
and the recurrent convolution starts with a small weight (``init_scale``) so f starts close to
a contraction.
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


def group_norm(channels: int) -> nn.GroupNorm:
    """Group norm with up to 8 groups that divide ``channels``."""
    groups = max(g for g in range(1, min(8, channels) + 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


class ConvCell(DEQCell):
    """f(z, u) = GN(ReLU(Conv3x3(z) + u))."""

    def __init__(self, channels: int, init_scale: float):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        nn.init.normal_(self.conv.weight, std=init_scale / (3 * channels ** 0.5))
        self.norm = group_norm(channels)

    def forward(self, z: Tensor, u: Tensor) -> Tensor:
        return self.norm((self.conv(z) + u).relu())


@component
class ConvDEQSettings:
    """Settings of the single-scale convolutional DEQ classifier."""

    name: Literal["conv-deq"] = "conv-deq"
    channels: Annotated[int, Field(ge=1)] = 16
    downsample: Annotated[int, Field(ge=1, le=4)] = 2
    pool: Annotated[int, Field(ge=1)] = 4
    init_scale: Annotated[float, Field(gt=0)] = 0.5
    solver: SolverSpec = Anderson(max_iter=12, tol=1e-3)
    gradient: GradientSpec = Phantom(steps=5, damping=0.5)

    def build(self, input_shape: Sequence[int], num_classes: int) -> DEQClassifier:
        in_channels = int(input_shape[0])
        injection = nn.Sequential(
            nn.Conv2d(in_channels, self.channels, 3, stride=self.downsample, padding=1),
            group_norm(self.channels))
        head = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(self.pool), nn.Flatten(),
                             nn.Linear(self.channels * self.pool ** 2, num_classes))
        return DEQClassifier(injection, ConvCell(self.channels, self.init_scale), head,
                             input_shape, num_classes, self.solver, self.gradient)
