"""The protocol's strength: best-iterate scoring, restarts, the full unroll from z_0, the
screening, early exit with attribution, and an independent attacker that must not beat it."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from conftest import tiny_conv_deq
from deqshield.attacks import PGD, AutoAttackBridge, cross_entropy
from deqshield.attacks.pgd import READY_MADE
from deqshield.models import ConvDEQSettings, DEQClassifier
from deqshield.evaluate import AttackSpec, Protocol, evaluate_matrix, run_protocol
from deqshield.evaluate.screening import followed_paths, screen_attacks, strongest_paths
from deqshield.evaluate.specs import Screening
from deqshield.evaluate.standard import (AttackBudget, full_unroll, redundant_early,
                                        standard_attacks, standard_protocol)
from deqshield.evaluate.verdicts import BROKEN
from deqshield.paths import ThroughEntropyReduction, UnrolledIntermediate, UnrolledMean
from deqshield.readouts import Early, Ensemble, EntropyReduction, Final
from deqshield.solvers import Anderson, Picard


class MeanBand(nn.Module):
    """Two classes from the mean pixel m: class 1 iff lo < m < hi, else class 0."""

    num_classes = 2

    def __init__(self, lo: float, hi: float):
        super().__init__()
        self.lo, self.hi = lo, hi

    def forward(self, x):
        m = x.flatten(1).mean(dim=1)
        inside = ((m > self.lo) & (m < self.hi)).to(x.dtype)
        return torch.stack([1 - inside, inside], dim=1)


class Push:
    """A gradient path that always points along ``sign`` (+1, -1 or 0) in every pixel."""

    def __init__(self, sign: float):
        self.sign = sign
        self.name = f"push{sign:+g}"

    def input_gradient(self, model, x, y, loss):
        return torch.full_like(x, self.sign)


def test_a_sample_misclassified_only_mid_attack_counts_as_broken():
    model = MeanBand(0.55, 0.65)  # PGD from m = 0.5 passes m = 0.6 (class 1), ends at 0.8
    x, y = torch.full((1, 1, 4, 4), 0.5), torch.tensor([0])
    attack = PGD(eps=0.3, step_size=0.1, steps=3, random_start=False)
    unscored = attack.run(model, Push(1.0), x, y)  # no defense to score: every step is taken
    assert model(unscored.x_adv).argmax(1).item() == 0  # the last iterate is classified right
    result = attack.run(model, Push(1.0), x, y, defenses=(Final(),))
    assert result.broken.tolist() == [[True]]
    torch.testing.assert_close(result.witnesses[0].mean(), torch.tensor(0.6))
    table = evaluate_matrix(model, TensorDataset(x, y), [Final()],
                            [AttackSpec(attack=attack, path=Push(1.0), label="push")],
                            progress=False)
    assert table.verdicts["final", "push"].tolist() == [BROKEN]
    assert table.broken_by("final") == ["push"]


def test_restarts_break_a_superset_and_stay_in_the_ball():
    torch.manual_seed(0)
    model = MeanBand(0.6, 0.7)  # class 1 only in a thin band: random starts matter
    x = torch.full((32, 1, 2, 2), 0.5)
    y = torch.zeros(32, dtype=torch.long)
    path = Push(0.0)  # no gradient: only the random starts can find the band
    one = PGD(eps=0.2, steps=1).run(model, path, x, y, defenses=(Final(),),
                                    generator=torch.Generator().manual_seed(3))
    many = PGD(eps=0.2, steps=1, restarts=6).run(model, path, x, y, defenses=(Final(),),
                                                 generator=torch.Generator().manual_seed(3))
    assert (many.broken >= one.broken).all() and many.broken.sum() > one.broken.sum()
    assert ((many.witnesses - x).abs().amax() <= 0.2 + 1e-6).item()


def test_pairs_that_are_not_pending_are_neither_scored_nor_attacked(monkeypatch):
    model = MeanBand(0.55, 2.0)  # pushing up by 0.1 breaks every sample, for every defense
    x, y = torch.full((3, 1, 2, 2), 0.5), torch.zeros(3, dtype=torch.long)
    defenses = (Final(), Final())
    pending = torch.tensor([[True, False, True], [False, False, True]])
    pgd = PGD(eps=0.2, step_size=0.1, steps=2, random_start=False)
    result = pgd.run(model, Push(1.0), x, y, defenses=defenses, pending=pending)
    assert result.broken.tolist() == pending.tolist()
    attacked = []
    monkeypatch.setattr(AutoAttackBridge, "_attack", lambda self, model, readout, path, x, y, seed:
                        (attacked.append(len(x)) or x + 0.1, []))
    result = AutoAttackBridge(eps=0.1).run(model, Push(1.0), x, y, defenses=defenses,
                                           pending=pending)
    assert attacked == [2, 1] and result.broken.tolist() == pending.tolist()


def test_full_unroll_is_autograd_through_n_iterations_from_z0():
    torch.manual_seed(0)
    model = ConvDEQSettings(channels=4, solver=Anderson(max_iter=5, tol=1e-3)).build((1, 8, 8), 10)
    model = model.double().eval()
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    y = torch.tensor([1, 2, 3])
    path = full_unroll(model)
    assert (path.index, path.steps, path.damping) == (0, 5, 1.0)
    x_var = x.clone().requires_grad_()
    u = model.inject(x_var)
    z = model.deq.cell.initial_state(u)
    for _ in range(5):
        z = model.deq.cell(z, u)
    expected = torch.autograd.grad(cross_entropy(model.head(z), y).sum(), x_var)[0]
    torch.testing.assert_close(path.input_gradient(model, x, y, cross_entropy), expected)


def test_screening_keeps_the_only_path_that_works():
    model = MeanBand(0.62, 2.0)  # class 1 once m > 0.62: only pushing up breaks
    x, y = torch.full((6, 1, 2, 2), 0.5), torch.zeros(6, dtype=torch.long)
    data = TensorDataset(x, y)
    attack = PGD(eps=0.2, step_size=0.1, steps=2, random_start=False)
    specs = [AttackSpec(attack=attack, path=Push(sign), label=f"push {sign:+g}")
             for sign in (0.0, -1.0, 1.0)]
    outcome = screen_attacks(Screening(samples=2, keep=1, follow=1), model, data, [Final()],
                             specs)
    assert [spec.title for spec in outcome.order] == ["push +1"]
    assert outcome.strength == {"push +1": {"final": 2}, "push +0": {"final": 0},
                                "push -1": {"final": 0}}
    protocol = Protocol(defenses=(Final(),), attacks=tuple(specs), eps=0.2,
                        screening=Screening(samples=2, keep=1, follow=1))
    results = run_protocol(protocol, model, data, progress=False)
    assert results["screening"]["chosen"] == ["push +1"]
    assert [a["label"] for a in results["attacks"]] == ["push +1", "push +0", "push -1"]
    assert results["aggregate"]["worst_case"]["robust_accuracy"] == 0.0
    verdicts = [entry["final"]["verdicts"] for entry in results["per_sample"]["samples"]]
    assert verdicts == ["011"] * 2 + ["0.."] * 4


@dataclasses.dataclass(frozen=True)
class Above:
    """A defense of the mean pixel m: class 1 iff (m > threshold) == ``upward``."""

    threshold: float
    upward: bool
    name: str = "above"

    def logits(self, model, x):
        m = x.flatten(1).mean(dim=1)
        inside = ((m > self.threshold) == self.upward).to(x.dtype)
        return torch.stack([1 - inside, inside], dim=1)


def test_screening_keeps_for_each_defense_its_strongest_columns():
    # Three columns push up and break only the first defense, one pushes down and breaks only
    # the second: every column breaks 2 (defense, sample) pairs, and a ranking summed over the
    # defenses would keep the first two pushes up only.
    model = MeanBand(0.0, 1.0)
    defenses = [Above(0.62, upward=True), Above(0.38, upward=False)]
    x, y = torch.full((4, 1, 2, 2), 0.5), torch.zeros(4, dtype=torch.long)
    attack = PGD(eps=0.2, step_size=0.1, steps=2, random_start=False)
    ups = [Push(1.0), Push(1.0), Push(1.0)]
    specs = [AttackSpec(attack=attack, path=path, label=f"up {k}") for k, path in enumerate(ups)]
    specs.append(AttackSpec(attack=attack, path=Push(-1.0), label="down"))
    outcome = screen_attacks(Screening(samples=2, keep=2, follow=1), model,
                             TensorDataset(x, y), defenses, specs)
    assert [spec.title for spec in outcome.order] == ["up 0", "up 1", "down"]
    assert outcome.strength["down"] == {"above(threshold=0.38, upward=False)": 2,
                                        "above(threshold=0.62, upward=True)": 0}


def test_the_expensive_attacks_follow_each_defenses_strongest_path():
    attack = PGD(eps=0.2, steps=2)
    a, b, c = (UnrolledIntermediate(index=i) for i in (1, 2, 3))
    first = [AttackSpec(attack=attack, path=path) for path in (a, b, c)]
    second = [AttackSpec(attack=attack, path=path) for path in (c, a, b)]
    assert followed_paths([first, second], 1) == [a, c]
    assert followed_paths([first, second], 2) == [a, c, b]


def test_screening_never_leaves_out_an_exact_column():
    model = MeanBand(0.62, 2.0)  # only pushing up breaks; the exact column below breaks nothing
    x, y = torch.full((6, 1, 2, 2), 0.5), torch.zeros(6, dtype=torch.long)
    attack = PGD(eps=0.2, step_size=0.1, steps=2, random_start=False)
    specs = [AttackSpec(attack=attack, path=Push(1.0), label="push +1"),
             AttackSpec(attack=attack, path=Push(-1.0), label="push -1"),
             AttackSpec(attack=attack, path=Push(0.0), label="exact", exact=True)]
    outcome = screen_attacks(Screening(samples=2, keep=1, follow=1), model,
                             TensorDataset(x, y), [Final()], specs)
    assert [spec.title for spec in outcome.order] == ["push +1", "exact"]
    assert [spec.title for spec in outcome.dropped] == ["push -1"]


def test_screening_feeds_the_expensive_attacks_every_exact_path():
    model = MeanBand(0.62, 2.0)  # only pushing up breaks; the exact path breaks nothing
    x, y = torch.full((6, 1, 2, 2), 0.5), torch.zeros(6, dtype=torch.long)
    attack = PGD(eps=0.2, step_size=0.1, steps=2, random_start=False)
    expensive = AutoAttackBridge(attacks=("apgd-ce",), apgd_iterations=2)
    up, down, exact = Push(1.0), Push(-1.0), Push(0.0)
    specs = [AttackSpec(attack=attack, path=up, label="push +1"),
             AttackSpec(attack=attack, path=down, label="push -1"),
             AttackSpec(attack=attack, path=exact, label="exact", exact=True),
             AttackSpec(attack=expensive, path=down, label="APGD listed")]
    outcome = screen_attacks(Screening(samples=2, keep=1, follow=1), model,
                             TensorDataset(x, y), [Final()], specs)
    followers = [spec for spec in outcome.order if spec.attack == expensive]
    assert [spec.path for spec in followers] == [up, exact]
    assert [spec.title for spec in followers] == ["APGD-CE (push +1)", "APGD-CE (exact)"]


def test_the_standard_set_has_the_exact_path_of_every_readout():
    model = ConvDEQSettings(channels=4, solver=Anderson(max_iter=6, tol=1e-3)).build((1, 8, 8), 10)
    exact = {(spec.path, spec.attack.loss) for spec in standard_attacks(model, early_index=2)
             if spec.exact}
    final, early = UnrolledIntermediate(index=0, steps=6), UnrolledIntermediate(index=0, steps=2)
    mean = UnrolledMean(first=1, steps=6)
    assert exact == {(path, loss) for path in (final, early, mean) for loss in ("ce", "margin")}
    entropy = EntropyReduction(steps=2)
    through = {spec.path.defense.base for spec in standard_attacks(model, early_index=2,
                                                                   entropy=entropy)
               if spec.exact and isinstance(spec.path, ThroughEntropyReduction)}
    assert through == {Final(), Early(index=2), Ensemble()}


def test_the_budget_sets_the_steps_of_every_pgd_column():
    """--pgd-steps K: every PGD column takes K steps of 2.5 eps / K (eps / 4 at the default
    10: the ready-made PGD-10 itself), with the budget's restarts."""
    model = ConvDEQSettings(channels=4, solver=Anderson(max_iter=6, tol=1e-3)).build((1, 8, 8), 10)
    assert AttackBudget(restarts=2).pgd == dataclasses.replace(READY_MADE, restarts=2)
    budget = AttackBudget(pgd_steps=40, restarts=3)
    pgds = [spec.attack.at_radius(0.3) for spec in
            standard_attacks(model, early_index=2, budget=budget)
            if isinstance(spec.attack, PGD)]
    assert len(pgds) > 5 and {(pgd.steps, pgd.restarts) for pgd in pgds} == {(40, 3)}
    assert all(pgd.step_size == pytest.approx(2.5 * 0.3 / 40) for pgd in pgds)
    assert {pgd.label for pgd in pgds} == {"PGD-40 x3"}


