"""Straight-through model and AutoAttack bridge on a tiny conv DEQ."""

import dataclasses

import pytest
import torch

from deqshield.attacks import AutoAttackBridge, StraightThrough, check_perturbation
from deqshield.attacks.autoattack import BOUNDS
from deqshield.models import ConvDEQSettings
from deqshield.solvers import Anderson
from deqshield.paths import FinalState
from deqshield.readouts import Early, Ensemble, Final

FAST = dict(apgd_iterations=2, fab_iterations=2, square_queries=10, target_classes=2,
            batch_size=4)
SOLVER = Anderson(max_iter=4, tol=1e-3)  # small: keeps the suite fast


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = ConvDEQSettings(channels=4, solver=SOLVER).build((1, 8, 8), 10).eval()
    x = torch.rand(6, 1, 8, 8)
    return model, x


@pytest.mark.parametrize("readout", [Final(), Early(index=2), Ensemble()])
def test_forward_equals_readout(setup, readout):
    model, x = setup
    wrapped = StraightThrough(model, readout, FinalState())
    assert torch.equal(wrapped(x), readout.logits(model, x))


def test_gradient_equals_path_for_any_loss_and_sub_batch(setup):
    """d loss(wrapper(x))/dx == path gradient of <g, logits> with g = d loss/d readout logits,
    on the full batch and on a sub-batch (labels never reach the path)."""
    model, x = setup
    path = FinalState()
    y = torch.arange(len(x)) % 10
    ce = torch.nn.functional.cross_entropy
    for part in (slice(None), slice(1, 4)):
        xs, ys = x[part].clone().requires_grad_(), y[part]
        (grad,) = torch.autograd.grad(ce(StraightThrough(model, Final(), path)(xs), ys,
                                         reduction="sum"), xs)
        value = Final().logits(model, x[part]).requires_grad_()
        (g,) = torch.autograd.grad(ce(value, ys, reduction="sum"), value)
        expected = path.input_gradient(model, x[part], torch.zeros_like(ys),
                                       lambda logits, _: (logits * g).sum(1))
        torch.testing.assert_close(grad, expected)


def test_eps_zero_returns_clean(setup):
    model, x = setup
    y = Final().logits(model, x).argmax(1)
    outcome = AutoAttackBridge(eps=0.0, **FAST).run(model, FinalState(), x, y, defenses=(Final(),))
    assert torch.equal(outcome.x_adv, x) and not outcome.broken.any()


@pytest.mark.parametrize("norm,eps,attacks", [("linf", 0.1, ("apgd-ce", "square")),
                                              ("l2", 0.5, ("apgd-t", "fab-t"))])
def test_examples_stay_in_ball_and_findings_are_strings(setup, norm, eps, attacks):
    model, x = setup
    x = x[:2]
    readout = Early(index=2)
    y = readout.logits(model, x).argmax(1)
    bridge = AutoAttackBridge(eps=eps, norm=norm, attacks=attacks, **FAST)
    outcome = bridge.run(model, FinalState(), x, y, defenses=(readout,))
    check_perturbation(outcome.x_adv, x, eps, norm, BOUNDS)
    assert all(isinstance(f, str) for f in outcome.findings)


def test_seed_per_column_from_the_generator(setup):
    """starts() draws one seed per sample from the column's generator (reproducibly), and a
    batch's AutoAttack draw follows the seed of its first sample: another seed, another draw."""
    model, x = setup
    x = x[:3]
    bridge = AutoAttackBridge(eps=0.1, attacks=("apgd-ce",), **FAST)
    assert bridge.starts(x, None) is None
    seeds = bridge.starts(x, torch.Generator().manual_seed(5))
    assert seeds.shape == (1, 3)
    assert torch.equal(seeds, bridge.starts(x, torch.Generator().manual_seed(5)))
    assert not torch.equal(seeds, bridge.starts(x, torch.Generator().manual_seed(6)))
    y = Final().logits(model, x).argmax(1)

    def example(start):
        return bridge.run(model, FinalState(), x, y, defenses=(Final(),), start=start).x_adv

    torch.testing.assert_close(example(torch.tensor([[11, 0, 0]])),
                               example(torch.tensor([[11, 5, 9]])), rtol=0, atol=0)
    assert not torch.equal(example(torch.tensor([[11, 0, 0]])), example(torch.tensor([[12, 0, 0]])))
    torch.testing.assert_close(example(None), example(torch.tensor([[bridge.seed, 1, 2]])),
                               rtol=0, atol=0)
    drawn = bridge.run(model, FinalState(), x, y, defenses=(Final(),),
                       generator=torch.Generator().manual_seed(5)).x_adv
    torch.testing.assert_close(drawn, example(seeds), rtol=0, atol=0)


def test_settings_are_validated():
    with pytest.raises(Exception):
        AutoAttackBridge(attacks=("apgd-dlr",))
    assert AutoAttackBridge(attacks=("square",)).gradient_free
    assert not AutoAttackBridge().gradient_free


@dataclasses.dataclass(frozen=True)
class Above:
    """A defense of the mean pixel m: class 1 iff m > ``threshold``."""

    threshold: float
    name: str = "above"

    def logits(self, model, x):
        inside = (x.flatten(1).mean(dim=1) > self.threshold).to(x.dtype)
        return torch.stack([1 - inside, inside], dim=1)


class TwoClasses(torch.nn.Module):
    num_classes = 2


def test_every_defense_scores_every_run(monkeypatch):
    low, high, higher = Above(0.55), Above(0.58), Above(0.65)
    runs = {low: 0.1, high: 0.0, higher: -0.05}  # AutoAttack's example against each defense
    monkeypatch.setattr(AutoAttackBridge, "_attack",
                        lambda self, model, readout, path, x, y, seed: (x + runs[readout], []))
    x, y = torch.full((1, 1, 2, 2), 0.5), torch.tensor([0])
    result = AutoAttackBridge(eps=0.1).run(TwoClasses(), FinalState(), x, y,
                                           defenses=(low, high, higher))
    # the run against `low` (mean 0.6) breaks `high` too, whose own run found nothing
    assert result.broken.tolist() == [[True], [True], [False]]
    torch.testing.assert_close(result.witnesses[1], x + 0.1)
    torch.testing.assert_close(result.witnesses[2], x - 0.05)  # its own run's example
