"""Initialisations that keep interval bounds from exploding at the start of certified training.

For a layer with fan-in n (in_features, or in_channels * kernel taps) and weights drawn from
N(0, sigma^2), E|w| = sqrt(2 / pi) sigma and the expected bound width grows by n E|w| through
the affine map.

* Explicit layers (Fast-IBP, Shi et al. 2021): a ReLU halves the expected width, so a gain of 1
  per affine + ReLU block needs n E|w| / 2 = 1, i.e. sigma = sqrt(2 pi) / n.
* DEQ extractors U (CerDEQ Prop. 3.5, Eq. 8): with the fusion weight orthogonalised and scaled
  (sqrt(n_W) ||W||_2 <= 1) the expected width gain through the whole equilibrium is at most
  n_u E|U|; a gain of at most 1 needs n_u sqrt(2 / pi) sigma = 1, i.e. sigma = sqrt(pi / 2) / n_u.
  (The paper's text prints sigma = sqrt(pi) / sqrt(2 n_u); the value here is the one for which
  its Eq. 8 gives the stated gain of 1.)

Biases start at zero.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from deqshield.errors import InputError


def fan_in(layer: nn.Module) -> int:
    if isinstance(layer, nn.Linear):
        return layer.in_features
    if isinstance(layer, nn.Conv2d):
        return layer.in_channels // layer.groups * math.prod(layer.kernel_size)
    raise InputError(f"fan-in is defined for Linear and Conv2d, got {type(layer).__name__}")


@torch.no_grad()
def _normal_(layer: nn.Module, std: float) -> None:
    layer.weight.normal_(0.0, std)
    if layer.bias is not None:
        layer.bias.zero_()


def ibp_init_(layer: nn.Module) -> None:
    """Fast-IBP initialisation of an explicit Linear / Conv2d layer: sigma = sqrt(2 pi) / n."""
    _normal_(layer, math.sqrt(2 * math.pi) / fan_in(layer))


def deq_extractor_init_(layer: nn.Module) -> None:
    """CerDEQ initialisation (Prop. 3.5) of a DEQ extractor U: sigma = sqrt(pi / 2) / n_u."""
    _normal_(layer, math.sqrt(math.pi / 2) / fan_in(layer))


def ibp_init_model_(model: nn.Module) -> None:
    """Apply :func:`ibp_init_` to every Linear / Conv2d submodule of ``model``."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            ibp_init_(module)
