"""The papers' white-box attack set for a DEQ, as a :class:`Protocol`.

Defenses (closer-look-neurips22 Sec. 5.2): final, early (a fixed index chosen on the dev
split), ensemble; optionally each of them behind the entropy-reduction defense
(regulating-dynamics-icml23 Sec. 3.2).

Attacks, all PGD-10 unless noted (Sec. 4-5 and Tables 2-3, 9; regulating-dynamics Sec. 4):

* ready-made: the final-state gradient, phantom (Eq. 4) and exact (Eq. 2);
* simultaneous adjoint (Eq. 9-11) at state early+1 (u_{n+1} is aligned with z_n, Sec. 6.4) and
  its ensemble (Eq. 17), and the adjoint-Broyden comparison (Appendix D) -- only when the model
  solves with Broyden, whose inverse estimate these paths reuse;
* unrolled intermediates (Eq. 13-16): the full (i, K, lambda) sweep (i = 1..N, K = 1..9,
  lambda in {0.5, 1}) with ``sweep=True``, else i in {1, early}, K in {1, 5}, both lambdas;
  the unrolled ensemble;
* the exact gradient of every readout, each with the cross-entropy and with the margin loss
  (Carlini-Wagner; an outside attacker found samples only the margin loss broke): the full
  unroll from z_0 (i = 0, K = N, lambda = 1: backpropagation through the whole solve, often the
  strongest surrogate of a small DEQ) for the final readout, the same through the first
  ``early`` iterations for the early readout (an outside attacker broke a fifth of an early
  readout's samples with it), backpropagation to the mean of z_1..z_N for the ensemble readout
  (:class:`~deqshield.paths.UnrolledMean`), and, when the entropy-reduction defense is
  evaluated, the adaptive attack through it (exact unrolled) on each of these bases. They are
  exact where the solver is the plain iteration and plain-iteration surrogates otherwise, and
  a screening never leaves them out (``AttackSpec.exact``);
* the cheaper adaptive BPDA attack through the entropy-reduction defense when it is evaluated;
* AutoAttack's APGD-CE and APGD-T fed each exact path and the unrolled ensemble (with a
  screening, the paths it ranks strongest for each defense and every exact path),
  and Square, the gradient-free control that flags gradient obfuscation.

Every attack keeps the first misclassified example over its iterates and restarts
(``AttackBudget.restarts``, ``AttackBudget.apgd_restarts``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Annotated, Optional

from pydantic import Field

from deqshield.attacks.autoattack import AutoAttackBridge
from deqshield.attacks.pgd import PGD, READY_MADE
from deqshield.gradients import Implicit, Phantom
from deqshield.models import DEQClassifier
from deqshield.paths import (
    AdjointBroyden,
    EntropyBPDA,
    FinalState,
    PathSpec,
    SimultaneousAdjoint,
    ThroughEntropyReduction,
    UnrolledEnsemble,
    UnrolledIntermediate,
    UnrolledMean,
)
from deqshield.evaluate.specs import AttackSpec, Protocol, Screening, describe
from deqshield.evaluate.sweep import intermediate_sweep
from deqshield.readouts import Early, Ensemble, EntropyReduction, Final, Readout
from deqshield.settings import component
from deqshield.solvers import Broyden

SQUARE = "Square (gradient-free)"
READY_MADE_PATH = FinalState(gradient=Phantom())
"""The ready-made attack's gradient path: the phantom gradient at the final state."""


