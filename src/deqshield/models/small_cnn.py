"""An explicit convolutional baseline of about the size of the small DEQs.

conv3x3(c_1) -> ReLU -> [conv3x3 stride 2 (c_i) -> ReLU]_{i>1} -> AvgPool_p -> Linear.
"""

from __future__ import annotations

from typing import Annotated, Literal, Sequence

from pydantic import Field
from torch import nn

from deqshield.models.base import SequentialClassifier
from deqshield.settings import component


class SmallCNN(SequentialClassifier):
    """The network built by :class:`SmallCNNSettings`."""

    def __init__(self, input_shape: Sequence[int], num_classes: int,
                 channels: Sequence[int], pool: int):
        layers: list[nn.Module] = []
        previous = int(input_shape[0])
        for index, width in enumerate(channels):
            layers += [nn.Conv2d(previous, width, 3, stride=1 if index == 0 else 2, padding=1),
                       nn.ReLU()]
            previous = width
        layers += [nn.AdaptiveAvgPool2d(pool), nn.Flatten(),
                   nn.Linear(previous * pool ** 2, num_classes)]
        super().__init__(input_shape, num_classes, layers)


@component
class SmallCNNSettings:
    """Settings of the explicit CNN baseline."""

    name: Literal["small-cnn"] = "small-cnn"
    channels: Annotated[tuple[Annotated[int, Field(ge=1)], ...], Field(min_length=1)] = (16, 16)
    pool: Annotated[int, Field(ge=1)] = 4

    def build(self, input_shape: Sequence[int], num_classes: int) -> SmallCNN:
        return SmallCNN(input_shape, num_classes, self.channels, self.pool)
