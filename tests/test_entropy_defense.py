"""The entropy-reduction defense (regulating-dynamics-icml23 Sec. 3.2) and adaptive paths."""

from __future__ import annotations

import pytest
import torch

from deqshield.attacks import PGD
from deqshield.data import load_dataset
from deqshield.readouts.entropy import prediction_entropy
from deqshield.models import ConvDEQSettings, DenseDEQSettings
from deqshield.paths import EntropyBPDA, ThroughEntropyReduction, UnrolledIntermediate
from deqshield.readouts import Early, Ensemble, EntropyReduction, Final
from deqshield.solvers import Anderson, Broyden, Picard
from deqshield.training import fit


def conv_model(solver=None, seed=0):
    torch.manual_seed(seed)
    return ConvDEQSettings(channels=4, solver=solver or Picard(max_iter=6, tol=0.0)).build(
        (1, 8, 8), 10).eval()


@pytest.mark.parametrize("base", [Final(), Early(index=3), Ensemble()], ids=lambda b: b.name)
def test_without_input_steps_the_defense_is_the_plain_readout(base):
    model = conv_model()
    x = torch.rand(5, 1, 8, 8)
    defended = EntropyReduction(steps=0, base=base).logits(model, x)
    torch.testing.assert_close(defended, base.logits(model, x), rtol=0, atol=0)


@pytest.mark.parametrize("solver", [Picard(max_iter=7, tol=0.0), Anderson(max_iter=7, tol=1e-3),
                                    Broyden(max_iter=7, tol=1e-3)], ids=lambda s: s.name)
def test_input_updates_stay_in_the_box_around_the_given_input(solver):
    model = conv_model(solver)
    x = torch.rand(4, 1, 8, 8)
    defense = EntropyReduction(interval=2, steps=5, step_size=0.05, eps=0.1)
    regulated = defense.regulate(model, x)
    assert len(regulated.states) == 8
    assert len(regulated.inputs) == 1 + 7 // 2
    for updated in regulated.inputs:
        assert (updated - x).abs().max() <= 0.1 + 1e-6
        assert updated.min() >= 0 and updated.max() <= 1
    assert (regulated.final_input - x).abs().max() > 0


def test_differentiable_rerun_reproduces_the_defense_and_its_gradient():
    model = conv_model(Picard(max_iter=4, tol=0.0, damping=0.8)).double()
    defense = EntropyReduction(interval=2, steps=3, step_size=0.01, eps=0.05)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(3, 1, 8, 8, generator=gen, dtype=torch.float64) * 0.8 + 0.1
    y = torch.tensor([0, 1, 2])
    plain = defense.logits(model, x)
    rerun = defense.read(model, defense.regulate(model, x, differentiable=True))
    torch.testing.assert_close(rerun, plain)
    loss = lambda logits, labels: torch.nn.functional.cross_entropy(  # noqa: E731
        logits, labels, reduction="none")
    grad = ThroughEntropyReduction(defense=defense).input_gradient(model, x, y, loss)
    direction = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    h = 1e-7
    with torch.no_grad():
        up = loss(defense.logits(model, x + h * direction), y).sum()
        down = loss(defense.logits(model, x - h * direction), y).sum()
    numeric = (up - down) / (2 * h)
    assert abs((grad * direction).sum() - numeric) / abs(numeric) < 1e-4


def test_adaptive_paths_attack_inside_the_ball():
    model = conv_model()
    x, y = torch.rand(4, 1, 8, 8), torch.randint(0, 10, (4,))
    defense = EntropyReduction(steps=2, step_size=0.02, eps=0.1)
    for path in (ThroughEntropyReduction(defense=defense),
                 EntropyBPDA(defense=defense, inner=UnrolledIntermediate(index=2, steps=2))):
        x_adv = PGD(eps=0.1, step_size=0.03, steps=3).run(model, path, x, y).x_adv
        assert (x_adv - x).abs().max() <= 0.1 + 1e-6


def test_entropy_at_the_final_state_does_not_rise_on_a_trained_model():
    torch.manual_seed(0)
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    settings = DenseDEQSettings(width=32, solver=Picard(max_iter=8, tol=0.0))
    model = settings.build(train.input_shape, 10)
    fit(model, train, epochs=3, batch_size=64, lr=3e-3, progress=False)
    x = test.images[:200]
    defense = EntropyReduction(interval=2, steps=5, step_size=2 / 255, eps=8 / 255)
    with torch.no_grad():
        before = prediction_entropy(Final().logits(model, x)).mean()
    after = prediction_entropy(defense.logits(model, x)).mean()
    assert after < before


def test_settings_are_validated():
    with pytest.raises(ValueError):
        EntropyReduction(interval=0)
    with pytest.raises(ValueError):
        EntropyReduction(stepsize=0.1)