@component
class AttackBudget:
    """Iterations and restarts of APGD-CE/T (the reference defaults: AutoAttack's standard
    version, 100 iterations and one restart, APGD-T's nine target classes acting as its
    restarts), queries of Square (5000), the steps of the PGD columns (10, the papers'
    ready-made PGD-10), the random restarts of the PGD and Square columns, and PGD's
    warm-started solves (``warm_steps``: solver updates per iterate after a full first solve,
    for the final-state paths; None: every solve from z_0)."""

    apgd_iterations: Annotated[int, Field(ge=1)] = 100
    apgd_restarts: Annotated[int, Field(ge=1)] = 1
    square_queries: Annotated[int, Field(ge=1)] = 5000
    pgd_steps: Annotated[int, Field(ge=1)] = READY_MADE.steps
    restarts: Annotated[int, Field(ge=1)] = 1
    warm_steps: Optional[Annotated[int, Field(ge=1)]] = None

    @property
    def pgd(self) -> PGD:
        """The protocol's PGD: the ready-made PGD-10 (step eps / 4) with ``pgd_steps`` steps of
        size 2.5 eps / ``pgd_steps`` (Madry et al. 2018's rule, eps / 4 at 10 steps), these
        restarts and warm starts. More steps of a smaller size find examples that 10 steps
        miss on a hard-to-attack DEQ."""
        step_size = READY_MADE.step_size * (READY_MADE.steps / self.pgd_steps)
        return dataclasses.replace(READY_MADE, steps=self.pgd_steps, step_size=step_size,
                                   restarts=self.restarts, warm_steps=self.warm_steps)


BUDGETS: dict[str, AttackBudget] = {
    "reference": AttackBudget(),
    "cpu": AttackBudget(square_queries=300, restarts=2),
}
"""Named budget presets (``deqshield evaluate --budget``): AutoAttack's reference budget, and
one that evaluates ~1000 MNIST images on a 2-core CPU in a few hours: APGD at AutoAttack's
standard budget (it was 20 iterations x 2 restarts until the reference AutoAttack broke 15 of
the Fashion-MNIST zoo DEQ's samples counted robust that 20 x 2 left standing, 10 of them fed
the same path), Square at 300 queries, PGD with two restarts."""


def autoattack_columns(paths: Sequence[tuple[PathSpec, Optional[str]]],
                       budget: AttackBudget) -> list[AttackSpec]:
    """APGD-CE/T fed each of ``paths`` ((path, path label or None) pairs), then the
    gradient-free Square, with ``budget``."""
    apgd = AutoAttackBridge(attacks=("apgd-ce", "apgd-t"), apgd_iterations=budget.apgd_iterations,
                            restarts=budget.apgd_restarts)
    square = AutoAttackBridge(attacks=("square",), square_queries=budget.square_queries,
                              restarts=budget.restarts)
    return [AttackSpec(attack=apgd, path=path,
                       label="APGD-CE/T" + (f" ({label})" if label else ""))
            for path, label in paths] + [AttackSpec(attack=square, label=SQUARE)]


def explicit_attacks(autoattack: bool = True,
                     budget: AttackBudget = AttackBudget()) -> list[AttackSpec]:
    """The attacks for an explicit network: PGD-10, APGD-CE/T and Square."""
    pgd = budget.pgd
    specs = [AttackSpec(attack=pgd, path=FinalState(), label=pgd.label)]
    if autoattack:
        specs += autoattack_columns([(FinalState(), None)], budget)
    return specs


def full_unroll(model: DEQClassifier) -> UnrolledIntermediate:
    """Backpropagation through all N = max_iter plain iterations from z_0."""
    return UnrolledIntermediate(index=0, steps=model.deq.solver.max_iter, damping=1.0)


