"""Interval bound propagation (IBP, Gowal et al. 2018) on boxes ``[lower, upper]``.

An :class:`Interval` holds elementwise bounds l <= v <= u for a batch of tensors. Each rule maps
a box that contains every possible input of a layer to a box that contains every possible
output of it:

* affine maps v -> A v + a (linear, convolution, batch norm as a per-channel affine map) in
  centre/radius form, which is the exact range of an affine map over a box::

      c = (u + l) / 2,   r = (u - l) / 2,   A v + a  in  [A c + a - |A| r,  A c + a + |A| r];

* monotone non-decreasing elementwise maps (ReLU, sigmoid, tanh, ...) and max pooling:
  sigma(v) in [sigma(l), sigma(u)];
* linear maps with non-negative weights (average pooling) and reshapes: applied to l and u.

The "margin head" folds the class-difference matrix C_y (rows e_y - e_j) into the last linear
layer, bounding logit_y - logit_j = (W_y - W_j) v + (b_y - b_j) directly; this is never looser
than subtracting interval logits (|W_y - W_j| <= |W_y| + |W_j|).

The bounds are sound in exact arithmetic; floating-point rounding is not accounted for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deqshield.errors import InputError
from deqshield.validation import check_labels, check_number

MONOTONE_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.Sigmoid, nn.Tanh,
                        nn.Hardtanh, nn.Hardsigmoid, nn.Softplus)
"""Activation modules handled elementwise as sigma([l, u]) = [sigma(l), sigma(u)]."""


@dataclass(frozen=True)
class Interval:
    """Elementwise bounds ``lower <= v <= upper`` on a batch of tensors of one shape."""

    lower: Tensor
    upper: Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.lower, Tensor) or not isinstance(self.upper, Tensor):
            raise InputError("an interval's lower and upper bounds must be tensors")
        if self.lower.shape != self.upper.shape:
            raise InputError(f"interval bounds have shapes {tuple(self.lower.shape)} and "
                             f"{tuple(self.upper.shape)}; they must match")
        if self.lower.dtype != self.upper.dtype or self.lower.device != self.upper.device:
            raise InputError("interval bounds must share dtype and device")

    @property
    def center(self) -> Tensor:
        return (self.upper + self.lower) / 2

    @property
    def radius(self) -> Tensor:
        return (self.upper - self.lower) / 2

    @property
    def shape(self) -> torch.Size:
        return self.lower.shape

    def map(self, fn: Callable[[Tensor], Tensor]) -> "Interval":
        """[fn(l), fn(u)]: sound for monotone non-decreasing fn (and for reshapes)."""
        return Interval(fn(self.lower), fn(self.upper))

    def violation(self, value: Tensor) -> Tensor:
        """Elementwise distance of ``value`` outside the box (zero inside)."""
        return torch.clamp(torch.maximum(self.lower - value, value - self.upper), min=0)


def from_center_radius(center: Tensor, radius: Tensor) -> Interval:
    return Interval(center - radius, center + radius)


def input_box(x: Tensor, eps: float, clip: Optional[tuple[float, float]] = (0.0, 1.0)
              ) -> Interval:
    """The l_inf ball {x' : ||x' - x||_inf <= eps}, intersected with the valid input range
    ``clip`` (sound, since no valid input lies outside it, and tighter). ``clip=None`` keeps
    the whole ball."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise InputError("x must be a floating-point tensor")
    check_number("eps", eps, minimum=0)
    if not torch.isfinite(x).all():
        raise InputError("x contains NaN or Inf")
    lower, upper = x - eps, x + eps
    if clip is not None:
        lo, hi = clip
        if not lo < hi:
            raise InputError(f"clip must be (low, high) with low < high, got {clip}")
        if x.min() < lo or x.max() > hi:
            raise InputError(f"x lies outside the valid range {clip}; the clipped box would "
                             "not contain it")
        lower, upper = lower.clamp(lo, hi), upper.clamp(lo, hi)
    return Interval(lower, upper)


def linear_interval(box: Interval, weight: Tensor, bias: Optional[Tensor] = None) -> Interval:
    """Bounds of W v + b for v in the box: [W c + b -/+ |W| r]."""
    return from_center_radius(F.linear(box.center, weight, bias),
                              F.linear(box.radius, weight.abs()))


