"""Per-sample verdict tables and the protocol's aggregates.

For every defense d the table holds ``clean[d]`` (bool per sample: the defense classifies the
clean input correctly) and, for every attack a, ``verdict[d, a]`` (int8 per sample):
``SURVIVED`` (1), ``BROKEN`` (0) or ``SKIPPED`` (-1, not attacked because an earlier attack
already broke the sample, early-exit mode). A sample misclassified clean is ``BROKEN``.

Aggregates:

* cell accuracy: fraction of samples that survive attack a under defense d (unknown if any
  sample was skipped);
* papers' min-max (closer-look-neurips22 Sec. 6): per defense the minimum cell over attacks,
  overall the maximum of those minima over defenses;
* per-sample worst case (stricter): a sample is robust for d only if it survives every attack;
  per defense the fraction of such samples, overall the maximum over defenses (the defender
  fixes one defense in advance). It never exceeds the min-max value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor

SURVIVED, BROKEN, SKIPPED = 1, 0, -1


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
        """Robust accuracy of one cell; None when samples were skipped (early exit)."""
        verdict = self.verdicts[defense, attack]
        if (verdict == SKIPPED).any():
            return None
        return float((verdict == SURVIVED).float().mean())

    def robust(self, defense: str) -> Tensor:
        """Per-sample worst case: clean-correct and survived every attack (bool per sample)."""
        alive = self.clean[defense].clone()
        for attack in self.attacks:
            alive &= self.verdicts[defense, attack] == SURVIVED
        return alive

    def cumulative_accuracy(self, defense: str) -> list[float]:
        """Accuracy after the first k attacks (k = 1..), as AutoAttack reports it."""
        alive = self.clean[defense].clone()
        out = []
        for attack in self.attacks:
            alive &= self.verdicts[defense, attack] == SURVIVED
            out.append(float(alive.float().mean()))
        return out

    def worst_case_accuracy(self, defense: str) -> float:
        return float(self.robust(defense).float().mean())

    def min_over_attacks(self, defense: str) -> Optional[float]:
        """Papers' row value: the minimum cell (None if a cell is unknown)."""
        cells = [self.cell_accuracy(defense, attack) for attack in self.attacks]
        if any(cell is None for cell in cells):
            return None
        return min(cells)  # type: ignore[type-var]

    def strongest_attack(self, defense: str) -> Optional[str]:
        """The attack with the lowest cell (first on ties); None if a cell is unknown."""
        cells = {attack: self.cell_accuracy(defense, attack) for attack in self.attacks}
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


def as_verdict(survived: Tensor, attacked: Tensor, clean: Tensor) -> Tensor:
    """int8 verdicts: SURVIVED/BROKEN where attacked, BROKEN where misclassified clean,
    SKIPPED elsewhere (clean-correct but not attacked)."""
    verdict = torch.full(clean.shape, SKIPPED, dtype=torch.int8)
    verdict[~clean] = BROKEN
    verdict[attacked] = torch.where(survived[attacked], SURVIVED, BROKEN).to(torch.int8)
    return verdict
