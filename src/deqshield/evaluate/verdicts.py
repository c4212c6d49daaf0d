"""Per-sample verdict tables and the protocol's aggregates.

For every defense d the table holds ``clean[d]`` (bool per sample: the defense classifies the
clean input correctly) and, for every attack a, ``verdict[d, a]`` (int8 per sample):
``SURVIVED`` (1), ``BROKEN`` (0), ``SKIPPED`` (-1, not attacked because an earlier attack
already broke the sample, early-exit mode) or ``UNTESTED`` (-2, an attack that a screening ranked
weak ran only on the screened samples; it neither breaks nor clears the others). A sample
misclassified clean is ``BROKEN``.

Aggregates:

* cell accuracy: fraction of the tested samples that survive attack a under defense d (unknown
  if any sample was skipped); the attacked accuracy: the same over the samples the attack
  actually attacked (what each attack of an early-exit run did on the samples it saw);
* attribution: per sample, the first attack (in column order) that broke it;
* papers' min-max (closer-look-neurips22 Sec. 6): per defense the minimum cell over the
  attacks tested on every sample (a screened column's cell is over its screened samples only,
  another sample set), overall the maximum of those minima over defenses;
* per-sample worst case (stricter): a sample is robust for d only if it survives every attack;
  per defense the fraction of such samples, overall the maximum over defenses (the defender
  fixes one defense in advance). It never exceeds the min-max value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor

SURVIVED, BROKEN, SKIPPED, UNTESTED = 1, 0, -1, -2
CLEAN_ERROR = "clean"
"""Attribution of a sample the defense misclassifies without any attack."""


@dataclass
class VerdictTable:
    """Verdicts of ``defenses`` (rows) under ``attacks`` (columns), keyed by their labels."""

    defenses: list[str]
    attacks: list[str]
    clean: dict[str, Tensor]
    verdicts: dict[tuple[str, str], Tensor]
    findings: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    nonconverged: dict[tuple[str, str], float] = field(default_factory=dict)

    @property
    def samples(self) -> int:
        return int(next(iter(self.clean.values())).numel())

    def clean_accuracy(self, defense: str) -> float:
        return float(self.clean[defense].float().mean())

    def cell_accuracy(self, defense: str, attack: str) -> Optional[float]:
        """Robust accuracy of one cell over its tested samples; None when samples were
        skipped (early exit)."""
        verdict = self.verdicts[defense, attack]
        if (verdict == SKIPPED).any():
            return None
        tested = verdict != UNTESTED
        return float((verdict[tested] == SURVIVED).float().mean()) if tested.any() else None

    def attacked(self, defense: str, attack: str) -> tuple[int, int]:
        """(samples the attack attacked under the defense, of which survived)."""
        verdict = self.verdicts[defense, attack]
        attacked = self.clean[defense] & ((verdict == SURVIVED) | (verdict == BROKEN))
        return int(attacked.sum()), int((attacked & (verdict == SURVIVED)).sum())

    def robust(self, defense: str) -> Tensor:
        """Per-sample worst case: clean-correct and broken by no attack (bool per sample)."""
        alive = self.clean[defense].clone()
        for attack in self.attacks:
            alive &= _holds(self.verdicts[defense, attack])
        return alive

    def cumulative_accuracy(self, defense: str) -> list[float]:
        """Accuracy after the first k attacks (k = 1..), as AutoAttack reports it."""
        alive = self.clean[defense].clone()
        out = []
        for attack in self.attacks:
            alive &= _holds(self.verdicts[defense, attack])
            out.append(float(alive.float().mean()))
        return out

    def broken_by(self, defense: str) -> list[Optional[str]]:
        """Per sample: the first attack that broke it under the defense, ``CLEAN_ERROR`` if
        misclassified clean, None if robust."""
        out: list[Optional[str]] = [None if ok else CLEAN_ERROR
                                    for ok in self.clean[defense].tolist()]
        for attack in self.attacks:
            for i in (self.verdicts[defense, attack] == BROKEN).nonzero().squeeze(1).tolist():
                out[i] = out[i] or attack
        return out

    def add_columns(self, other: "VerdictTable", attacks: list[str]) -> None:
        """Append ``other``'s columns ``attacks``, whose verdicts cover this table's first
        samples only (a screening), as columns that are ``UNTESTED`` elsewhere."""
        for attack in attacks:
            self.attacks.append(attack)
            for defense in self.defenses:
                verdict = torch.full_like(self.clean[defense], UNTESTED, dtype=torch.int8)
                screened = other.verdicts[defense, attack]
                verdict[:len(screened)] = screened
                self.verdicts[defense, attack] = verdict
                self.findings[defense, attack] = other.findings.get((defense, attack), [])
                self.nonconverged[defense, attack] = other.nonconverged.get((defense, attack),
                                                                            0.0)

    def worst_case_accuracy(self, defense: str) -> float:
        return float(self.robust(defense).float().mean())

    def full_columns(self, defense: str) -> list[str]:
        """The attacks tested on every sample under the defense (not screened-only)."""
        return [attack for attack in self.attacks
                if not (self.verdicts[defense, attack] == UNTESTED).any()]

    def min_over_attacks(self, defense: str) -> Optional[float]:
        """Papers' row value: the minimum cell over :meth:`full_columns` (None if a cell is
        unknown)."""
        cells = [self.cell_accuracy(defense, attack) for attack in self.full_columns(defense)]
        if any(cell is None for cell in cells):
            return None
        return min(cells)  # type: ignore[type-var]

    def strongest_attack(self, defense: str) -> Optional[str]:
        """The attack of :meth:`full_columns` with the lowest cell (first on ties); None if a
        cell is unknown."""
        cells = {attack: self.cell_accuracy(defense, attack)
                 for attack in self.full_columns(defense)}
        if any(cell is None for cell in cells.values()):
            return None
        return min(cells, key=lambda attack: cells[attack])  # type: ignore[arg-type,return-value]

    def min_max(self) -> Optional[tuple[str, float]]:
        """(best defense, its min over attacks): the papers' overall white-box robustness."""
        rows = {defense: self.min_over_attacks(defense) for defense in self.defenses}
        if any(row is None for row in rows.values()):
            return None
        best = max(rows, key=lambda defense: rows[defense])  # type: ignore[arg-type,return-value]
        return best, rows[best]  # type: ignore[return-value]

    def worst_case(self) -> tuple[str, float]:
        """(best defense, its per-sample worst-case accuracy)."""
        rows = {defense: self.worst_case_accuracy(defense) for defense in self.defenses}
        best = max(rows, key=lambda defense: rows[defense])
        return best, rows[best]


def _holds(verdict: Tensor) -> Tensor:
    """The attack did not break the sample (survived, or not tested by a screened column)."""
    return (verdict == SURVIVED) | (verdict == UNTESTED)


def as_verdict(survived: Tensor, attacked: Tensor, clean: Tensor) -> Tensor:
    """int8 verdicts: SURVIVED/BROKEN where attacked, BROKEN where misclassified clean,
    SKIPPED elsewhere (clean-correct but not attacked)."""
    verdict = torch.full(clean.shape, SKIPPED, dtype=torch.int8)
    verdict[~clean] = BROKEN
    verdict[attacked] = torch.where(survived[attacked], SURVIVED, BROKEN).to(torch.int8)
    return verdict
