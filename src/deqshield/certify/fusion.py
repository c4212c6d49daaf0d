"""Parametrised fusion weights W of CerDEQ layers (Sec. 3.2-3.5 and the Table 5 ablations).

The effective weight is, with V the free parameter, n = in_channels * kernel taps and
gamma = sigmoid(s) in (0, 1) a learnable per-output-channel scale (Sec. 3.5: it replaces batch
norm on W z, whose statistics cannot be bounded through the fixed point)::

    W = diag(gamma) * factor * N(V) / sqrt(n),

where N(V) is one of
  * ``"orthogonal"``: Björck orthonormalisation of the rows (Eq. 6-7; CerDEQ);
  * ``"weight_norm"``: every row divided by its l2-norm (weight normalisation, the learnable
    magnitude being gamma);
  * ``"spectral_norm"``: V / sigma_max(V) of the matrix view.
In all three every row of N(V) has l2-norm <= 1, so every row of W has l1-norm
<= gamma_o * factor < 1: ||W||_inf < 1, the adjoint DEQ is a contraction in the infinity norm
(see :mod:`deqshield.certify.adjoint`). Certificates re-check L on the actual weight anyway.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from deqshield.certify.adjoint import ConvFusion, DenseFusion, FusionOperator
from deqshield.certify.orthogonal import bjorck, matrix_view, second_scaling
from deqshield.errors import InputError

Parametrization = Literal["orthogonal", "weight_norm", "spectral_norm"]


class FusionWeight(nn.Module):
    """A fusion weight of shape (d, d) (dense layer) or (C, C, k, k) (conv layer, k odd).

    Args:
        shape: the weight's shape.
        parametrization: how the direction N(V) is normalised (see module docstring).
        factor: the extra scale in (0, 1) making the contraction strict.
        bjorck_iterations: K of Eq. 6-7 (paper: 5).
        scale_init: initial channel scale gamma in (0, 1).
    """

    def __init__(self, shape: tuple[int, ...], parametrization: Parametrization = "orthogonal",
                 factor: float = 0.95, bjorck_iterations: int = 5, scale_init: float = 0.5):
        super().__init__()
        if len(shape) not in (2, 4) or shape[0] != shape[1]:
            raise InputError(f"fusion weight must be (d, d) or (C, C, k, k), got {shape}")
        if len(shape) == 4 and (shape[2] != shape[3] or shape[2] % 2 == 0):
            raise InputError(f"fusion kernel must be square with odd size, got {shape}")
        if parametrization not in ("orthogonal", "weight_norm", "spectral_norm"):
            raise InputError(f"unknown parametrization {parametrization!r}")
        if not 0 < factor < 1 or not 0 < scale_init < 1:
            raise InputError(f"factor and scale_init must lie in (0, 1), got {factor}, "
                             f"{scale_init}")
        self.shape = tuple(shape)
        self.parametrization = parametrization
        self.factor = factor
        self.bjorck_iterations = bjorck_iterations
        raw = torch.empty(shape[0], math.prod(shape[1:]))
        nn.init.orthogonal_(raw)
        self.direction = nn.Parameter(raw.reshape(shape))
        logit = math.log(scale_init / (1 - scale_init))
        self.scale_logit = nn.Parameter(torch.full((shape[0],), logit))

    def channel_scale(self) -> Tensor:
        """gamma in (0, 1), one per output channel."""
        return torch.sigmoid(self.scale_logit)

    def normalized(self) -> Tensor:
        """N(V) as a matrix (rows of l2-norm <= 1)."""
        matrix = matrix_view(self.direction)
        if self.parametrization == "orthogonal":
            return bjorck(matrix, self.bjorck_iterations)
        if self.parametrization == "weight_norm":
            return matrix / matrix.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return matrix / torch.linalg.matrix_norm(matrix, ord=2).clamp_min(1e-12)

    def weight(self) -> Tensor:
        """The effective weight diag(gamma) factor N(V) / sqrt(n), in the shape ``shape``."""
        scaled = second_scaling(self.normalized(), self.factor)
        return (self.channel_scale()[:, None] * scaled).reshape(self.shape)

    def operator(self) -> FusionOperator:
        weight = self.weight()
        return DenseFusion(weight) if len(self.shape) == 2 else ConvFusion(weight)

    def extra_repr(self) -> str:
        return (f"shape={self.shape}, parametrization={self.parametrization}, "
                f"factor={self.factor}")
