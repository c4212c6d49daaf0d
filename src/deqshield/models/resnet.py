"""The explicit ResNet-18 baseline of the papers (CIFAR variant, He et al. 2016).

    stem:   ReLU(BN(Conv3x3(x)))                              (w_0 channels, no pooling)
    stages: 4 stages of 2 basic blocks, widths w_k = 64 * 2^k * width, the first block of
            stages 2-4 with stride 2
    block:  ReLU(BN(Conv3x3(ReLU(BN(Conv3x3(x))))) + shortcut(x)), the shortcut a
            BN(Conv1x1) projection where the stride or width changes, else the identity
    head:   Linear(GlobalAvgPool(.))

At ``width=1`` on 3x32x32 inputs with 10 classes it has 11,173,962 parameters.
"""

from __future__ import annotations

from typing import Annotated, Literal, Sequence

from pydantic import Field
from torch import Tensor, nn

from deqshield.errors import InputError
from deqshield.models.base import SequentialClassifier
from deqshield.settings import component


def conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> nn.Sequential:
    """Conv (no bias, 'same' padding) followed by batch norm."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel, stride=stride,
                                   padding=kernel // 2, bias=False),
                         nn.BatchNorm2d(out_channels))


class BasicBlock(nn.Module):
    """ReLU(BN(Conv3x3(ReLU(BN(Conv3x3_stride(x))))) + shortcut(x))."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn(in_channels, out_channels, 3, stride), nn.ReLU(),
                                  conv_bn(out_channels, out_channels, 3))
        projects = stride != 1 or in_channels != out_channels
        self.shortcut = conv_bn(in_channels, out_channels, 1, stride) if projects \
            else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return (self.body(x) + self.shortcut(x)).relu()


class ResNet18(SequentialClassifier):
    """The network built by :class:`ResNet18Settings`."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, width: float):
        widths = [max(1, round(64 * 2 ** k * width)) for k in range(4)]
        layers: list[nn.Module] = [conv_bn(int(input_shape[0]), widths[0], 3), nn.ReLU()]
        previous = widths[0]
        for stage, channels in enumerate(widths):
            for block in range(2):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(BasicBlock(previous, channels, stride))
                previous = channels
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(previous, num_classes)]
        super().__init__(input_shape, num_classes, layers)


@component
class ResNet18Settings:
    """Settings of the ResNet-18 baseline; ``width`` scales every stage's channels (1 is the
    standard network, smaller values give thin networks for tests and CPU runs)."""

    name: Literal["resnet18"] = "resnet18"
    width: Annotated[float, Field(gt=0, le=16)] = 1.0

    def build(self, input_shape: Sequence[int], num_classes: int) -> ResNet18:
        if len(input_shape) != 3:
            raise InputError(f"ResNet18 needs images (C, H, W), got input shape "
                             f"{tuple(input_shape)}")
        return ResNet18(input_shape, num_classes, self.width)
