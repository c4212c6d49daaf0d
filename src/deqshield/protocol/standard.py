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
  and the unrolled ensemble;
* adaptive attacks through the entropy-reduction defense (exact unrolled, and BPDA) when it is
  evaluated;
* AutoAttack's APGD-CE and APGD-T fed the unrolled-ensemble gradient, and Square, the
  gradient-free control that flags gradient obfuscation.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Optional

from pydantic import Field

from deqshield.attacks.autoattack import AutoAttackBridge
from deqshield.attacks.pgd import PGD
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
)
from deqshield.protocol.specs import AttackSpec, Protocol
from deqshield.protocol.sweep import intermediate_sweep
from deqshield.readouts import Early, Ensemble, EntropyReduction, Final
from deqshield.settings import component
from deqshield.solvers import Broyden

PGD10 = PGD(steps=10)


@component
class AutoAttackBudget:
    """Iterations of APGD and queries of Square (the reference defaults: 100 and 5000)."""

    apgd_iterations: Annotated[int, Field(ge=1)] = 100
    square_queries: Annotated[int, Field(ge=1)] = 5000


def autoattack_columns(path: PathSpec, budget: AutoAttackBudget, label: str
                       ) -> list[AttackSpec]:
    """APGD-CE/T fed ``path`` and the gradient-free Square, with ``budget``."""
    return [AttackSpec(attack=AutoAttackBridge(attacks=("apgd-ce", "apgd-t"),
                                               apgd_iterations=budget.apgd_iterations),
                       path=path, label=label),
            AttackSpec(attack=AutoAttackBridge(attacks=("square",),
                                               square_queries=budget.square_queries),
                       label="Square (gradient-free)")]


def explicit_attacks(autoattack: bool = True,
                     budget: AutoAttackBudget = AutoAttackBudget()) -> list[AttackSpec]:
    """The attacks for an explicit network: PGD-10, APGD-CE/T and Square."""
    specs = [AttackSpec(attack=PGD10, path=FinalState(), label="PGD-10")]
    if autoattack:
        specs += autoattack_columns(FinalState(), budget, "APGD-CE/T")
    return specs


def standard_attacks(model: DEQClassifier, *, early_index: int, sweep: bool = False,
                     entropy: Optional[EntropyReduction] = None, autoattack: bool = True,
                     budget: AutoAttackBudget = AutoAttackBudget()) -> list[AttackSpec]:
    """The attack columns described in the module docstring."""
    steps = model.deq.solver.max_iter
    specs = [AttackSpec(attack=PGD10, path=FinalState(gradient=Phantom()),
                        label="ready-made (phantom)"),
             AttackSpec(attack=PGD10, path=FinalState(gradient=Implicit()),
                        label="ready-made (exact)")]
    if isinstance(model.deq.solver, Broyden):
        aligned = min(early_index + 1, steps)
        specs += [AttackSpec(attack=PGD10, path=SimultaneousAdjoint(index=aligned),
                             label=f"simultaneous adjoint u_{aligned}"),
                  AttackSpec(attack=PGD10, path=SimultaneousAdjoint(ensemble=True),
                             label="simultaneous adjoint ensemble"),
                  AttackSpec(attack=PGD10, path=AdjointBroyden(index=aligned),
                             label=f"adjoint Broyden u_{aligned}")]
    if sweep:
        specs += list(intermediate_sweep(range(1, steps + 1), PGD10))
    else:
        specs += [AttackSpec(attack=PGD10,
                             path=UnrolledIntermediate(index=i, steps=k, damping=lam),
                             label=f"unrolled (i={i}, K={k}, lambda={lam})")
                  for i in sorted({1, min(early_index, steps)}) for k in (1, 5)
                  for lam in (0.5, 1.0)]
    ensemble_path = UnrolledEnsemble(steps=1, damping=1.0)
    specs.append(AttackSpec(attack=PGD10, path=ensemble_path, label="unrolled ensemble"))
    if entropy is not None:
        specs += [AttackSpec(attack=PGD10, path=ThroughEntropyReduction(defense=entropy),
                             label="adaptive: through entropy reduction"),
                  AttackSpec(attack=PGD10, path=EntropyBPDA(
                      defense=entropy, inner=UnrolledIntermediate(index=1, steps=1)),
                      label="adaptive: entropy BPDA")]
    if autoattack:
        specs += autoattack_columns(ensemble_path, budget, "APGD-CE/T (unrolled ensemble)")
    return specs


def explicit_protocol(*, eps: float, autoattack: bool = True, quick: bool = False,
                      early_exit: bool = False, seed: int = 0,
                      budget: AutoAttackBudget = AutoAttackBudget()) -> Protocol:
    """The protocol for an explicit baseline: its output against :func:`explicit_attacks`."""
    return Protocol(defenses=(Final(),), attacks=tuple(explicit_attacks(autoattack, budget)),
                    eps=eps, quick=quick, early_exit=early_exit, seed=seed)


def standard_protocol(model: DEQClassifier, *, eps: float, early_index: int,
                      sweep: bool = False, entropy: Optional[EntropyReduction] = None,
                      autoattack: bool = True, quick: bool = False, early_exit: bool = False,
                      seed: int = 0, budget: AutoAttackBudget = AutoAttackBudget()) -> Protocol:
    """Defenses final / early / ensemble (each also behind ``entropy`` if given) against
    :func:`standard_attacks` at radius ``eps``."""
    defenses = [Final(), Early(index=early_index), Ensemble()]
    if entropy is not None:
        defenses += [dataclasses.replace(entropy, base=base) for base in list(defenses)]
    attacks = standard_attacks(model, early_index=early_index, sweep=sweep, entropy=entropy,
                               autoattack=autoattack, budget=budget)
    return Protocol(defenses=tuple(defenses), attacks=tuple(attacks), eps=eps, quick=quick,
                    early_exit=early_exit, seed=seed)
