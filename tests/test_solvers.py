"""Fixed-point solvers: convergence, exact trajectories, per-sample stopping, bad input."""

from __future__ import annotations

import pytest
import torch

from deqshield.errors import InputError
from deqshield.solvers import Anderson, Broyden, LowRankInverse, Picard, SolverStep, swapped_solver

SOLVERS = [Picard(max_iter=400, tol=1e-9), Anderson(max_iter=200, tol=1e-9),
           Broyden(max_iter=200, tol=1e-9)]


def linear_problem(batch=3, dim=12, norm=0.8, seed=0):
    """f(z) = A z + b with ||A||_2 = norm < 1 and its exact solution (I - A)^{-1} b."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(batch, dim, dim, generator=gen, dtype=torch.float64)
    a = norm * a / torch.linalg.matrix_norm(a, 2)[:, None, None]
    b = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    solution = torch.linalg.solve(torch.eye(dim, dtype=torch.float64) - a, b)
    return (lambda z: torch.einsum("bij,bj->bi", a, z) + b), solution, a, b


@pytest.mark.parametrize("solver", SOLVERS, ids=lambda s: s.name)
def test_recovers_linear_solution(solver):
    f, solution, _, _ = linear_problem()
    trajectory = solver.solve(f, torch.zeros_like(solution))
    assert trajectory.converged.all()
    torch.testing.assert_close(trajectory.final, solution, atol=1e-7, rtol=0)


@pytest.mark.parametrize("solver", SOLVERS, ids=lambda s: s.name)
def test_reaches_small_relative_residual_on_nonlinear_contraction(solver):
    f_lin, solution, _, _ = linear_problem(norm=0.9, seed=1)
    f = lambda z: torch.tanh(f_lin(z))  # noqa: E731 - a contraction (tanh is 1-Lipschitz)
    trajectory = solver.solve(f, torch.zeros_like(solution))
    z = trajectory.final
    rel = (f(z) - z).norm(dim=1) / f(z).norm(dim=1)
    assert (rel < 1e-6).all()
    assert (trajectory.rel_residual[-1] < 1e-6).all()
    assert trajectory.converged.all()


@pytest.mark.parametrize("damping", [1.0, 0.5])
def test_picard_trajectory_equals_hand_iteration(damping):
    f, solution, _, _ = linear_problem(seed=2)
    steps = 7
    trajectory = Picard(max_iter=steps, tol=0.0, damping=damping).solve(
        f, torch.zeros_like(solution))
    z = torch.zeros_like(solution)
    expected = [z]
    for _ in range(steps):
        z = (1 - damping) * z + damping * f(z)
        expected.append(z)
    assert len(trajectory.states) == steps + 1
    for got, want in zip(trajectory.states, expected):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    residuals = torch.stack([(f(s) - s).norm(dim=1) for s in expected])
    torch.testing.assert_close(trajectory.abs_residual, residuals)


@pytest.mark.parametrize("solver", [Picard(max_iter=9, tol=0.0), Anderson(max_iter=9, tol=0.0),
                                    Broyden(max_iter=9, tol=0.0)], ids=lambda s: s.name)
def test_trajectory_is_complete_and_callback_streams_every_state(solver):
    f, solution, _, _ = linear_problem(seed=3)
    streamed: list[SolverStep] = []
    trajectory = solver.solve(f, torch.zeros_like(solution),
                              callback=lambda step: streamed.append(step.state.clone()))
    assert trajectory.num_steps == 9
    assert len(trajectory.states) == 10 == len(streamed)
    assert trajectory.abs_residual.shape == (10, 3)
    for kept, sent in zip(trajectory.states, streamed):
        torch.testing.assert_close(kept, sent)
    torch.testing.assert_close(trajectory.states[-1], trajectory.final)
    unrecorded = solver.solve(f, torch.zeros_like(solution), record_states=False)
    assert unrecorded.states == []
    torch.testing.assert_close(unrecorded.final, trajectory.final)


def test_per_sample_stopping_freezes_converged_samples():
    scale = torch.tensor([0.1, 0.95], dtype=torch.float64)[:, None]
    f = lambda z: scale * z + 1.0  # noqa: E731 - sample 0 contracts fast, sample 1 slowly
    trajectory = Picard(max_iter=500, tol=1e-8).solve(f, torch.zeros(2, 4, dtype=torch.float64))
    fast, slow = trajectory.iterations.tolist()
    assert fast < slow
    assert trajectory.converged.all()
    frozen = trajectory.states[fast]
    for later in trajectory.states[fast:]:
        torch.testing.assert_close(later[0], frozen[0])


def test_divergent_cell_is_reported_not_converged():
    f = lambda z: 2.0 * z + 1.0  # noqa: E731
    for solver in (Picard(max_iter=20, tol=1e-6), Anderson(max_iter=20, tol=1e-6, memory=1)):
        trajectory = solver.solve(f, torch.zeros(2, 3))
        assert not trajectory.converged.any()
        assert trajectory.iterations.tolist() == [20, 20]


def test_skipping_the_final_residual_reports_unknown_and_not_converged():
    f, solution, _, _ = linear_problem(seed=4)
    trajectory = Picard(max_iter=5, tol=1.0, final_residual=False, stop_mode="abs").solve(
        f, torch.zeros_like(solution) + solution)  # starts at the solution: converges at z_0
    assert trajectory.converged.all() and trajectory.num_steps == 0
    trajectory = Picard(max_iter=5, tol=1e-12, final_residual=False).solve(
        f, torch.zeros_like(solution))
    assert torch.isnan(trajectory.rel_residual[-1]).all()
    assert not trajectory.converged.any()


def test_anderson_survives_a_singular_least_squares_system():
    f = lambda z: torch.ones_like(z)  # noqa: E731 - every residual after step 1 is zero
    trajectory = Anderson(max_iter=10, tol=0.0, regularization=0.0).solve(f, torch.zeros(2, 5))
    assert torch.isfinite(trajectory.final).all()
    torch.testing.assert_close(trajectory.final, torch.ones(2, 5))


def test_broyden_exposes_its_inverse_jacobian_estimate():
    f, solution, _, _ = linear_problem(dim=6, seed=5)
    g = lambda z: f(z) - z  # noqa: E731
    previous: dict[str, torch.Tensor] = {}
    counts: list[int] = []

    def check(step: SolverStep):
        inverse = step.inverse_jacobian
        assert isinstance(inverse, LowRankInverse)
        counts.append(inverse.count)
        x, y = torch.randn_like(solution), torch.randn_like(solution)
        torch.testing.assert_close((inverse.apply(x) * y).sum(1),
                                   (x * inverse.apply_transpose(y)).sum(1))
        if step.n == 0:
            torch.testing.assert_close(inverse.apply(x), -x)  # B_0 = -I
        else:  # the good Broyden update satisfies the secant equation B_n dg_n = dz_n
            dz = step.state - previous["z"]
            dg = g(step.state) - g(previous["z"])
            torch.testing.assert_close(inverse.apply(dg), dz, rtol=1e-8, atol=1e-10)
        previous["z"] = step.state.clone()

    Broyden(max_iter=5, tol=0.0).solve(f, torch.zeros_like(solution), callback=check)
    assert counts == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize("memory", [2, 27])
def test_broyden_steps_along_its_estimate(memory):
    """z_{n+1} = z_n - alpha B_n g(z_n) (Eq. 7) with B_n recomputed from the exposed estimate,
    also once a limited memory starts overwriting terms (the solver carries B_n g_n)."""
    f, solution, _, _ = linear_problem(dim=6, seed=6)
    states, steps = [], []

    def record(step: SolverStep):
        states.append(step.state.clone())
        steps.append(step.inverse_jacobian.apply(f(step.state) - step.state))

    Broyden(max_iter=6, tol=0.0, memory=memory, step_size=0.8).solve(
        f, torch.zeros_like(solution), callback=record)
    for n in range(len(states) - 1):
        torch.testing.assert_close(states[n + 1], states[n] - 0.8 * steps[n],
                                   rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("solver", [Anderson(max_iter=6, tol=0.0),
                                    Anderson(max_iter=6, tol=0.0, damping=0.7),
                                    Broyden(max_iter=6, tol=0.0)], ids=lambda s: s.name)
def test_a_solve_nested_in_a_callback_leaves_the_outer_solve_unchanged(solver):
    """History buffers are lent per solve: a callback that solves the same problem (same
    buffer shapes) gets buffers of its own."""
    f, solution, _, _ = linear_problem(seed=7)
    z0 = torch.zeros_like(solution)
    alone = solver.solve(f, z0)
    nested = solver.solve(f, z0, callback=lambda step: solver.solve(f, step.state + 1.0))
    for a, b in zip(alone.states, nested.states):
        assert torch.equal(a, b)


@pytest.mark.parametrize("make_input, message", [
    (lambda: torch.zeros(0, 4), "empty batch"),
    (lambda: torch.zeros(2, 4, dtype=torch.long), "floating-point"),
    (lambda: torch.full((2, 4), float("nan")), "NaN or Inf"),
    (lambda: torch.tensor([[0.0, float("-inf")]]), "NaN or Inf"),
    (lambda: torch.zeros(4), r"shape \(batch"),
])
def test_bad_initial_state_raises_clear_error(make_input, message):
    with pytest.raises(InputError, match=message):
        Picard().solve(lambda z: z, make_input())


def test_cell_returning_another_shape_raises_clear_error():
    with pytest.raises(InputError, match="the cell returned"):
        Anderson().solve(lambda z: z[:, :2], torch.zeros(2, 4))


def test_settings_are_validated():
    with pytest.raises(ValueError, match="damping"):
        Picard(damping=1.5)
    with pytest.raises(ValueError, match="max_iter"):
        Anderson(max_iter=0)
    with pytest.raises(ValueError):
        Broyden(stepsize=0.5)  # misspelt: unknown keys are rejected


def test_scratch_pool_is_bounded_and_lends_each_buffer_once():
    from deqshield.solvers.scratch import _Pool

    pool = _Pool(max_bytes=3 * 400)  # room for three (10, 10) float32 buffers
    like = torch.zeros(1)
    first = pool.take((10, 10), like)
    second = pool.take((10, 10), like)
    assert first.data_ptr() != second.data_ptr()
    for buffer in (first, second, pool.take((5, 20), like), pool.take((10, 10), like)):
        pool.give(buffer)
    kept = {b.data_ptr() for stack in pool.free.values() for b in stack}
    assert pool.bytes == pool.max_bytes and len(kept) == 3  # four given back, one evicted
    for _ in range(2):  # reused, not allocated, until none of that shape is left
        assert pool.take((10, 10), like).data_ptr() in kept
    pool.give(pool.take((10, 10), like))  # an emptied shape can come back and be evicted
    pool.give(torch.zeros(1000))  # larger than the whole pool: dropped
    assert pool.bytes == 400


def test_a_swapped_solver_keeps_the_settings_both_solvers_have():
    current = Anderson(max_iter=7, tol=1e-5, stop_mode="abs", final_residual=False, damping=0.5,
                       memory=3)
    picard = swapped_solver(current, "picard")
    assert picard == Picard(max_iter=7, tol=1e-5, stop_mode="abs", final_residual=False,
                            damping=0.5)
    broyden = swapped_solver(current, "broyden")
    assert (broyden.max_iter, broyden.tol, broyden.stop_mode, broyden.memory) == (7, 1e-5, "abs", 3)
    assert swapped_solver(current, "anderson") is current
