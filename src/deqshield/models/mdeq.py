"""The multiscale DEQ classifier (MDEQ, Bai et al. 2020) of closer-look-neurips22 and
regulating-dynamics-icml23 (DEQ-Large, DEQ-XL).

    u = pack(Stem(x), m_0, ..., m_{S-1})           (m_i: per-channel dropout keep-masks)
    f(z, u) = pack(Fusion(Block_i(z_i, u_i, m_i) for each scale i)),  u_0 = Stem(x), u_i = 0
    logits = Head(z)

The state z packs the S per-scale feature maps (C_i, H_i, W_i) into one (B, d) tensor, so the
solvers, the DEQ layer and every readout see a single tensor; the cell and the head unpack it
(:class:`~deqshield.models.mdeq_blocks.StatePacker`). Blocks, fusion and head are described in
:mod:`deqshield.models.mdeq_blocks`.

Stem: as MDEQ's stem, two 3x3 conv-BN-ReLU layers (``downsample`` of them with stride 2; 0 for
32x32 images, as MDEQ does on CIFAR-10) and a 1x1 conv-BN-ReLU; its output is the injection of
the highest-resolution scale, the other scales get none.

Dropout (MDEQ's variational dropout): the keep-mask m_i ~ Bernoulli(1 - p) / (1 - p) of shape
(C_i, 1, 1) scales the residual branch of every block. It is drawn by the injection, once per
computation of u, and travels inside u, so it stays fixed through the forward solve and the
gradient unrolling that reuse u: f is a fixed map during a solve. In eval mode (or with p = 0)
m = 1, so evaluation is deterministic.
"""

from __future__ import annotations

from typing import Annotated, Literal, Sequence

import torch
from pydantic import Field
from torch import Tensor, nn

from deqshield.deq import DEQCell
from deqshield.errors import InputError
from deqshield.gradients import GradientSpec, Phantom
from deqshield.models.base import DEQClassifier
from deqshield.models.mdeq_blocks import (ClassificationHead, MultiscaleFusion, ResidualBlock,
                                          StatePacker, conv_bn, scale_sizes)
from deqshield.settings import component
from deqshield.solvers import Broyden, SolverSpec

Channels = Annotated[tuple[Annotated[int, Field(ge=1)], ...], Field(min_length=1)]


class MDEQInjection(nn.Module):
    """x -> u = pack(Stem(x), m), with m the dropout keep-mask of every scale (see module
    docstring)."""

    def __init__(self, in_channels: int, channels: Sequence[int], downsample: int,
                 dropout: float, packer: StatePacker):
        super().__init__()
        width = channels[0]
        self.stem = nn.Sequential(
            conv_bn(in_channels, width, 3, stride=2 if downsample >= 1 else 1), nn.ReLU(),
            conv_bn(width, width, 3, stride=2 if downsample >= 2 else 1), nn.ReLU(),
            conv_bn(width, width, 1), nn.ReLU())
        self.channels = tuple(channels)
        self.dropout = dropout
        self.packer = packer

    def keep_masks(self, like: Tensor) -> list[Tensor]:
        """m_i of shape (B, C_i, 1, 1): Bernoulli(1 - p) / (1 - p) in training mode, ones
        otherwise."""
        ones = [like.new_ones(like.shape[0], c, 1, 1) for c in self.channels]
        if not self.training or self.dropout == 0:
            return ones
        keep = 1 - self.dropout
        return [torch.bernoulli(mask * keep) / keep for mask in ones]

    def forward(self, x: Tensor) -> Tensor:
        features = self.stem(x)
        return self.packer.pack([features, *self.keep_masks(features)])