def test_the_ensemble_readouts_exact_path_matches_finite_differences():
    torch.manual_seed(0)
    model = ConvDEQSettings(channels=3, solver=Picard(max_iter=4, tol=0.0)).build((1, 6, 6), 10)
    model = model.double().eval()
    x = torch.rand(2, 1, 6, 6, dtype=torch.float64) * 0.8 + 0.1
    y = torch.tensor([3, 7])
    grad = UnrolledMean(first=1, steps=4).input_gradient(model, x, y, cross_entropy)

    def loss_of_readout(x_in):
        return cross_entropy(Ensemble().logits(model, x_in), y).sum()

    direction = torch.randn_like(x)
    h = 1e-6
    numeric = (loss_of_readout(x + h * direction) - loss_of_readout(x - h * direction)) / (2 * h)
    torch.testing.assert_close((grad * direction).sum(), numeric, rtol=1e-5, atol=1e-8)


def test_the_expensive_attacks_follow_distinct_paths():
    attack = PGD(eps=0.2, steps=2)
    unroll, shallow = UnrolledIntermediate(index=0, steps=8), UnrolledIntermediate(index=1, steps=1)
    ranked = [AttackSpec(attack=attack, path=unroll, label="unroll ce"),
              AttackSpec(attack=dataclasses.replace(attack, loss="margin"), path=unroll,
                         label="unroll margin"),
              AttackSpec(attack=attack, path=shallow, label="shallow")]
    assert [spec.title for spec in strongest_paths(ranked, 2)] == ["unroll ce", "shallow"]
    assert [spec.title for spec in strongest_paths(ranked, 1)] == ["unroll ce"]


