"""Soundness of the adjoint-DEQ bounds: true fixed points (sampled, corners, PGD), the solver
iterates a model returns, collapse at eps = 0, nesting, W = 0, refusal without contraction,
widening after a non-converged interval solve, and the exact N-step unrolled bound."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from deqshield.certify import (AdjointSolve, ConvFusion, DenseFusion, Interval,
                               equilibrium_interval, infinity_norm, unrolled_interval)
from deqshield.errors import InputError, NotConvergedError
from deqshield.gradients import Phantom
from deqshield.solvers import Anderson, Picard

DTYPE = torch.float64


TIGHT = AdjointSolve(solver=Anderson(max_iter=300, tol=1e-13, stop_mode="abs"))
EXACT = Picard(max_iter=3000, tol=1e-13, stop_mode="abs")


class Layer:
    """z = act(W z + U x + b) with ||W||_inf = lipschitz: dense (x in R^4, z in R^6) or conv
    (x in R^{1x4x4}, z in R^{2x4x4})."""

    def __init__(self, kind="dense", lipschitz=0.9, seed=0, activation=torch.relu):
        gen = torch.Generator().manual_seed(seed)
        self.kind, self.activation = kind, activation
        if kind == "dense":
            self.x_shape = (4,)
            self.u = torch.randn(6, 4, generator=gen, dtype=DTYPE)
            self.b = torch.randn(6, generator=gen, dtype=DTYPE) + 1
            w = torch.randn(6, 6, generator=gen, dtype=DTYPE)
        else:
            self.x_shape = (1, 4, 4)
            self.u = torch.randn(2, 1, 3, 3, generator=gen, dtype=DTYPE)
            self.b = torch.randn(2, generator=gen, dtype=DTYPE) + 1
            w = torch.randn(2, 2, 3, 3, generator=gen, dtype=DTYPE)
        self.w = lipschitz * w / infinity_norm(w)
        self.fusion = DenseFusion(self.w) if kind == "dense" else ConvFusion(self.w)

    def inject(self, x):
        if self.kind == "dense":
            return F.linear(x, self.u, self.b)
        return F.conv2d(x, self.u, self.b, padding=1)

    def injection_box(self, x, eps):
        lower, upper = x - eps, x + eps
        centre, radius = self.inject((upper + lower) / 2), (upper - lower) / 2
        magnitude = (F.linear(radius, self.u.abs()) if self.kind == "dense"
                     else F.conv2d(radius, self.u.abs(), padding=1))
        return Interval(centre - magnitude, centre + magnitude)

    def cell(self, x):
        h = self.inject(x)
        return lambda z: self.activation(self.fusion(z) + h)

    def fixed_point(self, x, solver=EXACT):
        h = self.inject(x)
        return solver.solve(self.cell(x), torch.zeros_like(h), record_states=False).final

    def bound(self, x, eps, settings=TIGHT, delta=0.0):
        return equilibrium_interval(self.fusion, self.injection_box(x, eps), settings, delta,
                                    self.activation)


def box_points(x, eps, n=200, seed=1):
    """(n uniform + n random corners + all corners if few) points of the eps-box around x[0]."""
    gen = torch.Generator().manual_seed(seed)
    shape = x.shape[1:]
    uniform = x + eps * (2 * torch.rand((n, *shape), generator=gen, dtype=DTYPE) - 1)
    signs = torch.where(torch.rand((n, *shape), generator=gen) < 0.5, -1.0, 1.0).to(DTYPE)
    points = [uniform, x + eps * signs]
    if x[0].numel() <= 8:
        all_signs = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=x[0].numel())),
                                 dtype=DTYPE).view(-1, *shape)
        points.append(x + eps * all_signs)
    return torch.cat(points)


def pgd_extremes(layer, x, eps, coordinates=8, steps=20):
    """For state coordinates i (the first ``coordinates``) and signs s, PGD maximising
    s * z*_i(x') over the box through its pre-activation (W z* + h)_i (z*_i is monotone in it
    and its gradient does not vanish on dead units), with gradients through 20 steps unrolled
    from the fixed point;
    starts at random points of the box and returns the final ones (2 * coordinates, ...)."""
    dim = min(coordinates, layer.fixed_point(x)[0].numel())
    signs = torch.cat([torch.ones(dim), -torch.ones(dim)]).to(DTYPE)
    target = torch.cat([torch.arange(dim), torch.arange(dim)])
    gen = torch.Generator().manual_seed(0)
    xs = x + eps * (2 * torch.rand((2 * dim, *x.shape[1:]), generator=gen, dtype=DTYPE) - 1)
    approximate = Anderson(max_iter=50, tol=1e-8, stop_mode="abs")
    for _ in range(steps):
        xs.requires_grad_(True)
        z = layer.fixed_point(xs.detach(), approximate)
        for _ in range(20):
            z = layer.cell(xs)(z)
        pre = (layer.fusion(z) + layer.inject(xs)).flatten(1)
        objective = (signs * pre.gather(1, target[:, None])[:, 0]).sum()
        grad, = torch.autograd.grad(objective, xs)
        with torch.no_grad():
            xs = torch.minimum(torch.maximum(xs + eps / 8 * grad.sign(), x - eps), x + eps)
    return xs.detach()


@pytest.mark.parametrize("kind", ["dense", "conv"])
@pytest.mark.parametrize("activation", [torch.relu, torch.tanh], ids=["relu", "tanh"])
def test_true_fixed_points_lie_inside_the_bound(kind, activation):
    layer = Layer(kind, activation=activation)
    x = torch.rand((1, *layer.x_shape), generator=torch.Generator().manual_seed(2), dtype=DTYPE)
    for eps in (0.05, 0.3):
        bound = layer.bound(x, eps).box
        z = layer.fixed_point(box_points(x, eps))
        assert bound.violation(z).max() <= 1e-10
        z_pgd = layer.fixed_point(pgd_extremes(layer, x, eps))
        assert bound.violation(z_pgd).max() <= 1e-10


def test_model_iterates_lie_inside_the_bound_widened_by_their_residual():
    layer = Layer("dense", lipschitz=0.95, seed=3)
    x = torch.rand((1, 4), generator=torch.Generator().manual_seed(4), dtype=DTYPE)
    loose = Anderson(max_iter=4, tol=1e-3, stop_mode="abs")
    for eps in (0.0, 0.1):
        points = box_points(x, eps, n=100)
        z = layer.fixed_point(points, loose)
        residual = (layer.cell(points)(z) - z).abs().amax(dim=1)
        delta = float(residual.max())
        assert delta > 1e-6
        assert layer.bound(x, eps, delta=delta).box.violation(z).max() <= 1e-10
    exact_box = layer.bound(x, 0.0).box
    assert exact_box.violation(z[:100]).max() > 1e-6


def test_bound_collapses_to_the_fixed_point_at_eps_zero():
    for kind in ("dense", "conv"):
        layer = Layer(kind, seed=5)
        x = torch.rand((3, *layer.x_shape), generator=torch.Generator().manual_seed(6),
                       dtype=DTYPE)
        box = layer.bound(x, 0.0).box
        z = layer.fixed_point(x)
        assert (box.upper - box.lower).max() <= 1e-10
        torch.testing.assert_close(box.center, z, atol=1e-10, rtol=0)


def test_bounds_nest_as_eps_grows():
    layer = Layer("conv", seed=7)
    x = torch.rand((2, 1, 4, 4), generator=torch.Generator().manual_seed(8), dtype=DTYPE)
    boxes = [layer.bound(x, eps).box for eps in (0.0, 0.01, 0.05, 0.2)]
    for inner, outer in zip(boxes, boxes[1:]):
        assert (outer.lower <= inner.lower + 1e-10).all()
        assert (outer.upper >= inner.upper - 1e-10).all()
    widths = [float((box.upper - box.lower).sum()) for box in boxes]
    assert widths == sorted(widths) and widths[-1] > widths[1] > 0


def test_zero_fusion_weight_gives_a_single_ibp_layer():
    layer = Layer("dense", lipschitz=0.5, seed=9)
    layer.fusion = DenseFusion(torch.zeros(6, 6, dtype=DTYPE))
    x = torch.rand((2, 4), generator=torch.Generator().manual_seed(9), dtype=DTYPE)
    injection = layer.injection_box(x, 0.2)
    bound = layer.bound(x, 0.2)
    assert bound.contraction == 0.0
    torch.testing.assert_close(bound.box.lower, torch.relu(injection.lower), atol=0, rtol=0)
    torch.testing.assert_close(bound.box.upper, torch.relu(injection.upper), atol=0, rtol=0)


@pytest.mark.parametrize("lipschitz", [1.0, 1.5])
def test_no_contraction_no_bound(lipschitz):
    layer = Layer("dense", lipschitz=lipschitz, seed=10)
    x = torch.rand((2, 4), generator=torch.Generator().manual_seed(10), dtype=DTYPE)
    with pytest.raises(NotConvergedError):
        layer.bound(x, 0.1)


def test_non_finite_bound_is_refused():
    layer = Layer("dense", seed=11)
    huge = Interval(torch.full((1, 6), -3e38), torch.full((1, 6), 3e38))
    fusion = DenseFusion(layer.w.float())
    with pytest.raises(NotConvergedError):
        equilibrium_interval(fusion, huge, AdjointSolve(solver=Picard(max_iter=5)))
    with pytest.raises(InputError):
        equilibrium_interval(fusion, Interval(torch.zeros(1, 5), torch.ones(1, 5)))


def test_a_non_converged_interval_solve_is_widened_not_trusted():
    layer = Layer("dense", lipschitz=0.95, seed=12)
    layer.w, layer.b = layer.w.abs(), layer.b.abs() + 1
    layer.fusion = DenseFusion(layer.w)
    x = torch.rand((1, 4), generator=torch.Generator().manual_seed(12), dtype=DTYPE)
    crude = AdjointSolve(solver=Picard(max_iter=1), gradient=Phantom(steps=1, damping=1.0))
    bound = layer.bound(x, 0.2, crude)
    assert not bound.solver_converged.any() and (bound.widening > 1e-3).all()
    z = layer.fixed_point(box_points(x, 0.2))
    assert bound.box.violation(z).max() <= 1e-10
    pad = bound.widening[:, None]
    raw = Interval(bound.box.lower + pad, bound.box.upper - pad)
    assert raw.violation(z).max() > 1e-3


def test_anderson_and_picard_bounds_agree():
    layer = Layer("conv", seed=13)
    x = torch.rand((2, 1, 4, 4), generator=torch.Generator().manual_seed(13), dtype=DTYPE)
    a = layer.bound(x, 0.1).box
    p = layer.bound(x, 0.1, AdjointSolve(solver=EXACT)).box
    torch.testing.assert_close(a.lower, p.lower, atol=1e-9, rtol=0)
    torch.testing.assert_close(a.upper, p.upper, atol=1e-9, rtol=0)


@pytest.mark.parametrize("steps, damping", [(1, 1.0), (4, 1.0), (6, 0.5)])
def test_unrolled_bound_contains_the_nth_picard_iterate_without_contraction(steps, damping):
    layer = Layer("dense", lipschitz=1.5, seed=14)
    x = torch.rand((1, 4), generator=torch.Generator().manual_seed(14), dtype=DTYPE)
    box = unrolled_interval(layer.fusion, layer.injection_box(x, 0.1), steps, damping)
    points = box_points(x, 0.1)
    picard = Picard(max_iter=steps, tol=0.0, damping=damping, final_residual=False)
    z = picard.solve(layer.cell(points), torch.zeros(len(points), 6, dtype=DTYPE)).final
    assert box.violation(z).max() <= 1e-12
