"""The outside attacker of benchmarks/independent_attack.py: its targets through a defense that
transforms its input must predict exactly what the defense predicts (AutoAttack trusts its
forward pass for success and best-example checks); the exact backward pass, written apart from
deqshield's, must agree with deqshield's adaptive path through the defense, and the BPDA one
must be the unrolled gradient at the defense's final input."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from deqshield.attacks.losses import cross_entropy
from deqshield.models import ConvDEQSettings
from deqshield.paths import ThroughEntropyReduction
from deqshield.readouts import Early, Ensemble, EntropyReduction, Final
from deqshield.solvers import Picard

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import independent_attack  # noqa: E402  (a benchmark script, not a package module)

BASES = [Final(), Early(index=2), Ensemble()]


def defended_model(base, damping: float = 1.0):
    torch.manual_seed(0)
    model = ConvDEQSettings(channels=4, solver=Picard(max_iter=6, tol=0.0, damping=damping)
                            ).build((1, 8, 8), 10).eval()
    defense = EntropyReduction(interval=2, steps=3, step_size=0.05, eps=0.1, base=base)
    return model, defense, torch.rand(5, 1, 8, 8)


@pytest.mark.parametrize("gradient", ["exact", "bpda"])
@pytest.mark.parametrize("base", BASES, ids=lambda b: b.name)
def test_target_predicts_what_the_defense_predicts(base, gradient):
    model, defense, x = defended_model(base)
    depth = independent_attack.base_depth(base, 6)
    target = independent_attack.ThroughDefense(model, defense, depth, gradient)
    torch.testing.assert_close(target(x), defense.logits(model, x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("damping", [1.0, 0.7])
@pytest.mark.parametrize("base", BASES, ids=lambda b: b.name)
def test_exact_gradient_agrees_with_deqshields_adaptive_path(base, damping):
    model, defense, x = defended_model(base, damping)
    y = torch.arange(5) % 10
    states = independent_attack.regulated_states(model, defense, x)
    torch.testing.assert_close(independent_attack.read_states(model, base, states),
                               defense.logits(model, x), rtol=1e-5, atol=1e-5)
    x_var = x.clone().requires_grad_()
    target = independent_attack.ThroughDefense(model, defense, 6, "exact")
    (grad,) = torch.autograd.grad(cross_entropy(target(x_var), y).sum(), x_var)
    expected = ThroughEntropyReduction(defense=defense).input_gradient(model, x, y, cross_entropy)
    assert expected.abs().max() > 0
    torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-6)


def test_bpda_gradient_is_the_unrolled_gradient_at_the_defenses_final_input():
    model, defense, x = defended_model(Early(index=2))
    target = independent_attack.ThroughDefense(model, defense, 2, "bpda")
    x_var = x.clone().requires_grad_()
    logits = target(x_var)
    weights = torch.randn_like(logits)
    (grad,) = torch.autograd.grad((weights * logits).sum(), x_var)
    purified = defense.regulate(model, x).final_input
    assert not torch.equal(purified, x)  # the defense moved the input: the test has teeth
    purified.requires_grad_()
    unrolled = independent_attack.unrolled_logits(model, purified, 2)
    (expected,) = torch.autograd.grad((weights * unrolled).sum(), purified)
    torch.testing.assert_close(grad, expected)
