"""Building blocks of the multiscale DEQ (MDEQ, Bai et al. 2020).

Scale i (0 = highest resolution) holds a feature map of C_i channels at resolution
H_i x W_i, H_i = ceil(H_{i-1} / 2). The solvers see the S per-scale maps as one flat state,
packed by :class:`StatePacker`.

Inside the cell (group norm, weight-normalised convolutions):

* :class:`ResidualBlock`, per scale:   h = ReLU(GN(W_1 z_i)),
  r = GN(m_i * W_2 h + u_i),  out_i = GN(ReLU(r + z_i)),
  with W_1: C_i -> E C_i and W_2: E C_i -> C_i 3x3 convolutions (expansion E), u_i the input
  injection (zero for i > 0) and m_i a per-channel dropout mask;
* :class:`MultiscaleFusion`: y_i = GN(Conv1x1(ReLU(sum_j T_ij out_j))), T_ii = identity,
  T_ij for j < i a chain of i - j strided 3x3 convolutions, T_ij for j > i a 1x1 convolution
  followed by nearest-neighbour upsampling (each with group norm).

As in MDEQ, weight normalisation applies to the residual blocks' convolutions and to the
fusion's final 1x1 convolutions, and the fusion's final group norm has no affine parameters.

Outside it, :class:`ClassificationHead` (batch norm) turns any packed state into logits.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deqshield.errors import InputError


class StatePacker:
    """Packs per-part tensors of shapes (B, *shape_k) into one (B, d), d = sum_k prod(shape_k),
    and unpacks them again (``unpack(pack(parts)) == parts``)."""

    def __init__(self, shapes: Sequence[Sequence[int]]):
        self.shapes = tuple(tuple(int(s) for s in shape) for shape in shapes)
        self.sizes = tuple(math.prod(shape) for shape in self.shapes)
        self.size = sum(self.sizes)

    def pack(self, parts: Sequence[Tensor]) -> Tensor:
        """(B, *shape_k) for each k -> (B, d)."""
        got = tuple(tuple(part.shape[1:]) for part in parts)
        if got != self.shapes:
            raise InputError(f"cannot pack parts of shapes {got}; expected {self.shapes}")
        return torch.cat([part.reshape(part.shape[0], -1) for part in parts], dim=1)

    def unpack(self, packed: Tensor) -> list[Tensor]:
        """(B, d) -> [(B, *shape_k) for each k] (views where possible)."""
        if packed.dim() != 2 or packed.shape[1] != self.size:
            raise InputError(f"expected a packed tensor of shape (batch, {self.size}), "
                             f"got {tuple(packed.shape)}")
        chunks = packed.split(self.sizes, dim=1)
        return [chunk.reshape(packed.shape[0], *shape)
                for chunk, shape in zip(chunks, self.shapes)]


def scale_sizes(height: int, width: int, num_scales: int) -> list[tuple[int, int]]:
    """Resolutions of the scales: (H, W), then halved (rounding up) ``num_scales - 1`` times,
    which is what a stride-2 3x3 convolution with padding 1 produces."""
    sizes = [(height, width)]
    for _ in range(num_scales - 1):
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    return sizes


def group_norm(channels: int, groups: int, affine: bool = True) -> nn.GroupNorm:
    """Group norm with the largest number of groups <= ``groups`` that divides ``channels``."""
    count = max(g for g in range(1, max(1, min(groups, channels)) + 1) if channels % g == 0)
    return nn.GroupNorm(count, channels, affine=affine)


def conv(in_channels: int, out_channels: int, kernel: int, *, stride: int = 1,
         weight_norm: bool = False, bias: bool = False) -> nn.Module:
    """A 'same'-padded convolution, weight-normalised (w = g v / ||v|| per output channel)
    when ``weight_norm``."""
    layer = nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2,
                      bias=bias)
    return nn.utils.parametrizations.weight_norm(layer) if weight_norm else layer


class ResidualBlock(nn.Module):
    """out = GN(ReLU(GN(m * W_2 ReLU(GN(W_1 z)) + u) + z)) on one scale."""

    def __init__(self, channels: int, expansion: int, groups: int, weight_norm: bool):
        super().__init__()
        hidden = expansion * channels
        self.expand = conv(channels, hidden, 3, weight_norm=weight_norm)
        self.expand_norm = group_norm(hidden, groups)
        self.contract = conv(hidden, channels, 3, weight_norm=weight_norm)
        self.contract_norm = group_norm(channels, groups)
        self.out_norm = group_norm(channels, groups)

    def forward(self, z: Tensor, injection: Optional[Tensor], mask: Tensor) -> Tensor:
        hidden = self.expand_norm(self.expand(z)).relu()
        branch = mask * self.contract(hidden)
        if injection is not None:
            branch = branch + injection
        return self.out_norm((self.contract_norm(branch) + z).relu())


def downsample(in_channels: int, out_channels: int, steps: int, groups: int) -> nn.Sequential:
    """``steps`` stride-2 3x3 convolutions with group norm, ReLU between them; the last one
    maps ``in_channels`` to ``out_channels``."""
    layers: list[nn.Module] = []
    for step in range(steps):
        last = step == steps - 1
        width = out_channels if last else in_channels
        layers += [conv(in_channels, width, 3, stride=2),
                   group_norm(width, groups)]
        if not last:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class Upsample(nn.Module):
    """GN(Conv1x1(x)) upsampled (nearest neighbour) to a given resolution."""

    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.project = conv(in_channels, out_channels, 1)
        self.norm = group_norm(out_channels, groups)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        return F.interpolate(self.norm(self.project(x)), size=size, mode="nearest")


class MultiscaleFusion(nn.Module):
    """y_i = GN(Conv1x1(ReLU(sum_j T_ij x_j))) for every scale i (see the module docstring).

    The final group norm uses half the groups and no affine parameters, as in MDEQ."""

    def __init__(self, channels: Sequence[int], groups: int, weight_norm: bool):
        super().__init__()
        self.transfers = nn.ModuleDict()
        for i, target in enumerate(channels):
            for j, source in enumerate(channels):
                if j < i:
                    self.transfers[f"{j}to{i}"] = downsample(source, target, i - j, groups)
                elif j > i:
                    self.transfers[f"{j}to{i}"] = Upsample(source, target, groups)
        self.mix = nn.ModuleList(
            nn.Sequential(nn.ReLU(), conv(width, width, 1, weight_norm=weight_norm),
                          group_norm(width, max(1, groups // 2), affine=False))
            for width in channels)

    def forward(self, xs: Sequence[Tensor]) -> list[Tensor]:
        fused = []
        for i, x_i in enumerate(xs):
            total = x_i
            for j, x_j in enumerate(xs):
                if j < i:
                    total = total + self.transfers[f"{j}to{i}"](x_j)
                elif j > i:
                    total = total + self.transfers[f"{j}to{i}"](x_j, x_i.shape[-2:])
            fused.append(self.mix[i](total))
        return fused


def conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> nn.Sequential:
    """Conv (no bias) followed by batch norm."""
    return nn.Sequential(conv(in_channels, out_channels, kernel, stride=stride),
                         nn.BatchNorm2d(out_channels))


class Bottleneck(nn.Module):
    """ReLU(BN(W_3 ReLU(BN(W_2 ReLU(BN(W_1 x))))) + BN(P x)): 1x1 C -> h, 3x3 h -> h,
    1x1 h -> 4h, with the 1x1 projection P: C -> 4h on the shortcut."""

    def __init__(self, in_channels: int, channels: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn(in_channels, channels, 1), nn.ReLU(),
                                  conv_bn(channels, channels, 3), nn.ReLU(),
                                  conv_bn(channels, 4 * channels, 1))
        self.shortcut = conv_bn(in_channels, 4 * channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return (self.body(x) + self.shortcut(x)).relu()


class ClassificationHead(nn.Module):
    """Packed state z -> logits.

    a_0 = B_0(z_0);  a_i = B_i(z_i) + ReLU(BN(Conv3x3_stride2(a_{i-1})));
    logits = Linear(AvgPool(ReLU(BN(Conv1x1(a_{S-1}))))), with B_i a bottleneck to 4 h_i
    channels (h_i the head channels of scale i).
    """

    def __init__(self, packer: StatePacker, channels: Sequence[int],
                 head_channels: Sequence[int], final_channels: int, num_classes: int):
        super().__init__()
        self.packer = packer
        self.bottlenecks = nn.ModuleList(Bottleneck(c, h)
                                         for c, h in zip(channels, head_channels))
        widths = [4 * h for h in head_channels]
        self.merges = nn.ModuleList(
            nn.Sequential(nn.Conv2d(widths[i], widths[i + 1], 3, stride=2, padding=1),
                          nn.BatchNorm2d(widths[i + 1]), nn.ReLU())
            for i in range(len(widths) - 1))
        self.final = nn.Sequential(conv_bn(widths[-1], final_channels, 1), nn.ReLU(),
                                   nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                   nn.Linear(final_channels, num_classes))

    def forward(self, z: Tensor) -> Tensor:
        scales = self.packer.unpack(z)
        features = self.bottlenecks[0](scales[0])
        for bottleneck, merge, scale in zip(self.bottlenecks[1:], self.merges, scales[1:]):
            features = bottleneck(scale) + merge(features)
        return self.final(features)
