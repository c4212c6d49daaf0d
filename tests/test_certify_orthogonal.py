"""Björck orthonormalisation, the scaled orthogonal fusion weight (contraction in the infinity
norm), and the l2 norm of the real convolution operator."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from deqshield.certify import FusionWeight, bjorck, conv_operator_norm, infinity_norm
from deqshield.certify import scaled_orthogonal
from deqshield.errors import InputError

DTYPE = torch.float64




def randn(*shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)


def hadamard(n: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=DTYPE)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)])
    return h


def conv_matrix(weight, input_shape, stride, padding):
    """The explicit matrix of x -> conv2d(x, weight) on inputs of ``input_shape``."""
    dim = math.prod(input_shape)
    basis = torch.eye(dim, dtype=DTYPE).view(dim, *input_shape)
    return F.conv2d(basis, weight, stride=stride, padding=padding).reshape(dim, -1).t()


def test_bjorck_converges_to_orthonormal_rows():
    w = randn(6, 20)
    q = bjorck(w, iterations=15)
    torch.testing.assert_close(q @ q.t(), torch.eye(6, dtype=DTYPE), atol=1e-10, rtol=0)
    u, _, vh = torch.linalg.svd(w, full_matrices=False)
    torch.testing.assert_close(q, u @ vh, atol=1e-9, rtol=0)


def test_bjorck_never_pushes_singular_values_above_one():
    w = randn(8, 8, seed=1)
    for iterations in range(6):
        assert torch.linalg.svdvals(bjorck(w, iterations)).max() <= 1 + 1e-12


def test_bjorck_is_differentiable():
    w = randn(3, 5, seed=2).requires_grad_()
    assert torch.autograd.gradcheck(lambda a: bjorck(a, iterations=3), (w,))


def test_bjorck_rejects_wide_columns():
    with pytest.raises(InputError):
        bjorck(randn(5, 3))


@pytest.mark.parametrize("shape", [(16, 16), (4, 4, 3, 3), (6, 6, 1, 1)])
def test_scaled_orthogonal_weight_is_a_strict_contraction(shape):
    for seed in range(3):
        w = scaled_orthogonal(10 * randn(*shape, seed=seed), factor=0.9)
        assert infinity_norm(w) <= 0.9 + 1e-12


def test_hadamard_rows_reach_norm_one_without_the_extra_factor():
    n = 8
    q = hadamard(n) / math.sqrt(n)
    torch.testing.assert_close(bjorck(q), q, atol=1e-12, rtol=0)
    torch.testing.assert_close(infinity_norm(q / math.sqrt(n)), torch.tensor(1.0, dtype=DTYPE))
    torch.testing.assert_close(infinity_norm(scaled_orthogonal(q, 0.95)),
                               torch.tensor(0.95, dtype=DTYPE))


@pytest.mark.parametrize("parametrization", ["orthogonal", "weight_norm", "spectral_norm"])
def test_fusion_weights_contract_for_any_parameters(parametrization):
    for shape in [(8, 8), (3, 3, 3, 3)]:
        fusion = FusionWeight(shape, parametrization, factor=0.9).double()
        with torch.no_grad():
            fusion.direction.copy_(5 * randn(*shape, seed=4))
            fusion.scale_logit.fill_(30.0)
        assert fusion.operator().contraction() <= 0.9 + 1e-12


def test_conv_infinity_norm_is_the_max_row_sum_of_the_operator():
    kernel = randn(3, 2, 3, 3, seed=5)
    matrix = conv_matrix(kernel, (2, 6, 6), stride=1, padding=1)
    torch.testing.assert_close(infinity_norm(kernel), matrix.abs().sum(1).max())


@pytest.mark.parametrize("stride, padding", [(1, 1), (2, 1), (1, 0)])
def test_conv_operator_norm_matches_the_explicit_matrix(stride, padding):
    kernel = randn(3, 2, 3, 3, seed=6)
    shape = (2, 5, 5)
    exact = torch.linalg.svdvals(conv_matrix(kernel, shape, stride, padding)).max()
    estimate = conv_operator_norm(kernel, shape, stride=stride, padding=padding, iters=500)
    assert estimate <= exact * (1 + 1e-9)
    torch.testing.assert_close(estimate, exact, rtol=1e-5, atol=0)


def test_conv_operator_norm_is_not_the_reshaped_kernel_norm():
    kernel = torch.ones(1, 1, 3, 3, dtype=DTYPE)
    shape = (1, 12, 12)
    operator = conv_operator_norm(kernel, shape, padding=1, iters=500)
    exact = torch.linalg.svdvals(conv_matrix(kernel, shape, 1, 1)).max()
    reshaped = torch.linalg.matrix_norm(kernel.reshape(1, -1), ord=2)
    torch.testing.assert_close(operator, exact, rtol=1e-4, atol=0)
    assert reshaped == 3.0 and operator > 2.5 * reshaped