def standard_attacks(model: DEQClassifier, *, early_index: int, sweep: bool = False,
                     entropy: Optional[EntropyReduction] = None, autoattack: bool = True,
                     budget: AttackBudget = AttackBudget()) -> list[AttackSpec]:
    """The attack columns described in the module docstring."""
    steps = model.deq.solver.max_iter
    pgd = budget.pgd
    specs = [AttackSpec(attack=pgd, path=READY_MADE_PATH, label="ready-made (phantom)"),
             AttackSpec(attack=pgd, path=FinalState(gradient=Implicit()),
                        label="ready-made (exact)")]
    if isinstance(model.deq.solver, Broyden):
        aligned = min(early_index + 1, steps)
        specs += [AttackSpec(attack=pgd, path=SimultaneousAdjoint(index=aligned),
                             label=f"simultaneous adjoint u_{aligned}"),
                  AttackSpec(attack=pgd, path=SimultaneousAdjoint(ensemble=True),
                             label="simultaneous adjoint ensemble"),
                  AttackSpec(attack=pgd, path=AdjointBroyden(index=aligned),
                             label=f"adjoint Broyden u_{aligned}")]
    if sweep:
        specs += list(intermediate_sweep(range(1, steps + 1), pgd))
    else:
        unrolled = [UnrolledIntermediate(index=i, steps=k, damping=lam)
                    for i in sorted({1, min(early_index, steps)}) for k in (1, 5)
                    for lam in (0.5, 1.0)]
        specs += [AttackSpec(attack=pgd, path=path, label=path.label) for path in unrolled]
    margin = dataclasses.replace(pgd, loss="margin")
    bptt = full_unroll(model)
    exact = [(bptt, "full unroll")]
    if redundant_early(model, early_index) is None:
        exact.append((UnrolledIntermediate(index=0, steps=early_index, damping=1.0),
                      f"full unroll to z_{early_index}"))
    exact.append((UnrolledMean(first=Ensemble().first, steps=steps),
                  f"full unroll, mean of z_{Ensemble().first}..z_{steps}"))
    if entropy is not None:
        exact += [(ThroughEntropyReduction(defense=dataclasses.replace(entropy, base=base)),
                   f"adaptive: through entropy reduction ({describe(base)})")
                  for base in base_readouts(model, early_index)]
    for path, label in exact:
        specs += [AttackSpec(attack=pgd, path=path, label=label, exact=True),
                  AttackSpec(attack=margin, path=path, label=f"{label}, margin loss", exact=True)]
    ensemble_path = UnrolledEnsemble(steps=1, damping=1.0)
    specs.append(AttackSpec(attack=pgd, path=ensemble_path, label="unrolled ensemble"))
    if entropy is not None:
        specs.append(AttackSpec(attack=pgd, path=EntropyBPDA(
            defense=entropy, inner=UnrolledIntermediate(index=1, steps=1)),
            label="adaptive: entropy BPDA"))
    if autoattack:
        specs += autoattack_columns(exact + [(ensemble_path, "unrolled ensemble")], budget)
    return specs


def explicit_protocol(*, eps: float, autoattack: bool = True, quick: bool = False,
                      early_exit: bool = False, seed: int = 0,
                      budget: AttackBudget = AttackBudget(),
                      screening: Optional[Screening] = None) -> Protocol:
    """The protocol for an explicit baseline: its output against :func:`explicit_attacks`."""
    return Protocol(defenses=(Final(),), attacks=tuple(explicit_attacks(autoattack, budget)),
                    eps=eps, quick=quick, early_exit=early_exit, seed=seed, screening=screening)


def redundant_early(model: DEQClassifier, early_index: int) -> Optional[str]:
    """Why ``Early(index=early_index)`` is not a defense of its own (it reads z_N = the final
    state when the index is at least the solver's ``max_iter`` N), or None."""
    steps = model.deq.solver.max_iter
    if early_index < steps:
        return None
    return (f"early(index={early_index}) reads z_{steps}, the final state of a solver with "
            f"max_iter={steps}: identical to the final readout, not evaluated separately")


def base_readouts(model: DEQClassifier, early_index: int) -> list[Readout]:
    """Final, early (unless :func:`redundant_early`) and ensemble: the trajectory readouts."""
    early = [Early(index=early_index)] if redundant_early(model, early_index) is None else []
    return [Final(), *early, Ensemble()]


def standard_protocol(model: DEQClassifier, *, eps: float, early_index: int,
                      sweep: bool = False, entropy: Optional[EntropyReduction] = None,
                      autoattack: bool = True, quick: bool = False, early_exit: bool = False,
                      seed: int = 0, budget: AttackBudget = AttackBudget(),
                      screening: Optional[Screening] = None) -> Protocol:
    """Defenses final / early / ensemble (each also behind ``entropy`` if given; early left out
    when :func:`redundant_early`) against :func:`standard_attacks` at radius ``eps``."""
    defenses = base_readouts(model, early_index)
    if entropy is not None:
        defenses += [dataclasses.replace(entropy, base=base) for base in list(defenses)]
    attacks = standard_attacks(model, early_index=early_index, sweep=sweep, entropy=entropy,
                               autoattack=autoattack, budget=budget)
    return Protocol(defenses=tuple(defenses), attacks=tuple(attacks), eps=eps, quick=quick,
                    early_exit=early_exit, seed=seed, screening=screening)
