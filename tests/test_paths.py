"""Gradient paths of closer-look-neurips22 (Sec. 4-5) against hand-built references."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deqshield.attacks import PGD, check_perturbation, cross_entropy
from deqshield.deq import DEQCell
from deqshield.errors import InputError
from deqshield.gradients import Implicit
from deqshield.models import DEQClassifier, SmallCNNSettings
from deqshield.paths import (AdjointBroyden, EnsemblePath, FinalState, SimultaneousAdjoint,
                             UnrolledEnsemble, UnrolledIntermediate)
from deqshield.solvers import Anderson, Broyden, Picard, SolverStep

EXACT = Implicit(backward_solver=Anderson(max_iter=300, tol=1e-14, memory=6))


class TanhCell(DEQCell):
    """f(z, u) = tanh(W z + u), or tanh(W z) + u with ``additive`` (then df/du = I);
    a contraction in z when ||W||_2 < 1."""

    def __init__(self, width: int, additive: bool, norm: float = 0.8):
        super().__init__()
        self.additive = additive
        self.linear = nn.Linear(width, width, bias=False)
        nn.init.orthogonal_(self.linear.weight, gain=norm)

    def forward(self, z, u):
        return torch.tanh(self.linear(z)) + u if self.additive else torch.tanh(self.linear(z) + u)


def tanh_deq(solver, additive=False, width=6, features=5, classes=3, seed=0) -> DEQClassifier:
    """float64 DEQ in eval mode; with ``additive`` the injection is the identity, so the
    gradient (df(z_n; x)/dx)^T u_n of Eq. 11 is u_n itself."""
    torch.manual_seed(seed)
    injection = nn.Identity() if additive else nn.Linear(features, width)
    inputs = width if additive else features
    model = DEQClassifier(injection, TanhCell(width, additive), nn.Linear(width, classes),
                          (inputs,), classes, solver)
    return model.double().eval()


def batch(model, size=3, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(size, *model.input_shape, generator=gen, dtype=torch.float64)
    return x, torch.randint(0, model.num_classes, (size,), generator=gen)


def loss_grad(model, z, y):
    z = z.detach().requires_grad_()
    return torch.autograd.grad(cross_entropy(model.head(z), y).sum(), z)[0]


def input_vjp(model, x, z, u):
    """(df(z; x)/dx)^T u by autograd."""
    x = x.detach().requires_grad_()
    return torch.autograd.grad(model.cell_map(x)(z.detach()), x, u)[0]


def dense_records(model, x, y):
    """Per state n: z_n, dense B_n (B, d, d), dense J_n = df(z_n)/dz (B, d, d), dL(z_n)/dz
    (J_n in closed form for the non-additive tanh cell)."""
    u = model.inject(x).detach()
    records = []

    def keep(step: SolverStep):
        eye = torch.eye(step.state.shape[1], dtype=step.state.dtype)
        basis = eye.expand(step.state.shape[0], -1, -1)
        b_n = torch.stack([step.inverse_jacobian.apply(basis[:, :, j]) for j in range(len(eye))],
                          dim=-1)
        fz = model.cell(step.state, u)  # tanh(W z + u): J_n = diag(1 - f^2) W
        j_n = (1 - fz ** 2)[:, :, None] * model.cell.linear.weight[None]
        with torch.enable_grad():
            records.append((step.state.clone(), b_n, j_n, loss_grad(model, step.state, y)))

    model.deq.solve(u, callback=keep)
    return records


def test_simultaneous_adjoint_and_adjoint_broyden_follow_their_equations_by_hand():
    """Eq. 9-11 with B_n^T, and u_n = -B_n^T dL/dz, rebuilt with dense matrices."""
    model = tanh_deq(Broyden(max_iter=5, tol=0.0))
    x, y = batch(model)
    beta = 0.7
    records = dense_records(model, x, y)
    adjoint = torch.zeros_like(records[0][0])
    for n, (z_n, b_n, j_n, dl_n) in enumerate(records):
        if n >= 1:
            torch.testing.assert_close(
                SimultaneousAdjoint(index=n, step=beta).input_gradient(model, x, y, cross_entropy),
                input_vjp(model, x, z_n, adjoint))
        shine = -torch.einsum("bji,bj->bi", b_n, dl_n)  # -B_n^T dL/dz
        torch.testing.assert_close(
            AdjointBroyden(index=n).input_gradient(model, x, y, cross_entropy),
            input_vjp(model, x, z_n, shine))
        v_n = torch.einsum("bji,bj->bi", j_n, adjoint) + dl_n - adjoint  # J_n^T u_n + dL - u_n
        adjoint = adjoint - beta * torch.einsum("bji,bj->bi", b_n, v_n)  # u_n - beta B_n^T v_n
    # B_n is not symmetric: the transposes above are what the path has to match
    assert (records[3][1] - records[3][1].transpose(1, 2)).abs().max() > 1e-3


def test_simultaneous_adjoint_converges_to_the_exact_adjoint_and_gradient():
    model = tanh_deq(Broyden(max_iter=80, tol=1e-12, step_size=0.5), additive=True)
    x, y = batch(model)
    trajectory = model.trajectory(x, record_states=False)
    assert trajectory.converged.all() and trajectory.num_steps > 40
    z_star = trajectory.final
    u_star = EXACT.adjoint(model.cell_map(x), z_star, loss_grad(model, z_star, y))
    path = SimultaneousAdjoint(step=0.9)
    u_final = path.input_gradient(model, x, y, cross_entropy)  # = u_N since df/dx = I
    torch.testing.assert_close(u_final, u_star, rtol=1e-8, atol=1e-10)
    early = SimultaneousAdjoint(index=2, step=0.9).input_gradient(model, x, y, cross_entropy)
    assert (early - u_star).norm() > 1e3 * (u_final - u_star).norm()

    model = tanh_deq(Broyden(max_iter=80, tol=1e-12, step_size=0.5))
    x, y = batch(model)
    exact = FinalState(gradient=EXACT).input_gradient(model, x, y, cross_entropy)
    torch.testing.assert_close(path.input_gradient(model, x, y, cross_entropy), exact,
                               rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("damping", [1.0, 0.5])
def test_unrolled_intermediate_is_backprop_through_k_iterations_from_z_i(damping):
    model = tanh_deq(Picard(max_iter=6, tol=0.0))
    x, y = batch(model)
    states = model.trajectory(x).states
    for index, steps in [(0, 1), (2, 3), (6, 2)]:
        x_var = x.clone().requires_grad_()
        u = model.inject(x_var)
        z = states[index]
        for _ in range(steps):
            z = (1 - damping) * z + damping * model.cell(z, u)
        expected = torch.autograd.grad(cross_entropy(model.head(z), y).sum(), x_var)[0]
        path = UnrolledIntermediate(index=index, steps=steps, damping=damping)
        torch.testing.assert_close(path.input_gradient(model, x, y, cross_entropy), expected)


def per_state_mean(paths, model, x, y):
    return torch.stack([p.input_gradient(model, x, y, cross_entropy) for p in paths]).mean(0)


def test_ensembles_are_the_mean_of_the_per_state_gradients():
    model = tanh_deq(Broyden(max_iter=5, tol=0.0))
    x, y = batch(model)
    n = range(1, 6)
    cases = [
        (SimultaneousAdjoint(ensemble=True, step=0.6),
         [SimultaneousAdjoint(index=i, step=0.6) for i in n]),
        (AdjointBroyden(ensemble=True), [AdjointBroyden(index=i) for i in n]),
        (UnrolledEnsemble(steps=2, damping=0.5),
         [UnrolledIntermediate(index=i, steps=2, damping=0.5) for i in n]),
        (UnrolledEnsemble(indices=(0, 3, 3)),
         [UnrolledIntermediate(index=i) for i in (0, 3, 3)]),
        (EnsemblePath(paths=(FinalState(), SimultaneousAdjoint(index=2))),
         [FinalState(), SimultaneousAdjoint(index=2)]),
    ]
    for ensemble, members in cases:
        got = ensemble.input_gradient(model, x, y, cross_entropy)
        torch.testing.assert_close(got, per_state_mean(members, model, x, y))
        assert got.abs().max() > 0


def test_states_after_an_early_stop_are_the_frozen_last_state():
    model = tanh_deq(Broyden(max_iter=30, tol=1e-6))
    x, y = batch(model)
    last = model.trajectory(x, record_states=False).num_steps
    assert last < 30

    def grad(path):
        return path.input_gradient(model, x, y, cross_entropy)

    torch.testing.assert_close(grad(UnrolledIntermediate(index=30)),
                               grad(UnrolledIntermediate(index=last)), rtol=0, atol=0)
    torch.testing.assert_close(grad(SimultaneousAdjoint()),
                               grad(SimultaneousAdjoint(index=last)), rtol=0, atol=0)
    padded = [UnrolledIntermediate(index=i) for i in range(1, last + 1)]
    padded += [UnrolledIntermediate(index=last)] * (30 - last)
    torch.testing.assert_close(grad(UnrolledEnsemble()), per_state_mean(padded, model, x, y))


PATHS = [SimultaneousAdjoint(index=2), SimultaneousAdjoint(ensemble=True), AdjointBroyden(),
         AdjointBroyden(index=1, ensemble=False), UnrolledIntermediate(index=1),
         UnrolledEnsemble(steps=2, damping=0.5),
         EnsemblePath(paths=(UnrolledIntermediate(index=1), AdjointBroyden(ensemble=True)))]


@pytest.fixture
def attacked():
    model = tanh_deq(Broyden(max_iter=4, tol=0.0), features=12, classes=4)
    return model, *batch(model, size=4)


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.name)
def test_paths_drive_pgd_inside_the_ball_and_are_deterministic(attacked, path):
    model, x, y = attacked
    assert not model.training
    first = path.input_gradient(model, x, y, cross_entropy)
    assert first.shape == x.shape and first.abs().max() > 0
    torch.testing.assert_close(path.input_gradient(model, x, y, cross_entropy), first,
                               rtol=0, atol=0)
    x_same = PGD(eps=0.0, steps=2).run(model, path, x, y).x_adv
    torch.testing.assert_close(x_same, x, rtol=0, atol=0)
    for norm, eps, step in [("linf", 0.05, 0.02), ("l2", 0.3, 0.2)]:
        x_adv = PGD(eps=eps, step_size=step, steps=2, norm=norm).run(
            model, path, x, y, generator=torch.Generator().manual_seed(0)).x_adv
        check_perturbation(x_adv, x, eps, norm, (0.0, 1.0))
        assert (x_adv != x).any()


def test_bad_settings_raise_clear_errors():
    model = tanh_deq(Broyden(max_iter=4, tol=0.0))
    x, y = batch(model)
    for path in (SimultaneousAdjoint(index=5), AdjointBroyden(index=9),
                 UnrolledIntermediate(index=5), UnrolledEnsemble(indices=(1, 7))):
        with pytest.raises(InputError, match=r"max_iter=4 gives states z_0..z_4"):
            path.input_gradient(model, x, y, cross_entropy)
    picard = tanh_deq(Picard(max_iter=4))
    for path in (SimultaneousAdjoint(), AdjointBroyden()):
        with pytest.raises(InputError, match="Broyden"):
            path.input_gradient(picard, x, y, cross_entropy)
    net = SmallCNNSettings(channels=(2,)).build((1, 4, 4), 3)
    with pytest.raises(InputError, match="needs a DEQClassifier"):
        UnrolledIntermediate(index=1).input_gradient(net, torch.rand(2, 1, 4, 4),
                                                     torch.tensor([0, 1]), cross_entropy)
    for make in (lambda: UnrolledIntermediate(index=1, steps=0),
                 lambda: UnrolledEnsemble(damping=0.0), lambda: UnrolledEnsemble(damping=1.5),
                 lambda: UnrolledIntermediate(index=-1), lambda: UnrolledEnsemble(indices=()),
                 lambda: SimultaneousAdjoint(index=0), lambda: SimultaneousAdjoint(step=0.0),
                 lambda: SimultaneousAdjoint(index=2, ensemble=True),
                 lambda: AdjointBroyden(index=1, ensemble=True),
                 lambda: EnsemblePath(paths=[]), lambda: SimultaneousAdjoint(beta=0.5)):
        with pytest.raises(ValueError):
            make()