def conv2d_interval(box: Interval, conv: nn.Conv2d) -> Interval:
    """Bounds of a zero-padded 2-d convolution: [K * c + b -/+ |K| * r]."""
    if conv.padding_mode != "zeros":
        raise InputError(f"interval rule needs zero padding, got padding_mode="
                         f"{conv.padding_mode!r}")
    options = dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
                   groups=conv.groups)
    return from_center_radius(F.conv2d(box.center, conv.weight, conv.bias, **options),
                              F.conv2d(box.radius, conv.weight.abs(), None, **options))


def batch_norm_interval(box: Interval, norm: nn.modules.batchnorm._BatchNorm) -> Interval:
    """Batch norm as the per-channel affine map v -> s v + t, s = gamma / sqrt(var + eps),
    t = beta - mean s: [s c + t -/+ |s| r] (a negative gamma flips the channel).

    With running statistics (eval mode) this is the layer the model computes. Where the layer
    normalises with batch statistics (training mode), mean and variance are those of the box
    centres over the batch, which at eps = 0 are the clean batch's statistics; such bounds
    serve the training objective only, since they depend on the batch.
    """
    channel_shape = (1, -1) + (1,) * (box.center.dim() - 2)
    if norm.training or not norm.track_running_stats:
        dims = [d for d in range(box.center.dim()) if d != 1]
        mean = box.center.mean(dim=dims)
        var = box.center.var(dim=dims, unbiased=False)
    else:
        mean, var = norm.running_mean, norm.running_var
    scale = torch.rsqrt(var + norm.eps)
    if norm.affine:
        scale = scale * norm.weight
    shift = -mean * scale
    if norm.affine:
        shift = shift + norm.bias
    scale, shift = scale.view(channel_shape), shift.view(channel_shape)
    return from_center_radius(box.center * scale + shift, box.radius * scale.abs())


def margin_interval(box: Interval, weight: Tensor, bias: Optional[Tensor], y: Tensor
                    ) -> Interval:
    """Bounds of the margins logit_y - logit_j (all j) of the last linear layer for features
    v in ``box`` (shape (B, d)): one linear layer with rows W_y - W_j and bias b_y - b_j.
    The result has shape (B, K); its column y is exactly zero."""
    if box.center.dim() != 2 or box.shape[1] != weight.shape[1]:
        raise InputError(f"margin head expects features (B, {weight.shape[1]}), got "
                         f"{tuple(box.shape)}")
    check_labels(y, box.shape[0], weight.shape[0])
    diff_weight = weight[y].unsqueeze(1) - weight.unsqueeze(0)
    centre = torch.einsum("bkd,bd->bk", diff_weight, box.center)
    if bias is not None:
        centre = centre + bias[y].unsqueeze(1) - bias.unsqueeze(0)
    radius = torch.einsum("bkd,bd->bk", diff_weight.abs(), box.radius)
    return from_center_radius(centre, radius)


def propagate(module: nn.Module, box: Interval, trace: Optional[list[Interval]] = None
              ) -> Interval:
    """Interval bounds of ``module``'s output for inputs in ``box``.

    Handles ``nn.Sequential`` of linear, convolution, batch-norm, monotone activation, pooling,
    flatten, identity and (eval-mode) dropout layers. When ``trace`` is given, the input box of
    every activation (the pre-activation bounds) is appended to it.
    """
    if isinstance(module, nn.Sequential):
        for layer in module:
            box = propagate(layer, box, trace)
        return box
    if isinstance(module, nn.Linear):
        return linear_interval(box, module.weight, module.bias)
    if isinstance(module, nn.Conv2d):
        return conv2d_interval(box, module)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return batch_norm_interval(box, module)
    if isinstance(module, MONOTONE_ACTIVATIONS):
        if isinstance(module, nn.LeakyReLU) and module.negative_slope < 0:
            raise InputError("LeakyReLU with a negative slope is not monotone")
        if isinstance(module, nn.ELU) and module.alpha < 0:
            raise InputError("ELU with a negative alpha is not monotone")
        if trace is not None:
            trace.append(box)
        return box.map(module)
    if isinstance(module, (nn.MaxPool2d, nn.AdaptiveMaxPool2d, nn.AvgPool2d,
                           nn.AdaptiveAvgPool2d, nn.Flatten, nn.Identity)):
        if isinstance(module, (nn.MaxPool2d, nn.AdaptiveMaxPool2d)) and module.return_indices:
            raise InputError("max pooling with return_indices has no interval rule")
        return box.map(module)
    if isinstance(module, nn.Dropout) and not module.training:
        return box
    raise InputError(f"no interval rule for {type(module).__name__}"
                     + (" in training mode" if isinstance(module, nn.Dropout) else ""))
