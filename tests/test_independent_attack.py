"""The outside attacker of benchmarks/independent_attack.py: its BPDA target through a defense
that transforms its input must predict exactly what the defense predicts (AutoAttack trusts its
forward pass for success and best-example checks) and carry the unrolled gradient at the
defense's final input."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from deqshield.models import ConvDEQSettings
from deqshield.readouts import Early, EntropyReduction, Final
from deqshield.solvers import Picard

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import independent_attack  # noqa: E402  (a benchmark script, not a package module)


@pytest.mark.parametrize("base, depth", [(Final(), 6), (Early(index=2), 2)],
                         ids=["final", "early"])
def test_bpda_target_reads_the_defense_and_differentiates_the_unroll_at_its_input(base, depth):
    torch.manual_seed(0)
    model = ConvDEQSettings(channels=4, solver=Picard(max_iter=6, tol=0.0)).build(
        (1, 8, 8), 10).eval()
    defense = EntropyReduction(interval=2, steps=3, step_size=0.05, eps=0.1, base=base)
    x = torch.rand(5, 1, 8, 8)
    assert independent_attack.base_depth(base, 6) == depth
    target = independent_attack.ThroughDefense(model, defense, depth)

    x_var = x.clone().requires_grad_()
    logits = target(x_var)
    torch.testing.assert_close(logits, defense.logits(model, x), rtol=0, atol=1e-6)
    weights = torch.randn_like(logits)
    (grad,) = torch.autograd.grad((weights * logits).sum(), x_var)

    purified = defense.regulate(model, x).final_input
    assert not torch.equal(purified, x)  # the defense moved the input: the test has teeth
    purified.requires_grad_()
    unrolled = independent_attack.unrolled_logits(model, purified, depth)
    (expected,) = torch.autograd.grad((weights * unrolled).sum(), purified)
    torch.testing.assert_close(grad, expected)
