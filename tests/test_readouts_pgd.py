"""Trajectory readouts (defenses) and PGD."""

from __future__ import annotations

import pytest
import torch

from deqshield.attacks import PGD, check_perturbation, cross_entropy, margin, project
from deqshield.models import ConvDEQSettings, SmallCNNSettings
from deqshield.paths import FinalState
from deqshield.readouts import Early, Ensemble, EntropyReduction, Final
from deqshield.readouts.base import readouts_logits
from deqshield.solvers import Anderson, Picard


@pytest.fixture
def model():
    torch.manual_seed(0)
    settings = ConvDEQSettings(channels=4, solver=Picard(max_iter=6, tol=0.0))
    return settings.build((1, 8, 8), 10).eval()


@pytest.mark.parametrize("solver", [Picard(max_iter=6, tol=1e-2), Anderson(max_iter=6, tol=1e-3)],
                         ids=lambda s: s.name)
def test_readouts_sharing_one_solve_give_each_ones_own_logits(solver):
    torch.manual_seed(0)
    model = ConvDEQSettings(channels=4, solver=solver).build((1, 8, 8), 10).eval()
    x = torch.rand(5, 1, 8, 8)
    readouts = [Final(), Early(index=2), Ensemble(), EntropyReduction(steps=1)]
    together = readouts_logits(model, readouts, x)
    for readout, logits in zip(readouts, together):
        assert torch.equal(logits, readout.logits(model, x))
    cnn = SmallCNNSettings(channels=(4,)).build((1, 8, 8), 10).eval()
    assert torch.equal(readouts_logits(cnn, [Final(), Final()], x)[1], Final().logits(cnn, x))


def test_readouts_read_the_right_states(model):
    x = torch.rand(5, 1, 8, 8)
    states = model.trajectory(x).states
    with torch.no_grad():
        torch.testing.assert_close(Final().logits(model, x), model(x))
        for n in (1, 3, 6):
            torch.testing.assert_close(Early(index=n).logits(model, x), model.head(states[n]))
        mean = torch.stack(states[1:]).mean(0)
        torch.testing.assert_close(Ensemble().logits(model, x), model.head(mean))


def test_readouts_of_an_early_stopped_solve_repeat_the_frozen_state():
    torch.manual_seed(1)
    model = ConvDEQSettings(channels=4, solver=Anderson(max_iter=40, tol=1e-2)).build((1, 8, 8), 10)
    model.eval()
    x = torch.rand(3, 1, 8, 8)
    trajectory = model.trajectory(x)
    assert trajectory.num_steps < 40  # stopped early: every sample converged
    padded = trajectory.states[1:] + [trajectory.final] * (40 - trajectory.num_steps)
    with torch.no_grad():
        torch.testing.assert_close(Ensemble().logits(model, x),
                                   model.head(torch.stack(padded).mean(0)))
        torch.testing.assert_close(Early(index=39).logits(model, x), model.head(trajectory.final))


def test_ensemble_rejects_a_window_without_states(model):
    with pytest.raises(ValueError, match="averages no state"):
        Ensemble(first=7).logits(model, torch.rand(2, 1, 8, 8))


def test_readouts_are_deterministic(model):
    x = torch.rand(4, 1, 8, 8)
    for readout in (Final(), Early(index=2), Ensemble()):
        torch.testing.assert_close(readout.logits(model, x), readout.logits(model, x),
                                   rtol=0, atol=0)


@pytest.mark.parametrize("norm, eps, step", [("linf", 0.1, 0.03), ("l2", 0.5, 0.2)])
def test_pgd_stays_in_the_ball_and_range_and_raises_the_loss(model, norm, eps, step):
    x = torch.rand(6, 1, 8, 8)
    y = torch.randint(0, 10, (6,))
    attack = PGD(eps=eps, step_size=step, steps=8, norm=norm)
    x_adv = attack.run(model, FinalState(), x, y, generator=torch.Generator().manual_seed(0)).x_adv
    check_perturbation(x_adv, x, eps, norm, (0.0, 1.0))
    with torch.no_grad():
        assert cross_entropy(model(x_adv), y).mean() > cross_entropy(model(x), y).mean()


def test_pgd_with_zero_eps_returns_the_input(model):
    x = torch.rand(3, 1, 8, 8)
    y = torch.zeros(3, dtype=torch.long)
    x_adv = PGD(eps=0.0, steps=3).run(model, FinalState(), x, y).x_adv
    torch.testing.assert_close(x_adv, x, rtol=0, atol=0)


def test_pgd_is_reproducible_with_a_seeded_generator():
    net = SmallCNNSettings(channels=(4,)).build((1, 8, 8), 10)
    x, y = torch.rand(3, 1, 8, 8), torch.tensor([0, 1, 2])
    runs = [PGD(eps=0.1, steps=3).run(net, FinalState(), x, y,
                           generator=torch.Generator().manual_seed(5)).x_adv
            for _ in range(2)]
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)


def test_projection_and_perturbation_check():
    x = torch.full((2, 3), 0.5)
    far = x + torch.tensor([[3.0, 4.0, 0.0], [0.1, 0.0, 0.0]])
    projected = project(far, x, eps=1.0, norm="l2", bounds=(-10.0, 10.0))
    torch.testing.assert_close((projected - x).norm(dim=1), torch.tensor([1.0, 0.1]))
    with pytest.raises(RuntimeError, match="left the linf ball"):
        check_perturbation(x + 0.2, x, 0.1, "linf", (0.0, 1.0))
    with pytest.raises(RuntimeError, match="valid input range"):
        check_perturbation(x + 0.6, x, 1.0, "linf", (0.0, 1.0))


def test_margin_loss_is_positive_exactly_when_misclassified():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
    y = torch.tensor([0, 0])
    assert margin(logits, y).tolist() == [-1.0, 3.0]
