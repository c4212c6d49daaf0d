"""Gradient modes of the DEQ layer checked against float64 finite differences."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deqshield.deq import DEQCell
from deqshield.gradients import Backprop, Implicit, Phantom, jacobian_frobenius, unroll
from deqshield.models import DEQClassifier, DenseDEQSettings
from deqshield.solvers import Anderson, Picard

TIGHT = Anderson(max_iter=300, tol=1e-13, memory=6)
EXACT = Implicit(backward_solver=Anderson(max_iter=300, tol=1e-13, memory=6))


class TanhCell(DEQCell):
    """f(z, u) = tanh(W z + u): smooth, and a contraction when ||W||_2 < 1."""

    def __init__(self, width: int, norm: float = 0.7):
        super().__init__()
        self.linear = nn.Linear(width, width, bias=False)
        nn.init.orthogonal_(self.linear.weight, gain=norm)

    def forward(self, z, u):
        return torch.tanh(self.linear(z) + u)


def smooth_deq(gradient, seed=0, width=8, features=5, classes=3) -> DEQClassifier:
    torch.manual_seed(seed)
    model = DEQClassifier(nn.Linear(features, width), TanhCell(width), nn.Linear(width, classes),
                          (features,), classes, TIGHT, gradient)
    return model.double().eval()


def objective(model, x, weights):
    return (model(x) * weights).sum()


def directional_fd(fn, point, direction, h=1e-6):
    with torch.no_grad():
        return (fn(point + h * direction) - fn(point - h * direction)) / (2 * h)


@pytest.mark.parametrize("build", [
    lambda: smooth_deq(EXACT),
    lambda: DenseDEQSettings(width=10, solver=TIGHT, gradient=EXACT).build((6,), 4).double().eval(),
], ids=["tanh-cell", "dense-deq"])
def test_implicit_input_gradient_matches_finite_differences(build):
    model = build()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, *model.input_shape, generator=gen, dtype=torch.float64)
    weights = torch.randn(4, model.num_classes, generator=gen, dtype=torch.float64)
    x_var = x.clone().requires_grad_()
    objective(model, x_var, weights).backward()
    for _ in range(3):
        v = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        analytic = (x_var.grad * v).sum()
        numeric = directional_fd(lambda p: objective(model, p, weights), x, v)
        assert abs(analytic - numeric) / abs(numeric) < 1e-4


def test_implicit_parameter_gradient_matches_finite_differences():
    model = smooth_deq(EXACT, seed=2)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 5, generator=gen, dtype=torch.float64)
    weights = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    objective(model, x, weights).backward()
    weight = model.cell.linear.weight
    v = torch.randn(weight.shape, generator=gen, dtype=torch.float64)
    analytic = (weight.grad * v).sum()
    original = weight.detach().clone()

    def at(point):
        with torch.no_grad():
            weight.copy_(point)
        return objective(model, x, weights)

    numeric = directional_fd(at, original, v)
    at(original)
    assert abs(analytic - numeric) / abs(numeric) < 1e-4


def test_phantom_gradient_approaches_exact_gradient_as_steps_grow():
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    weights = torch.randn(4, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)

    def input_grad(gradient):
        model = smooth_deq(gradient, seed=6)
        x_var = x.clone().requires_grad_()
        objective(model, x_var, weights).backward()
        return x_var.grad

    exact = input_grad(EXACT)
    errors = [float((input_grad(Phantom(steps=k, damping=1.0)) - exact).norm() / exact.norm())
              for k in (1, 4, 16, 64)]
    assert all(a > b for a, b in zip(errors, errors[1:]))
    assert errors[-1] < 1e-6
    damped = float((input_grad(Phantom(steps=64, damping=0.5)) - exact).norm() / exact.norm())
    assert damped < 1e-4


def test_backprop_equals_autograd_through_plain_iterations():
    model = smooth_deq(Backprop(steps=6, damping=1.0), seed=7)
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    model(x).sum().backward()
    x_ref = x.detach().clone().requires_grad_()
    f = model.deq.bind(model.injection(x_ref))
    z = torch.zeros(3, 8, dtype=torch.float64)
    for _ in range(6):
        z = f(z)
    model.head(z).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(unroll(f, torch.zeros(3, 8, dtype=torch.float64), 6, 1.0), z)


@pytest.mark.parametrize("gradient", [EXACT, Phantom(), Backprop()], ids=lambda g: g.name)
def test_input_gradient_exists_in_eval_mode(gradient):
    model = DenseDEQSettings(width=12, gradient=gradient).build((1, 4, 4), 3)
    model.eval()
    x = torch.rand(5, 1, 4, 4, requires_grad=True)
    nn.functional.cross_entropy(model(x), torch.arange(5) % 3).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert not model.training


def test_no_graph_is_built_under_no_grad():
    model = smooth_deq(EXACT)
    with torch.no_grad():
        logits = model(torch.randn(2, 5, dtype=torch.float64))
    assert not logits.requires_grad


def test_implicit_adjoint_solves_the_linear_fixed_point():
    model = smooth_deq(EXACT, seed=8)
    x = torch.randn(3, 5, dtype=torch.float64)
    f = model.cell_map(x)
    z_star = model.trajectory(x).final
    grad = torch.randn_like(z_star)
    u = EXACT.adjoint(f, z_star, grad)
    full = torch.autograd.functional.jacobian(f, z_star)  # (B, d, B, d), block diagonal
    jac = torch.stack([full[b, :, b] for b in range(3)])  # jac[b, i, j] = df_i / dz_j
    expected = torch.linalg.solve(torch.eye(8, dtype=torch.float64) - jac.transpose(1, 2), grad)
    torch.testing.assert_close(u, expected, rtol=1e-8, atol=1e-10)


def test_hutchinson_estimate_matches_the_frobenius_norm():
    torch.manual_seed(9)
    matrix = torch.randn(6, 6, dtype=torch.float64)
    f = lambda z: z @ matrix.T  # noqa: E731 - Jacobian = matrix for every sample
    z = torch.zeros(2, 6, dtype=torch.float64)
    gen = torch.Generator().manual_seed(10)
    estimate = jacobian_frobenius(f, z, samples=4000, generator=gen)
    exact = matrix.pow(2).sum() / 6
    assert torch.allclose(estimate, exact.expand(2), rtol=0.1)
    with pytest.raises(ValueError):
        jacobian_frobenius(f, z, samples=0)


def test_jacobian_penalty_reaches_the_parameters():
    model = smooth_deq(Phantom())
    x = torch.randn(3, 5, dtype=torch.float64)
    z = model.trajectory(x).final
    jacobian_frobenius(model.cell_map(x), z).sum().backward()
    assert model.cell.linear.weight.grad.abs().sum() > 0


def test_picard_as_backward_solver_gives_the_same_gradient():
    x = torch.randn(3, 5, dtype=torch.float64)
    grads = []
    for backward in (Anderson(max_iter=300, tol=1e-13), Picard(max_iter=2000, tol=1e-13)):
        model = smooth_deq(Implicit(backward_solver=backward), seed=11)
        x_var = x.clone().requires_grad_()
        model(x_var).sum().backward()
        grads.append(x_var.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-9, atol=1e-11)
