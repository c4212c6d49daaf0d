"""Small models, the DEQ classifier's public pieces, input validation."""

from __future__ import annotations

import pytest
import torch

from deqshield.errors import InputError
from deqshield.models import ConvDEQSettings, DenseDEQSettings, SmallCNNSettings
from deqshield.solvers import Picard

SPECS = [DenseDEQSettings(width=16), ConvDEQSettings(channels=4), SmallCNNSettings(channels=(4, 4))]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
@pytest.mark.parametrize("make_input, message", [
    (lambda: torch.rand(2, 1, 9, 9), r"shape \(batch, 1, 8, 8\)"),
    (lambda: torch.rand(0, 1, 8, 8), "empty batch"),
    (lambda: torch.randint(0, 255, (2, 1, 8, 8)), "floating-point"),
    (lambda: torch.full((2, 1, 8, 8), float("inf")), "NaN or Inf"),
])
def test_bad_input_raises_clear_error(spec, make_input, message):
    model = spec.build((1, 8, 8), 10)
    with pytest.raises(InputError, match=message):
        model(make_input())


@pytest.mark.parametrize("spec", SPECS[:2], ids=lambda s: s.name)
def test_every_state_can_be_classified_and_trajectory_matches_forward(spec):
    model = spec.build((1, 8, 8), 10).eval()
    x = torch.rand(3, 1, 8, 8)
    trajectory = model.trajectory(x)
    for state in trajectory.states:
        assert model.head(state).shape == (3, 10)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.head(trajectory.final))


def test_solver_can_be_swapped_and_eval_is_deterministic():
    model = ConvDEQSettings(channels=4).build((1, 8, 8), 10).eval()
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        first, second = model(x), model(x)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    model.deq.solver = Picard(max_iter=3, tol=0.0)
    assert model.trajectory(x).num_steps == 3


def test_conv_deq_cell_is_close_to_a_contraction_at_initialisation():
    torch.manual_seed(0)
    model = ConvDEQSettings(channels=8, solver=Picard(max_iter=200, tol=1e-6)).build((1, 8, 8), 10)
    trajectory = model.trajectory(torch.rand(4, 1, 8, 8))
    assert trajectory.converged.all()
