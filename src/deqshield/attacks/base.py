"""The one call shape of every attack, and the record it returns.

Every attack (PGD, each AutoAttack member) is called as

    attack.run(model, path, x, y, defenses=(d_1, ..., d_D), start=None, generator=None)

and returns an :class:`AttackResult`: the attack's final examples ``x_adv`` (B, ...), and, for
each defense d (a trajectory readout), whether *some* example the attack evaluated -- any
iterate of any restart -- is misclassified by d (``broken[d, b]``), with that example as the
witness. Scoring the best example over all iterates and restarts, not only the last iterate, is
what AutoAttack and the reference PGD evaluations do: an attack that passed through a
misclassified point has found an adversarial example, wherever it ended.

Training and diagnostics call the same method without defenses and use ``x_adv``. The protocol
calls it with every defense it evaluates, so one attack run is scored by all of them when the
attack does not depend on the defense (PGD: its iterates depend only on the gradient path).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from deqshield.paths.base import GradientPath
from deqshield.readouts.base import Readout, predicted_classes, readouts_logits
from deqshield.threat import check_perturbation


@dataclass(frozen=True)
class AttackResult:
    """What one attack run found.

    ``x_adv``: the final examples (B, ...); ``broken``: (D, B) bool, defense d misclassified
    some evaluated example of sample b; ``witnesses``: (D, B, ...), the first example that
    broke (d, b), else ``x_adv[b]``; ``findings``: the attack's own warnings (AutoAttack's
    checks for randomised or dynamic defenses), to be reported.
    """

    x_adv: Tensor
    broken: Tensor
    witnesses: Tensor
    findings: tuple[str, ...] = ()

    def check(self, x: Tensor, eps: float, norm: str, bounds: tuple[float, float]) -> None:
        """Raise unless every example lies in the eps-ball around x and in ``bounds``."""
        check_perturbation(self.x_adv, x, eps, norm, bounds)
        for witnesses in self.witnesses:
            check_perturbation(witnesses, x, eps, norm, bounds)


@runtime_checkable
class Attack(Protocol):
    """An attack: settings plus :meth:`run` (see the module docstring)."""

    name: str
    eps: float
    norm: str

    @property
    def label(self) -> str:
        """Short name for reports, e.g. ``PGD-10`` or ``APGD-CE/T``."""
        ...

    @property
    def gradient_free(self) -> bool:
        """True when the attack ignores the gradient path (Square)."""
        ...

    @property
    def cheap(self) -> bool:
        """True for attacks cheap enough to try with every gradient path (screened); the
        others (APGD) run with the paths that the screening ranks strongest."""
        ...

    def at_radius(self, eps: float) -> "Attack":
        """The same attack at radius ``eps``."""
        ...

    def capped(self, iterations: int, queries: int) -> "Attack":
        """The same attack with at most ``iterations`` iterations / ``queries`` queries."""
        ...

    def starts(self, x: Tensor, generator: torch.Generator) -> Optional[Tensor]:
        """The attack's per-sample randomness for every sample of x, drawn once for a whole
        data set (so a sample's result does not depend on its batch); None if it draws its
        own."""
        ...

    def run(self, model: nn.Module, path: GradientPath, x: Tensor, y: Tensor, *,
            defenses: Sequence[Readout] = (), start: Optional[Tensor] = None,
            generator: Optional[torch.Generator] = None,
            pending: Optional[Tensor] = None) -> AttackResult:
        """Attack (x, y) against ``defenses``; ``pending`` (D, B) bool, default all: the
        (defense, sample) pairs that still need attacking (the others are neither scored nor
        attacked, and come back unbroken)."""
        ...


class Scoreboard:
    """Per defense and sample: broken yet, and the first example that broke it.

    :meth:`score` is called with every example an attack evaluates (``index`` selects the
    samples of the batch); samples that every defense already misclassified, or that no
    defense needs (``pending``), can be dropped from the attack (:meth:`alive`)."""

    def __init__(self, model: nn.Module, defenses: Sequence[Readout], x: Tensor, y: Tensor,
                 pending: Optional[Tensor] = None):
        self.model, self.defenses, self.y = model, tuple(defenses), y
        self.broken = torch.zeros(len(self.defenses), len(y), dtype=torch.bool, device=y.device)
        self.done = self.broken.clone() if pending is None else ~pending.to(y.device)
        """(D, B): (d, b) needs no more scoring (broken here, or not pending)."""
        self.witnesses = x.detach().unsqueeze(0).repeat(len(self.defenses), *[1] * x.dim())

    def score(self, x_adv: Tensor, index: Tensor) -> None:
        """Score ``x_adv`` (the examples of the samples ``index``) with every defense; the
        trajectory defenses read one solve of the examples some defense has not lost yet."""
        fresh = ~self.done[:, index].all(dim=0)
        if not fresh.any():
            return
        candidates, rows = x_adv[fresh], index[fresh]
        for d, logits in enumerate(readouts_logits(self.model, self.defenses, candidates)):
            wrong = (predicted_classes(logits) != self.y[rows]) & ~self.done[d, rows]
            self._hit(d, rows[wrong], candidates[wrong])

    def _hit(self, d: int, samples: Tensor, examples: Tensor) -> None:
        """Defense ``d`` misclassifies ``examples`` of ``samples``: broken, with witnesses."""
        self.witnesses[d, samples] = examples.detach()
        self.broken[d, samples] = True
        self.done[d, samples] = True

    def pending(self, d: int) -> Tensor:
        """Samples defense ``d`` still needs attacked (not broken, not excluded)."""
        return ~self.done[d]

    def alive(self) -> Tensor:
        """Samples some defense still needs attacked (all, without defenses)."""
        if not self.defenses:
            return torch.ones_like(self.y, dtype=torch.bool)
        return ~self.done.all(dim=0)

    def result(self, x_adv: Tensor, findings: tuple[str, ...] = (),
               unbroken: Optional[Tensor] = None) -> AttackResult:
        """The record, with ``unbroken[d]`` (default: ``x_adv``) as the witness of every
        unbroken (d, b)."""
        fallback = x_adv.unsqueeze(0) if unbroken is None else unbroken
        witnesses = torch.where(self.broken.view(*self.broken.shape, *[1] * (x_adv.dim() - 1)),
                                self.witnesses, fallback)
        return AttackResult(x_adv.detach(), self.broken.clone(), witnesses, findings)
