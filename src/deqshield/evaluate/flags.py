"""Signs of gradient obfuscation (Athalye et al. 2018) in an evaluation matrix.

* ``square-beats-gradient``: a gradient-free attack (Square) lowers a defense's accuracy by more
  than ``margin`` below its strongest gradient attack -- the gradients are likely uninformative;
  where cells are unknown (early exit: each attack saw only what the earlier ones left), the
  same when more than ``margin`` of the samples are broken by it alone, every gradient attack
  having left them standing;
* ``nonconverged``: more than ``threshold`` of the attacked samples leave the forward solver
  unconverged, so the prediction depends on the iteration budget;
* ``autoattack``: AutoAttack's own warnings (randomised, dynamic defense, ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal, Optional

from deqshield.evaluate.specs import AttackSpec
from deqshield.evaluate.verdicts import BROKEN, VerdictTable

FlagKind = Literal["square-beats-gradient", "nonconverged", "autoattack"]


@dataclass(frozen=True)
class Flag:
    """One finding for a (defense, attack) cell."""

    kind: FlagKind
    defense: str
    attack: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def obfuscation_flags(table: VerdictTable, specs: Sequence[AttackSpec], *, margin: float,
                      threshold: float) -> list[Flag]:
    """All flags of ``table`` whose columns are ``specs`` (same order)."""
    gradient_free = {spec.title for spec in specs if spec.gradient_free}
    flags: list[Flag] = []
    for defense in table.defenses:
        flags.extend(_square_flags(table, defense, gradient_free, margin))
        for attack in table.attacks:
            fraction = table.nonconverged.get((defense, attack), 0.0)
            if fraction > threshold:
                flags.append(Flag("nonconverged", defense, attack,
                                  f"{fraction:.1%} of attacked samples do not converge"))
            flags.extend(Flag("autoattack", defense, attack, message)
                         for message in table.findings.get((defense, attack), []))
    return flags


def _square_flags(table: VerdictTable, defense: str, gradient_free: set[str],
                  margin: float) -> list[Flag]:
    strongest: Optional[float] = None
    standing = table.clean[defense].clone()
    for attack in table.attacks:
        if attack in gradient_free:
            continue
        standing &= table.verdicts[defense, attack] != BROKEN
        cell = table.cell_accuracy(defense, attack)
        strongest = None if cell is None else cell if strongest is None else min(strongest, cell)
    flags = []
    for attack in sorted(gradient_free):
        cell = table.cell_accuracy(defense, attack)
        if cell is not None and strongest is not None:
            if cell < strongest - margin:
                flags.append(Flag("square-beats-gradient", defense, attack,
                                  f"gradient-free {cell:.2%} < strongest gradient attack "
                                  f"{strongest:.2%}"))
            continue
        alone = float((standing & (table.verdicts[defense, attack] == BROKEN)).float().mean())
        if alone > margin:
            flags.append(Flag("square-beats-gradient", defense, attack,
                              f"gradient-free attack alone breaks {alone:.2%} of the samples "
                              f"every gradient attack left standing"))
    return flags
