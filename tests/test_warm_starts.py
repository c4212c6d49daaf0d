"""Warm-started attack solves: fewer steps to the same equilibrium, and never a change of the
defended prediction."""

from __future__ import annotations

import torch

from conftest import tiny_conv_deq
from deqshield.attacks import PGD, cross_entropy
from deqshield.gradients import Backprop
from deqshield.models import ConvDEQSettings
from deqshield.paths import FinalState
from deqshield.readouts import Early, Ensemble, Final
from deqshield.solvers import Anderson, Picard
from deqshield.solvers.warm import WarmStarts
from test_paths import tanh_deq


def test_a_warm_started_solve_reaches_the_same_equilibrium_in_fewer_steps():
    model = tanh_deq(Picard(max_iter=200, tol=1e-10))  # ||W|| = 0.8: a contraction
    x = torch.rand(4, 5, dtype=torch.float64)
    nearby = (x + 0.01 * torch.randn_like(x)).clamp(0, 1)
    first = model.trajectory(x)
    cold = model.trajectory(nearby)
    warm = model.deq.solve(model.inject(nearby), z0=first.final)
    assert cold.converged.all() and warm.converged.all()
    torch.testing.assert_close(warm.final, cold.final, rtol=0, atol=1e-8)
    assert (warm.iterations < cold.iterations).all()


def test_warm_starts_reach_the_gradient_paths_but_never_the_readouts():
    torch.manual_seed(0)
    model = ConvDEQSettings(channels=4, solver=Anderson(max_iter=6, tol=1e-4)).build((1, 8, 8), 10)
    model.eval()
    x, y = torch.rand(5, 1, 8, 8), torch.randint(0, 10, (5,))
    readouts = (Final(), Early(index=2), Ensemble())
    before = [readout.logits(model, x) for readout in readouts]
    memory = WarmStarts(steps=1, batch=5)
    rows = torch.arange(5)
    path = FinalState()
    with memory.active(rows):
        cold_gradient = path.input_gradient(model, x, y, cross_entropy)  # full solve, stored
        shifted = (x + 0.05).clamp(0, 1)
        warm_gradient = path.input_gradient(model, shifted, y, cross_entropy)
        inside = [readout.logits(model, x) for readout in readouts]
    assert memory.known.all()
    for b, i in zip(before, inside):
        assert torch.equal(b, i)  # bitwise: readouts solve from the model's own z_0
    assert not torch.allclose(warm_gradient, path.input_gradient(model, shifted, y,
                                                                 cross_entropy))
    assert cold_gradient.shape == x.shape


def test_a_warm_started_attack_is_scored_by_the_cold_prediction():
    model, data = tiny_conv_deq(samples=8, solver=Anderson(max_iter=6, tol=1e-4), seed=1)
    x, y = data.tensors
    result = PGD(eps=0.1, step_size=0.03, steps=4, warm_steps=2).run(
        model, FinalState(), x, y, defenses=(Final(),),
        generator=torch.Generator().manual_seed(0))
    fresh = Final().logits(model, result.witnesses[0]).argmax(1) != y
    assert torch.equal(result.broken[0], fresh)
    assert ((result.x_adv - x).abs().amax() <= 0.1 + 1e-6).item()


def test_a_warm_started_backprop_gradient_unrolls_only_the_warm_steps():
    """With ``Backprop`` the unroll is the forward pass: after a sample's first (full) solve, a
    warm-started gradient costs the warm solve plus a k-step unroll from the stored state (not
    the configured 8), and equals autograd through those k iterations."""
    torch.manual_seed(0)
    model = ConvDEQSettings(channels=4, solver=Picard(max_iter=8, tol=0.0),
                            gradient=Backprop(steps=8)).build((1, 8, 8), 10).eval()
    x, y = torch.rand(3, 1, 8, 8), torch.randint(0, 10, (3,))
    calls = []
    model.deq.cell.register_forward_hook(lambda *_: calls.append(1))

    def solve_calls(steps: int) -> int:
        calls.clear()
        model.deq.solve(model.inject(x), solver=Picard(max_iter=steps, tol=0.0))
        return len(calls)

    full, short = solve_calls(8), solve_calls(2)
    memory, rows, path = WarmStarts(steps=2, batch=3), torch.arange(3), FinalState()
    calls.clear()
    with memory.active(rows):
        path.input_gradient(model, x, y, cross_entropy)
        assert len(calls) == full + 8  # the first solve is the model's own, unrolled as set
        start = memory.states.clone()
        shifted = (x + 0.05).clamp(0, 1)
        calls.clear()
        warm = path.input_gradient(model, shifted, y, cross_entropy)
    assert len(calls) == short + 2
    probe = shifted.clone().requires_grad_()
    u = model.inject(probe)
    z = start
    for _ in range(2):
        z = model.deq.cell(z, u)
    (expected,) = torch.autograd.grad(cross_entropy(model.head(z), y).sum(), probe)
    torch.testing.assert_close(warm, expected)


def retained_bytes(n_steps: int) -> int:
    """Bytes the random-intermediate loss keeps for its backward pass: tensors saved by
    autograd plus solver states held by the returned trajectory."""
    from deqshield.training.forward import random_intermediate_forward

    torch.manual_seed(0)
    settings = ConvDEQSettings(channels=4, solver=Anderson(max_iter=n_steps, tol=0.0))
    model = settings.build((1, 8, 8), 10)
    x = torch.rand(6, 1, 8, 8)
    saved = []

    def pack(tensor):
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        logits, trajectory = random_intermediate_forward(
            model, x, torch.Generator().manual_seed(1))
    held = sum(state.numel() * state.element_size() for state in trajectory.states)
    assert logits.shape == (6, 10)
    return sum(saved) + held


def test_the_random_intermediate_loss_keeps_memory_flat_in_the_solver_steps():
    assert retained_bytes(8) == retained_bytes(32)