class MDEQCell(DEQCell):
    """f(z, u): per-scale residual blocks, then multiscale fusion, on the packed state."""

    def __init__(self, channels: Sequence[int], expansion: int, groups: int, weight_norm: bool,
                 state_packer: StatePacker, injection_packer: StatePacker):
        super().__init__()
        self.blocks = nn.ModuleList(ResidualBlock(c, expansion, groups, weight_norm)
                                    for c in channels)
        self.fusion = MultiscaleFusion(channels, groups, weight_norm)
        self.state_packer = state_packer
        self.injection_packer = injection_packer

    def state_shape(self, u: Tensor) -> tuple[int, ...]:
        return (self.state_packer.size,)

    def forward(self, z: Tensor, u: Tensor) -> Tensor:
        features, *masks = self.injection_packer.unpack(u)
        outputs = [block(z_i, features if i == 0 else None, m_i) for i, (block, z_i, m_i)
                   in enumerate(zip(self.blocks, self.state_packer.unpack(z), masks))]
        return self.state_packer.pack(self.fusion(outputs))


@component
class MDEQSettings:
    """Settings of the multiscale DEQ classifier (defaults: DEQ-Large).

    Args:
        channels: C_i, channels of each scale (the number of scales is their count).
        head_channels: h_i, bottleneck width of the head on each scale (outputs 4 h_i).
        final_channels: width of the head's last 1x1 convolution.
        expansion: E, the residual blocks' hidden width is E C_i.
        dropout: p, variational (per-channel, fixed per solve) dropout in the cell.
        groups: group-norm groups in the cell (reduced to a divisor of the channels).
        weight_norm: weight-normalise the cell's convolutions.
        downsample: stride-2 layers of the stem (0 keeps the input resolution).
    """

    name: Literal["mdeq"] = "mdeq"
    channels: Channels = (32, 64, 128, 256)
    head_channels: Channels = (14, 28, 56, 112)
    final_channels: Annotated[int, Field(ge=1)] = 1680
    expansion: Annotated[int, Field(ge=1)] = 5
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.22
    groups: Annotated[int, Field(ge=1)] = 8
    weight_norm: bool = True
    downsample: Annotated[int, Field(ge=0, le=2)] = 0
    solver: SolverSpec = Broyden(max_iter=8, tol=1e-3)
    gradient: GradientSpec = Phantom(steps=5, damping=0.5)

    def __post_init__(self) -> None:
        if len(self.head_channels) != len(self.channels):
            raise ValueError(f"head_channels has {len(self.head_channels)} entries for "
                             f"{len(self.channels)} scales")

    def build(self, input_shape: Sequence[int], num_classes: int) -> DEQClassifier:
        if len(input_shape) != 3:
            raise InputError(f"MDEQ needs images (C, H, W), got input shape {tuple(input_shape)}")
        in_channels, height, width = (int(s) for s in input_shape)
        for _ in range(self.downsample):
            height, width = (height + 1) // 2, (width + 1) // 2
        sizes = scale_sizes(height, width, len(self.channels))
        state_packer = StatePacker([(c, h, w) for c, (h, w) in zip(self.channels, sizes)])
        injection_packer = StatePacker([(self.channels[0], height, width)]
                                       + [(c, 1, 1) for c in self.channels])
        injection = MDEQInjection(in_channels, self.channels, self.downsample, self.dropout,
                                  injection_packer)
        cell = MDEQCell(self.channels, self.expansion, self.groups, self.weight_norm,
                        state_packer, injection_packer)
        head = ClassificationHead(state_packer, self.channels, self.head_channels,
                                  self.final_channels, num_classes)
        return DEQClassifier(injection, cell, head, input_shape, num_classes,
                             self.solver, self.gradient)


MDEQ_LARGE = MDEQSettings()
"""DEQ-Large of closer-look-neurips22 / regulating-dynamics-icml23 (about ResNet-18's size)."""

MDEQ_XL = MDEQSettings(channels=(72, 144, 288, 576), head_channels=(20, 40, 80, 160),
                       final_channels=1800)
"""DEQ-XL of closer-look-neurips22 (about WideResNet-34-10's size)."""
