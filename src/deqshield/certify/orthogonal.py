"""Orthogonal fusion weights (CerDEQ Sec. 3.2-3.3) and the norms that certify contraction.

Björck orthonormalisation of order 2 (Eq. 6-7; Björck & Bowie 1971), for W in R^{m x n},
m <= n, with A_0 = W^T / s and P_k = A_k^T A_k (an m x m matrix)::

    A_{k+1} = A_k (15/8 I - 5/4 P_k + 3/8 P_k^2),          W_orth = A_K^T.

Each singular value evolves as g(sigma) = 15/8 sigma - 5/4 sigma^3 + 3/8 sigma^5, which maps
(0, 1] into (0, 1] (g' = 15/8 (1 - sigma^2)^2 >= 0, g(1) = 1) and converges to 1, so the
pre-scaling s = sqrt(||W||_1 ||W||_inf) >= sigma_max(W) (Lemma 3.3's condition) keeps every
singular value of every iterate <= 1: the rows of W_orth have l2-norm <= 1 after any K.

Second scaling (Prop. 3.4): W = factor * W_orth / sqrt(n) with n = in_channels * kernel taps.
A row with l2-norm <= 1 has l1-norm <= sqrt(n), so every row of W has l1-norm <= factor, i.e.
the adjoint DEQ's block matrix [[W+, W-], [W-, W+]] has infinity norm <= factor. A rescaled
Hadamard matrix attains l1 = sqrt(n) exactly, so the factor must be < 1 for a strict
contraction.

For a convolution, the rows of the convolution operator are the kernel rows (out-channel o:
all in-channels and taps), clipped at the zero-padded border, so the operator's infinity norm
is max_o sum |K[o]| (exact once the input has an interior position). Its l2 norm is NOT the
norm of the reshaped kernel: :func:`conv_operator_norm` estimates the real one.
"""

from __future__ import annotations

import math
from typing import Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from deqshield.errors import InputError

_TINY = 1e-12


def matrix_view(weight: Tensor) -> Tensor:
    """A linear weight (m, n) as is, a conv kernel (C_out, C_in, k, k) as (C_out, C_in k k)."""
    if weight.dim() not in (2, 4):
        raise InputError(f"expected a linear (2-d) or conv (4-d) weight, got shape "
                         f"{tuple(weight.shape)}")
    return weight.reshape(weight.shape[0], -1)


def infinity_norm(weight: Tensor) -> Tensor:
    """max_i sum_j |W_ij| of the matrix view: the induced infinity norm of a linear map, and of
    the convolution operator for a conv kernel. This is the contraction factor L of the
    adjoint DEQ in the infinity norm (its block matrix has the same row l1-norms as W)."""
    return matrix_view(weight).abs().sum(dim=1).max()


def bjorck(weight: Tensor, iterations: int = 5) -> Tensor:
    """Order-2 Björck orthonormalisation of the rows of ``weight`` (shape (m, n), m <= n), as
    in Eq. 6-7 with A_0 = W^T pre-scaled by sqrt(||W||_1 ||W||_inf). Differentiable."""
    if weight.dim() != 2:
        raise InputError(f"bjorck expects a matrix, got shape {tuple(weight.shape)}")
    m, n = weight.shape
    if m > n:
        raise InputError(f"bjorck orthonormalises rows and needs m <= n, got {m} x {n}")
    if iterations < 0:
        raise InputError(f"iterations must be >= 0, got {iterations}")
    absolute = weight.abs()
    bound = torch.sqrt(absolute.sum(dim=0).max() * absolute.sum(dim=1).max())
    a = weight.t() / (bound + _TINY)
    eye = torch.eye(m, dtype=weight.dtype, device=weight.device)
    for _ in range(iterations):
        p = a.t() @ a
        a = a @ (15 / 8 * eye - 5 / 4 * p + 3 / 8 * (p @ p))
    return a.t()


def second_scaling(matrix: Tensor, factor: float) -> Tensor:
    """factor * W / sqrt(n) for a (m, n) matrix whose rows have l2-norm <= 1 (Prop. 3.4 and
    the extra factor): every row then has l1-norm <= factor < 1."""
    if not 0 < factor < 1:
        raise InputError(f"factor must lie in (0, 1) for a strict contraction, got {factor}")
    return factor / math.sqrt(matrix.shape[1]) * matrix


def scaled_orthogonal(weight: Tensor, factor: float, iterations: int = 5) -> Tensor:
    """factor * bjorck(W) / sqrt(n) in the shape of ``weight`` (linear or conv): a fusion
    weight whose adjoint DEQ is a ``factor``-contraction in the infinity norm."""
    orth = bjorck(matrix_view(weight), iterations)
    return second_scaling(orth, factor).reshape(weight.shape)


def conv_operator_norm(weight: Tensor, input_shape: Sequence[int],
                       stride: Union[int, tuple[int, int]] = 1,
                       padding: Union[int, tuple[int, int]] = 0,
                       iters: int = 100, seed: int = 0) -> Tensor:
    """The l2 operator norm of x -> conv2d(x, K, stride, padding) on inputs of shape
    ``input_shape`` = (C_in, H, W), by power iteration on K^T K (conv2d then its adjoint,
    the transposed convolution). Returns a lower estimate converging to sigma_max."""
    if weight.dim() != 4 or len(input_shape) != 3 or input_shape[0] != weight.shape[1]:
        raise InputError(f"kernel {tuple(weight.shape)} does not match input shape "
                         f"{tuple(input_shape)} (C_in, H, W)")
    if iters < 1:
        raise InputError(f"iters must be >= 1, got {iters}")
    weight = weight.detach()
    size = (1, *input_shape)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    v = torch.randn(size, generator=generator, dtype=weight.dtype).to(weight.device)
    v = v / v.norm()
    for _ in range(iters):
        u = F.conv2d(v, weight, stride=stride, padding=padding)
        v = torch.nn.grad.conv2d_input(size, weight, u, stride=stride, padding=padding)
        v = v / (v.norm() + _TINY)
    return F.conv2d(v, weight, stride=stride, padding=padding).norm()