@pytest.fixture(scope="module")
def tiny_deq():
    return tiny_conv_deq(samples=12, mistakes_every=4)


def independent_bptt_pgd(model: DEQClassifier, x, y, eps, steps, restarts, seed):
    """An attacker written apart from deqshield's attack code: sign-PGD on the cross-entropy
    of the logits after N plain iterations from z_0 (autograd), random starts, and the final
    readout (a fresh solve) scored at every iterate. Returns broken per sample."""
    generator = torch.Generator().manual_seed(seed)
    broken = torch.zeros(len(y), dtype=torch.bool)
    n = model.deq.solver.max_iter
    for _ in range(restarts):
        delta = (torch.rand(x.shape, generator=generator) * 2 - 1) * eps
        x_adv = (x + delta).clamp(0, 1)
        for _ in range(steps + 1):
            with torch.no_grad():
                broken |= model(x_adv).argmax(1) != y
            x_var = x_adv.clone().requires_grad_()
            u = model.inject(x_var)
            z = model.deq.cell.initial_state(u)
            for _ in range(n):
                z = model.deq.cell(z, u)
            loss = nn.functional.cross_entropy(model.head(z), y)
            (grad,) = torch.autograd.grad(loss, x_var)
            x_adv = torch.min(torch.max(x_adv + eps / 4 * grad.sign(), x - eps), x + eps)
            x_adv = x_adv.clamp(0, 1).detach()
    return broken


def test_an_independent_bptt_attacker_never_beats_the_protocol(tiny_deq):
    model, data = tiny_deq
    eps = 0.03
    protocol = standard_protocol(model, eps=eps, early_index=2, autoattack=False)
    results = run_protocol(protocol, model, data, progress=False)
    robust = set(next(row for row in results["defenses"] if row["label"] == "final")
                 ["robust_samples"])
    x, y = data.tensors
    broken = independent_bptt_pgd(model, x, y, eps, steps=10, restarts=2, seed=11)
    assert not robust & set(broken.nonzero().squeeze(1).tolist())
    assert 0 < len(robust) < len(y)  # the check is not vacuous at this radius


def test_an_early_readout_at_the_last_state_is_not_a_separate_defense():
    model = ConvDEQSettings(channels=2, solver=Picard(max_iter=3, tol=0.0)).build((1, 8, 8), 10)
    assert redundant_early(model, 2) is None
    assert "identical to the final readout" in redundant_early(model, 3)
    labels = [r.name for r in standard_protocol(model, eps=0.1, early_index=3).defenses]
    assert labels == ["final", "ensemble"]
